"""Pixel preprocessing owned by pretrained vision encoders.

The datamodule hands out `pixel_values` in [-1, 1] at `data.image_size`. A pretrained encoder
expects its own normalisation (mean/std of its image processor or timm `pretrained_cfg`) and,
for fixed-size models (ViT, CLIP), its own resolution. `PixelAdapter` converts once, on device.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class PixelAdapter(nn.Module):
    """[-1, 1] pixels -> (x01 - mean) / std, bilinearly resized to `size` (None: keep the size)."""

    mean: torch.Tensor  # (1, C, 1, 1) buffer
    std: torch.Tensor  # (1, C, 1, 1) buffer

    def __init__(self, mean: Sequence[float], std: Sequence[float], size: tuple[int, int] | None = None):
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.size = tuple(size) if size is not None else None

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = (pixels + 1) / 2  # (B, 3, H, W) in [0, 1]
        if self.size is not None and tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
