"""ViLT/ViT patch input: linear projection of raw pixel patches.

Returns `Features(tokens (B, 1 + P, D), mask (B, 1 + P), pooled (B, D))` with a [CLS] token first.
"""

from __future__ import annotations

import torch
from torch import nn

from mmbench.models.layers import Pooling, TransformerStack, cls_pool
from mmbench.models.outputs import Features


class PatchEncoder(nn.Module):
    """ViLT/ViT input: linear projection of non-overlapping pixel patches, a [CLS] token and
    learned position embeddings, then `depth` transformer blocks (0 for ViLT)."""

    def __init__(
        self,
        dim: int,
        image_size: int,
        patch_size: int,
        depth: int = 0,
        heads: int = 1,
        mlp_ratio: float = 4.0,
        prenorm: bool = True,
        dropout: float = 0.0,
        in_channels: int = 3,
        pooling: Pooling = cls_pool,
    ):
        super().__init__()
        if image_size % patch_size != 0:
            raise ValueError(f"image_size={image_size} is not divisible by patch_size={patch_size}")
        self.num_patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)  # linear per patch
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.position_embeddings = nn.Parameter(torch.zeros(1, self.num_patches + 1, dim))
        nn.init.trunc_normal_(self.position_embeddings, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.drop = nn.Dropout(dropout)
        self.stack = TransformerStack(dim, depth, heads, mlp_ratio, prenorm, dropout)
        self.pooling = pooling

    def forward(self, batch: dict[str, torch.Tensor]) -> Features:
        pixels = batch["pixel_values"]  # (B, 3, H, W)
        B = pixels.shape[0]
        x = self.patch_embed(pixels).flatten(2).transpose(1, 2)  # (B, V-1, D)
        x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1) + self.position_embeddings  # (B, V, D)
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)  # (B, V)
        x = self.stack(self.drop(x), mask)
        return Features(x, mask, self.pooling(x, mask))
