"""Gated cross-attention fusion of Flamingo (Alayrac et al., 2022, "Flamingo: a Visual Language Model
for Few-Shot Learning").

Each of the `depth` layers is a GATED XATTN-DENSE block followed by a language-model layer:

    x = x + tanh(alpha_xattn) * CrossAttn(q = LN(x), kv = image)   image padding mask
    x = x + tanh(alpha_ffn)   * FFN(LN(x))
    x = Block(x)                                                    LM self-attention + FFN

`alpha_xattn`, `alpha_ffn` are scalars initialised to 0, so at initialisation the text stream is exactly
the language model without images (Flamingo's stable insertion into a frozen LM). The gated block is
always pre-norm, as in Flamingo (a post-norm would change x even with closed gates); `prenorm` only
sets the layout of the LM blocks (pre-norm, GPT/Chinchilla-like, by default). With a `resampler`
(Flamingo's Perceiver Resampler, fusion/resampler.py) the text attends to its `num_latents` output
tokens instead of the image encoder's. The image tokens (or latents) are returned and never see the text, so with
`causal_text=True` the LM self-attention is causal and the text is leakage-free. Each sample has one
image, which every text token may attend to.

Joint vector: Flamingo has no [CLS] token (it is a decoder-only LM), so the pooled vector is the
masked mean of the text tokens. It reads every real text token; it is meant for ITM / VQA heads and is
not causal (LM uses `text_tokens`).
"""

from __future__ import annotations

import torch
from torch import nn

from mmbench.models.fusion.resampler import PerceiverResampler
from mmbench.models.layers import MLP, Attention, Block, attention_mask, masked_mean
from mmbench.models.outputs import Capabilities, Features, Fused


class GatedCrossAttentionBlock(nn.Module):
    """Flamingo's GATED XATTN-DENSE: tanh-gated, pre-norm cross-attention and FFN, gates start closed."""

    def __init__(
        self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0, context_dim: int | None = None
    ):
        super().__init__()
        self.norm_xattn = nn.LayerNorm(dim)
        self.xattn = Attention(dim, heads, context_dim=context_dim, dropout=dropout)  # keys from the image width
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn = MLP(dim, int(dim * mlp_ratio), dropout=dropout)
        self.alpha_xattn = nn.Parameter(torch.zeros(()))
        self.alpha_ffn = nn.Parameter(torch.zeros(()))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
        """x (B, T, D); context (B, V, Dc); context_mask (B, 1, 1, V)."""
        x = x + self.alpha_xattn.tanh() * self.drop(self.xattn(self.norm_xattn(x), context=context, mask=context_mask))
        return x + self.alpha_ffn.tanh() * self.ffn(self.norm_ffn(x))  # (B, T, D)


class GatedCrossAttentionFusion(nn.Module):
    capabilities = Capabilities(joint_pooled=True, text_tokens=True, causal_text=True)

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float = 4.0,
        prenorm: bool = True,
        dropout: float = 0.0,
        resampler: PerceiverResampler | None = None,
    ):
        super().__init__()
        self.resampler = resampler  # Flamingo's Perceiver Resampler over the image tokens, if given
        self.xattn_blocks = nn.ModuleList(
            GatedCrossAttentionBlock(dim, heads, mlp_ratio=mlp_ratio, dropout=dropout) for _ in range(depth)
        )
        self.lm_blocks = nn.ModuleList(
            Block(dim, heads, mlp_ratio=mlp_ratio, prenorm=prenorm, dropout=dropout) for _ in range(depth)
        )
        # A pre-norm stack ends un-normalised; post-norm blocks already end with a norm.
        self.norm = nn.LayerNorm(dim) if prenorm else nn.Identity()

    def forward(self, text: Features, image: Features, causal_text: bool = False) -> Fused:
        B, T, D = text.tokens.shape
        text_mask = attention_mask(text.mask, causal=causal_text)  # (B, 1, 1, T), causal_text: (B, 1, T, T)
        if self.resampler is not None:
            image = self.resampler(image)  # (B, N, D): a fixed number of visual tokens
        image_mask = attention_mask(image.mask)  # (B, 1, 1, V)
        x = text.tokens
        for xattn, lm in zip(self.xattn_blocks, self.lm_blocks):
            x = xattn(x, context=image.tokens, context_mask=image_mask)  # (B, T, D)
            x = lm(x, mask=text_mask)  # (B, T, D)
        x = self.norm(x)
        return Fused(text_tokens=x, image_tokens=image.tokens, pooled=masked_mean(x, text.mask))
