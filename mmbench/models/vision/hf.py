"""Pretrained vision encoder: a Hugging Face `AutoModel` image model (ViT, DeiT, CLIP's vision tower, ...).

    Features(tokens (B, N, D), mask (B, N) all True, pooled (B, D))

Preprocessing belongs to the encoder: the [-1, 1] pixels of the datamodule are mapped to the
checkpoint's mean/std (from its `preprocessor_config.json`, or `mean`/`std` given here) and resized
to the checkpoint's `image_size`. The hidden size is projected to `dim` when they differ. `pooled`
is the model's own pooler output (ViT pooler, CLIP post-LayerNorm [CLS]) unless `pooling` is given.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch
from torch import nn

from mmbench.models.layers import Pooling
from mmbench.models.outputs import Features
from mmbench.models.pretrained.hub import load_hf_json, load_hf_model
from mmbench.models.vision.preprocess import PixelAdapter

if TYPE_CHECKING:
    from mmbench.data.batch import Batch

log = logging.getLogger(__name__)


class HFVisionEncoder(nn.Module):
    needs_regions = False
    # the pretrained model embeds its own patches inside one call: no hook to hide input tokens before its
    # blocks, so masked region modeling (MRM) is refused (MultimodalModel.encode_image, config validation)
    maskable_inputs = False

    def __init__(
        self,
        name: str,
        dim: int,
        pooling: Pooling | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
    ):
        super().__init__()
        model = load_hf_model(name)
        self.model = getattr(model, "vision_model", model)  # CLIPModel -> CLIPVisionTransformer
        self.name = name
        config = self.model.config
        if mean is None or std is None:
            processor = load_hf_json(name, "preprocessor_config.json") or {}
            if "image_mean" not in processor:
                log.warning("%s has no preprocessor_config.json with image_mean/std; using mean=std=0.5", name)
            mean = mean if mean is not None else processor.get("image_mean", [0.5, 0.5, 0.5])
            std = std if std is not None else processor.get("image_std", [0.5, 0.5, 0.5])
        size = config.image_size
        self.preprocess = PixelAdapter(mean, std, size=(size, size) if isinstance(size, int) else tuple(size))
        self.proj = nn.Linear(config.hidden_size, dim) if config.hidden_size != dim else nn.Identity()
        self.pooling = pooling

    def forward(self, batch: Batch) -> Features:
        out = self.model(pixel_values=self.preprocess(batch["pixel_values"]))
        hidden = out.last_hidden_state  # (B, N, H)
        mask = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
        if self.pooling is not None:
            pooled = self.pooling(hidden, mask)
        else:
            own = getattr(out, "pooler_output", None)  # the model's pooler, if it has one
            pooled = hidden[:, 0] if own is None else own  # (B, H)
        return Features(self.proj(hidden), mask, self.proj(pooled))
