"""Text encoder: BERT-style transformer over word + position embeddings.

Returns `Features(tokens (B, T, D), mask (B, T), pooled (B, D))`. `depth=0` gives a pure embedding
layer, as in single-stream models (ViLT) whose layers all live in the fusion.

The options that distinguish the reference text encoders (all default to the BERT-like layout):
`norm_eps` (BERT 1e-12, CLIP 1e-5), `act_layer` (CLIP: `QuickGELU`), `embed_norm` (BERT normalises
the embeddings, CLIP does not), `causal` (CLIP's text tower is always causal) and `pooling` (a
function, or a module such as BERT's `Pooler`). BERT's token-type embedding is not a separate table:
with one segment it is a constant, folded into the position embeddings when weights are imported.
"""

from __future__ import annotations

import torch
from torch import nn

from mmbench.models.layers import Activation, Pooling, TransformerStack, cls_pool
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
        norm_eps: float = 1e-5,
        act_layer: Activation = nn.GELU,
        embed_norm: bool = True,
        causal: bool = False,
    ):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, dim)
        self.position_embeddings = nn.Embedding(max_len, dim)
        self.norm = nn.LayerNorm(dim, eps=norm_eps) if embed_norm else nn.Identity()
        self.drop = nn.Dropout(dropout)
        self.stack = TransformerStack(dim, depth, heads, mlp_ratio, prenorm, dropout, norm_eps, act_layer)
        self.pooling = pooling
        self.max_len = max_len
        self.causal = causal  # always causal (CLIP), whatever the caller asks
        nn.init.normal_(self.word_embeddings.weight, std=0.02)  # BERT init; also keeps tied MLM logits small
        nn.init.normal_(self.position_embeddings.weight, std=0.02)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, causal: bool = False) -> Features:
        B, T = input_ids.shape
        if T > self.max_len:
            raise ValueError(f"text length {T} exceeds the text encoder's max_len={self.max_len}")
        mask = attention_mask.bool()
        pos = torch.arange(T, device=input_ids.device)
        x = self.drop(self.norm(self.word_embeddings(input_ids) + self.position_embeddings(pos)))  # (B, T, D)
        x = self.stack(x, mask, causal=causal or self.causal)  # (B, T, D)
        return Features(x, mask, self.pooling(x, mask))
