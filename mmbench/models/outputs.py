"""Typed outputs passed between encoders, fusions and objectives (the three-call interface)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Features:
    """Unimodal features of one modality."""

    tokens: torch.Tensor  # (B, N, D) token features
    mask: torch.Tensor  # (B, N) bool, True for real tokens
    pooled: torch.Tensor  # (B, D) one vector per sample (used by ITC)

    def index(self, idx: torch.Tensor) -> "Features":
        """Rows `idx` (K,) of the batch, e.g. the negatives chosen for ITM."""
        return Features(self.tokens[idx], self.mask[idx], self.pooled[idx])

    @staticmethod
    def cat(*parts: "Features") -> "Features":
        """Concatenate along the batch dimension (features must have equal token counts)."""
        return Features(
            torch.cat([p.tokens for p in parts]),
            torch.cat([p.mask for p in parts]),
            torch.cat([p.pooled for p in parts]),
        )


@dataclass
class Fused:
    """Output of a fusion module."""

    text_tokens: torch.Tensor | None  # (B, T, D) text tokens after fusion (None for vector fusions)
    image_tokens: torch.Tensor | None  # (B, V, D) image tokens after fusion
    pooled: torch.Tensor | None  # (B, D) joint vector (None when the fusion has none, e.g. two towers)


@dataclass(frozen=True)
class Capabilities:
    """What a fusion can provide; config validation checks objectives against it before building."""

    joint_pooled: bool = False  # produces a joint pooled vector (ITM, VQA, classify)
    text_tokens: bool = False  # produces image-conditioned text tokens (MLM, LM)
    image_tokens: bool = False  # produces text-conditioned image tokens (MRM)
    causal_text: bool = False  # text stays leakage-free under causal masking (LM)
    needs_regions: bool = False  # requires region features in the batch
