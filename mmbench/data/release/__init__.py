"""Benchmarks read from the files their authors release (`data=<benchmark> data.root=<dir>`): COCO and
Flickr30k with Karpathy's splits, VQAv2, SNLI-VE, Hateful Memes.

    layouts  each benchmark's files under data.root, its reader and its published split sizes (`LAYOUTS`)
    build    `build_release`: read, convert (the HF converter) and cache; `config_problems`, `provided_fields`
"""

from __future__ import annotations

from mmbench.data.release.build import build_release, config_problems, layout_problems, provided_fields, split_sizes
from mmbench.data.release.layouts import LAYOUTS, Layout

__all__ = ["LAYOUTS", "Layout", "build_release", "config_problems", "layout_problems", "provided_fields", "split_sizes"]
