"""ITM: image-text matching, a binary classifier on the fused pooled vector.

For each image one negative text and for each text one negative image, drawn among the pairs of other
images and never a pair known to be true (`known_true`: the same image, an identical caption, or a claim
among the image's facts); in proportion to ITC's similarities when ITC ran earlier in the step (ALBEF/BLIP
hard negatives, phased in over the first `hard_negative_warmup` of training), else uniformly.
`text_negatives=True` adds each caption's word-order negative from the data (NegCLIP, Yuksekgonul et al.,
ICLR 2023) as one more "no match" row and logs `swap_acc`.
The details and the reasons: docs/objectives.md (ITM); why the warm-up: docs/results/itm.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from mmbench.checks import number_problem, problems_of, raise_problems
from mmbench.models.outputs import Features
from mmbench.objectives.base import Objective, ObjectiveOutput
from mmbench.objectives.claims import claims_true

if TYPE_CHECKING:
    from mmbench.data.batch import Batch
    from mmbench.models.model import MultimodalModel
    from mmbench.objectives.context import StepContext


def true_pairs(image_ids: torch.Tensor, input_ids: torch.Tensor | None = None) -> torch.Tensor:
    """(B, B) bool: text j is known to be true of image i.

    Text j is true of image i when it is a caption of the same image (equal image ids) or when it
    is word for word a caption of image i in the batch (equal token ids, padding included: the
    rows of one batch share their padded length). The second case matters on templated data,
    where "there are two objects" describes a third of all Shapes images: without it, the most
    ITC-similar "negative" of an image is often one of its own true captions, shown by another image.
    """
    same_image = image_ids[:, None] == image_ids[None, :]  # (B, B)
    if input_ids is None:
        return same_image
    same_text = (input_ids[:, None, :] == input_ids[None, :, :]).all(-1)  # (B, B)
    # true[i, j] = some k shows image i and has the words of text j
    return (same_image.float() @ same_text.float()) > 0


def known_true(batch: Batch) -> torch.Tensor:
    """(B, B) bool: text j is known to be true of image i: `true_pairs` (same image, same words) or,
    when the data states what its texts claim, a claim among the image's facts (`claims_true`)."""
    true = true_pairs(batch["image_id"], batch.get("input_ids"))
    if "text_claim" in batch:
        true = true | claims_true(batch["image_facts"], batch["text_claim"])
    return true


