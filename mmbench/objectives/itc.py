"""ITC: image-text contrastive loss (CLIP / ALBEF).

Pooled unimodal features are projected to a shared space and L2-normalised; logits are cosine
similarities divided by a learnable temperature (initialised at 0.07, clamped to
[min_temperature, max_temperature] = [0.01, 0.5] by default: 0.01 is CLIP's logit-scale cap of 100,
0.5 ALBEF's upper bound). The loss is the symmetric cross-entropy where every pair that shares an
`image_id` is a positive: the target of a row is uniform over its positives, so captions of the
same image are never pushed apart. With `claim_positives=True` (off by default: the published recipe),
a text whose claim the data states is true of an image is a positive of it too (`claims_true`; on
Shapes "there are two objects" is true of a third of all images): the control that tells whether
the data's truth alone, without ITM, closes a gap.

Under DDP the embeddings of all ranks are gathered *with gradient*
(`torch.distributed.nn.functional.all_gather`) and each rank computes its local rows against all
columns (the scalable form of open_clip's `local_loss=True, gather_with_grad=True`). Since DDP
averages gradients over ranks, loss and gradients equal those of one process over the whole batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from mmbench.data.claims import claims_true
from mmbench.objectives.base import Objective, ObjectiveOutput


def _gather(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All-gather along dim 0 with gradient; returns (gathered, offset of this rank's rows)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    from torch.distributed.nn.functional import all_gather

    parts = all_gather(x)
    return torch.cat(parts), sum(p.shape[0] for p in parts[: dist.get_rank()])


def multi_positive_contrastive_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    image_ids: torch.Tensor,
    temperature: torch.Tensor | float,
    all_image_emb: torch.Tensor | None = None,
    all_text_emb: torch.Tensor | None = None,
    all_image_ids: torch.Tensor | None = None,
    extra_i2t: torch.Tensor | None = None,
    extra_t2i: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric InfoNCE with positives defined by equal image ids (and optional extra positives).

    image_emb, text_emb: (B, E) normalised local embeddings; image_ids (B,).
    all_*: the same over all ranks (N, E) / (N,); default to the local ones.
    extra_i2t (B, N) bool: text j is also a positive of local image i; extra_t2i (B, N): image j of local text i.
    Returns (loss, i2t in-batch accuracy).
    """
    all_image_emb = image_emb if all_image_emb is None else all_image_emb
    all_text_emb = text_emb if all_text_emb is None else all_text_emb
    all_image_ids = image_ids if all_image_ids is None else all_image_ids
    same = image_ids[:, None] == all_image_ids[None, :]  # (B, N); rows are (image i, text i) pairs
    pos_i2t = (same if extra_i2t is None else same | extra_i2t).float()
    pos_t2i = (same if extra_t2i is None else same | extra_t2i).float()
    logits_i2t = image_emb @ all_text_emb.T / temperature  # (B, N)
    logits_t2i = text_emb @ all_image_emb.T / temperature  # (B, N)
    loss = 0.5 * (
        F.cross_entropy(logits_i2t, pos_i2t / pos_i2t.sum(1, keepdim=True))
        + F.cross_entropy(logits_t2i, pos_t2i / pos_t2i.sum(1, keepdim=True))
    )
    acc = pos_i2t.gather(1, logits_i2t.argmax(1, keepdim=True)).mean()
    return loss, acc


class ITC(Objective):
    requires = ()
    provides = ("itc_sim_i2t",)  # its local similarities, for ITM's hard negatives
    pair_score_rank = 1

    def __init__(
        self,
        text_dim: int,
        image_dim: int,
        embed_dim: int = 128,
        temperature_init: float = 0.07,
        min_temperature: float = 0.01,
        max_temperature: float = 0.5,
        claim_positives: bool = False,
        weight: float = 1.0,
    ):
        super().__init__(weight)
        self.claim_positives = bool(claim_positives)
        self.text_proj = nn.Linear(text_dim, embed_dim)  # towers may differ in width (CLIP: 512 vs 768)
        self.image_proj = nn.Linear(image_dim, embed_dim)
        self.temperature = nn.Parameter(torch.tensor(float(temperature_init)))
        self.bounds = (min_temperature, max_temperature)

    def embed(self, text_pooled: torch.Tensor, image_pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D) pooled features -> (B, E) normalised embeddings in the shared space."""
        return F.normalize(self.text_proj(text_pooled), dim=-1), F.normalize(self.image_proj(image_pooled), dim=-1)

    def forward(self, model, batch, text, image, context) -> ObjectiveOutput:
        text_emb, image_emb = self.embed(text.pooled, image.pooled)  # (B, E)
        temp = self.temperature.clamp(*self.bounds)
        ids = batch["image_id"]
        all_text, _ = _gather(text_emb)
        all_image, _ = _gather(image_emb)
        all_ids, _ = _gather(ids)
        extra_i2t = extra_t2i = None
        if self.claim_positives and "text_claim" in batch:
            all_claims, _ = _gather(batch["text_claim"])  # (N,)
            all_facts, _ = _gather(batch["image_facts"])  # (N, F)
            extra_i2t = claims_true(batch["image_facts"], all_claims)  # (B, N): text j true of local image i
            extra_t2i = claims_true(all_facts, batch["text_claim"]).T  # (B, N): local text i true of image j
        loss, acc = multi_positive_contrastive_loss(
            image_emb, text_emb, ids, temp, all_image, all_text, all_ids, extra_i2t, extra_t2i
        )
        # Local similarities for objectives that mine hard negatives (ITM), without gradient.
        context.itc_sim_i2t = (image_emb @ text_emb.T / temp).detach()  # (B, B)
        return ObjectiveOutput(loss, {"acc": acc, "temperature": temp.detach()})

    def pair_score(self, model, text, image) -> torch.Tensor:
        text_emb, image_emb = self.embed(text.pooled, image.pooled)
        return (text_emb * image_emb).sum(-1)  # cosine similarity (B,)
