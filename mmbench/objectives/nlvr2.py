"""NLVR2: is a statement true of a pair of images? The "pair head" of ViLT, UNITER and LXMERT.

The statement is fused with each image separately and the two joint pooled vectors, left then right,
are concatenated and classified into False (0) / True (1):

    [fuse(text, left).pooled ; fuse(text, right).pooled]  (B, 2D) -> Linear(2D, 2D) -> LayerNorm -> GELU
                                                                  -> Linear(2D, 2)

as ViLT's `nlvr2_classifier` (dandelin/ViLT, vilt/modules/vilt_module.py; its weights drawn as ViLT's
`init_weights`: normal(0, 0.02), biases zero), with cross-entropy against `batch["labels"]` (-1 = unknown,
ignored). ViLT also gives the right image's tokens a third token-type embedding; here both images are
fused by the same fusion, which sees one image at a time, so nothing tells them apart but the head's order.

The step has encoded the text and the left image once (`batch["pixel_values"]`); the right image
(`batch["pixel_values_right"]`) is encoded by one more call, and both pairs are fused in ONE call on the
2B batch [text; text] x [left; right]. Encoders and fusions are per-example, so this equals two separate
fuse calls (tests/test_nlvr2.py), except with a vision encoder built with BatchNorm in training mode
(batch statistics; the default GroupNorm has none). Encoders that read object regions are refused (there
are no regions of the right image). Metric: `acc`. The evaluation suite's `classification` protocol
(mmbench/metrics/classification.py) scores the split through `class_logits`, the same code path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from mmbench.data.batch import named_field
from mmbench.models.outputs import Features
from mmbench.objectives.base import Objective, ObjectiveOutput
from mmbench.objectives.classify import labelled_cross_entropy

if TYPE_CHECKING:
    from mmbench.data.batch import Batch
    from mmbench.models.model import MultimodalModel
    from mmbench.objectives.context import StepContext


class NLVR2(Objective):
    requires = ("joint_pooled",)
    batch_fields = ("pixel_values_right", "labels")
    #: the images of an example, in `class_logits` order (the classification protocol encodes each)
    image_fields = ("pixel_values", "pixel_values_right")
    label_field = "labels"
    num_labels = 2  # False / True

    @classmethod
    def vision_problems(cls, name: str, vision_encoder: type, **config) -> list[str]:
        if getattr(vision_encoder, "needs_regions", False):
            return [
                f"objective '{name}' encodes the right image of each pair from its pixels (pixel_values_right), "
                f"but encoder/vision '{vision_encoder.__name__}' reads object regions, which the right image does "
                f"not have; use a pixel encoder (encoder/vision=patch, vit, conv, timm or hf)"
            ]
        return []

    def __init__(self, dim: int, weight: float = 1.0):
        super().__init__(weight)
        self.head = nn.Sequential(
            nn.Linear(2 * dim, 2 * dim), nn.LayerNorm(2 * dim), nn.GELU(), nn.Linear(2 * dim, self.num_labels)
        )
        for layer in self.head:
            if isinstance(layer, nn.Linear):  # ViLT's init_weights (LayerNorm: ones and zeros already)
                nn.init.normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)

    @staticmethod
    def encode_right(model, batch: Batch) -> Features:
        """The right images of the batch, encoded as the left ones are (`pixel_values` is all a pixel encoder reads)."""
        return model.encode_image({"pixel_values": batch["pixel_values_right"]})

    def class_logits(self, model, text: Features, image: Features, image_right: Features) -> torch.Tensor:
        """(B, 2) logits of (statement, left image, right image): one fuse call over the 2B pairs."""
        B = text.pooled.shape[0]
        joint = model.fuse(Features.cat(text, text), Features.cat(image, image_right)).pooled  # (2B, D): left, right
        pair = torch.cat([joint[:B], joint[B:]], dim=-1)  # (B, 2D) = [left; right]
        return self.head(pair)

    def forward(
        self, model: MultimodalModel, batch: Batch, text: Features, image: Features, context: StepContext
    ) -> ObjectiveOutput:
        targets = named_field(batch, self.label_field).long()  # (B,) 1 = True, 0 = False, -1 = unknown
        if targets.numel() and int(targets.max()) >= self.num_labels:
            raise ValueError(
                f"batch['{self.label_field}'] holds label {int(targets.max())}, but NLVR2 labels are 0 (False) and "
                f"1 (True), -1 unknown: map the statement labels to these (caption_labels)"
            )
        logits = self.class_logits(model, text, image, self.encode_right(model, batch))  # (B, 2)
        return labelled_cross_entropy(logits, targets)
