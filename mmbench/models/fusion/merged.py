"""Single-stream fusion (ViLT, VisualBERT, UNITER): one transformer over [text; image] tokens.

Each token gets a modality-type embedding, then `depth` shared blocks attend over the
concatenation. The joint vector is the BERT pooler on the first (text [CLS]) token.

With `causal_text=True` the mask is the prefix-LM mask: text token t attends to all image tokens
and to text tokens <= t; image tokens attend only to image tokens, so no text token can see a
later one through the image stream.
"""

from __future__ import annotations

import torch
from torch import nn

from mmbench.models.layers import Activation, Block, BlockOptions, Pooler, attention_mask, causal_mask
from mmbench.models.outputs import Capabilities, Features, Fused


class MergedFusion(nn.Module):
    capabilities = Capabilities(joint_pooled=True, text_tokens=True, image_tokens=True, causal_text=True)

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float = 4.0,
        prenorm: bool = True,
        dropout: float = 0.0,
        norm_eps: float = 1e-5,
        act_layer: Activation = nn.GELU,
    ):
        super().__init__()
        self.type_embeddings = nn.Embedding(2, dim)  # 0 = text, 1 = image
        nn.init.normal_(self.type_embeddings.weight, std=0.02)  # BERT/ViLT init
        kw: BlockOptions = dict(
            mlp_ratio=mlp_ratio, prenorm=prenorm, dropout=dropout, norm_eps=norm_eps, act_layer=act_layer
        )
        self.blocks = nn.ModuleList(Block(dim, heads, **kw) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=norm_eps) if prenorm else nn.Identity()
        self.pooler = Pooler(dim)

    def forward(self, text: Features, image: Features, causal_text: bool = False) -> Fused:
        T, V = text.tokens.shape[1], image.tokens.shape[1]
        x = torch.cat(
            [text.tokens + self.type_embeddings.weight[0], image.tokens + self.type_embeddings.weight[1]], dim=1
        )  # (B, T+V, D)
        key_mask = torch.cat([text.mask, image.mask], dim=1)  # (B, T+V)
        mask = attention_mask(key_mask)  # (B, 1, 1, T+V)
        if causal_text:
            allowed = torch.ones(T + V, T + V, dtype=torch.bool, device=x.device)
            allowed[:T, :T] = causal_mask(T, device=x.device)  # text: causal over text
            allowed[T:, :T] = False  # image never attends to text
            mask = mask & allowed  # (B, 1, T+V, T+V)
        for block in self.blocks:
            x = block(x, mask=mask)
        x = self.norm(x)
        return Fused(text_tokens=x[:, :T], image_tokens=x[:, T:], pooled=self.pooler(x))