def negative_distribution(
    image_ids: torch.Tensor,
    scores: torch.Tensor | None = None,
    hardness: float = 1.0,
    true: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The distribution `sample_negatives` draws from: (weights (B, B), valid (B,) bool).

    Row i spreads its mass over the columns j that are not a true pair (image_ids[j] != image_ids[i]
    and, when given, not true[i, j]; see `known_true`): `hardness * softmax(scores) + (1 - hardness) *
    uniform`. scores (B, B): unnormalised log-weights (e.g. ITC similarities); None = uniform.
    Rows without any valid column are all zero and get valid=False.
    """
    allowed = image_ids[:, None] != image_ids[None, :]  # (B, B)
    if true is not None:
        allowed = allowed & ~true
    uniform = allowed.float() / allowed.sum(1, keepdim=True).clamp_min(1)  # (B, B)
    if scores is None or hardness <= 0:
        return uniform, allowed.any(1)
    hard = torch.softmax(scores.float().masked_fill(~allowed, float("-inf")), dim=1)
    hard = torch.nan_to_num(hard, nan=0.0)  # all -inf rows
    return hardness * hard + (1 - hardness) * uniform, allowed.any(1)  # (B, B), (B,)


def sample_negatives(
    image_ids: torch.Tensor,
    scores: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    hardness: float = 1.0,
    true: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row i pick a column j that is not a true pair, from `negative_distribution`.

    hardness in [0, 1]: weight of the score-based distribution in a mixture with the uniform one.
    Returns (indices (B,), valid (B,) bool). Rows without any valid column get valid=False.
    """
    weights, valid = negative_distribution(image_ids, scores, hardness, true)
    weights = torch.where(valid[:, None], weights, torch.ones_like(weights))  # placeholder for invalid rows
    idx = torch.multinomial(weights, 1, generator=generator).squeeze(1)  # (B,)
    return idx, valid


class ITM(Objective):
    requires = ("joint_pooled",)
    uses = ("itc_sim_i2t",)  # hard negatives from ITC when it runs in the same step (it then runs first)
    pair_score_rank = 2

    @classmethod
    def fields_read(cls, text_negatives: bool = False, **config) -> tuple[str, ...]:
        return ("negative_ids", "negative_mask", "has_negative") if text_negatives else ()

    @classmethod
    def setting_problems(cls, *, hard_negative_warmup: float = 0.0, **settings) -> list[str]:
        meaning = "a fraction of training in [0, 1] (0: ALBEF's ITC-sampled negatives from the start)"
        warmup = number_problem("hard_negative_warmup", hard_negative_warmup, meaning, low=0, high=1)
        return problems_of(warmup) + super().setting_problems(**settings)

    def __init__(
        self,
        dim: int,
        hard_negatives: bool = True,
        hard_negative_warmup: float = 0.0,
        text_negatives: bool = False,
        weight: float = 1.0,
    ):
        super().__init__(weight)
        raise_problems("ITM", self.setting_problems(hard_negative_warmup=hard_negative_warmup))
        self.head = nn.Linear(dim, 2)
        self.hard_negatives = hard_negatives
        self.hard_negative_warmup = float(hard_negative_warmup)
        self.text_negatives = text_negatives

    def hardness(self, progress: float) -> float:
        """Weight of ITC-based sampling after `progress` (fraction of training done, 0..1)."""
        if self.hard_negative_warmup <= 0:
            return 1.0
        return min(1.0, max(0.0, progress) / self.hard_negative_warmup)

    def forward(
        self, model: MultimodalModel, batch: Batch, text: Features, image: Features, context: StepContext
    ) -> ObjectiveOutput:
        ids = batch["image_id"]
        sim = context.itc_sim_i2t if self.hard_negatives else None  # (B, B) image x text
        a = self.hardness(context.progress)
        true = known_true(batch)  # (B, B): text j true of image i
        neg_text, valid_t = sample_negatives(ids, sim, hardness=a, true=true)  # for each image a text
        neg_image, valid_i = sample_negatives(
            ids, None if sim is None else sim.T, hardness=a, true=true.T
        )  # for each text an image
        text_parts, image_parts = [text, text.index(neg_text), text], [image, image, image.index(neg_image)]
        keep_parts = [torch.ones_like(valid_t), valid_t, valid_i]
        if self.text_negatives:  # (image, its caption's hard negative), one row per caption that has one
            negatives, rows = context.encode_negatives(model, batch)  # (K, ...), (K,)
            text_parts.append(negatives)
            image_parts.append(image.index(rows))
            keep_parts.append(torch.ones_like(rows, dtype=torch.bool))
        joint = model.fuse(Features.cat(*text_parts), Features.cat(*image_parts))
        logits = self.head(joint.pooled)  # (3B + K, 2)
        B = ids.shape[0]
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        labels[:B] = 1
        keep = torch.cat(keep_parts)
        loss = F.cross_entropy(logits[keep], labels[keep])
        acc = (logits[keep].argmax(-1) == labels[keep]).float().mean()
        metrics = {"acc": acc, "hardness": torch.tensor(a)}
        if self.text_negatives and rows.numel():
            # the training-time form of the word-order diagnostic: the caption's match log-odds above
            # its own hard negative's, on the same image (test/diagnostics/relation_swap_acc's rule)
            odds = (logits[:, 1] - logits[:, 0]).detach()  # (3B + K,)
            metrics["swap_acc"] = (odds[rows] > odds[-rows.numel() :]).float().mean()
        return ObjectiveOutput(loss, metrics)

    def pair_logits(self, model, text, image) -> torch.Tensor:
        """The ITM head's (no match, match) logits of each (text, image) pair, (B, 2)."""
        return self.head(model.fuse(text, image).pooled)

    def pair_score(self, model, text, image) -> torch.Tensor:
        logits = self.pair_logits(model, text, image)  # (B, 2)
        return logits[:, 1] - logits[:, 0]  # log-odds of "match"
