"""Pretrained text encoder: any Hugging Face `AutoModel` text model (BERT, RoBERTa, CLIP text, ...).

Returns `Features(tokens (B, T, D), mask (B, T), pooled (B, D))` like `TextTransformer`. The
model's hidden size is projected to `dim` (the fusion width) when they differ. `word_embeddings`
is the model's input embedding table (MLM / LM heads tie their decoder to it); with a projection
it is the projected table, so tied heads keep working at width `dim`.

The tokenizer must be the checkpoint's (`tokenizer=hf` with the same name); freezing and learning
rate multipliers are generic options (`freeze`, `lr_mult`) handled by the builder.
"""

from __future__ import annotations

import torch
from torch import nn

from mmbench.models.layers import Pooling
from mmbench.models.outputs import Features
from mmbench.models.pretrained.hub import load_hf_model


class ProjectedEmbedding(nn.Module):
    """An embedding table seen through a projection: `weight` is proj(table) (V, dim).

    Lets an MLM/LM decoder `F.linear(h, emb.weight)` tie to a pretrained table of another width.
    """

    def __init__(self, embedding: nn.Embedding, proj: nn.Linear):
        super().__init__()
        self.embedding = embedding
        self.proj = proj

    @property
    def weight(self) -> torch.Tensor:
        return self.proj(self.embedding.weight)  # (V, dim)

    @property
    def num_embeddings(self) -> int:
        return self.embedding.num_embeddings


class HFTextEncoder(nn.Module):
    """Wraps `AutoModel.from_pretrained(name)`; for two-tower checkpoints (CLIP) the text tower."""

    def __init__(self, name: str, dim: int, pooling: Pooling | None = None):
        super().__init__()
        model = load_hf_model(name)
        self.model = getattr(model, "text_model", model)  # CLIPModel -> CLIPTextTransformer
        self.name = name
        hidden = self.model.config.hidden_size
        self.proj = nn.Linear(hidden, dim) if hidden != dim else nn.Identity()
        self.pooling = pooling  # None: the model's own pooler output (BERT pooler, CLIP EOS), else [CLS]
        self.max_len = getattr(self.model.config, "max_position_embeddings", None)

    @property
    def word_embeddings(self) -> nn.Module:
        table = (
            self.model.get_input_embeddings()
            if hasattr(self.model, "get_input_embeddings")
            else self.model.embeddings.token_embedding
        )
        return table if isinstance(self.proj, nn.Identity) else ProjectedEmbedding(table, self.proj)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, causal: bool = False) -> Features:
        if causal:
            raise ValueError(
                f"encoder/text=hf ('{self.name}') is bidirectional and cannot encode causally; "
                "use a fusion that applies the causal mask itself (fusion=text_cross_attention or merged) "
                "or encoder/text=transformer for LM"
            )
        B, T = input_ids.shape
        if self.max_len is not None and T > self.max_len:
            raise ValueError(f"text length {T} exceeds {self.name}'s max_position_embeddings={self.max_len}")
        mask = attention_mask.bool()
        out = self.model(input_ids=input_ids, attention_mask=attention_mask.long())
        hidden = out.last_hidden_state  # (B, T, H)
        if self.pooling is not None:
            pooled = self.pooling(hidden, mask)
        else:
            own = getattr(out, "pooler_output", None)  # the model's pooler, if it has one
            pooled = hidden[:, 0] if own is None else own  # (B, H)
        return Features(self.proj(hidden), mask, self.proj(pooled))
