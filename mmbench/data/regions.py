"""Precomputed region features (LXMERT / ViLBERT / VisualBERT style): features and boxes per image.

Two ways in, both ending as the canonical columns `region_feats` (R, F) float32, `boxes` (R, 4)
and optionally `labels` (R,) object classes, which the collator pads into batch keys
`region_feats` (B, R, F), `region_boxes` (B, R, 4), `region_mask` (B, R) [and `region_labels`]:

* dataset columns, mapped with `columns.region_feats` / `columns.boxes` (/ `columns.region_labels`);
* files: `region_dir/<image key>.npz` holding `feats` (or `features`) (R, F), `boxes` (R, 4) and
  optionally `labels` (R,), where the image key is the source image id (`columns.image_id`) or,
  without one, the image file's name without extension.

Boxes are normalised (x0, y0, x1, y1) in [0, 1] of the original image (divide pixel boxes by the
image width / height first, as LXMERT's loader does with img_w / img_h).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

BOX_TOLERANCE = 1e-3  # rounding slack around [0, 1]


class RegionError(ValueError):
    """Region features that cannot be used (missing file, wrong shapes, unnormalised boxes)."""


def check_regions(feats, boxes, labels=None, where: str = "") -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(R, F) float32 features, (R, 4) float32 normalised boxes, optional (R,) int64 labels."""
    feats = np.asarray(feats, dtype=np.float32)
    boxes = np.asarray(boxes, dtype=np.float32)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if feats.ndim != 2:
        raise RegionError(f"region features of {where} must be (R, F), got shape {feats.shape}")
    if boxes.ndim != 2 or boxes.shape[1] != 4 or boxes.shape[0] != feats.shape[0]:
        raise RegionError(f"boxes of {where} must be ({feats.shape[0]}, 4) to match its features, got {boxes.shape}")
    if boxes.size and (boxes.min() < -BOX_TOLERANCE or boxes.max() > 1 + BOX_TOLERANCE):
        raise RegionError(
            f"boxes of {where} are not normalised to [0, 1] (range {boxes.min():.3g}..{boxes.max():.3g}); "
            f"divide (x0, y0, x1, y1) by the image width / height"
        )
    if labels is not None:
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if labels.shape[0] != feats.shape[0]:
            raise RegionError(f"labels of {where} must have {feats.shape[0]} entries, got {labels.shape[0]}")
    return feats, np.clip(boxes, 0.0, 1.0), labels


def load_region_file(region_dir: str | Path, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Features, boxes and labels (or None) of one image from `region_dir/<key>.npz`."""
    path = Path(region_dir) / f"{key}.npz"
    if not path.is_file():
        raise RegionError(f"no region file {path} for image {key!r} (expected <region_dir>/<image key>.npz)")
    with np.load(path) as npz:
        names = set(npz.files)
        feat_key = next((k for k in ("feats", "features") if k in names), None)
        if feat_key is None or "boxes" not in names:
            raise RegionError(
                f"region file {path} must hold 'feats' (or 'features') and 'boxes'; it holds {sorted(names)}"
            )
        labels = npz["labels"] if "labels" in names else None
        return check_regions(npz[feat_key], npz["boxes"], labels, where=str(path))
