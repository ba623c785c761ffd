"""Bilinear fusion of the pooled vectors: full bilinear and its low-rank (MLB) factorisation.

`BilinearFusion` (the "uWv" bilinear fusion of the lecture notes): one matrix per output unit,

    z_k = act(x_t^T W_k x_v + b_k),   k = 1..dim          (nn.Bilinear, W: (dim, Dt, Dv))

every text dimension interacts with every image dimension, at the price of Dt * Dv * dim weights
(2.1M at 128 x 128 -> 128, 805M at 768 x 768 -> 768), which is why the low-rank variants exist.

`LowRankBilinearFusion` is Multimodal Low-rank Bilinear pooling (MLB; Kim et al., 2017, "Hadamard
product for low-rank bilinear pooling"): W_k = U diag(P_k) V^T, computed without ever forming W as

    z = act(P^T (tanh(U^T x_t + b_u) ⊙ tanh(V^T x_v + b_v)) + b_p),   U: (Dt, rank), V: (Dv, rank), P: (rank, dim)

so the implied (dim, Dt, Dv) weight tensor has CP rank <= `rank` (default `dim`), with
(Dt + Dv + dim) * rank weights. It is `MultiplicativeFusion` with tanh-squashed projections and a
chosen hidden width. The LMF factorisation (modality-specific rank-R factors over [x; 1]) is the
low-rank version of the tensor fusion and lives in `tensor.py` (`LowRankTensorFusion`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mmbench.models.fusion.vector import PooledFusion
from mmbench.models.layers import Activation


class BilinearFusion(PooledFusion):
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
        # Dt * Dv * dim + dim parameters: the full interaction tensor.
        self.bilinear = nn.Bilinear(text_dim, image_dim, dim)
        # nn.Bilinear draws W from U(-1/sqrt(Dt), 1/sqrt(Dt)), so with unit-variance inputs z has variance
        # ~Dv/3 (std ~6.5 at Dv=128). Treat the Dt*Dv products as the fan-in, like nn.Linear does for its
        # inputs, so z starts with the same scale as the other fusions.
        bound = 1.0 / math.sqrt(text_dim * image_dim)
        nn.init.uniform_(self.bilinear.weight, -bound, bound)
        nn.init.uniform_(self.bilinear.bias, -bound, bound)
        self.act = act_layer()
        self.drop = nn.Dropout(dropout)

    def fuse_pooled(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        # nn.Bilinear's own forward (aten::_trilinear) runs as hundreds of small bmm calls per batch on the CPU:
        # fused with ITM and VQA it took 4.6x the time of this form (forward + backward, B = 64, 128 x 128 ->
        # 128, one thread; docs/performance.md), which puts text @ W in one GEMM (B, Dt) x (Dt, dim * Dv) and
        # then contracts with the image per output unit. Same weights and bias (the module keeps its state-dict
        # keys), same function up to float rounding (tests/test_vector_fusions.py).
        weight, bias = self.bilinear.weight, self.bilinear.bias  # (dim, Dt, Dv), (dim,)
        dim, text_dim, image_dim = weight.shape
        text_w = (text @ weight.transpose(0, 1).reshape(text_dim, dim * image_dim)).view(-1, dim, image_dim)
        z = torch.einsum("bkv,bv->bk", text_w, image) + bias  # (B, dim)
        return self.drop(self.act(z))


class LowRankBilinearFusion(PooledFusion):
    def __init__(
        self,
        dim: int,
        text_dim: int | None = None,
        image_dim: int | None = None,
        rank: int | None = None,
        act_layer: Activation = nn.GELU,
        dropout: float = 0.0,
    ):
        super().__init__()
        rank = rank or dim
        self.text_proj = nn.Linear(text_dim or dim, rank)  # U, b_u
        self.image_proj = nn.Linear(image_dim or dim, rank)  # V, b_v
        self.out = nn.Linear(rank, dim)  # P, b_p
        self.act = act_layer()
        self.drop = nn.Dropout(dropout)

    def fuse_pooled(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.text_proj(text)) * torch.tanh(self.image_proj(image))  # (B, rank)
        return self.drop(self.act(self.out(h)))  # (B, dim)
