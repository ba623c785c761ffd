"""`build_release`: a benchmark read from its released files under `data.root` (`layouts.LAYOUTS`),
converted once into the canonical columns by the HF converter and cached like any converted source;
plus what config validation asks a data source (`config_problems`, `provided_fields`), answered from
the config and the file system alone, before anything is read or built."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import datasets
import pyarrow.compute as pc

from mmbench.data import columns as schema
from mmbench.data.errors import DataError
from mmbench.data.hf.build import (
    cached_entry,
    convert_source,
    hf_config_hash,
    mapped_columns,
    report_stats,
    storage_problems,
    storage_settings,
)
from mmbench.data.hf.convert import CONVERTER_VERSION
from mmbench.data.hf.roles import Columns
from mmbench.data.hf.splits import SPLITS
from mmbench.data.release.layouts import LAYOUTS, Layout, Rows

log = logging.getLogger(__name__)

READER_VERSION = 1  # bump when a reader's rows change; part of the cache key


def _layout(benchmark: str) -> Layout:
    if benchmark not in LAYOUTS:
        raise DataError(f"data.source.benchmark={benchmark!r}; release readers: {sorted(LAYOUTS)}")
    return LAYOUTS[benchmark]


def _root(root) -> Path:
    return Path(os.path.expanduser(str(root))).resolve()


def layout_problems(benchmark: str, root) -> list[str]:
    """What is missing from `root` for `benchmark`'s layout: each file / folder named, with the layout
    expected and, for a file found one or two levels down, where it is."""
    layout = _layout(benchmark)
    if not root:
        return [f"data.root is not set: give the directory that holds {layout.expected()} (docs/data.md, {benchmark})"]
    base = _root(root)
    if not base.is_dir():
        return [f"data.root={root}: no such directory (it should hold {layout.expected()})"]
    missing = [f for f in layout.files if not (base / f).is_file()]
    missing += [f"{d}/" for d in layout.image_dirs if not (base / d).is_dir()]
    if not missing:
        return []
    hints = []
    for name in missing:
        found = next(
            iter(sorted(base.glob(f"*/{name.rstrip('/')}")) + sorted(base.glob(f"*/*/{name.rstrip('/')}"))), None
        )
        if found is not None:
            hints.append(f"{name} is at {found} (move it to {base}/)")
    return [
        f"data={benchmark}: {base} lacks {', '.join(missing)}; the layout expected under data.root is "
        f"{layout.expected()} (docs/data.md)" + (f". {'; '.join(hints)}" if hints else "")
    ]


def config_problems(*, benchmark: str, root=None, **settings) -> list[str]:
    """What is wrong with a release source config, from the config and the file system (no file is read)."""
    if benchmark not in LAYOUTS:
        return [f"data.source.benchmark={benchmark!r}; release readers: {sorted(LAYOUTS)}"]
    return storage_problems(**settings) + layout_problems(benchmark, root)


def provided_fields(*, benchmark: str, **_settings) -> frozenset[str]:
    """Batch fields the benchmark yields (from its layout's column mapping)."""
    return schema.fields_from(mapped_columns(columns=_layout(benchmark).columns))


def _identity(layout: Layout, base: Path) -> list:
    """(file, size, mtime_ns) of the annotation files and the image folders (a folder's mtime changes when
    files are added or removed in it): part of the cache key. Images edited in place are not seen."""
    entries = []
    for name in (*layout.files, *layout.optional, *layout.image_dirs):
        path = base / name
        if path.exists():
            st = path.stat()
            entries.append([name, st.st_size if path.is_file() else None, st.st_mtime_ns])
    return entries


def _first_images(rows: Rows, max_images: int | None) -> Rows:
    """Per reader split, the rows of its first `max_images` images (in file order)."""
    if max_images is None:
        return rows
    out: Rows = {}
    for split, split_rows in rows.items():
        kept: set = set()
        out[split] = []
        for row in split_rows:
            if row["image_id"] not in kept and len(kept) >= max_images:
                continue
            kept.add(row["image_id"])
            out[split].append(row)
    return out


def build_release(
    cache_dir: str | os.PathLike,
    *,
    benchmark: str,
    root,
    image_size: int,
    max_images: int | None = None,
    val_fraction: float = 0.05,
    bad_images: str = "raise",
    seed: int = 0,
    image_format: str = "jpeg",
    jpeg_quality: int = 90,
    num_proc: int | None = None,
) -> tuple[datasets.DatasetDict, Path]:
    """The benchmark's canonical splits (train / val / test), converted once into `<cache_dir>/<benchmark>-<hash>`.

    max_images: the first N images of every split (a quick look at real data). val_fraction: of train's
    images, carved (seeded) when the benchmark has no public val answers (VQAv2). image_format /
    jpeg_quality: how images are stored; num_proc: conversion threads (null: every core).
    """
    problems = config_problems(
        benchmark=benchmark, root=root, image_format=image_format, jpeg_quality=jpeg_quality, num_proc=num_proc
    )
    if problems:
        raise DataError("; ".join(problems))
    layout = LAYOUTS[benchmark]
    base = _root(root)
    cols = Columns.parse(layout.columns)
    settings = {
        "benchmark": benchmark,
        "root": str(base),
        "identity": _identity(layout, base),
        "image_size": int(image_size),
        **storage_settings(image_format, jpeg_quality),
        "max_images": max_images,
        "val_fraction": val_fraction,
        "bad_images": bad_images,
        "seed": seed,
        "converter_version": CONVERTER_VERSION,
        "reader_version": READER_VERSION,
    }
    target = Path(cache_dir) / f"{benchmark}-{hf_config_hash(settings)}"

    def convert_into(tmp: Path) -> dict:
        log.info("reading %s from %s", benchmark, base)
        rows = _first_images(layout.read(base), max_images)
        loaded = {split: datasets.Dataset.from_list(r) for split, r in rows.items() if r}
        return convert_source(
            tmp,
            loaded,
            cols,
            path=str(base),
            splits=layout.splits,
            split_column=None,
            max_samples=None,  # max_images was applied to whole images above
            streaming=False,
            val_fraction=val_fraction,
            test_fraction=0.0,  # every benchmark names its test split
            root=base,  # image paths are relative to data.root
            region_dir=None,
            bad_images=bad_images,
            seed=seed,
            image_size=int(image_size),
            image_format=image_format,
            jpeg_quality=jpeg_quality,
            num_proc=num_proc,
        )

    dsd, stats = cached_entry(target, settings, convert_into, what=f"{benchmark} at {base}")
    report_stats(stats, target, what=f"{benchmark} at {base}", text_column=cols.text or cols.question)
    log_sizes(benchmark, layout, dsd, capped=max_images is not None, target=target)
    return dsd, target


def split_sizes(dsd) -> dict[str, tuple[int, int]]:
    """(images, examples) per split of a converted dataset (examples: its captions / questions / statements)."""
    return {
        s: (len(dsd[s]), int(pc.sum(pc.list_value_length(dsd[s].data.column("captions"))).as_py() or 0)) for s in SPLITS
    }


_SIZES_LOGGED: set[str] = set()  # cache entries whose sizes this process has logged


def log_sizes(benchmark: str, layout: Layout, dsd, *, capped: bool, target: Path | None = None) -> None:
    """One line per split: what was read, beside what the benchmark's papers report (once per process and
    cache entry: the datamodule loads the source for each stage)."""
    if target is not None:
        if str(target) in _SIZES_LOGGED:
            return
        _SIZES_LOGGED.add(str(target))
    for split, (images, examples) in split_sizes(dsd).items():
        published = layout.published.get(split)
        if published is None:
            note = "carved from train" if layout.splits.get(split) is None else "no published size"
        else:
            shown = "" if published[0] is None else f"{published[0]:,} images, "
            note = f"published {shown}{published[1]:,} {layout.examples}"
            if (published[0] not in (None, images) or examples != published[1]) and not capped:
                note += " -- DIFFERS"
        log.info(
            "%s %s: %s images, %s %s (%s)", benchmark, split, f"{images:,}", f"{examples:,}", layout.examples, note
        )
