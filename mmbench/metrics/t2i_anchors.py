"""The text-to-image protocol's anchors (mmbench.metrics.t2i): generators that return real images instead of
drawing, so the protocol's ceiling (every caption drawn as its own true image) and a caption-blind generator of
perfect scenes can be scored like any run. Used by scripts/t2i_anchors.py and tests/test_t2i_protocol.py; kept
out of the protocol's own module because no training run uses them.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mmbench.data.batch import Batch
from mmbench.data.collate import pixel_values


class RealImages(nn.Module):
    """An `ImageGenerator` that returns real images: the k-th caption it is asked for is drawn as
    `images[(k + shift) % len(images)]`. With the images of the captions in order, shift 0 is the true image of
    each caption (the protocol's ceiling) and shift = captions per image the next row's image (a caption-blind
    generator of perfect scenes). It records the seeds and guidance it was asked for. The protocol's anchors
    (scripts/t2i_anchors.py) and its tests."""

    def __init__(self, images: list[np.ndarray], shift: int = 0):
        super().__init__()
        self.images, self.shift, self.drawn = images, shift, 0
        self.seeds: list[int] = []
        self.guidance: set[float | None] = set()

    def generate_images(self, model, batch: Batch, *, generator, guidance=None, steps=None) -> torch.Tensor:
        B = batch["input_ids"].shape[0]
        rows = [(self.drawn + k + self.shift) % len(self.images) for k in range(B)]
        self.drawn += B
        self.seeds += [g.initial_seed() for g in generator]
        self.guidance.add(guidance)
        return pixel_values([self.images[r] for r in rows])  # (B, 3, H, W) in [-1, 1]


class Holding(nn.Module):
    """What the protocol reads of a trained module (`model`, `objectives`), holding stand-in objectives only."""

    def __init__(self, objectives: dict[str, nn.Module]):
        super().__init__()
        self.model = nn.Identity()
        self.objectives = nn.ModuleDict(objectives)
