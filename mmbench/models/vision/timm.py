"""Pretrained vision encoder from timm (any `timm.create_model` backbone: ViT, ResNet, ConvNeXt, ...).

    Features(tokens (B, N, D), mask (B, N) all True, pooled (B, D))

Token features are `forward_features`: a ViT's token sequence, or a CNN's final feature map with
one token per cell. `pooled` is the model's own head input (`forward_head(pre_logits=True)`: [CLS]
or global average pool). Weights: `pretrained=true` loads timm's default source (the hub; not in
tests), `checkpoint=<file>` a local weight file (through `pretrained_cfg_overlay=dict(file=...)`).
Pixels are mapped from [-1, 1] to the model's `pretrained_cfg` mean/std and resized to its input
size when the model needs a fixed one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, cast

import torch
from torch import nn

from mmbench.models.layers import Pooling
from mmbench.models.outputs import Features
from mmbench.models.vision.preprocess import PixelAdapter

if TYPE_CHECKING:
    from mmbench.data.batch import Batch


class TimmModel(Protocol):
    """What this encoder uses of a timm model (`timm.create_model` is annotated as returning a plain
    `nn.Module`; every timm model has these)."""

    pretrained_cfg: dict[str, Any]
    num_features: int

    def forward_features(self, x: torch.Tensor) -> torch.Tensor: ...

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor: ...


class TimmEncoder(nn.Module):
    needs_regions = False
    # the pretrained model embeds its own patches inside one call: no hook to hide input tokens before its
    # blocks, so masked region modeling (MRM) is refused (MultimodalModel.encode_image, config validation)
    maskable_inputs = False

    def __init__(
        self,
        name: str,
        dim: int,
        pretrained: bool = False,
        checkpoint: str | None = None,
        pooling: Pooling | None = None,
        resize: bool | None = None,
        model_kwargs: dict | None = None,
    ):
        super().__init__()
        import timm

        kwargs = dict(model_kwargs or {})
        if checkpoint is not None:
            pretrained = True
            kwargs["pretrained_cfg_overlay"] = dict(file=str(checkpoint))
        self.model = cast(TimmModel, timm.create_model(name, pretrained=pretrained, num_classes=0, **kwargs))
        self.name = name
        cfg = self.model.pretrained_cfg
        fixed = getattr(self.model, "patch_embed", None) is not None and not getattr(
            self.model, "dynamic_img_size", False
        )
        resize = fixed if resize is None else resize
        input_size = tuple(
            getattr(getattr(self.model, "patch_embed", None), "img_size", None) or cfg["input_size"][-2:]
        )
        self.preprocess = PixelAdapter(
            cfg.get("mean", (0.5,) * 3), cfg.get("std", (0.5,) * 3), size=input_size if resize else None
        )
        width = self.model.num_features
        self.proj = nn.Linear(width, dim) if width != dim else nn.Identity()
        self.pooling = pooling

    def forward(self, batch: Batch) -> Features:
        feats = self.model.forward_features(self.preprocess(batch["pixel_values"]))
        pooled = self.model.forward_head(feats, pre_logits=True) if self.pooling is None else None  # (B, C)
        if feats.dim() == 4:  # CNN feature map (B, C, h, w) -> one token per cell
            feats = feats.flatten(2).transpose(1, 2)  # (B, h*w, C)
        mask = torch.ones(feats.shape[:2], dtype=torch.bool, device=feats.device)
        if self.pooling is not None:
            pooled = self.pooling(feats, mask)
        return Features(self.proj(feats), mask, self.proj(pooled))
