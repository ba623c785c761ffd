"""Text encoder: BERT-style transformer over word + position embeddings.

Returns `Features(tokens (B, T, D), mask (B, T), pooled (B, D))`. `depth=0` gives a pure embedding
layer, as in single-stream models (ViLT) whose layers all live in the fusion.
"""

from __future__ import annotations

import torch
from torch import nn

from mmbench.models.layers import Pooling, TransformerStack, cls_pool
from mmbench.models.outputs import Features


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
