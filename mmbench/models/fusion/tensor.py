"""Tensor fusion (TFN; Zadeh et al., 2017) and its low-rank factorisation (LMF; Liu et al., 2018).

`TensorFusion` appends a constant 1 to each modality vector and takes the outer product, so one
Linear over the flattened product sees the unimodal terms AND every pairwise product at once:

    a = W_a x_t + b_a,  b = W_b x_v + b_b                      (B, f)    f = factor_dim
    Z = [a; 1] [b; 1]^T                                        (B, f+1, f+1)
        Z[:, :f, :f] = a b^T   (bimodal interactions)
        Z[:, :f,  f] = a       (unimodal text),   Z[:, f, :f] = b   (unimodal image),   Z[:, f, f] = 1
    z = act(W_o vec(Z) + b_o)                                  (B, dim)  then dropout

i.e. z = act(w_1 a + w_2 b + w_3 (a ⊗ b) + c): additive and multiplicative interactions in one layer.
The weight W_o has (f+1)^2 * dim entries, so each modality is first projected (linearly) to a small
`factor_dim` (default 16: 289 * dim weights, instead of 129^2 * dim for 128-wide inputs).

`LowRankTensorFusion` (LMF, "Efficient Low-rank Multimodal Fusion with Modality-Specific Factors")
never forms Z: it constrains the (dim, Dt+1, Dv+1) weight tensor of a TFN over the raw [x_t; 1],
[x_v; 1] to rank R with modality-specific factors A^(r) (dim, Dt+1), B^(r) (dim, Dv+1):

    z = act( sum_r (A^(r) [x_t; 1]) ⊙ (B^(r) [x_v; 1]) )        (B, dim)

A^(r) [x; 1] is a Linear with bias (the bias is the column that multiplies the appended 1), so the R
factors of a modality are one nn.Linear(D, R * dim). (LMF's extra per-rank weights and output bias are
absorbed by the factors and left out.)
"""

from __future__ import annotations

import torch
from torch import nn

from mmbench.models.fusion.vector import PooledFusion
from mmbench.models.layers import Activation


def outer_with_one(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[a; 1] [b; 1]^T for a (B, Da), b (B, Db) -> (B, Da+1, Db+1); last column is a, last row is b."""
    one = a.new_ones(a.shape[0], 1)  # (B, 1)
    a1, b1 = torch.cat([a, one], dim=-1), torch.cat([b, one], dim=-1)  # (B, Da+1), (B, Db+1)
    return a1[:, :, None] * b1[:, None, :]  # (B, Da+1, Db+1)


class TensorFusion(PooledFusion):
    def __init__(
        self,
        dim: int,
        text_dim: int | None = None,
        image_dim: int | None = None,
        factor_dim: int = 16,
        act_layer: Activation = nn.GELU,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.text_proj = nn.Linear(text_dim or dim, factor_dim)  # W_a, b_a
        self.image_proj = nn.Linear(image_dim or dim, factor_dim)  # W_b, b_b
        self.out = nn.Linear((factor_dim + 1) ** 2, dim)  # W_o, b_o
        self.act = act_layer()
        self.drop = nn.Dropout(dropout)

    def fuse_pooled(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        Z = outer_with_one(self.text_proj(text), self.image_proj(image))  # (B, f+1, f+1)
        return self.drop(self.act(self.out(Z.flatten(1))))  # (B, dim)


class LowRankTensorFusion(PooledFusion):
    def __init__(
        self,
        dim: int,
        text_dim: int | None = None,
        image_dim: int | None = None,
        rank: int = 4,
        act_layer: Activation = nn.GELU,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.rank = rank
        self.text_factors = nn.Linear(text_dim or dim, rank * dim)  # A^(1..R) over [x_t; 1]
        self.image_factors = nn.Linear(image_dim or dim, rank * dim)  # B^(1..R) over [x_v; 1]
        self.act = act_layer()
        self.drop = nn.Dropout(dropout)

    def fuse_pooled(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        B = text.shape[0]
        ft = self.text_factors(text).view(B, self.rank, -1)  # (B, R, dim)
        fv = self.image_factors(image).view(B, self.rank, -1)  # (B, R, dim)
        return self.drop(self.act((ft * fv).sum(1)))  # (B, dim)
