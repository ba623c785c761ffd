"""Shared transformer building blocks used by every encoder and fusion.

There is exactly one attention implementation (`Attention`, through
`F.scaled_dot_product_attention`) and one block (`Block`). Architectures differ by how they
stack blocks (see `mmbench/models/fusion/`), never by copies of the block.

Masks: a *key padding mask* is a bool tensor (B, S) that is True for real tokens and False for
padding. Attention masks handed to SDPA are bool tensors broadcastable to (B, nh, T, S) where
True means "may attend"; `attention_mask` builds one from a key padding mask, with `causal_mask`
(the one causal rule) when asked. `residual` is the one pre-/post-norm residual sublayer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypedDict

import torch
import torch.nn.functional as F
from torch import nn


def causal_mask(T: int, S: int | None = None, *, device: torch.device | None = None) -> torch.Tensor:
    """(T, S) bool, True where query i may attend to key j: j <= i + S - T. Queries and keys are
    right-aligned (the last query sits at the last key), so with a KV cache of S - T past positions the
    query at position past + i sees keys 0..past + i; with T > S the first T - S queries see no key.
    S defaults to T: the plain lower triangle."""
    S = T if S is None else S
    return torch.ones(T, S, dtype=torch.bool, device=device).tril(S - T)  # (T, S)


def attention_mask(key_mask: torch.Tensor, *, causal: bool = False, queries: int | None = None) -> torch.Tensor:
    """SDPA bool mask from a key padding mask (B, S): (B, 1, 1, S), or with `causal` (B, 1, T, S), the
    padding combined with `causal_mask(T, S)` for the last T = `queries` positions (all S by default)."""
    mask = key_mask[:, None, None, :]  # (B, 1, 1, S)
    if causal:
        S = key_mask.shape[1]
        mask = mask & causal_mask(S if queries is None else queries, S, device=key_mask.device)  # (B, 1, T, S)
    return mask


class KVCache:
    """Keys and values (B, nh, S, hs) of the positions one self-attention layer has already seen, for
    incremental decoding: each call appends the new positions' keys and values and attends over all."""

    def __init__(self) -> None:
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def extend(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.k is not None and self.v is not None:
            k, v = torch.cat([self.k, k], dim=2), torch.cat([self.v, v], dim=2)  # (B, nh, S + T, hs)
        self.k, self.v = k, v
        return k, v

    def select(self, rows: torch.Tensor) -> None:
        """Keep rows `rows` (N,) of the batch, in that order (beam search reorders its beams)."""
        if self.k is not None and self.v is not None:
            self.k, self.v = self.k[rows], self.v[rows]


class Attention(nn.Module):
    """Multi-head attention. Self-attention when `context` is None, cross-attention otherwise; with a
    `cache`, self-attention over the cached positions and the new ones (incremental decoding)."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"dim={dim} is not divisible by heads={heads}")
        context_dim = context_dim or dim
        self.heads = heads
        self.q = nn.Linear(dim, dim, bias=bias)
        self.k = nn.Linear(context_dim, dim, bias=bias)
        self.v = nn.Linear(context_dim, dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)
        self.dropout = dropout

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        B, T, D = x.shape
        context = x if context is None else context
        S = context.shape[1]
        nh, hs = self.heads, D // self.heads
        q = self.q(x).view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = self.k(context).view(B, S, nh, hs).transpose(1, 2)  # (B, nh, S, hs)
        v = self.v(context).view(B, S, nh, hs).transpose(1, 2)  # (B, nh, S, hs)
        if cache is not None:
            k, v = cache.extend(k, v)  # (B, nh, S_past + S, hs); mask: (B, 1|nh, T, S_past + S)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, D)  # (B, T, D)
        return self.proj(y)


#: activation constructors: a class (`nn.GELU`) or a partial (`functools.partial(nn.GELU, approximate="tanh")`)
Activation = Callable[[], nn.Module]


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the GELU approximation of OpenAI CLIP (`hidden_act="quick_gelu"`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class MLP(nn.Module):
    """Position-wise feed-forward network: Linear -> act -> Linear."""

    def __init__(self, dim: int, hidden_dim: int, act_layer: Activation = nn.GELU, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


def residual(
    x: torch.Tensor,
    f: Callable[..., torch.Tensor],
    norm: Callable[[torch.Tensor], torch.Tensor],
    drop: Callable[[torch.Tensor], torch.Tensor],
    *,
    prenorm: bool,
    **kwargs: Any,
) -> torch.Tensor:
    """One residual sublayer around f (`kwargs` go to f): x + drop(f(norm(x))) pre-norm (ViT/ViLT/GPT),
    norm(x + drop(f(x))) post-norm (BERT/LXMERT). `Block` and `Residual` both use it."""
    if prenorm:
        return x + drop(f(norm(x), **kwargs))
    return norm(x + drop(f(x, **kwargs)))


class Residual(nn.Module):
    """A sublayer f with its own norm and dropout, applied by `residual`; for stacks that wire their
    sublayers themselves (the Q-Former). Parameters: `f.*`, `norm.*`."""

    def __init__(
        self,
        f: nn.Module,
        dim: int,
        prenorm: bool,
        dropout: float = 0.0,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        self.f, self.norm, self.prenorm, self.drop = f, norm_layer(dim, eps=norm_eps), prenorm, nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return residual(x, self.f, self.norm, self.drop, prenorm=self.prenorm, **kwargs)


class Block(nn.Module):
    """Transformer block: self-attention, optional cross-attention into a context, feed-forward.

    `prenorm=True` is the ViT/ViLT/GPT layout (x + f(norm(x))), `prenorm=False` the BERT/LXMERT
    layout (norm(x + f(x))). Either sublayer can be switched off (`self_attention=False` gives the
    LXMERT/ViLBERT cross-only sublayer; `cross_attention=True` the ALBEF fusion layer). Disabled
    parts are `None`-free: they are simply not built and skipped by a flag fixed in `__init__`.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_ratio: float = 4.0,
        self_attention: bool = True,
        cross_attention: bool = False,
        context_dim: int | None = None,
        feed_forward: bool = True,
        prenorm: bool = True,
        dropout: float = 0.0,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        act_layer: Activation = nn.GELU,
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        self.prenorm = prenorm
        self.sublayers = nn.ModuleDict()
        self.norms = nn.ModuleDict()
        if self_attention:
            self.sublayers["self_attn"] = Attention(dim, heads, dropout=dropout)
            self.norms["self_attn"] = norm_layer(dim, eps=norm_eps)
        if cross_attention:
            self.sublayers["cross_attn"] = Attention(dim, heads, context_dim=context_dim, dropout=dropout)
            self.norms["cross_attn"] = norm_layer(dim, eps=norm_eps)
        if feed_forward:
            self.sublayers["mlp"] = MLP(dim, int(dim * mlp_ratio), act_layer=act_layer, dropout=dropout)
            self.norms["mlp"] = norm_layer(dim, eps=norm_eps)
        self.drop = nn.Dropout(dropout)

    def _residual(self, name: str, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return residual(x, self.sublayers[name], self.norms[name], self.drop, prenorm=self.prenorm, **kwargs)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """x (B, T, D); mask: SDPA mask for self-attention; context (B, S, Dc); context_mask (B, 1, 1|T, S);
        cache: the self-attention's keys and values of earlier positions (incremental decoding)."""
        if "self_attn" in self.sublayers:
            x = self._residual("self_attn", x, mask=mask, cache=cache)
        if "cross_attn" in self.sublayers:
            x = self._residual("cross_attn", x, context=context, mask=context_mask)
        if "mlp" in self.sublayers:
            x = self._residual("mlp", x)
        return x


class BlockOptions(TypedDict, total=False):
    """Keyword options of `Block` that a stack gives every block it builds."""

    mlp_ratio: float
    prenorm: bool
    dropout: float
    norm_eps: float
    act_layer: Activation


class Pooler(nn.Module):
    """BERT pooler: Linear + tanh on the first token. Also usable as an encoder's `pooling`."""

    def __init__(self, dim: int):
        super().__init__()
        self.dense = nn.Linear(dim, dim)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return torch.tanh(self.dense(tokens[:, 0]))


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of tokens (B, T, D) over positions where mask (B, T) is True -> (B, D)."""
    w = mask.to(tokens.dtype).unsqueeze(-1)  # (B, T, 1)
    return (tokens * w).sum(1) / w.sum(1).clamp_min(1.0)


#: pooling functions map (tokens (B, N, D), mask (B, N)) -> (B, D)
Pooling = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cls_pool(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """First-token pooling (B, N, D) -> (B, D)."""
    return tokens[:, 0]


def last_token_pool(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Last real token (B, N, D) -> (B, D): CLIP's EOS pooling when EOS ends every sequence."""
    last = mask.long().sum(1).clamp_min(1) - 1  # (B,)
    return tokens[torch.arange(tokens.shape[0], device=tokens.device), last]


class TransformerStack(nn.Module):
    """`depth` blocks with a padding mask, plus a final norm for pre-norm stacks."""

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
        kw: BlockOptions = dict(
            mlp_ratio=mlp_ratio, prenorm=prenorm, dropout=dropout, norm_eps=norm_eps, act_layer=act_layer
        )
        self.blocks = nn.ModuleList(Block(dim, heads, **kw) for _ in range(depth))
        # A pre-norm stack ends un-normalised; post-norm blocks already end with a norm.
        self.norm = nn.LayerNorm(dim, eps=norm_eps) if (prenorm and depth > 0) else nn.Identity()

    def forward(self, x: torch.Tensor, mask: torch.Tensor, causal: bool = False) -> torch.Tensor:
        attn_mask = attention_mask(mask, causal=causal)  # (B, 1, 1, N), causal: (B, 1, N, N)
        for block in self.blocks:
            x = block(x, mask=attn_mask)
        return self.norm(x)
