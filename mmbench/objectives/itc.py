"""ITC: image-text contrastive loss (CLIP / ALBEF).

Pooled unimodal features, projected and L2-normalised; cosine logits over a learnable temperature (init 0.07,
clamped to [0.01, 0.5]); the symmetric cross-entropy with every pair that shares an `image_id` a positive
(a row's target is uniform over its positives). Under DDP the embeddings are gathered with gradient, so loss
and gradients equal those of one process over the whole batch. Options, all off by default:
`claim_positives` (texts the data states are true of an image are its positives too), `text_negatives`
(NegCLIP, Yuksekgonul et al., ICLR 2023: each image's own caption's word-order negative as one more column)
and `queue_size > 0` (ALBEF, Li et al., 2021, sec. 3.2-3.3: momentum encoders, a queue of their embeddings and
momentum distillation, in training only). The formulas and the reasons: docs/objectives.md (ITC).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from mmbench.checks import number_problem, problems_of, raise_problems
from mmbench.models.model import MultimodalModel
from mmbench.objectives.base import Objective, ObjectiveOutput
from mmbench.objectives.claims import claims_true

if TYPE_CHECKING:
    from mmbench.data.batch import Batch
    from mmbench.models.outputs import Features
    from mmbench.objectives.context import StepContext


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
    negative_i2t: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric InfoNCE with positives defined by equal image ids (and optional extra positives).

    image_emb, text_emb: (B, E) normalised local embeddings; image_ids (B,).
    all_*: the same over all ranks (N, E) / (N,); default to the local ones.
    extra_i2t (B, N) bool: text j is also a positive of local image i; extra_t2i (B, N): image j of local text i.
    negative_i2t (B, M): logits of M more columns of the image-to-text softmax that are never positives
    (word-order hard negatives; `NO_LOGIT` where a row has none).
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
    if negative_i2t is not None:
        logits_i2t = torch.cat([logits_i2t, negative_i2t], 1)  # (B, N + M)
        pos_i2t = torch.cat([pos_i2t, torch.zeros_like(negative_i2t)], 1)
    loss = 0.5 * (
        F.cross_entropy(logits_i2t, pos_i2t / pos_i2t.sum(1, keepdim=True))
        + F.cross_entropy(logits_t2i, pos_t2i / pos_t2i.sum(1, keepdim=True))
    )
    acc = pos_i2t.gather(1, logits_i2t.argmax(1, keepdim=True)).mean()
    return loss, acc


# the logit of an absent column: exp() of it is 0 in float32 next to any cosine / temperature (|x| <= 100),
# while 0 * log_softmax stays finite (an -inf logit would make the soft-target cross-entropy NaN)
NO_LOGIT = -1e4


class ITC(Objective):
    requires = ()
    provides = ("itc_sim_i2t",)  # its local similarities, for ITM's hard negatives
    pair_score_rank = 1
    # the queue's buffers (registered only with queue_size > 0)
    image_queue: torch.Tensor  # (K, E) momentum image embeddings
    text_queue: torch.Tensor  # (K, E) momentum text embeddings
    id_queue: torch.Tensor  # (K,) their image ids; -1 = the random initial entries
    queue_ptr: torch.Tensor  # () the next slot to write

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
        queue_size: int = 0,
        momentum: float = 0.995,
        alpha: float = 0.4,
        alpha_ramp: float = 0.0,
        text_negatives: bool = False,
        model: MultimodalModel | None = None,
    ):
        super().__init__(weight)
        problems = self.setting_problems(
            embed_dim=embed_dim,
            temperature_init=temperature_init,
            min_temperature=min_temperature,
            max_temperature=max_temperature,
            queue_size=queue_size,
            momentum=momentum,
            alpha=alpha,
            alpha_ramp=alpha_ramp,
            text_negatives=text_negatives,
            claim_positives=claim_positives,
        )
        raise_problems("ITC", problems)
        self.claim_positives = bool(claim_positives)
        self.text_negatives = bool(text_negatives)
        self.text_proj = nn.Linear(text_dim, embed_dim)  # towers may differ in width (CLIP: 512 vs 768)
        self.image_proj = nn.Linear(image_dim, embed_dim)
        self.temperature = nn.Parameter(torch.tensor(float(temperature_init)))
        self.bounds = (min_temperature, max_temperature)
        self.queue_size = int(queue_size)
        if self.queue_size:
            if model is None:
                raise ValueError("ITC with a queue needs the model's encoders to copy (the builder passes `model`)")
            if getattr(model.text_encoder, "lm", None) is not None:
                raise ValueError(
                    "ITC with a queue copies the text encoder, and this one embeds with the language model, "
                    "which a copy would duplicate outside the checkpoint: use queue_size=0 with a language model"
                )
            self.momentum, self.alpha, self.alpha_ramp = float(momentum), float(alpha), float(alpha_ramp)
            # the momentum model: copies of the online parts, updated only by the moving average
            self.momentum_parts = nn.ModuleDict(
                {
                    "text_encoder": copy.deepcopy(model.text_encoder),
                    "vision_encoder": copy.deepcopy(model.vision_encoder),
                    "text_proj": copy.deepcopy(self.text_proj),
                    "image_proj": copy.deepcopy(self.image_proj),
                }
            ).requires_grad_(False)
            self.register_buffer("image_queue", F.normalize(torch.randn(self.queue_size, embed_dim), dim=1))  # (K, E)
            self.register_buffer("text_queue", F.normalize(torch.randn(self.queue_size, embed_dim), dim=1))  # (K, E)
            self.register_buffer("id_queue", torch.full((self.queue_size,), -1, dtype=torch.long))  # (K,)
            self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @classmethod
    def fields_read(cls, text_negatives: bool = False, **config) -> tuple[str, ...]:
        return ("negative_ids", "negative_mask", "has_negative") if text_negatives else ()

    @classmethod
    def setting_problems(
        cls,
        *,
        embed_dim: int = 128,
        temperature_init: float = 0.07,
        min_temperature: float = 0.01,
        max_temperature: float = 0.5,
        queue_size: int = 0,
        momentum: float = 0.995,
        alpha: float = 0.4,
        alpha_ramp: float = 0.0,
        text_negatives: bool = False,
        claim_positives: bool = False,
        **settings,
    ) -> list[str]:
        """The temperature is learnt inside [min_temperature, max_temperature] (a clamp, whose gradient is 0
        outside it: a start outside the bounds would never move); the queue excludes the per-caption extras."""
        problems = problems_of(
            number_problem("embed_dim", embed_dim, "a width >= 1", low=1, integer=True),
            number_problem("temperature_init", temperature_init, "a temperature > 0, e.g. 0.07", low=0, low_open=True),
            number_problem("min_temperature", min_temperature, "a temperature > 0, e.g. 0.01", low=0, low_open=True),
            number_problem("max_temperature", max_temperature, "a temperature > 0, e.g. 0.5", low=0, low_open=True),
            number_problem("queue_size", queue_size, "a queue length >= 0 (0: in-batch only)", low=0, integer=True),
            number_problem("momentum", momentum, "a moving-average factor in [0, 1], e.g. 0.995", low=0, high=1),
            number_problem("alpha", alpha, "a distillation weight in [0, 1], e.g. 0.4", low=0, high=1),
            number_problem("alpha_ramp", alpha_ramp, "a fraction of training >= 0", low=0),
        )
        if not problems:
            if min_temperature > max_temperature:
                problems.append(
                    f"min_temperature={min_temperature} > max_temperature={max_temperature}: the temperature is "
                    f"clamped to [min_temperature, max_temperature]; give min <= max"
                )
            elif not min_temperature <= temperature_init <= max_temperature:
                problems.append(
                    f"temperature_init={temperature_init} lies outside [min_temperature, max_temperature] = "
                    f"[{min_temperature}, {max_temperature}]: the clamp would hold it at the bound, where its "
                    f"gradient is 0, so it would never be learnt; start inside the bounds"
                )
            if queue_size and text_negatives:
                problems.append("text_negatives with a queue is not supported (use queue_size=0)")
            if queue_size and claim_positives:
                problems.append(
                    "claim_positives with a queue is not supported (the queue keeps no claims; use queue_size=0)"
                )
        return problems + super().setting_problems(**settings)

    def embed(self, text_pooled: torch.Tensor, image_pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D) pooled features -> (B, E) normalised embeddings in the shared space."""
        return F.normalize(self.text_proj(text_pooled), dim=-1), F.normalize(self.image_proj(image_pooled), dim=-1)

    def forward(
        self, model: MultimodalModel, batch: Batch, text: Features, image: Features, context: StepContext
    ) -> ObjectiveOutput:
        text_emb, image_emb = self.embed(text.pooled, image.pooled)  # (B, E)
        temp = self.temperature.clamp(*self.bounds)
        ids = batch["image_id"]
        # Local similarities for objectives that mine hard negatives (ITM), without gradient.
        context.itc_sim_i2t = (image_emb @ text_emb.T / temp).detach()  # (B, B)
        if self.queue_size and self.training:
            return self._momentum_forward(model, batch, text_emb, image_emb, temp, context.progress)
        all_text, _ = _gather(text_emb)
        all_image, _ = _gather(image_emb)
        all_ids, _ = _gather(ids)
        extra_i2t = extra_t2i = None
        if self.claim_positives and "text_claim" in batch:
            all_claims, _ = _gather(batch["text_claim"])  # (N,)
            all_facts, _ = _gather(batch["image_facts"])  # (N, F)
            extra_i2t = claims_true(batch["image_facts"], all_claims)  # (B, N): text j true of local image i
            extra_t2i = claims_true(all_facts, batch["text_claim"]).T  # (B, N): local text i true of image j
        negative_i2t = None
        if self.text_negatives:  # each image against its own caption's hard negative, one more column
            negatives, rows = context.encode_negatives(model, batch)  # (K, ...), (K,)
            negative_emb = F.normalize(self.text_proj(negatives.pooled), dim=-1)  # (K, E)
            negative_i2t = image_emb.new_full((ids.shape[0], 1), NO_LOGIT)  # (B, 1)
            negative_i2t[rows, 0] = (image_emb[rows] * negative_emb).sum(-1) / temp
        loss, acc = multi_positive_contrastive_loss(
            image_emb, text_emb, ids, temp, all_image, all_text, all_ids, extra_i2t, extra_t2i, negative_i2t
        )
        return ObjectiveOutput(loss, {"acc": acc, "temperature": temp.detach()})

    def _momentum_parameters(self, model) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(momentum parameters, online parameters), in the same order."""
        online = [model.text_encoder, model.vision_encoder, self.text_proj, self.image_proj]
        moving = [self.momentum_parts[k] for k in ("text_encoder", "vision_encoder", "text_proj", "image_proj")]
        return [p for m in moving for p in m.parameters()], [p for m in online for p in m.parameters()]

    def _momentum_forward(self, model, batch, text_emb, image_emb, temp, progress: float) -> ObjectiveOutput:
        """ALBEF's ITC with the momentum model's queue and soft targets (module docstring)."""
        from torch.optim.swa_utils import get_ema_multi_avg_fn

        with torch.no_grad():
            get_ema_multi_avg_fn(self.momentum)(*self._momentum_parameters(model), None)
            m = self.momentum_parts
            text_m = F.normalize(
                m["text_proj"](m["text_encoder"](batch["input_ids"], batch["attention_mask"]).pooled), dim=-1
            )
            image_m = F.normalize(m["image_proj"](m["vision_encoder"](batch).pooled), dim=-1)  # (B, E)
            step_text, _ = _gather(text_m)  # (N, E)
            step_image, _ = _gather(image_m)
            step_ids, _ = _gather(batch["image_id"])  # (N,)
            columns_text = torch.cat([step_text, self.text_queue])  # (N + K, E)
            columns_image = torch.cat([step_image, self.image_queue])
            columns_ids = torch.cat([step_ids, self.id_queue])  # (N + K,)
            positives = (batch["image_id"][:, None] == columns_ids[None, :]).float()  # (B, N + K)
            positives = positives / positives.sum(1, keepdim=True)
            ramp = min(1.0, progress / self.alpha_ramp) if self.alpha_ramp > 0 else 1.0
            alpha = self.alpha * ramp
            target_i2t = alpha * F.softmax(image_m @ columns_text.T / temp, dim=1) + (1 - alpha) * positives
            target_t2i = alpha * F.softmax(text_m @ columns_image.T / temp, dim=1) + (1 - alpha) * positives
        logits_i2t = image_emb @ columns_text.T / temp  # (B, N + K)
        logits_t2i = text_emb @ columns_image.T / temp
        loss = 0.5 * (F.cross_entropy(logits_i2t, target_i2t) + F.cross_entropy(logits_t2i, target_t2i))
        acc = (positives.gather(1, logits_i2t.argmax(1, keepdim=True)) > 0).float().mean()
        self._enqueue(step_image, step_text, step_ids)
        return ObjectiveOutput(loss, {"acc": acc, "temperature": temp.detach(), "alpha": torch.tensor(alpha)})

    @torch.no_grad()
    def _enqueue(self, image_m: torch.Tensor, text_m: torch.Tensor, ids: torch.Tensor) -> None:
        """Write the step's momentum embeddings over the oldest queue entries (a ring buffer)."""
        K = self.queue_size
        image_m, text_m, ids = image_m[-K:], text_m[-K:], ids[-K:]  # a step larger than the queue keeps its last K
        slots = (self.queue_ptr + torch.arange(ids.shape[0], device=ids.device)) % K  # (n,)
        self.image_queue[slots] = image_m
        self.text_queue[slots] = text_m
        self.id_queue[slots] = ids
        self.queue_ptr.copy_((self.queue_ptr + ids.shape[0]) % K)

    def pair_score(self, model, text, image) -> torch.Tensor:
        text_emb, image_emb = self.embed(text.pooled, image.pooled)
        return (text_emb * image_emb).sum(-1)  # cosine similarity (B,)
