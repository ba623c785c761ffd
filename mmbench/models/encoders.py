"""Unimodal encoders: text transformer and vision inputs.

Each encoder returns `Features(tokens (B, N, D), mask (B, N), pooled (B, D))`. `depth=0` gives a
pure embedding layer, as in single-stream models (ViLT) whose layers all live in the fusion.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from mmbench.models.layers import Block, masked_mean
from mmbench.models.outputs import Features

Pooling = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cls_pool(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """First-token pooling (B, N, D) -> (B, D)."""
    return tokens[:, 0]


class TransformerStack(nn.Module):
    """`depth` blocks with a padding mask, plus a final norm for pre-norm stacks."""

    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float = 4.0, prenorm: bool = True, dropout: float = 0.0):
        super().__init__()
        self.blocks = nn.ModuleList(
            Block(dim, heads, mlp_ratio=mlp_ratio, prenorm=prenorm, dropout=dropout) for _ in range(depth)
        )
        # A pre-norm stack ends un-normalised; post-norm blocks already end with a norm.
        self.norm = nn.LayerNorm(dim) if (prenorm and depth > 0) else nn.Identity()

    def forward(self, x: torch.Tensor, mask: torch.Tensor, causal: bool = False) -> torch.Tensor:
        attn_mask = mask[:, None, None, :]  # (B, 1, 1, N)
        if causal:
            N = x.shape[1]
            attn_mask = attn_mask & torch.ones(N, N, dtype=torch.bool, device=x.device).tril()  # (B, 1, N, N)
        for block in self.blocks:
            x = block(x, mask=attn_mask)
        return self.norm(x)


class TextTransformer(nn.Module):
    """BERT-style text encoder: word + position embeddings, LayerNorm, `depth` transformer blocks."""

    def __init__(
        self,
        vocab_size: int,
        dim: int,
        depth: int,
        heads: int,
        max_len: int = 64,
        mlp_ratio: float = 4.0,
        prenorm: bool = True,
        dropout: float = 0.0,
        pooling: Pooling = cls_pool,
    ):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, dim)
        self.position_embeddings = nn.Embedding(max_len, dim)
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.stack = TransformerStack(dim, depth, heads, mlp_ratio, prenorm, dropout)
        self.pooling = pooling
        self.max_len = max_len
        nn.init.normal_(self.word_embeddings.weight, std=0.02)  # BERT init; also keeps tied MLM logits small
        nn.init.normal_(self.position_embeddings.weight, std=0.02)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, causal: bool = False) -> Features:
        B, T = input_ids.shape
        if T > self.max_len:
            raise ValueError(f"text length {T} exceeds the text encoder's max_len={self.max_len}")
        mask = attention_mask.bool()
        pos = torch.arange(T, device=input_ids.device)
        x = self.drop(self.norm(self.word_embeddings(input_ids) + self.position_embeddings(pos)))  # (B, T, D)
        x = self.stack(x, mask, causal=causal)  # (B, T, D)
        return Features(x, mask, self.pooling(x, mask))


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


__all__ = ["TextTransformer", "PatchEncoder", "TransformerStack", "cls_pool", "masked_mean"]
