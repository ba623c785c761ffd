"""Grid-feature vision input: a small ResNet whose feature map becomes the image tokens.

`ConvBackbone` is a ResNet (He et al., 2016) cut down for small images: a 3x3 stem and `stages`
stages of two BasicBlocks, the first of each stage with stride 2, so the output stride is
2**stages (64x64 pixels -> 8x8 grid with 3 stages).

`ConvEncoder` is the hybrid ViT of Dosovitskiy et al. (2021, sec. 3.1) and the grid features of
Pixel-BERT / "In Defense of Grid Features" (Jiang et al., 2020): the CNN feature map is treated as
an image with `out_channels` channels and patch size 1, i.e. it is handed to `PatchEncoder`, which
adds the 1x1 projection to `dim`, a [CLS] token, learned position embeddings (one per grid cell)
and `depth` transformer blocks. So

    Features(tokens (B, 1 + h*w, D), mask (B, 1 + h*w) all True, pooled (B, D))

Masked modeling (`forward(batch, hide=InputMask(...))`) hides grid cells at the input of the
PatchEncoder, i.e. after the CNN: the hidden cell's projection is replaced before any transformer
block, and `Features.inputs` is each cell's CNN feature (width `out_channels`). Caveat: the CNN's
receptive field spans neighbouring cells, so the features of visible cells have seen the pixels
of a hidden one -- as the Faster R-CNN features that UNITER / LXMERT mask have seen their
neighbours. Only a patch input (PatchEncoder) or precomputed region features are fully separable.

Normalisation: GroupNorm by default, not BatchNorm. GroupNorm (Wu & He, 2018) computes statistics
per sample, so an image's features never depend on the other rows of the batch -- in train mode
too. That matters here because ITM builds batches of mined negatives, evaluation pads or
duplicates rows, DDP would need SyncBatchNorm, and batch sizes on CPU are small. BatchNorm is one
argument away: `norm_layer=nn.BatchNorm2d`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock

from mmbench.models.layers import Pooling, masked_mean
from mmbench.models.outputs import Features, InputMask
from mmbench.models.vision.patch import PatchEncoder

if TYPE_CHECKING:
    from mmbench.data.batch import Batch


def group_norm(channels: int, max_groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups (Wu & He's default), fewer when `channels` is small."""
    return nn.GroupNorm(math.gcd(max_groups, channels), channels)


class StridedPointwiseConv(nn.Conv2d):
    """A 1x1 convolution with stride s, computed as "keep every s-th pixel, then a 1x1 convolution".

    The same function and the same parameters as `nn.Conv2d(cin, cout, 1, stride=s)` (state dicts are
    interchangeable); it is what oneDNN itself does for strided 1x1 convolutions ("reduce to unit
    stride"). Why not plain `nn.Conv2d`: in torch 2.14.1 (oneDNN 3.12.0), on CPUs with AVX-512, the
    weight gradient of a strided 1x1 convolution whose input is channels-last and has fewer than 16
    channels (one AVX-512 register of fp32) runs oneDNN's `jit_1x1:avx512_core` backward_weights
    kernel, which writes past its buffer: the process dies with "double free or corruption" or a
    segfault, or the heap is silently corrupted (e.g. B=64, 8 -> 8 channels, 48x48 input, stride 2).
    A unit-stride 1x1 convolution does not take that path. docs/reliability.md has the reproduction.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2, bias: bool = False):
        super().__init__(in_channels, out_channels, kernel_size=1, stride=stride, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sh, sw = self.stride
        return F.conv2d(x[:, :, ::sh, ::sw], self.weight, self.bias)  # (B, C, H, W) -> (B, C', H/s, W/s)


class Backbone(Protocol):
    """What `ConvEncoder` and `RegionEncoder` need of their CNN (an `nn.Module`, e.g. `ConvBackbone`):
    pixels (B, 3, H, W) -> feature map (B, out_channels, H / stride, W / stride)."""

    out_channels: int
    stride: int

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor: ...


class ConvBackbone(nn.Module):
    """Small ResNet: conv3x3 stem, then `stages` x 2 BasicBlocks (stride 2 at each stage start).

    Stage i has `width * 2**i` channels. Output (B, out_channels, H / stride, W / stride).
    """

    def __init__(
        self,
        width: int = 64,
        stages: int = 3,
        in_channels: int = 3,
        norm_layer: Callable[[int], nn.Module] = group_norm,
    ):
        super().__init__()
        if stages < 1:
            raise ValueError(f"stages={stages}: a ConvBackbone needs at least one stage")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, kernel_size=3, padding=1, bias=False),
            norm_layer(width),
            nn.ReLU(inplace=True),
        )
        layers, channels = [], width
        for i in range(stages):
            out = width * 2**i
            shortcut = nn.Sequential(StridedPointwiseConv(channels, out, stride=2), norm_layer(out))
            layers += [
                BasicBlock(channels, out, stride=2, downsample=shortcut, norm_layer=norm_layer),
                BasicBlock(out, out, norm_layer=norm_layer),
            ]
            channels = out
        self.layers = nn.Sequential(*layers)
        self.out_channels = channels
        self.stride = 2**stages
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # torchvision ResNet init
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.layers(self.stem(pixels))  # (B, 3, H, W) -> (B, C, H/s, W/s)


class ConvEncoder(nn.Module):
    """Hybrid ViT: CNN grid features -> PatchEncoder with patch size 1 (projection, [CLS], positions,
    `depth` blocks). `image_size` fixes the grid, hence the number of position embeddings; `positions` is
    PatchEncoder's (learned or fixed 2-D sin-cos)."""

    needs_regions = False
    maskable_inputs = True  # forward(batch, hide=InputMask) hides grid cells before the blocks
    setting_problems = PatchEncoder.setting_problems

    def __init__(
        self,
        dim: int,
        backbone: Backbone,
        image_size: int,
        depth: int = 0,
        heads: int = 1,
        mlp_ratio: float = 4.0,
        prenorm: bool = True,
        dropout: float = 0.0,
        pooling: Pooling = masked_mean,
        positions: str = "learned",
    ):
        super().__init__()
        if image_size % backbone.stride != 0:
            raise ValueError(
                f"image_size={image_size} is not divisible by the backbone stride {backbone.stride}; "
                f"use fewer stages or an image size that is a multiple of {backbone.stride}"
            )
        self.backbone = backbone
        self.grid_size = image_size // backbone.stride
        self.grid_encoder = PatchEncoder(
            dim,
            image_size=self.grid_size,
            patch_size=1,  # one token per grid cell: the patch embedding is a 1x1 projection
            depth=depth,
            heads=heads,
            mlp_ratio=mlp_ratio,
            prenorm=prenorm,
            dropout=dropout,
            in_channels=backbone.out_channels,
            pooling=pooling,
            positions=positions,
        )
        self.input_dim = self.grid_encoder.input_dim  # width of Features.inputs: a cell's CNN feature

    def forward(self, batch: Batch, hide: InputMask | None = None) -> Features:
        grid = self.backbone(batch["pixel_values"])  # (B, C, h, w)
        if grid.shape[-2:] != (self.grid_size, self.grid_size):
            raise ValueError(
                f"images of size {tuple(batch['pixel_values'].shape[-2:])} give a {tuple(grid.shape[-2:])} grid, "
                f"but the encoder was built for {self.grid_size}x{self.grid_size} (image_size must match data.image_size)"
            )
        return self.grid_encoder({"pixel_values": grid}, hide)  # tokens (B, 1 + h*w, D), inputs (B, 1 + h*w, C)
