"""Region (object) vision inputs: LXMERT / ViLBERT / VisualBERT / UNITER style.

One image token per object box, the average of two LayerNorm'd projections of its appearance feature and its
box geometry (LXMERT's visual feature encoder, Tan & Bansal, 2019, sec. 2.1), after an optional learned [IMG]
token, then `depth` transformer blocks over [IMG; regions] with the key padding mask:

    token_r = (LN(W_f f_r) + LN(W_b g(box_r))) / 2
    Features(tokens (B, 1 + R, D), mask (B, 1 + R) = [True] + region_mask, pooled (B, D))

`RegionFeatureEncoder` reads f_r precomputed (`region_feats` (B, R, F)); `RegionEncoder` computes them end to
end (one CNN pass, RoIAlign at `region_boxes`). Padded regions may hold anything, even NaN: they are zeroed
before use. `forward(batch, hide=InputMask(...))` hides regions' appearance embeddings for MRM and keeps their
boxes. The reference models' options and the reasons: docs/models.md (Region inputs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from torchvision.ops import roi_align

from mmbench.models.layers import Pooling, TransformerStack, masked_mean
from mmbench.models.outputs import Features, InputMask, hide_inputs
from mmbench.models.vision.conv import Backbone

if TYPE_CHECKING:
    from mmbench.data.batch import Batch


class BoxEmbedding(nn.Module):
    """Geometry embedding of normalised boxes (x0, y0, x1, y1) in [0, 1]: Linear -> LayerNorm.

    LXMERT's box_fc sees the 4 coordinates; we use UNITER's 7-d geometry (x0, y0, x1, y1, w, h,
    w*h). w and h are linear in the coordinates; the area is the one non-linear extra.
    """

    num_features = 7

    def __init__(self, dim: int, norm_eps: float = 1e-5):
        super().__init__()
        self.fc = nn.Linear(self.num_features, dim)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)

    @staticmethod
    def geometry(boxes: torch.Tensor) -> torch.Tensor:
        x0, y0, x1, y1 = boxes.unbind(-1)  # each (B, R)
        w, h = x1 - x0, y1 - y0
        return torch.stack([x0, y0, x1, y1, w, h, w * h], dim=-1)  # (B, R, 7)

    def forward(self, boxes: torch.Tensor) -> torch.Tensor:
        return self.norm(self.fc(self.geometry(boxes)))  # (B, R, 4) -> (B, R, D)


class RegionEmbedding(nn.Module):
    """LXMERT visual feature encoder: (LN(fc(feats)) + LN(fc(box))) / 2; LN(fc(feats)) without boxes."""

    def __init__(self, feat_dim: int, dim: int, boxes: bool = True, norm_eps: float = 1e-5):
        super().__init__()
        self.feat_fc = nn.Linear(feat_dim, dim)
        self.feat_norm = nn.LayerNorm(dim, eps=norm_eps)
        self.box = BoxEmbedding(dim, norm_eps) if boxes else None

    def forward(
        self, feats: torch.Tensor, boxes: torch.Tensor, hide: InputMask | None = None, first: int = 0
    ) -> torch.Tensor:
        """feats (B, R, F), boxes (B, R, 4) -> (B, R, D). `hide` (over output tokens first .. first+R-1)
        replaces the appearance embedding of the selected regions; their box embedding stays."""
        x = hide_inputs(self.feat_norm(self.feat_fc(feats)), hide, first)  # (B, R, D)
        return x if self.box is None else (x + self.box(boxes)) / 2


class RegionFeatureEncoder(nn.Module):
    """Precomputed region features (B, R, F) + boxes -> [IMG; regions] tokens, `depth` blocks."""

    needs_regions = True
    batch_fields = (
        "region_feats",
        "region_boxes",
        "region_mask",
    )  # what forward reads; config validation checks the data has them
    maskable_inputs = True  # forward(batch, hide=InputMask) hides region features before the blocks

    def __init__(
        self,
        dim: int,
        feat_dim: int,
        depth: int = 0,
        heads: int = 1,
        mlp_ratio: float = 4.0,
        prenorm: bool = True,
        dropout: float = 0.0,
        pooling: Pooling = masked_mean,
        img_token: bool = True,
        boxes: bool = True,
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        self.embed = RegionEmbedding(feat_dim, dim, boxes=boxes, norm_eps=norm_eps)
        self.input_dim = feat_dim  # width of Features.inputs: a region's appearance feature
        self.num_extra = int(img_token)  # 1: a learned [IMG] token first, 0: regions only
        self.img_token = nn.Parameter(torch.zeros(1, self.num_extra, dim))
        nn.init.trunc_normal_(self.img_token, std=0.02)
        self.drop = nn.Dropout(dropout)
        self.stack = TransformerStack(dim, depth, heads, mlp_ratio, prenorm, dropout, norm_eps)
        self.pooling = pooling

    def forward(self, batch: Batch, hide: InputMask | None = None) -> Features:
        region_mask = batch["region_mask"].bool()  # (B, R)
        B, E = region_mask.shape[0], self.num_extra
        real = region_mask[..., None]  # (B, R, 1)
        boxes = torch.where(real, batch["region_boxes"], 0.0)  # (B, R, 4) padding -> 0 (NaN-safe)
        feats = torch.where(real, batch["region_feats"], 0.0)  # (B, R, F)
        regions = self.embed(feats, boxes, hide, first=E)  # (B, R, D) hidden regions: mask embedding + box
        x = torch.cat([self.img_token.expand(B, -1, -1), regions], dim=1)  # (B, E+R, D)
        mask = torch.cat([region_mask.new_ones(B, E), region_mask], dim=1)  # (B, E+R)
        x = self.stack(self.drop(x), mask)  # (B, E+R, D)
        inputs = torch.cat([feats.new_zeros(B, E, feats.shape[-1]), feats], dim=1)  # (B, E+R, F) zeros for [IMG]
        return Features(x, mask, self.pooling(x, mask), inputs)


class RegionEncoder(nn.Module):
    """End-to-end regions: CNN once per image, RoIAlign at the boxes, then `RegionFeatureEncoder`.

    `backbone` maps (B, 3, H, W) -> (B, C, H/stride, W/stride) and exposes `out_channels` and
    `stride` (e.g. `ConvBackbone`). Boxes are normalised, so they are scaled by `image_size` to
    pixels and by 1/stride (RoIAlign's `spatial_scale`) to the feature map; `aligned=True` puts
    pixel centres at +0.5 so that a box [0, 1] covers exactly the whole image.
    """

    needs_regions = True
    batch_fields = (
        "pixel_values",
        "region_boxes",
        "region_mask",
    )  # what forward reads; config validation checks the data has them
    maskable_inputs = True  # forward(batch, hide=InputMask) hides RoI features before the blocks

    def __init__(
        self,
        dim: int,
        backbone: Backbone,
        image_size: int,
        roi_size: int = 4,
        sampling_ratio: int = 2,
        depth: int = 0,
        heads: int = 1,
        mlp_ratio: float = 4.0,
        prenorm: bool = True,
        dropout: float = 0.0,
        pooling: Pooling = masked_mean,
        boxes: bool = True,
    ):
        super().__init__()
        self.backbone = backbone
        self.image_size = image_size
        self.roi_size = roi_size
        self.sampling_ratio = sampling_ratio  # fixed samples per bin: cost independent of box size
        self.regions = RegionFeatureEncoder(
            dim, backbone.out_channels, depth, heads, mlp_ratio, prenorm, dropout, pooling, boxes=boxes
        )  # boxes=False: no box geometry embedding; a region's place is then only what its RoI feature shows
        self.input_dim = self.regions.input_dim  # width of Features.inputs: a region's RoI-pooled CNN feature

    def roi_features(self, fmap: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Average RoIAlign feature of each box: fmap (B, C, h, w), boxes (B, R, 4) normalised -> (B, R, C)."""
        B, R, _ = boxes.shape
        C = fmap.shape[1]
        index = torch.arange(B, device=fmap.device, dtype=fmap.dtype).repeat_interleave(R)  # (B*R,) image of each box
        rois = torch.cat([index[:, None], boxes.reshape(B * R, 4).to(fmap.dtype) * self.image_size], dim=1)  # (B*R, 5)
        pooled = roi_align(
            fmap,
            rois,
            output_size=self.roi_size,
            spatial_scale=1.0 / self.backbone.stride,
            sampling_ratio=self.sampling_ratio,
            aligned=True,
        )  # (B*R, C, r, r)
        return pooled.mean(dim=(2, 3)).view(B, R, C)

    def forward(self, batch: Batch, hide: InputMask | None = None) -> Features:
        pixels, region_mask = batch["pixel_values"], batch["region_mask"].bool()  # (B, 3, H, W), (B, R)
        if pixels.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"images are {tuple(pixels.shape[-2:])} but the region encoder was built for "
                f"image_size={self.image_size} (it scales normalised boxes by it); set it to data.image_size"
            )
        boxes = torch.where(region_mask[..., None], batch["region_boxes"], 0.0)  # (B, R, 4) padding -> empty box
        feats = self.roi_features(self.backbone(pixels), boxes)  # (B, R, C)
        return self.regions({"region_feats": feats, "region_boxes": boxes, "region_mask": region_mask}, hide)
