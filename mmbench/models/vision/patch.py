"""ViLT/ViT patch input: linear projection of raw pixel patches.

Returns `Features(tokens (B, 1 + P, D), mask (B, 1 + P), pooled (B, D))` with a [CLS] token first.

CLIP's vision tower differs from ViT/ViLT in three options: no bias in the patch projection
(`patch_bias=False`), a LayerNorm on the embeddings before the blocks (`embed_norm=True`, CLIP's
`pre_layrnorm`) and QuickGELU (`act_layer`). `norm_eps` is the LayerNorm epsilon (ViLT 1e-12).
`pixel_mean` / `pixel_std` re-normalise the datamodule's [-1, 1] pixels for weights trained with
other statistics (CLIP's); None keeps the pixels as they are (ViLT's own mean = std = 0.5).

Positions: `positions="learned"` (ViT, ViLT: one trained vector per patch and for [CLS]) or "sincos", the
fixed 2-D sine-cosine embedding of MAE (He et al., 2022) and ViT-22B: a quarter of the channels each for
sin(row), sin(column), cos(row), cos(column) at geometric frequencies, zeros for [CLS]. Its dot products
depend only on the row and column offsets of two patches, so a relation between two positions reads the
same wherever the pair lies in the image; nothing of it is trained (a buffer, not in checkpoints).

Masked patch modeling: `forward(batch, hide=InputMask(...))` replaces the patch embedding of the
selected patches by the mask embedding before the position embeddings and the blocks (BEiT /
SimMIM), so no block ever sees a hidden patch. `Features.inputs` (B, 1 + P, C*p*p) holds each
patch's pixels as the patch projection sees them (after `preprocess`), flattened in the projection's
(C, p, p) order -- `patch_embed(pixels)` is `inputs @ W.flatten(1).T + b` -- and zeros for [CLS].
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from mmbench.checks import raise_problems
from mmbench.models.layers import Activation, Pooling, TransformerStack, cls_pool
from mmbench.models.outputs import Features, InputMask, hide_inputs
from mmbench.models.vision.preprocess import PixelAdapter

if TYPE_CHECKING:
    from mmbench.data.batch import Batch


POSITIONS = ("learned", "sincos")


def sincos_2d(grid: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """The fixed 2-D sine-cosine position embedding of a `grid` x `grid` patch grid, (grid * grid, dim) in
    row-major order: channels [sin(row * w), sin(col * w), cos(row * w), cos(col * w)] for the dim / 4
    frequencies w = temperature ** (-k / (dim / 4)). Written here, not imported, because timm (which has it,
    `build_sincos2d_pos_embed`, same layout; tests/test_vision_encoders.py compares the two) is an optional extra."""
    bands = temperature ** -(torch.arange(dim // 4, dtype=torch.float32) / (dim // 4))  # (dim/4,)
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")  # (grid, grid) each
    angles = torch.stack([rows.flatten(), cols.flatten()], dim=1).float()[:, :, None] * bands  # (N, 2, dim/4)
    return torch.cat([angles.sin(), angles.cos()], dim=1).flatten(1)  # (N, dim)


class PatchEncoder(nn.Module):
    """ViLT/ViT input: linear projection of non-overlapping pixel patches, a [CLS] token and
    position embeddings (learned, or fixed 2-D sin-cos), then `depth` transformer blocks (0 for ViLT)."""

    maskable_inputs = True  # forward(batch, hide=InputMask) hides patches before the blocks

    @classmethod
    def setting_problems(cls, *, dim: int = 0, positions: str = "learned", **settings) -> list[str]:
        if positions not in POSITIONS:
            return [f"positions={positions}: one of {', '.join(POSITIONS)}"]
        if positions == "sincos" and isinstance(dim, int) and dim % 4 != 0:
            return [f"dim={dim}: positions=sincos needs a width divisible by 4 (a quarter per sin/cos of row/column)"]
        return []

    def __init__(
        self,
        dim: int,
        image_size: int,
        patch_size: int,
        depth: int = 0,
        heads: int = 1,
        mlp_ratio: float = 4.0,
        prenorm: bool = True,
        dropout: float = 0.0,
        in_channels: int = 3,
        pooling: Pooling = cls_pool,
        norm_eps: float = 1e-5,
        act_layer: Activation = nn.GELU,
        patch_bias: bool = True,
        embed_norm: bool = False,
        pixel_mean: list[float] | None = None,
        pixel_std: list[float] | None = None,
        positions: str = "learned",
    ):
        super().__init__()
        raise_problems("PatchEncoder", self.setting_problems(dim=dim, positions=positions))
        if image_size % patch_size != 0:
            raise ValueError(f"image_size={image_size} is not divisible by patch_size={patch_size}")
        self.num_patches = (image_size // patch_size) ** 2
        self.patch_size = patch_size
        self.input_dim = in_channels * patch_size**2  # width of Features.inputs: one patch's pixels
        if pixel_mean is None:
            self.preprocess: nn.Module = nn.Identity()
        else:
            assert pixel_std is not None, "pixel_mean is given without pixel_std"
            self.preprocess = PixelAdapter(pixel_mean, pixel_std)
        self.patch_embed = nn.Conv2d(
            in_channels, dim, kernel_size=patch_size, stride=patch_size, bias=patch_bias
        )  # linear per patch
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.position_embeddings: torch.Tensor  # (1, 1 + P, D): [CLS] first
        if positions == "learned":
            self.position_embeddings = nn.Parameter(torch.zeros(1, self.num_patches + 1, dim))
            nn.init.trunc_normal_(self.position_embeddings, std=0.02)
        else:
            fixed = F.pad(sincos_2d(image_size // patch_size, dim), (0, 0, 1, 0))  # (1 + P, D) zeros for [CLS]
            self.register_buffer("position_embeddings", fixed[None], persistent=False)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.drop = nn.Dropout(dropout)
        self.embed_norm = nn.LayerNorm(dim, eps=norm_eps) if embed_norm else nn.Identity()
        self.stack = TransformerStack(dim, depth, heads, mlp_ratio, prenorm, dropout, norm_eps, act_layer)
        self.pooling = pooling

    def forward(self, batch: Batch, hide: InputMask | None = None) -> Features:
        pixels = self.preprocess(batch["pixel_values"])  # (B, C, H, W)
        B = pixels.shape[0]
        patches = F.unfold(pixels, self.patch_size, stride=self.patch_size).transpose(1, 2)  # (B, V-1, C*p*p)
        x = self.patch_embed(pixels).flatten(2).transpose(1, 2)  # (B, V-1, D)
        x = hide_inputs(x, hide, first=1)  # (B, V-1, D) hidden patches -> mask embedding
        x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1) + self.position_embeddings  # (B, V, D)
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)  # (B, V)
        x = self.stack(self.embed_norm(self.drop(x)), mask)  # (B, V, D)
        inputs = F.pad(patches, (0, 0, 1, 0))  # (B, V, C*p*p) zeros for [CLS]
        return Features(x, mask, self.pooling(x, mask), inputs)
