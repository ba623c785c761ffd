"""`build_hf`, the HF data source: the canonical splits of a source config, converted once into
`<cache_dir>/hf-<hash>` (the hash covers the source config, the converter version and the data's
identity) and memory-mapped on later runs; plus what config validation asks a data source
(`config_problems`, `provided_fields`), answered from the config alone."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import datasets

from mmbench.config import ConfigError
from mmbench.data import cache as data_cache
from mmbench.data import columns as schema
from mmbench.data.errors import DataError  # a ConfigError: the CLI prints one message, exit code 2
from mmbench.data.hf.convert import CONVERTER_VERSION, _Converter
from mmbench.data.hf.loading import LOCAL_BUILDERS, _is_local, _local_identity, load_source
from mmbench.data.hf.roles import Columns, _check_columns, _plain
from mmbench.data.hf.splits import SPLITS, _select_splits
from mmbench.data.image_codec import IMAGE_FORMATS

log = logging.getLogger(__name__)

BAD_IMAGE_POLICIES = ("raise", "skip")


def hf_config_hash(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def storage_problems(*, image_format=None, jpeg_quality=None, num_proc=None, **_settings) -> list[str]:
    """What is wrong with how a converted source stores its images and how many threads convert them."""
    problems = []
    if image_format is not None and image_format not in IMAGE_FORMATS:
        problems.append(f"data.source.image_format={image_format}; valid formats: {list(IMAGE_FORMATS)}")
    if jpeg_quality is not None and (
        isinstance(jpeg_quality, bool) or not isinstance(jpeg_quality, int) or not 1 <= jpeg_quality <= 100
    ):
        problems.append(f"data.source.jpeg_quality={jpeg_quality}: must be an integer in [1, 100] (90: the default)")
    if num_proc is not None and (isinstance(num_proc, bool) or not isinstance(num_proc, int) or num_proc < 1):
        problems.append(f"data.num_proc={num_proc}: must be a thread count >= 1 (null: every core)")
    return problems


def config_problems(*, path: str | None = None, unsupported: str | None = None, **settings) -> list[str]:
    """What is wrong with a `build_hf` config, from the config alone (no hub, no file is read). A preset
    whose source cannot be read (a hub copy that is a dataset loading script, NLVR2's image pairs) says
    why in `unsupported`, which is the whole answer: nothing else about such a source matters."""
    if unsupported:
        return [str(unsupported)]
    problems = storage_problems(**settings)
    if problems:
        return problems
    if not path:
        return [
            "data.source.path is not set: give a hub dataset id or a local directory / file "
            "(e.g. data.source.path=/data/my_images)"
        ]
    text = str(path)
    local = text.startswith(("/", "./", "../", "~")) or Path(text).suffix.lower() in LOCAL_BUILDERS
    if local and not Path(os.path.expanduser(text)).exists():
        return [f"data.source.path={text}: no such file or directory (a local path; a hub id looks like owner/name)"]
    return []


def mapped_columns(*, columns=None, region_dir: str | None = None) -> frozenset[str]:
    """The canonical columns (`mmbench.data.columns`) a column mapping asks `build_hf` for, known from the
    mapping alone (`pixels` only when images are mapped: without, they are blank)."""
    cols = _plain(columns) or {}
    written = {"image_id", "image_size", "captions"}
    if cols.get("image", "image"):
        written.add("pixels")
    if cols.get("image_right"):
        written.add("pixels_right")
    if cols.get("question") and (cols.get("answers") or cols.get("answer")):  # a question needs its answers
        written |= {"questions", "answers", "all_answers"}
        if cols.get("question_type"):
            written.add("question_types")
    if cols.get("label"):
        written.add("caption_labels")
    # mapped boxes are declared even without region features, which the converter needs to write them
    # (`_Converter._regions`): validation accepts boxes-only mappings as it always has
    if cols.get("boxes") or region_dir:
        written.add("boxes")
    if cols.get("region_feats") or region_dir:
        written.add("region_feats")
    if cols.get("region_labels"):
        written.add("labels")
    return frozenset(written)


def provided_fields(*, columns=None, region_dir: str | None = None, **_settings) -> frozenset[str]:
    """Batch fields (`mmbench.data.columns.FIELDS`) this source config yields, known from its column
    mapping alone: config validation compares them with the fields the encoders and objectives read."""
    return schema.fields_from(mapped_columns(columns=columns, region_dir=region_dir))


def build_hf(
    cache_dir: str | os.PathLike,
    *,
    path: str,
    image_size: int,
    name: str | None = None,
    data_dir: str | None = None,
    data_files=None,
    revision: str | None = None,
    columns=None,
    splits=None,
    split_column: str | None = None,
    val_fraction: float = 0.05,
    test_fraction: float = 0.1,
    image_root: str | None = None,
    region_dir: str | None = None,
    streaming: bool = False,
    max_samples: int | None = None,
    bad_images: str = "raise",
    offline: bool = False,
    hf_cache_dir: str | None = None,
    seed: int = 0,
    unsupported: str | None = None,
    image_format: str = "jpeg",
    jpeg_quality: int = 90,
    num_proc: int | None = None,
) -> tuple[datasets.DatasetDict, Path]:
    """A HF dataset (hub id or local data) in the canonical columns, and its cache directory.

    Returns (DatasetDict with train / val / test, `<cache_dir>/hf-<hash>`). See the module doc.
    `unsupported`: why this source cannot be read (set by presets; see `config_problems`): refused before
    anything is loaded. image_format / jpeg_quality: how images are stored (`mmbench.data.image_codec`);
    num_proc: conversion threads (null: every core); the converted data does not depend on it.
    """
    if unsupported:
        raise DataError(str(unsupported))
    problems = storage_problems(image_format=image_format, jpeg_quality=jpeg_quality, num_proc=num_proc)
    if problems:
        raise DataError("; ".join(problems))
    if not path:
        raise DataError(
            "data.source.path is not set: give a hub dataset id or a local directory / file "
            "(e.g. data.source.path=/data/my_images)"
        )
    if bad_images not in BAD_IMAGE_POLICIES:
        raise DataError(f"data.source.bad_images={bad_images!r}; valid policies: {list(BAD_IMAGE_POLICIES)}")
    cols = Columns.parse(columns if columns is not None else {})
    splits = _plain(splits) or {"train": "train", "val": "validation", "test": "test"}
    if not cols.image and not (cols.region_feats or region_dir):
        raise DataError("data.source.columns.image is null and there are no region features: nothing to see")
    if not (cols.text or cols.question):
        raise DataError("data.source.columns needs a text or a question column (both are null)")
    local = _is_local(path)
    root = (
        Path(os.path.expanduser(image_root))
        if image_root
        else (
            Path(os.path.expanduser(path))
            if local and Path(os.path.expanduser(path)).is_dir()
            else Path(os.path.expanduser(path)).parent
            if local
            else None
        )
    )
    settings = {
        "path": str(Path(os.path.expanduser(path)).resolve()) if local else path,
        "name": name,
        "data_dir": data_dir,
        "data_files": _plain(data_files),
        "revision": revision,
        "columns": cols.used(),
        "splits": splits,
        "split_column": split_column,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "image_root": str(root) if root else None,
        "region_dir": str(Path(os.path.expanduser(region_dir)).resolve()) if region_dir else None,
        "streaming": streaming,
        "max_samples": max_samples,
        "bad_images": bad_images,
        "image_size": int(image_size),
        **storage_settings(image_format, jpeg_quality),
        "seed": seed,
        "converter_version": CONVERTER_VERSION,
    }
    base = Path(cache_dir)
    loaded = None
    # the source, loaded at most once: here for a hub id (its fingerprints are part of the cache key), below
    # for local data only when the cache entry has to be (re)built
    load = functools.partial(
        load_source,
        path,
        name=name,
        data_dir=data_dir,
        data_files=data_files,
        revision=revision,
        streaming=streaming,
        offline=offline,
        hf_cache_dir=hf_cache_dir,
    )
    if local:
        settings["identity"] = _local_identity(path, data_files, None)
    else:
        loaded = load()
        settings["identity"] = (
            {s: getattr(d, "_fingerprint", None) for s, d in loaded.items()} if not streaming else None
        )
    if region_dir:
        settings["region_identity"] = _local_identity(region_dir, None, None)
    target = base / f"hf-{hf_config_hash(settings)}"

    def convert_into(tmp: Path) -> dict:
        nonlocal loaded
        if loaded is None:
            loaded = load()
        return convert_source(
            tmp,
            loaded,
            cols,
            path,
            splits,
            split_column,
            max_samples,
            streaming,
            val_fraction,
            test_fraction,
            root,
            region_dir,
            bad_images,
            seed,
            int(image_size),
            image_format,
            jpeg_quality,
            num_proc,
        )

    dsd, stats = cached_entry(target, settings, convert_into, what=repr(path))
    report_stats(stats, target, what=path, text_column=cols.text)
    return dsd, target


def storage_settings(image_format: str, jpeg_quality: int) -> dict:
    """The part of a cache key that says how images are stored (quality only matters for JPEG)."""
    return {"image_format": image_format, **({"jpeg_quality": int(jpeg_quality)} if image_format == "jpeg" else {})}


def cached_entry(
    target: Path, settings: dict, convert_into: Callable[[Path], dict], *, what: str
) -> tuple[datasets.DatasetDict, dict]:
    """The splits and stats of the cache entry `target` for `settings`, converted first when it is missing,
    written for other settings, or damaged. `convert_into(partial)` writes the splits' Arrow files into
    `partial` and returns the stats (with `files`: per split, its files in row order); the entry is built
    in a resumable sibling (`data_cache.resumable_sibling`: an interrupted conversion continues, a second
    process waits for the first) and renamed into place. Shared by every converted source: `build_hf`,
    `mmbench.data.release.build_release`."""
    damaged = None  # why a complete-looking cache entry does not load
    if _is_complete(target, settings):
        try:
            return _load_entry(target)
        except data_cache.LOAD_ERRORS as err:
            damaged = data_cache.describe(err)
            log.warning("the cached dataset %s is damaged (%s); converting %s again", target, damaged, what)
    try:
        with data_cache.resumable_sibling(target) as partial:
            if not damaged and _is_complete(target, settings):  # another process converted it while we waited
                return _load_entry(target)
            expected = json.dumps(settings, indent=2, sort_keys=True, default=str) + "\n"
            begun = partial / "config.json"
            if begun.is_file() and begun.read_text() != expected:  # cannot happen short of a hash collision
                shutil.rmtree(partial / "shards", ignore_errors=True)
            if (partial / "shards").is_dir():
                log.info("continuing the interrupted conversion of %s in %s", what, partial)
            (partial / "stats.json").unlink(missing_ok=True)
            begun.write_text(expected)
            stats = convert_into(partial)
            (partial / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")  # written last: complete
            data_cache.publish(partial, target, lambda t: _is_complete(t, settings), damaged=bool(damaged))
        return _load_entry(target)
    except (ConfigError, *data_cache.LOAD_ERRORS) as err:
        if not damaged:
            raise
        raise DataError(
            f"the cached dataset {target} is damaged ({damaged}) and cannot be rebuilt now "
            f"({data_cache.describe(err)}); delete {target} and rerun where {what} can be loaded"
        ) from err


def report_stats(stats: dict, target: Path, *, what: str, text_column: str | None) -> None:
    """Log what conversion skipped or dropped (unreadable images, empty captions) and the split sizes."""
    if stats.get("skipped_examples"):
        log.warning(
            "skipped %d unreadable image(s) (data.source.bad_images=skip): %s; first paths: %s (see %s)",
            stats["skipped_examples"],
            stats["skipped_images"],
            [p for ps in stats["skipped_paths"].values() for p in ps][:5],
            target / "stats.json",
        )
    empty = stats.get("empty_captions") or {}
    if empty:  # one line for every split: how many pairs, and where
        pairs = sum(e["pairs"] for e in empty.values())
        where = ", ".join(
            f"row{'' if len(e['rows']) == 1 else 's'} {', '.join(map(str, e['rows'][:5]))}"
            f"{', ...' if len(e['rows']) > 5 else ''} of split '{split}'"
            for split, e in empty.items()
        )
        log.warning(
            "dropped %d pair%s with an empty caption (%s of %s, counted from 1; column %r)",
            pairs,
            "" if pairs == 1 else "s",
            where,
            what,
            text_column,
        )
    log.info("data %s: %s images per split (cache %s)", what, stats["rows"], target)


def _load_entry(target: Path) -> tuple[datasets.DatasetDict, dict]:
    """The splits and stats.json of a cache entry; raises one of `data_cache.LOAD_ERRORS` when a file is damaged."""
    stats = json.loads((target / "stats.json").read_text())
    stats["rows"]  # a stats.json without it is damaged (KeyError)
    splits = {}
    for s, paths in entry_files(target, stats).items():
        parts = [datasets.Dataset.from_file(str(path)) for path in paths]
        splits[s] = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    return datasets.DatasetDict(splits), stats


def entry_files(target: Path, stats: dict | None = None) -> dict[str, list[Path]]:
    """The Arrow files of each split of a converted cache entry, in row order (from its stats.json)."""
    stats = stats if stats is not None else json.loads((target / "stats.json").read_text())
    return {s: [target / name for name in stats["files"][s]] for s in SPLITS}


def convert_source(
    tmp: Path,
    loaded,
    cols: Columns,
    path: str,
    splits: dict,
    split_column,
    max_samples,
    streaming: bool,
    val_fraction: float,
    test_fraction: float,
    root: Path | None,
    region_dir,
    bad_images: str,
    seed: int,
    image_size: int,
    image_format: str = "jpeg",
    jpeg_quality: int = 90,
    num_proc: int | None = None,
) -> dict:
    """Convert the loaded source into the canonical splits under `tmp`; returns the stats."""
    chosen, carve = _select_splits(
        loaded, splits, split_column, max_samples, streaming, val_fraction, test_fraction, cols.image
    )
    for split_name, split in chosen.items():
        names = list(split[0].keys()) if isinstance(split, list) and split else list(getattr(split, "column_names", []))
        _check_columns(names, cols, f"split '{split_name}' of {path!r}")
    converter = _Converter(
        cols,
        image_size,
        root,
        Path(os.path.expanduser(region_dir)) if region_dir else None,
        bad_images,
        seed,
        source=repr(path),
        image_format=image_format,
        jpeg_quality=jpeg_quality,
        num_proc=conversion_threads(num_proc),
    )
    return converter.convert(chosen, carve, tmp)


def conversion_threads(num_proc: int | None) -> int:
    """Threads converting images: `data.num_proc`, or every core this process may use (null)."""
    return int(num_proc) if num_proc else len(os.sched_getaffinity(0))


def _is_complete(directory: Path, settings: dict) -> bool:
    try:
        saved = json.loads((directory / "config.json").read_text())
        files = json.loads((directory / "stats.json").read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    expected = json.loads(json.dumps(settings, sort_keys=True, default=str))
    return saved == expected and all(files.get(s) and all((directory / f).is_file() for f in files[s]) for s in SPLITS)


def read_stats(cache_dir: str | os.PathLike) -> dict:
    """stats.json of a converted dataset ({} for other sources)."""
    try:
        return json.loads((Path(cache_dir) / "stats.json").read_text())
    except (OSError, ValueError):
        return {}
