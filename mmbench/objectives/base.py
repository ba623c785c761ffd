"""Common interface of all objectives.

An objective is an `nn.Module` that owns its heads and computes one weighted loss term from the
unimodal features of the step (computed once by the LightningModule and shared by every
objective). It declares which fusion capabilities it needs in `requires`, so that config
validation can refuse an impossible pairing before any model is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
from torch import nn

from mmbench.checks import number_problem, problems_of, raise_problems
from mmbench.models.model import MultimodalModel
from mmbench.models.outputs import Features
from mmbench.objectives.context import StepContext

if TYPE_CHECKING:
    from mmbench.data.batch import Batch


@dataclass
class ObjectiveOutput:
    loss: torch.Tensor  # scalar, unweighted
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)  # e.g. {"acc": ...}, logged as <split>/<name>/<key>


class Objective(nn.Module):
    #: fusion capabilities (field names of `Capabilities`) this objective needs
    requires: tuple[str, ...] = ()
    #: batch fields this objective reads besides input_ids / attention_mask / images
    batch_fields: tuple[str, ...] = ()
    #: `StepContext` fields this objective sets for the others, and the ones it reads (when set)
    provides: tuple[str, ...] = ()
    uses: tuple[str, ...] = ()

    @classmethod
    def fields_read(cls, **config) -> tuple[str, ...]:
        """Batch fields an objective built with these constructor arguments reads: config validation
        checks them against what the data provides before anything is built."""
        return cls.batch_fields

    @classmethod
    def vision_problems(cls, name: str, vision_encoder: type, **config) -> list[str]:
        """Why an objective built with these constructor arguments (under the config key `name`) cannot
        train with this vision encoder class: config validation reports them before anything is built."""
        return []

    #: objectives that can score (image, text) pairs for evaluation set a rank; the highest is used
    #: (ITM, which sees both modalities jointly, outranks ITC's cosine similarity)
    pair_score_rank: int = 0

    #: a later training stage: part of this objective's state comes from the run `model.init_from` names (`inherits`),
    #: so config validation refuses the objective without model.init_from
    from_earlier_run: bool = False

    def inherits(self) -> dict[str, str]:
        """{prefix of this objective's state dict: prefix of the earlier run's (Lightning) state dict} of the tensors
        loaded from the run of `model.init_from` (mmbench/models/convert/run.py `RunInit.load_objectives`); every
        tensor under these prefixes must be found there. Objective heads are otherwise not carried over."""
        return {}

    @classmethod
    def setting_problems(cls, *, weight: float = 1.0, **settings) -> list[str]:
        """What is wrong with these constructor settings, from the settings alone (mmbench/checks.py): the
        constructor raises it, config validation reports it (`objective.<name>.<problem>`) before any data
        is read. A subclass checks its own settings and passes the rest on; widths and data sizes are ignored."""
        return problems_of(number_problem("weight", weight, "a loss weight >= 0", low=0))

    def __init__(self, weight: float = 1.0):
        super().__init__()
        raise_problems(type(self).__name__, Objective.setting_problems(weight=weight))
        self.weight = float(weight)

    def forward(
        self,
        model: MultimodalModel,
        batch: Batch,
        text: Features,
        image: Features,
        context: StepContext,
    ) -> ObjectiveOutput:
        """`context` is shared by the objectives of one step (e.g. ITC leaves its similarities there);
        read only the fields declared in `uses`, write only those in `provides`."""
        raise NotImplementedError

    def pair_score(self, model: MultimodalModel, text: Features, image: Features) -> torch.Tensor:
        """Matching score (B,) of row-aligned pairs (text[i], image[i]); higher = better match."""
        raise NotImplementedError(f"{type(self).__name__} cannot score image-text pairs")


# What an evaluation protocol asks of an objective, beyond the interface above: mmbench/metrics finds the
# objective that has it with isinstance (attributes only are checked at run time; the type checker checks
# the signatures where the result is used).


@runtime_checkable
class Embedder(Protocol):
    """Embeds pooled text and image features into one space (ITC): retrieval, zero-shot classification."""

    def embed(self, text_pooled: torch.Tensor, image_pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


@runtime_checkable
class QuestionAnswerer(Protocol):
    """Scores the answer vocabulary for a question about an image (the VQA classifier): the `vqa` protocol."""

    def answer_logits(self, model: MultimodalModel, batch: Batch, text: Features, image: Features) -> torch.Tensor: ...


@runtime_checkable
class AnswerGenerator(Protocol):
    """Writes answers token by token (generative VQA): the `vqa_generative` protocol."""

    def generate_answers(
        self,
        model: MultimodalModel,
        image: Features,
        question_ids: torch.Tensor,
        question_mask: torch.Tensor,
        max_len: int,
        eos_id: int,
        use_cache: bool = True,
    ) -> list[torch.Tensor]: ...


@runtime_checkable
class CaptionGenerator(Protocol):
    """Writes captions (LM with `captions` true): the `captioning` protocol."""

    captions: bool

    def generate(
        self,
        model: MultimodalModel,
        batch: Batch,
        max_len: int,
        num_beams: int = 1,
        *,
        bos_id: int,
        eos_id: int,
        length_penalty: float = 1.0,
        use_cache: bool = True,
    ) -> torch.Tensor: ...


class CaptionConditioned(Objective):
    """A text-to-image objective (t2i_diffusion, t2i_ar): draws images conditioned on the caption tokens, with
    classifier-free guidance's null condition, the learned `null_token` (D,) in the text features' space."""

    null_token: nn.Parameter

    def init_null_token(self, text_dim: int) -> None:
        self.null_token = nn.Parameter(torch.randn(text_dim) * 0.02)

    def condition(self, text: Features, drop: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens (B, T, D), mask (B, T)): the caption tokens, and in the rows where `drop` (B,) is True the null
        condition (`null_token` at position 0, every other position zero and masked out)."""
        B, T, D = text.tokens.shape
        null = torch.cat([self.null_token.to(text.tokens.dtype).expand(B, 1, D), text.tokens.new_zeros(B, T - 1, D)], 1)
        null_mask = torch.arange(T, device=text.mask.device)[None, :].expand(B, T) == 0  # (B, T) position 0 only
        tokens = torch.where(drop[:, None, None], null, text.tokens)  # (B, T, D)
        mask = torch.where(drop[:, None], null_mask, text.mask.bool())  # (B, T)
        return tokens, mask


@runtime_checkable
class ImageGenerator(Protocol):
    """Draws images from captions (text-to-image: `t2i_diffusion`, `t2i_ar`): the `t2i` protocol. Returns (B, 3, H, W) in the
    data's `pixel_values` normalisation ([-1, 1]), seeded by `generator` (one, or one per caption); guidance / steps
    None = the objective's configured ones. (Not `generate`: `CaptionGenerator` has that name, and a runtime
    Protocol check compares names only.)"""

    def generate_images(
        self,
        model: MultimodalModel,
        batch: Batch,
        *,
        generator: torch.Generator | list[torch.Generator],
        guidance: float | None = None,
        steps: int | None = None,
    ) -> torch.Tensor: ...
