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
    # (B, N, F) what each token was embedded from, before any layer of the encoder: the region's
    # appearance feature, the patch's pixels, the grid cell's CNN feature; zeros for [CLS] / [IMG] and
    # padding. Set by vision encoders with `maskable_inputs` (MRM regresses it), else None.
    inputs: torch.Tensor | None = None

    def index(self, idx: torch.Tensor) -> Features:
        """Rows `idx` (K,) of the batch, e.g. the negatives chosen for ITM."""
        inputs = None if self.inputs is None else self.inputs[idx]
        return Features(self.tokens[idx], self.mask[idx], self.pooled[idx], inputs)

    @staticmethod
    def cat(*parts: Features) -> Features:
        """Concatenate along the batch dimension (features must have equal token counts); `inputs`
        are kept when every part has them."""
        inputs = [p.inputs for p in parts if p.inputs is not None]
        return Features(
            torch.cat([p.tokens for p in parts]),
            torch.cat([p.mask for p in parts]),
            torch.cat([p.pooled for p in parts]),
            torch.cat(inputs) if len(inputs) == len(parts) else None,
        )


@dataclass
class InputMask:
    """Tokens a vision encoder must hide at its input, before any of its layers (masked region /
    patch modeling: `model.encode_image(batch, hide=InputMask(...))`).

    A hidden token's content embedding (its projected region feature, patch or grid cell) is
    replaced by `embedding`; what says *where* the token is (position embedding, box embedding)
    is kept, as in UNITER (zeroed region feature, box kept) and BEiT / SimMIM (mask token + position).
    """

    selected: torch.Tensor  # (B, V) bool in the layout of the encoder's output tokens; True = hide
    embedding: torch.Tensor  # (D,) replaces the content embedding of a hidden token

    def apply(self, x: torch.Tensor, first: int = 0) -> torch.Tensor:
        """x (B, N, D): content embeddings of output tokens first .. first+N-1 (tokens before `first`,
        e.g. [CLS] / [IMG], have no input to hide) -> x with the selected ones replaced."""
        B, N, _ = x.shape
        if tuple(self.selected.shape) != (B, first + N):
            raise ValueError(
                f"InputMask.selected has shape {tuple(self.selected.shape)} but the encoder makes "
                f"{first + N} tokens per image for a batch of {B}: expected ({B}, {first + N})"
            )
        if self.selected[:, :first].any():
            raise ValueError(
                f"InputMask selects one of the first {first} token(s) ([CLS] / [IMG]), which are "
                f"learned, not embedded from an input: there is nothing to hide"
            )
        hide = self.selected[:, first:, None]  # (B, N, 1)
        return torch.where(hide, self.embedding.to(x.dtype), x)  # (B, N, D)


def hide_inputs(x: torch.Tensor, hide: InputMask | None, first: int = 0) -> torch.Tensor:
    """`hide.apply(x, first)`, or x unchanged without a mask (the ordinary encoding)."""
    return x if hide is None else hide.apply(x, first)


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
