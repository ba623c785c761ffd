"""Late (decision-level) fusion: one predictor per modality, predictions summed.

    g(x_t) = W_2 GELU(W_1 x_t + b_1) + b_2        (B, dim)   text predictor
    h(x_v) = V_2 GELU(V_1 x_v + c_1) + c_2        (B, dim)   image predictor
    z      = w_t g(x_t) + w_v h(x_v)              (B, dim)   (w_t, w_v) = softmax(logits), then dropout

The "decision" here is the head input: heads downstream (ITM, VQA, classify) are applied to `pooled`,
so this is late fusion in the representation space that the head reads, not an average of final
class scores. With a linear head it is exactly score-level late fusion (head(g + h) = head(g) +
head(h) up to the bias); with a non-linear head the head itself can still mix the two summands.

By construction z = g(x_t) + h(x_v): the fusion cannot model any text x image interaction (changing
the image moves z by the same amount whatever the text). It is the baseline that tells how much the
other fusions gain from interactions. `learn_weights=False` fixes w_t = w_v = 1/2.
"""

from __future__ import annotations

import torch
from torch import nn

from mmbench.models.fusion.vector import PooledFusion


def _predictor(in_dim: int, hidden_dim: int, dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, dim))


class LateFusion(PooledFusion):
    def __init__(
        self,
        dim: int,
        text_dim: int | None = None,
        image_dim: int | None = None,
        hidden_dim: int | None = None,
        learn_weights: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        hidden_dim = hidden_dim or dim
        self.text_head = _predictor(text_dim or dim, hidden_dim, dim)  # g
        self.image_head = _predictor(image_dim or dim, hidden_dim, dim)  # h
        logits = torch.zeros(2)  # softmax -> (1/2, 1/2) at init
        if learn_weights:
            self.weight_logits = nn.Parameter(logits)
        else:
            self.register_buffer("weight_logits", logits)
        self.drop = nn.Dropout(dropout)

    @property
    def weights(self) -> torch.Tensor:
        """(w_t, w_v), softmax-normalised (2,)."""
        return self.weight_logits.softmax(0)

    def fuse_pooled(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        w = self.weights  # (2,)
        return self.drop(w[0] * self.text_head(text) + w[1] * self.image_head(image))  # (B, dim)
