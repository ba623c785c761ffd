"""ITM: image-text matching, a binary classifier on the fused pooled vector.

For each image one negative text and for each text one negative image are drawn among the
pairs of *other* images (same `image_id` is never a negative). When ITC ran earlier in the step,
negatives are sampled in proportion to softmax of its similarities (ALBEF/BLIP hard negatives);
otherwise uniformly. Sampling is one `torch.multinomial` call per direction, no loop over the
batch. A row with no valid negative (every other item shows the same image) is dropped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmbench.models.outputs import Features
from mmbench.objectives.base import Objective, ObjectiveOutput


def sample_negatives(
    image_ids: torch.Tensor, scores: torch.Tensor | None = None, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row i pick a column j with image_ids[j] != image_ids[i].

    scores (B, B): unnormalised log-weights (e.g. ITC similarities); None = uniform.
    Returns (indices (B,), valid (B,) bool). Rows without any valid column get valid=False.
    """
    allowed = image_ids[:, None] != image_ids[None, :]  # (B, B)
    if scores is None:
        weights = allowed.float()
    else:
        weights = torch.softmax(scores.float().masked_fill(~allowed, float("-inf")), dim=1)
        weights = torch.nan_to_num(weights, nan=0.0)  # all -inf rows
    valid = allowed.any(1)
    weights = torch.where(valid[:, None], weights, torch.ones_like(weights))  # placeholder for invalid rows
    idx = torch.multinomial(weights, 1, generator=generator).squeeze(1)  # (B,)
    return idx, valid


class ITM(Objective):
    requires = ("joint_pooled",)
    pair_score_rank = 2

    def __init__(self, dim: int, hard_negatives: bool = True, weight: float = 1.0):
        super().__init__(weight)
        self.head = nn.Linear(dim, 2)
        self.hard_negatives = hard_negatives

    def forward(self, model, batch, text, image, context) -> ObjectiveOutput:
        ids = batch["image_id"]
        sim = context.get("itc_sim_i2t") if self.hard_negatives else None  # (B, B) image x text
        neg_text, valid_t = sample_negatives(ids, sim)  # for each image a text
        neg_image, valid_i = sample_negatives(ids, None if sim is None else sim.T)  # for each text an image
        texts = Features.cat(text, text.index(neg_text), text)
        images = Features.cat(image, image, image.index(neg_image))
        joint = model.fuse(texts, images)
        logits = self.head(joint.pooled)  # (3B, 2)
        B = ids.shape[0]
        labels = torch.cat([torch.ones(B), torch.zeros(2 * B)]).long().to(logits.device)
        keep = torch.cat([torch.ones(B, dtype=torch.bool, device=ids.device), valid_t, valid_i])
        loss = F.cross_entropy(logits[keep], labels[keep])
        acc = (logits[keep].argmax(-1) == labels[keep]).float().mean()
        return ObjectiveOutput(loss, {"acc": acc})

    def pair_score(self, model, text, image) -> torch.Tensor:
        logits = self.head(model.fuse(text, image).pooled)  # (B, 2)
        return logits[:, 1] - logits[:, 0]  # log-odds of "match"
