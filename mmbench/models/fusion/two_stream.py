"""What the two-stream fusions share: a stack of layers that update text and image tokens together.

ViLBERT's co-attention (`coattention.py`) and LXMERT's cross-encoder (`cross_encoder.py`) differ in
their layer (separate vs shared cross-attention weights) and in their joint vector, not in how the
stack runs: each layer maps (t, v) -> (t, v) with both directions reading the pre-layer states, and a
pre-norm stack ends with one LayerNorm per stream (post-norm blocks already end with a norm).

Not causal-safe: the image stream attends to every text token and text attends back to the image,
so a future text token would reach earlier text positions after one layer.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from mmbench.models.layers import attention_mask
from mmbench.models.outputs import Features


class TwoStreamFusion(nn.Module):
    """Base of the two-stream fusions: `layers`, `text_norm`, `image_norm` and `run_streams`."""

    def __init__(self, layers: Iterable[nn.Module], dim: int, prenorm: bool, norm_eps: float = 1e-5):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.text_norm = nn.LayerNorm(dim, eps=norm_eps) if prenorm else nn.Identity()
        self.image_norm = nn.LayerNorm(dim, eps=norm_eps) if prenorm else nn.Identity()

    def run_streams(self, text: Features, image: Features, causal_text: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Text (B, T, D) and image (B, V, D) tokens after every layer and the final norms."""
        if causal_text:
            raise ValueError(
                f"{type(self).__name__} cannot run with causal_text=True: the image stream attends to all text "
                "tokens, so future text leaks back; use fusion=text_cross_attention, gated_cross_attention or "
                "merged for LM"
            )
        t, v = text.tokens, image.tokens  # (B, T, D), (B, V, D)
        text_mask = attention_mask(text.mask)  # (B, 1, 1, T)
        image_mask = attention_mask(image.mask)  # (B, 1, 1, V)
        for layer in self.layers:
            t, v = layer(t, v, text_mask, image_mask)
        return self.text_norm(t), self.image_norm(v)
