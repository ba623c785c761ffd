"""Perceiver Resampler of Flamingo (Alayrac et al., 2022, sec. 2.1 and appendix A.1.1; after the
Perceiver, Jaegle et al., 2021): a fixed number of learned latent queries cross-attend to the image
tokens, so the language model always sees `num_latents` visual tokens, whatever the image encoder
emits (patches of any resolution, a variable number of regions).

Each of the `depth` layers (pre-norm):

    kv      = [LN(image tokens); LN(latents)]        keys / values: the image tokens and the latents
    latents = latents + Attn(q = LN(latents), kv)     image padding masked; latents always attendable
    latents = latents + FFN(LN(latents))

then a final LayerNorm. As in Flamingo the keys include the latents themselves. There are no
position embeddings on the image side, so the output does not depend on the order of the image
tokens (a set input, tested), and padded image tokens never change it. Simplified from Flamingo:
one image per example, so no temporal embeddings.

    Features(tokens (B, N, D), mask (B, N) all True, pooled (B, D) = mean of the latents)
"""

from __future__ import annotations

import torch
from torch import nn

from mmbench.checks import number_problem, problems_of, raise_problems
from mmbench.models.layers import MLP, Attention, attention_mask
from mmbench.models.outputs import Features


class ResamplerLayer(nn.Module):
    """One Perceiver Resampler layer: latents attend to [image; latents], then a feed-forward."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout=dropout)
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn = MLP(dim, int(dim * mlp_ratio), dropout=dropout)

    def forward(self, latents: torch.Tensor, media: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """latents (B, N, D); media (B, V, D); mask (B, 1, 1, V + N) over [media; latents]."""
        q = self.norm_latents(latents)  # (B, N, D)
        kv = torch.cat([self.norm_media(media), q], dim=1)  # (B, V + N, D)
        latents = latents + self.attn(q, context=kv, mask=mask)  # (B, N, D)
        return latents + self.ffn(self.norm_ffn(latents))  # (B, N, D)


class PerceiverResampler(nn.Module):
    """Image tokens (B, V, D) -> `num_latents` tokens (B, N, D); see the module docstring."""

    @classmethod
    def setting_problems(cls, *, num_latents: int = 8, depth: int = 1, **settings) -> list[str]:
        """The constructor's check of its counts, also run by config validation (mmbench/checks.py)."""
        return problems_of(
            number_problem("num_latents", num_latents, "a latent count >= 1 (Flamingo: 64)", low=1, integer=True),
            number_problem("depth", depth, "a layer count >= 1", low=1, integer=True),
        )

    def __init__(
        self, dim: int, num_latents: int, depth: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0
    ):
        super().__init__()
        raise_problems("PerceiverResampler", self.setting_problems(num_latents=num_latents, depth=depth))
        self.latents = nn.Parameter(torch.randn(num_latents, dim) * 0.02)
        self.layers = nn.ModuleList(ResamplerLayer(dim, heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, image: Features) -> Features:
        B, N = image.tokens.shape[0], self.latents.shape[0]
        # padded image tokens may hold anything (even NaN): zero them so no arithmetic sees them
        media = image.tokens.masked_fill(~image.mask[..., None], 0.0)  # (B, V, D)
        keep = torch.ones(B, N, dtype=torch.bool, device=media.device)  # the latents are always attendable
        mask = attention_mask(torch.cat([image.mask, keep], dim=1))  # (B, 1, 1, V + N)
        # a copy, not an expand(): a view of a parameter made under no_grad still requires grad without
        # a grad_fn, which module hooks (torch's FlopCounterMode, used for complexity) refuse
        x = self.latents.repeat(B, 1, 1)  # (B, N, D)
        for layer in self.layers:
            x = layer(x, media, mask)
        x = self.norm(x)  # (B, N, D)
        return Features(x, keep, x.mean(dim=1))
