"""Gated Multimodal Unit (GMU; Arevalo et al., 2017, "Gated multimodal units for information fusion").

Each modality is squashed into the joint space and a per-dimension gate computed from both
modalities decides, dimension by dimension, how much of each to keep:

    h_t = tanh(W_t x_t)                 (B, dim)
    h_v = tanh(W_v x_v)                 (B, dim)
    g   = sigmoid(W_g [x_t; x_v] + b_g) (B, dim)   per-dimension gate
    z   = g ⊙ h_t + (1 - g) ⊙ h_v      (B, dim)   then dropout

It is the additive gated fusion of the lecture notes, z = g_A(x_A, x_B) x_A + g_B(x_A, x_B) x_B with
g_B = 1 - g_A: the gate (which depends on both modalities) is where the interaction happens. As in the
paper the hidden projections have no bias and z is bounded in (-1, 1).
"""

from __future__ import annotations

import torch
from torch import nn

from mmbench.models.fusion.vector import PooledFusion


class GatedFusion(PooledFusion):
    def __init__(self, dim: int, text_dim: int | None = None, image_dim: int | None = None, dropout: float = 0.0):
        super().__init__()
        text_dim, image_dim = text_dim or dim, image_dim or dim
        self.text_proj = nn.Linear(text_dim, dim, bias=False)  # W_t
        self.image_proj = nn.Linear(image_dim, dim, bias=False)  # W_v
        self.gate = nn.Linear(text_dim + image_dim, dim)  # W_g, b_g
        self.drop = nn.Dropout(dropout)

    def fuse_pooled(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        h_t = torch.tanh(self.text_proj(text))  # (B, dim)
        h_v = torch.tanh(self.image_proj(image))  # (B, dim)
        g = torch.sigmoid(self.gate(torch.cat([text, image], dim=-1)))  # (B, dim)
        return self.drop(g * h_t + (1 - g) * h_v)  # (B, dim)
