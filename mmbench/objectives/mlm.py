"""MLM: masked language modeling conditioned on the image (BERT recipe through the fusion).

15% of the real (non-padding, non-special) text tokens are selected; of those 80% become
[MASK], 10% a random token, 10% stay unchanged. The masked text is encoded, fused with the image
features of the step, and the fused text tokens predict the original ids through a BERT-style
head whose output layer is tied to the word embeddings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from mmbench.checks import number_problem, problems_of, raise_problems
from mmbench.objectives.base import Objective, ObjectiveOutput

if TYPE_CHECKING:
    from mmbench.data.batch import Batch
    from mmbench.models.model import MultimodalModel
    from mmbench.models.outputs import Features
    from mmbench.objectives.context import StepContext


def mask_tokens(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    special_ids: torch.Tensor,
    mask_id: int,
    vocab_size: int,
    prob: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (masked input ids (B, T), selected (B, T) bool)."""

    def rand(*shape):
        return torch.rand(shape, generator=generator, device=input_ids.device)

    maskable = attention_mask.bool() & ~torch.isin(input_ids, special_ids)
    selected = maskable & (rand(*input_ids.shape) < prob)
    r = rand(*input_ids.shape)
    to_mask = selected & (r < 0.8)
    to_random = selected & (r >= 0.8) & (r < 0.9)
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator, device=input_ids.device)
    out = torch.where(to_mask, torch.full_like(input_ids, mask_id), input_ids)
    out = torch.where(to_random, random_ids, out)
    return out, selected


class MLMHead(nn.Module):
    """Transform (dense, GELU, LayerNorm) then the tied decoder with its own bias."""

    def __init__(self, dim: int, vocab_size: int):
        super().__init__()
        self.transform = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim))
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, x: torch.Tensor, embedding: nn.Embedding) -> torch.Tensor:
        return F.linear(self.transform(x), embedding.weight, self.bias)  # (N, vocab)


class MLM(Objective):
    requires = ("text_tokens",)
    special_ids: torch.Tensor  # (S,) buffer: ids never selected for masking

    @classmethod
    def setting_problems(cls, *, mask_prob: float = 0.15, **settings) -> list[str]:
        """0 would select no token (a loss of 0 every step), above 1 no probability."""
        meaning = "a fraction of tokens in (0, 1], e.g. 0.15 (BERT)"
        problem = number_problem("mask_prob", mask_prob, meaning, low=0, high=1, low_open=True)
        return problems_of(problem) + super().setting_problems(**settings)

    def __init__(
        self,
        dim: int,
        vocab_size: int,
        mask_id: int,
        special_ids: list[int],
        mask_prob: float = 0.15,
        weight: float = 1.0,
    ):
        super().__init__(weight)
        raise_problems("MLM", self.setting_problems(mask_prob=mask_prob))
        self.head = MLMHead(dim, vocab_size)
        self.register_buffer("special_ids", torch.tensor(special_ids, dtype=torch.long), persistent=False)
        self.mask_id, self.vocab_size, self.mask_prob = mask_id, vocab_size, mask_prob

    def forward(
        self, model: MultimodalModel, batch: Batch, text: Features, image: Features, context: StepContext
    ) -> ObjectiveOutput:
        ids, attn = batch["input_ids"], batch["attention_mask"]
        masked_ids, selected = mask_tokens(ids, attn, self.special_ids, self.mask_id, self.vocab_size, self.mask_prob)
        joint = model.fuse(model.encode_text(masked_ids, attn), image)
        assert joint.text_tokens is not None  # MLM requires text_tokens: validation refused any fusion without
        logits = self.head(joint.text_tokens[selected], model.word_embeddings)  # (N, vocab)
        targets = ids[selected]
        if targets.numel() == 0:  # nothing selected in a tiny batch: zero loss that keeps the graph
            zero = logits.sum() * 0.0
            return ObjectiveOutput(zero, {"acc": zero.detach()})
        loss = F.cross_entropy(logits, targets)
        acc = (logits.argmax(-1) == targets).float().mean()
        return ObjectiveOutput(loss, {"acc": acc})
