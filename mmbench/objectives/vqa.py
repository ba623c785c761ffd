"""VQA: answer classification on the fused pooled vector with soft targets.

Targets are answer scores in [0, 1] over the answer vocabulary (B, A) (VQAv2 soft scores, or
one-hot when a dataset has one answer); the loss is binary cross-entropy summed over answers and
averaged over the batch (the BUTD/ViLT recipe). Accuracy is the score of the predicted answer.

The question is the text input: `question_field="question"` reads `question_ids` /
`question_mask` from the batch (datasets with captions *and* questions, such as Shapes);
`question_field=None` uses the step's shared text features (datasets whose text is the question).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch.nn.functional as F
from torch import nn

from mmbench.objectives.base import Objective, ObjectiveOutput

if TYPE_CHECKING:
    from mmbench.data.batch import Batch
    from mmbench.models.model import MultimodalModel
    from mmbench.models.outputs import Features
    from mmbench.objectives.context import StepContext


class VQA(Objective):
    requires = ("joint_pooled",)

    @classmethod
    def fields_read(cls, question_field: str | None = "question", **config) -> tuple[str, ...]:
        questions = (f"{question_field}_ids", f"{question_field}_mask") if question_field else ()
        return (*questions, "answer_scores")

    def __init__(self, dim: int, num_answers: int, question_field: str | None = "question", weight: float = 1.0):
        super().__init__(weight)
        self.head = nn.Sequential(
            nn.Linear(dim, 2 * dim), nn.GELU(), nn.LayerNorm(2 * dim), nn.Linear(2 * dim, num_answers)
        )
        self.question_field = question_field

    def answer_logits(self, model, batch, text, image):
        """Answer logits (B, A); the question is read from `batch` (or is `text` when question_field is None)."""
        if self.question_field is not None:
            text = model.encode_text(batch[f"{self.question_field}_ids"], batch[f"{self.question_field}_mask"])
        return self.head(model.fuse(text, image).pooled)  # (B, A)

    def forward(
        self, model: MultimodalModel, batch: Batch, text: Features, image: Features, context: StepContext
    ) -> ObjectiveOutput:
        logits = self.answer_logits(model, batch, text, image)  # (B, A)
        scores = batch["answer_scores"]  # (B, A)
        loss = F.binary_cross_entropy_with_logits(logits, scores, reduction="sum") / scores.shape[0]
        acc = scores.gather(1, logits.argmax(1, keepdim=True)).mean()
        return ObjectiveOutput(loss, {"acc": acc})
