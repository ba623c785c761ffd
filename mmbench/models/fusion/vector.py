"""Classic vector fusions of the pooled unimodal vectors: concat (early fusion), sum, max, multiplicative.

These fusions see only `text.pooled` x_t (B, Dt) and `image.pooled` x_v (B, Dv) and return one joint
vector z (B, dim); they have no tokens, so they serve classification-style objectives (ITM, VQA,
classify) but not MLM or LM. The catalogue follows the multimodal-fusion lecture notes
(W[u, v], Wu + Vv, max(Wu, Vv), Wu ⊙ Vv):

    ConcatFusion          z = act(W [x_t; x_v] + b)                                  (early fusion)
    SumFusion             z = act(W_o ((W_t x_t + b_t) + (W_v x_v + b_v)) + b_o)
    MaxFusion             z = act(W_o max(W_t x_t + b_t, W_v x_v + b_v) + b_o)      (element-wise max)
    MultiplicativeFusion  z = act(W_o ((W_t x_t + b_t) ⊙ (W_v x_v + b_v)) + b_o)    (Hadamard product)

followed by dropout. Sum, max and product share `ElementwiseFusion`, which projects both modalities
to `dim` and applies a `combine` function (any (B, dim) x (B, dim) -> (B, dim) callable, e.g.
`torch.add`); the three named classes only fix that function. Without the output activation, sum and
concat are purely additive (f(t, v) = g(t) + h(v)); the product is the simplest fusion that models a
multiplicative text x image interaction.

`PooledFusion` is the base of every vector fusion in this package (also gated, bilinear, tensor,
late): it declares the capabilities, rejects `causal_text=True` and wraps the joint vector in `Fused`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mmbench.models.layers import Activation
from mmbench.models.outputs import Capabilities, Features, Fused

#: combines two projected vectors (B, dim), (B, dim) -> (B, dim)
Combine = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class PooledFusion(nn.Module):
    """Base class: fuse the pooled vectors x_t (B, Dt), x_v (B, Dv) into z (B, dim) in `fuse_pooled`."""

    capabilities = Capabilities(joint_pooled=True)

    def fuse_pooled(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, text: Features, image: Features, causal_text: bool = False) -> Fused:
        if causal_text:
            raise ValueError(
                f"{type(self).__name__} fuses pooled vectors and has no text tokens, so it cannot serve "
                "causal_text=True (LM); use a token fusion with causal text, e.g. fusion=merged"
            )
        return Fused(text_tokens=None, image_tokens=None, pooled=self.fuse_pooled(text.pooled, image.pooled))


class ConcatFusion(PooledFusion):
    """Early fusion: z = act(W [x_t; x_v] + b), one Linear over the concatenation."""

    def __init__(
        self,
        dim: int,
        text_dim: int | None = None,
        image_dim: int | None = None,
        act_layer: Activation = nn.GELU,
        dropout: float = 0.0,
    ):
        super().__init__()
        text_dim, image_dim = text_dim or dim, image_dim or dim
        self.proj = nn.Linear(text_dim + image_dim, dim)
        self.act = act_layer()
        self.drop = nn.Dropout(dropout)

    def fuse_pooled(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        x = torch.cat([text, image], dim=-1)  # (B, Dt+Dv)
        return self.drop(self.act(self.proj(x)))  # (B, dim)


class ElementwiseFusion(PooledFusion):
    """Project both modalities to `dim`, combine element-wise, then an output Linear + activation.

    z = act(W_o combine(W_t x_t + b_t, W_v x_v + b_v) + b_o), dropout on z. `combine` defaults to the
    class's own (`SumFusion`: torch.add, ...), so a subclass is one line and configs name the fusion.
    """

    default_combine: Combine | None = None

    def __init__(
        self,
        dim: int,
        text_dim: int | None = None,
        image_dim: int | None = None,
        act_layer: Activation = nn.GELU,
        dropout: float = 0.0,
        combine: Combine | None = None,
    ):
        super().__init__()
        combine = combine or type(self).default_combine
        if combine is None:
            raise ValueError("ElementwiseFusion needs `combine` (e.g. torch.add), or use SumFusion/MaxFusion/...")
        self.combine = combine
        self.text_proj = nn.Linear(text_dim or dim, dim)
        self.image_proj = nn.Linear(image_dim or dim, dim)
        self.out = nn.Linear(dim, dim)
        self.act = act_layer()
        self.drop = nn.Dropout(dropout)

    def fuse_pooled(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        h = self.combine(self.text_proj(text), self.image_proj(image))  # (B, dim)
        return self.drop(self.act(self.out(h)))  # (B, dim)


class SumFusion(ElementwiseFusion):
    """Additive fusion: z = act(W_o (W_t x_t + W_v x_v + b) + b_o)."""

    default_combine = staticmethod(torch.add)


class MaxFusion(ElementwiseFusion):
    """Max fusion: z = act(W_o max(W_t x_t + b_t, W_v x_v + b_v) + b_o), max element-wise."""

    default_combine = staticmethod(torch.maximum)


class MultiplicativeFusion(ElementwiseFusion):
    """Multiplicative fusion: z = act(W_o ((W_t x_t + b_t) ⊙ (W_v x_v + b_v)) + b_o), ⊙ Hadamard product."""

    default_combine = staticmethod(torch.mul)
