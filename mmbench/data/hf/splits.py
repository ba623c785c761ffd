"""Which source split becomes each canonical split (`SPLITS`: train / val / test): named splits, values
of a split column, or val / test carved from train by a seeded fraction of its images (the carving
itself is done by the converter); `max_samples` and streaming take a prefix."""

from __future__ import annotations

import logging

import datasets

from mmbench.data.errors import DataError  # a ConfigError: the CLI prints one message, exit code 2

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def _select_splits(
    loaded,
    splits: dict,
    split_column: str | None,
    max_samples: int | None,
    streaming: bool,
    val_fraction: float,
    test_fraction: float,
    image: str | None,
) -> tuple[dict, dict]:
    """Source split per canonical split (Dataset or list of streamed rows), and the splits to carve."""
    available = list(loaded)
    if split_column and streaming:
        raise DataError("data.source.split_column does not work with streaming=true; use the dataset's own splits")
    if split_column:
        parts = [loaded[name] for name in available]
        whole = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
        if split_column not in whole.column_names:
            raise DataError(f"data.source.split_column={split_column!r} is not a column; columns: {whole.column_names}")
        values = whole[split_column]
        present = sorted(set(map(str, values)))
        loaded = {}
        for canonical, value in splits.items():
            if value is None:
                continue
            if str(value) not in present:
                raise DataError(
                    f"data.source.splits.{canonical}={value!r}: no row has {split_column}={value!r}; "
                    f"values present: {present}"
                )
            loaded[str(value)] = whole.select([i for i, v in enumerate(values) if str(v) == str(value)])
        available = list(loaded)
    chosen, carve = {}, {}
    for canonical in SPLITS:
        name = splits.get(canonical)
        if name is None or (canonical == "val" and str(name) not in available):
            if canonical == "train":
                raise DataError(f"data.source.splits.train must name a split; the dataset has {available}")
            fraction = val_fraction if canonical == "val" else test_fraction
            if name is not None:
                log.info(
                    "the dataset has no split %r for val; carving val from train (%.0f%% of its images, seeded)",
                    name,
                    100 * fraction,
                )
            else:
                log.info(
                    "data.source.splits.%s is null: carving %s from train (%.0f%% of its images, seeded)",
                    canonical,
                    canonical,
                    100 * fraction,
                )
            carve[canonical] = float(fraction)
            continue
        if str(name) not in available:
            raise DataError(
                f"data.source.splits.{canonical}={name!r} is not a split of the dataset; it has {available}"
                f"{' (values of ' + split_column + ')' if split_column else ''}"
            )
        split = _cast_images(loaded[str(name)], image)
        if streaming:
            if not max_samples:
                raise DataError("data.source.streaming=true needs data.source.max_samples (examples taken per split)")
            split = list(split.take(int(max_samples)))
        elif max_samples is not None and len(split) > int(max_samples):
            split = split.select(range(int(max_samples)))
        chosen[canonical] = split
    return chosen, carve


def _cast_images(split, image: str | None):
    """Keep images undecoded (bytes + path) so unreadable files are reported by path."""
    if image is None or "{" in image or isinstance(split, list):
        return split
    feature = split.features.get(image) if getattr(split, "features", None) else None
    if isinstance(feature, datasets.Image) and feature.decode:
        return split.cast_column(image, datasets.Image(decode=False))
    return split
