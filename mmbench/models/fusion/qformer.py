"""Q-Former of BLIP-2 (Li et al., 2023, "BLIP-2: Bootstrapping Language-Image Pre-training with Frozen
Image Encoders and Large Language Models", sec. 3.1): `num_queries` learned query embeddings and the text
share the self-attention of each layer; only the queries cross-attend to the (frozen) image encoder's
tokens, every `cross_attention_freq`-th layer (BLIP-2: 32 queries, every other layer); queries and text
have their own feed-forward networks. Each layer (BERT post-norm, as BLIP-2; `prenorm=True` for pre-norm):

    [q; t] = [q; t] + SelfAttn([q; t], mask)        which positions see which: the table below
    q      = q + CrossAttn(q, image)                layers 0, f, 2f, ... (image padding masked)
    q, t   = q + FFN_q(q), t + FFN_t(t)

| `fuse(..., causal_text=)` | queries see | text sees | BLIP-2 objective |
|---|---|---|---|
| False | queries and text | queries and text | ITM (bi-directional) |
| True | queries only | queries and earlier text | image-grounded text generation (LM) |

so with `causal_text=True` no text token sees a later one, directly or through the queries: leakage-free
for the LM objective. Returned: `text_tokens` = the text outputs, `image_tokens` = the query outputs
(B, N, D) (they are not per image token, so `image_tokens` is not a capability and MRM is refused),
`pooled` = the mean of the query outputs: BLIP-2's ITM averages a linear classifier's logits over the
queries, which is the classifier applied to their mean.

`QFormer` is the layer stack itself; `QueryConnector` runs it on the image alone (queries only, no text),
which is how BLIP-2's second stage turns an image into `num_queries` soft-prompt tokens for a language
model (`fusion=prefix` with `connector=`, mmbench/models/fusion/prefix.py).

Simplified: the text tokens come from mmbench's text encoder (BLIP-2 initialises the Q-Former from BERT
and runs the text through the Q-Former's own layers); ITC uses the encoders' pooled vectors (BLIP-2
compares the text [CLS] with every query output and keeps the best).
"""

from __future__ import annotations

import torch
from torch import nn

from mmbench.checks import number_problem, problems_of, raise_problems
from mmbench.models.layers import MLP, Attention, Residual, attention_mask, causal_mask
from mmbench.models.outputs import Capabilities, Features, Fused


