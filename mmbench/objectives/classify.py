"""Classify: a plain supervised classifier on the fused pooled vector (NLVR2 / SNLI-VE style tasks).

`model.fuse(text, image).pooled` (B, D) -> Linear -> `num_labels` logits, cross-entropy against
`batch[label_field]` (B,) long class indices. Negative labels (e.g. -1 = unknown) are ignored.
`num_labels` comes from the data's label count (`DataInfo.num_labels`, filled in by the builder)
unless the config sets it. Metric: `acc`. The evaluation suite's `classification` protocol
(mmbench/metrics/classification.py) scores the split through `class_logits`, the same code path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from mmbench.data.batch import named_field
from mmbench.models.outputs import Features
from mmbench.objectives.base import Objective, ObjectiveOutput

if TYPE_CHECKING:
    from mmbench.data.batch import Batch
    from mmbench.models.model import MultimodalModel
    from mmbench.objectives.context import StepContext


class MissingBatchFieldError(KeyError):
    """The batch lacks a field an objective reads."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0])


class Classify(Objective):
    requires = ("joint_pooled",)

    @classmethod
    def fields_read(cls, label_field: str = "labels", **config) -> tuple[str, ...]:
        return (label_field,)

    def __init__(self, dim: int, num_labels: int, label_field: str = "labels", weight: float = 1.0):
        super().__init__(weight)
        if num_labels < 1:
            raise ValueError(
                f"num_labels must be >= 1, got {num_labels}: the data has no labels (no `caption_labels` / "
                f"label column) and objective.classify.num_labels is not set"
            )
        self.head = nn.Linear(dim, num_labels)
        self.num_labels = num_labels
        self.label_field = label_field
        self.batch_fields = (label_field,)

    def class_logits(self, model, text: Features, image: Features) -> torch.Tensor:
        """(B, num_labels) logits of the (text, image) pairs: the head on the fused pooled vector."""
        return self.head(model.fuse(text, image).pooled)

    def forward(
        self, model: MultimodalModel, batch: Batch, text: Features, image: Features, context: StepContext
    ) -> ObjectiveOutput:
        if self.label_field not in batch:
            raise MissingBatchFieldError(
                f"objective 'classify' reads batch['{self.label_field}'] (class indices (B,)) but the batch "
                f"has only {sorted(batch)}; set objective.classify.label_field to one of them or use data "
                f"with a '{self.label_field}' column"
            )
        targets = named_field(batch, self.label_field).long()  # (B,)
        if targets.numel() and int(targets.max()) >= self.num_labels:
            raise ValueError(
                f"batch['{self.label_field}'] holds label {int(targets.max())} but num_labels={self.num_labels}; "
                f"set objective.classify.num_labels to the dataset's label count"
            )
        return labelled_cross_entropy(self.class_logits(model, text, image), targets)  # logits (B, L)


def labelled_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> ObjectiveOutput:
    """Cross-entropy and accuracy of logits (B, L) over the rows whose target (B,) is a class (-1 = unknown,
    left out); a batch without a labelled row gives a zero loss that keeps the graph."""
    keep = targets >= 0
    if not keep.any():
        zero = logits.sum() * 0.0
        return ObjectiveOutput(zero, {"acc": zero.detach()})
    loss = F.cross_entropy(logits[keep], targets[keep])
    acc = (logits[keep].argmax(-1) == targets[keep]).float().mean()
    return ObjectiveOutput(loss, {"acc": acc})
