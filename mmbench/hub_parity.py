"""Inputs on which a model imported from the HF hub (`model.init_from`) and its HF reference compute the
same function, and the imported model built as a run builds it.

Shared by tests/test_weight_import.py and tests/test_decoder.py (numerical parity of every family) and
`scripts/bench_throughput.py --hf` (speed at identical dims and weights), so that the input conventions
are written once:

- text: ids drawn above the special ids (0..6, `DataInfo.of_vocab`) and below the CLIP BOS / EOS ids
  (vocab - 2, vocab - 1); the second sequence padded from two thirds of its length on;
- CLIP text: BOS first and EOS ending every sequence, as CLIP's tokenizer does (both sides pool there);
- CLIP pixels: HF receives the data's [-1, 1] pixels normalised with CLIP's statistics (mmbench's
  vision encoder does the same inside);
- regions: precomputed features and (x0, y0, x1, y1) boxes in [0, 1]; the second example's regions
  padded from three fifths of their number on.

It builds models with the builder, so it lives beside the builder, not in `models/` (which the builder imports).
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from mmbench.builder import build_model
from mmbench.data.datamodule import DataInfo
from mmbench.data.tokenizer import SPECIAL_TOKENS
from mmbench.models.convert.clip import CLIP_MEAN, CLIP_STD
from mmbench.models.model import MultimodalModel

NUM_SPECIAL = len(SPECIAL_TOKENS)  # ids 0..6 (`DataInfo.of_vocab`)


def build_imported(cfg: DictConfig, vocab_size: int) -> MultimodalModel:
    """The model of a composed config with `model.init_from` set, as `build_model` builds it (eval mode)."""
    info = DataInfo.of_vocab(vocab_size, max_text_len=cfg.data.max_text_len, image_size=cfg.data.image_size)
    return build_model(cfg, info).eval()


def text_inputs(batch: int, length: int, vocab: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (B, T) long; the second sequence is padded."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(NUM_SPECIAL, vocab - 2, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    if batch > 1:
        mask[1, (2 * length) // 3 :] = 0
    return ids, mask


def clip_text(ids: torch.Tensor, mask: torch.Tensor, vocab: int) -> torch.Tensor:
    """`ids` with CLIP's BOS (vocab - 2) first and EOS (vocab - 1) at every sequence's last real token."""
    ids = ids.clone()
    ids[:, 0] = vocab - 2
    last = mask.sum(dim=1) - 1  # (B,)
    ids[torch.arange(ids.shape[0]), last] = vocab - 1
    return ids


def clip_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """The data's [-1, 1] pixels (B, 3, H, W) -> CLIP's normalisation, what HF's CLIP vision model expects."""
    mean = pixels.new_tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = pixels.new_tensor(CLIP_STD).view(1, 3, 1, 1)
    return ((pixels + 1) / 2 - mean) / std


def pixel_inputs(batch: int, image_size: int, seed: int = 0) -> torch.Tensor:
    """(B, 3, S, S) pixels in [-1, 1], the data's range."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, image_size, image_size, generator=g) * 2 - 1


def region_inputs(batch: int, regions: int, feat_dim: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """`region_feats` (B, R, F), `region_boxes` (B, R, 4) and `region_mask` (B, R) bool; the second example padded."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(batch, regions, 2, generator=g) * 0.5
    boxes = torch.cat([xy, xy + 0.1 + torch.rand(batch, regions, 2, generator=g) * 0.4], dim=-1)  # (B, R, 4)
    region_mask = torch.ones(batch, regions, dtype=torch.bool)
    if batch > 1:
        region_mask[1, (3 * regions) // 5 :] = False
    feats = torch.randn(batch, regions, feat_dim, generator=g)
    return {"region_feats": feats, "region_boxes": boxes, "region_mask": region_mask}