class QFormerLayer(nn.Module):
    """Joint self-attention over [queries; text], queries-only cross-attention (optional), split FFNs."""

    def __init__(
        self,
        dim: int,
        heads: int,
        cross_attention: bool,
        image_dim: int | None = None,
        mlp_ratio: float = 4.0,
        prenorm: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.self_attn = Residual(Attention(dim, heads, dropout=dropout), dim, prenorm, dropout)
        self.cross_attn = (
            Residual(Attention(dim, heads, context_dim=image_dim, dropout=dropout), dim, prenorm, dropout)
            if cross_attention
            else None
        )
        self.ffn_query = Residual(MLP(dim, hidden, dropout=dropout), dim, prenorm, dropout)
        self.ffn_text = Residual(MLP(dim, hidden, dropout=dropout), dim, prenorm, dropout)

    def forward(
        self,
        q: torch.Tensor,
        t: torch.Tensor,
        mask: torch.Tensor,
        image: torch.Tensor,
        image_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """q (B, N, D); t (B, T, D); mask (B, 1, N+T, N+T); image (B, V, Di); image_mask (B, 1, 1, V)."""
        N = q.shape[1]
        x = self.self_attn(torch.cat([q, t], dim=1), mask=mask)  # (B, N+T, D)
        q, t = x[:, :N], x[:, N:]
        if self.cross_attn is not None:
            q = self.cross_attn(q, context=image, mask=image_mask)  # (B, N, D)
        return self.ffn_query(q), self.ffn_text(t)


class QFormer(nn.Module):
    """Learned queries + `depth` Q-Former layers; cross-attention in layers 0, f, 2f, ..."""

    @classmethod
    def setting_problems(
        cls, *, num_queries: int = 32, depth: int = 1, cross_attention_freq: int = 2, **settings
    ) -> list[str]:
        """The constructor's check of its counts, also run by config validation (mmbench/checks.py)."""
        return problems_of(
            number_problem("num_queries", num_queries, "a query count >= 1 (BLIP-2: 32)", low=1, integer=True),
            number_problem("depth", depth, "a layer count >= 1", low=1, integer=True),
            number_problem(
                "cross_attention_freq", cross_attention_freq, "cross-attention every n >= 1 layers", low=1, integer=True
            ),
        )

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        num_queries: int = 32,
        cross_attention_freq: int = 2,
        image_dim: int | None = None,
        mlp_ratio: float = 4.0,
        prenorm: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        settings = {"num_queries": num_queries, "depth": depth, "cross_attention_freq": cross_attention_freq}
        raise_problems("QFormer", self.setting_problems(**settings))
        self.queries = nn.Parameter(torch.randn(num_queries, dim) * 0.02)
        self.layers = nn.ModuleList(
            QFormerLayer(dim, heads, i % cross_attention_freq == 0, image_dim, mlp_ratio, prenorm, dropout)
            for i in range(depth)
        )
        # A pre-norm stack ends un-normalised; post-norm layers already end with a norm.
        self.norm = nn.LayerNorm(dim) if prenorm else nn.Identity()

    @staticmethod
    def self_attention_mask(N: int, text_mask: torch.Tensor, causal_text: bool) -> torch.Tensor:
        """(B, 1, N+T, N+T) bool over [queries; text] (True = may attend); the table of the module docstring."""
        B, T = text_mask.shape
        device = text_mask.device
        sees_text = text_mask[:, None, :].expand(B, N + T, T)  # (B, N+T, T): real text tokens
        if causal_text:
            # rows: N queries then T text tokens, right-aligned with the T text keys, so the queries see
            # no text and text token t sees text tokens <= t
            sees_text = sees_text & causal_mask(N + T, T, device=device)  # (B, N+T, T)
        sees_queries = torch.ones(B, N + T, N, dtype=torch.bool, device=device)
        return torch.cat([sees_queries, sees_text], dim=2)[:, None]  # (B, 1, N+T, N+T)

    def forward(
        self, image: Features, text: Features | None = None, causal_text: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Query outputs (B, N, D) and text outputs (B, T, D) (T = 0 without text)."""
        B = image.tokens.shape[0]
        N, D = self.queries.shape
        if text is None:
            t = image.tokens.new_zeros(B, 0, D)  # (B, 0, D)
            text_mask = torch.zeros(B, 0, dtype=torch.bool, device=image.tokens.device)
        else:
            t, text_mask = text.tokens, text.mask
        mask = self.self_attention_mask(N, text_mask, causal_text)
        image_mask = attention_mask(image.mask)  # (B, 1, 1, V)
        # a copy, not an expand(): see PerceiverResampler.forward (FlopCounterMode and parameter views)
        q = self.queries.repeat(B, 1, 1)  # (B, N, D)
        for layer in self.layers:
            q, t = layer(q, t, mask, image.tokens, image_mask)
        return self.norm(q), self.norm(t)


class QFormerFusion(nn.Module):
    """BLIP-2 stage 1: the Q-Former over text and image (ITM, ITC beside it, image-grounded LM)."""

    capabilities = Capabilities(joint_pooled=True, text_tokens=True, image_tokens=False, causal_text=True)

    def __init__(self, qformer: QFormer):
        super().__init__()
        self.qformer = qformer

    def forward(self, text: Features, image: Features, causal_text: bool = False) -> Fused:
        q, t = self.qformer(image, text, causal_text)  # (B, N, D), (B, T, D)
        return Fused(text_tokens=t, image_tokens=q, pooled=q.mean(dim=1))


class QueryConnector(nn.Module):
    """BLIP-2 stage 2: the image alone through the Q-Former -> `num_queries` tokens (B, N, D), all real."""

    def __init__(self, qformer: QFormer):
        super().__init__()
        self.qformer = qformer

    def forward(self, image: Features) -> Features:
        q, _ = self.qformer(image)  # (B, N, D)
        keep = torch.ones(q.shape[:2], dtype=torch.bool, device=q.device)
        return Features(q, keep, q.mean(dim=1))
