"""`build_shapes`, the Shapes data source: the splits of a config, generated once and cached as Arrow
(HF `datasets`) under `<cache_dir>/shapes-<config hash>`; later calls load the cache."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import datasets

from mmbench.data import cache as data_cache
from mmbench.data.shapes.generate import GENERATOR_VERSION, generate_shapes
from mmbench.data.shapes.settings import shapes_config

log = logging.getLogger(__name__)


def shapes_config_hash(**kwargs) -> str:
    """16 hex chars identifying a generator config (and GENERATOR_VERSION)."""
    payload = json.dumps({"config": kwargs, "generator_version": GENERATOR_VERSION}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _is_complete(directory: Path, config: dict) -> bool:
    try:
        saved = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return saved == config and (directory / "dataset_dict.json").is_file()


def build_shapes(cache_dir: str | os.PathLike, **settings) -> tuple[datasets.DatasetDict, Path]:
    """The Shapes benchmark of `settings` (`ShapesSettings`) as a DatasetDict, and its cache directory
    `<cache_dir>/shapes-<hash>`.

    Loads the cache when it is complete; otherwise generates the data, saves it into a temporary
    sibling directory and renames that into place, so a crash never leaves a cache that loads. A cache
    entry that fails to load (a truncated Arrow file) is regenerated, with a warning naming it; orphaned
    temporary directories of interrupted builds are removed (`mmbench.data.cache`).
    """
    config = shapes_config(**settings)
    root = Path(cache_dir)
    target = root / f"shapes-{shapes_config_hash(**config)}"
    if _is_complete(target, config):
        try:
            return _load(target), target
        except data_cache.LOAD_ERRORS as err:  # a truncated / damaged file: generated data, so rebuild it
            log.warning("the cached Shapes data %s is damaged (%s); regenerating it", target, data_cache.describe(err))
            shutil.rmtree(target, ignore_errors=True)
    _write_atomically(generate_shapes(config), config, target)
    return _load(target), target


def _load(target: Path) -> datasets.DatasetDict:
    """The cached splits; raises one of `data_cache.LOAD_ERRORS` when a file of the entry is damaged."""
    dsd = datasets.load_from_disk(str(target))
    for split in dsd.values():
        len(split)  # the Arrow tables are opened (and their metadata read) here
    return dsd


def _write_atomically(dsd: datasets.DatasetDict, config: dict, target: Path) -> None:
    with data_cache.temporary_sibling(target) as tmp:  # removes orphans of interrupted builds first
        bars_were_disabled = datasets.are_progress_bars_disabled()
        datasets.disable_progress_bars()  # a few fast local writes; keep logs clean
        try:
            dsd.save_to_disk(str(tmp))
        finally:
            if not bars_were_disabled:
                datasets.enable_progress_bars()
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        data_cache.publish(tmp, target, lambda t: _is_complete(t, config))
