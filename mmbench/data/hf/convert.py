"""Converting the rows of a HF source into the canonical columns: rows that share an image become one
canonical row (its captions, questions with majority / all answers, caption labels, regions), val / test
are carved from train when asked, and unreadable images are raised or skipped.

Images are read, resized and encoded (`data.source.image_format`) by `num_proc` threads (PIL releases the
GIL while it decodes, resizes and encodes, so threads scale with the cores and need no pickling). Rows are
written in shards of `SHARD_ROWS` source rows, each published complete (`shards/<source>-<k>/done.json`
last), so an interrupted conversion continues from its last finished shard, and memory holds one shard's
images at a time: peak memory grows with the text of the dataset only."""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets
import numpy as np

from mmbench.data import columns as schema
from mmbench.data import regions as region_io
from mmbench.data.errors import DataError  # a ConfigError: the CLI prints one message, exit code 2
from mmbench.data.hf.images import _describe, read_image
from mmbench.data.hf.roles import (
    ROLES,
    Columns,
    _as_list,
    _get,
    _image_key,
    _image_value,
    _majority,
    _role_columns,
    _texts,
)
from mmbench.data.hf.splits import SPLITS
from mmbench.data.image_codec import encode_image

if TYPE_CHECKING:
    from datasets.arrow_writer import ArrowWriter

CONVERTER_VERSION = 2  # bump when the converted data changes; part of the cache key (2: encoded images, shards)
MAX_LISTED = 20  # skipped image paths kept in stats.json
SHARD_ROWS = 1000  # source rows per shard: the unit of resumption (~25 MB of 224-px JPEGs)
PROGRESS_EVERY_S = 30.0

log = logging.getLogger(__name__)


@dataclass
class _Group:
    """One image of a split and everything said about it (source rows sharing that image)."""

    first_row: int
    source_id: Any = None
    captions: list[str] = field(default_factory=list)
    caption_labels: list = field(default_factory=list)
    questions: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    all_answers: list[list[str]] = field(default_factory=list)
    question_types: list[str] = field(default_factory=list)


def _rows(split, columns: list[str], batch_size: int = 256) -> Iterator[dict]:
    """Row dicts of a Dataset (reading only `columns`) or of a list of rows (a streamed prefix)."""
    if isinstance(split, list):
        yield from split
        return
    for batch in split.select_columns(columns).iter(batch_size=batch_size):
        keys = list(batch)
        for values in zip(*(batch[k] for k in keys)):
            yield dict(zip(keys, values))


def _check_columns(names: list[str], cols: Columns, where: str) -> None:
    missing = []
    for role in cols.used():
        missing += [f"{c!r} (data.source.columns.{role})" for c in _role_columns(cols, [role], names) if c not in names]
    if missing:
        raise DataError(f"{where} has no column {', '.join(missing)}; its columns are {names}")


def _group_rows(split, cols: Columns, where: str, empty_rows: list[int] | None = None) -> dict[str, _Group]:
    """Source rows -> image groups in order of first appearance, with text, QA and labels collected.

    Empty captions are dropped; the row index of each is appended to `empty_rows`.
    """
    names = getattr(split, "column_names", None)
    wanted = _role_columns(
        cols, [r for r in ROLES if r not in ("image_right", "region_feats", "boxes", "region_labels")], names
    )
    groups: dict[str, _Group] = {}
    for i, row in enumerate(_rows(split, wanted)):
        if cols.image_id:
            source_id = _get(row, cols.image_id)
            key = f"id:{source_id}"
        elif cols.image:
            source_id = None
            image_key = _image_key(_image_value(row, cols.image))
            key = image_key if image_key is not None else f"row:{i}"
        else:
            source_id, key = None, f"row:{i}"
        group = groups.get(key)
        if group is None:
            group = groups[key] = _Group(first_row=i, source_id=source_id)
        texts = _texts(_get(row, cols.text)) if cols.text else []
        questions = _texts(_get(row, cols.question)) if cols.question else []
        if questions and cols.answers is None and cols.answer is None:
            raise DataError(
                f"{where}: data.source.columns.question is set but neither columns.answers nor columns.answer"
            )
        if len(questions) > 1:
            per_q = _as_list(_get(row, cols.answers)) if cols.answers else [None] * len(questions)
            majority = _as_list(_get(row, cols.answer)) if cols.answer else [None] * len(questions)
        else:
            per_q = [_get(row, cols.answers)] if cols.answers else [None]
            majority = [_get(row, cols.answer)] if cols.answer else [None]
        qtypes = _texts(_get(row, cols.question_type)) if cols.question_type else []
        for q, (question, given, major) in enumerate(zip(questions, per_q, majority)):
            answers = [str(a).strip() for a in _as_list(given) if a is not None and str(a).strip()]
            major = (
                str(major).strip()
                if major is not None and str(major).strip()
                else (_majority(answers) if answers else "")
            )
            group.questions.append(question)
            group.answers.append(major)
            group.all_answers.append(answers or [major])
            if cols.question_type:
                group.question_types.append(qtypes[q] if q < len(qtypes) else "")
        if cols.text and empty_rows is not None and (texts or not questions):
            raw = _as_list(_get(row, cols.text))
            empty = sum(v is None or not str(v).strip() for v in raw) if raw else 1
            empty_rows += [i] * empty  # once per dropped pair
        if not texts:  # a question without a caption is its own text (VQA datasets)
            texts = questions
        group.captions += texts
        if cols.label:
            group.caption_labels += [_get(row, cols.label)] * len(texts)
    return groups


def _label_index(train_groups: dict[str, _Group], label_feature) -> tuple[list[str], Callable[[Any], int]]:
    """Class names and value -> index; ints (or a ClassLabel) are used as they are, strings are indexed."""
    if isinstance(label_feature, datasets.ClassLabel):
        return list(label_feature.names), lambda v: int(v) if v is not None else -1
    values = {v for g in train_groups.values() for v in g.caption_labels if v is not None}
    if all(isinstance(v, (int, np.integer, bool)) for v in values):
        top = max((int(v) for v in values), default=-1)
        return [str(i) for i in range(top + 1)], lambda v: int(v) if v is not None else -1
    names = sorted(str(v) for v in values)
    index = {n: i for i, n in enumerate(names)}
    return names, lambda v: index.get(str(v), -1)


class _SplitWriter:
    """Writes canonical rows of one split into `<dir>/<split>.arrow` (features fixed by the first row)."""

    def __init__(self, directory: Path, split: str):
        self.path = directory / f"{split}.arrow"
        self.writer: ArrowWriter | None = None
        self.rows = 0

    def write(self, row: dict) -> None:
        if self.writer is None:
            from datasets.arrow_writer import ArrowWriter

            self.writer = ArrowWriter(features=canonical_features(row), path=str(self.path), writer_batch_size=256)
        self.writer.write(row)
        self.rows += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.finalize()
            self.writer.close()


def canonical_features(row: dict) -> datasets.Features:
    """The Arrow types of a canonical row's columns (`mmbench.data.columns`)."""
    feats = row.get("region_feats")
    return schema.features(row, region_feat_dim=None if feats is None else int(np.asarray(feats).shape[1]))


@dataclass
class _Converter:
    cols: Columns
    image_size: int
    image_root: Path | None
    region_dir: Path | None
    bad_images: str
    seed: int
    source: str = "the dataset"  # the path or hub id, for messages
    image_format: str = "jpeg"  # how `pixels` are stored (`mmbench.data.image_codec`)
    jpeg_quality: int = 90
    num_proc: int = 1  # threads reading, resizing and encoding images
    skipped: dict = field(default_factory=dict)  # split -> [paths]

    def convert(self, source_splits: dict[str, Any], carve: dict[str, float], out: Path) -> dict:
        """Write the canonical splits into `out`; returns stats (rows, skipped images, label names, ...)."""
        where = lambda s: f"split {s!r} of {self.source}"
        empty_rows: dict[str, list[int]] = {name: [] for name in source_splits}
        grouped = {
            name: _group_rows(split, self.cols, where(name), empty_rows[name]) for name, split in source_splits.items()
        }
        for name, groups in grouped.items():
            if not any(g.captions for g in groups.values()):
                column = self.cols.text or self.cols.question
                role = "text" if self.cols.text else "question"
                raise DataError(
                    f"every caption of {where(name)} is empty (column {column!r}, data.source.columns.{role}): "
                    f"there is no image-text pair to train or evaluate on. Map data.source.columns.{role} to the "
                    f"column that holds the text"
                )
        label_names: list[str] = []
        to_index: Callable[[Any], int] | None = None
        if self.cols.label:
            feature = getattr(source_splits["train"], "features", None)
            label_feature = feature.get(self.cols.label) if feature is not None else None
            label_names, to_index = _label_index(grouped["train"], label_feature)
        plan = self._plan(grouped, carve)
        ids = _image_ids(grouped, plan)
        counts = {s: 0 for s in SPLITS}
        files: dict[str, list[str]] = {s: [] for s in SPLITS}
        progress = _Progress(sum(len(by) for by in plan.values()), self.source)
        with ThreadPoolExecutor(max_workers=max(1, self.num_proc)) as pool:
            for number, (source_name, split) in enumerate(source_splits.items()):
                targets = plan[source_name]  # group key -> canonical split
                by_row = {g.first_row: (key, g) for key, g in grouped[source_name].items() if key in targets}
                end = max(by_row, default=-1) + 1
                for k, start in enumerate(range(0, end, SHARD_ROWS)):
                    name = f"{number:02d}-{k:05d}"
                    window = (start, min(start + SHARD_ROWS, end))
                    done = self._shard(out / "shards" / name, split, window, by_row, targets, ids, to_index, pool)
                    for target, rows in done["rows"].items():
                        counts[target] += rows
                        files[target].append(f"shards/{name}/{target}.arrow")
                    for target, paths in done["skipped"].items():
                        self.skipped.setdefault(target, []).extend(paths)
                    progress.add(sum(1 for i in range(*window) if i in by_row))
        for s in SPLITS:
            if counts[s] == 0:
                skipped = len(self.skipped.get(s, []))
                why = f" after skipping {skipped} unreadable image(s)" if skipped else ""
                raise DataError(
                    f"split '{s}' is empty{why}; check data.source.splits / max_samples "
                    f"(source splits: {list(source_splits)})"
                )
        return {
            "rows": counts,
            "skipped_images": {s: len(p) for s, p in self.skipped.items()},
            "skipped_examples": sum(len(p) for p in self.skipped.values()),
            "skipped_paths": {s: p[:MAX_LISTED] for s, p in self.skipped.items()},
            "empty_captions": {
                s: {"pairs": len(r), "rows": [i + 1 for i in sorted(set(r))[:MAX_LISTED]]}
                for s, r in empty_rows.items()
                if r
            },  # rows counted from 1
            "label_names": label_names,
            "carved": carve,
            "image_format": self.image_format,
            "files": files,  # per split, its Arrow files in row order
        }

    def _shard(self, directory: Path, split, window: tuple[int, int], by_row, targets, ids, to_index, pool) -> dict:
        """Convert source rows [start, end) into `directory/<target split>.arrow`, unless a finished shard is
        there (`done.json`, written last); returns its rows and skipped paths per target split."""
        done = directory / "done.json"
        if done.is_file():
            return json.loads(done.read_text())
        building = directory.with_name(f".{directory.name}.building")
        shutil.rmtree(building, ignore_errors=True)  # what an interrupted run left of this shard
        building.mkdir(parents=True)
        start, end = window
        wanted = _role_columns(
            self.cols,
            ("image", "image_right", "region_feats", "boxes", "region_labels"),
            getattr(split, "column_names", None),
        )
        if not wanted:
            source_rows: Any = ({} for _ in range(start, end))
        elif isinstance(split, list):
            source_rows = split[start:end]
        else:
            source_rows = _rows(split.select(range(start, end)), wanted)
        rows = [(i, row) for i, row in zip(range(start, end), source_rows) if i in by_row]
        images = pool.map(lambda item: self._encoded(item[1], self.cols.image), rows)
        rights = (
            pool.map(lambda item: self._encoded(item[1], self.cols.image_right), rows)
            if self.cols.image_right
            else None
        )
        writers = {target: _SplitWriter(building, target) for target in SPLITS}
        skipped: dict[str, list[str]] = {}
        try:
            for (i, row), image, right in zip(rows, images, rights or (None for _ in rows)):
                key, group = by_row[i]
                target = targets[key]
                pixels = self._checked(image, row, self.cols.image, target, skipped)
                right_pixels = self._checked(right, row, self.cols.image_right, target, skipped) if rights else None
                if pixels is None or (rights is not None and right_pixels is None):
                    continue
                writers[target].write(self._canonical(row, key, group, ids[key], to_index, pixels, right_pixels))
        finally:
            for w in writers.values():
                w.close()
        record = {"rows": {t: w.rows for t, w in writers.items() if w.rows}, "skipped": skipped}
        (building / "done.json").write_text(json.dumps(record))
        shutil.rmtree(directory, ignore_errors=True)
        building.rename(directory)
        return record

    def _encoded(self, row, column: str | None) -> bytes | Exception:
        """The stored bytes of a row's image (a blank image without an image column), or why it could not
        be read (run in the conversion threads: the policy for a bad image is applied in row order)."""
        try:
            if not column:
                pixels = np.zeros((self.image_size, self.image_size, 3), dtype=np.uint8)
            else:
                pixels = read_image(_image_value(row, column), self.image_size, self.image_root)
            return encode_image(pixels, self.image_format, self.jpeg_quality)
        except (OSError, ValueError) as err:
            return err

    def _checked(self, image: bytes | Exception, row, column: str | None, split: str, skipped: dict) -> bytes | None:
        """The image's bytes; None when it is unreadable and bad_images=skip (the path is counted), a
        DataError naming the path otherwise."""
        if not isinstance(image, Exception):
            return image
        path = _describe(_image_value(row, column), self.image_root) if column else "<blank image>"
        if self.bad_images == "raise":
            raise DataError(
                f"unreadable image {path} (split '{split}'): {image}; set data.source.bad_images=skip "
                f"to skip such images (they are counted and logged)"
            ) from image
        skipped.setdefault(split, []).append(path)
        return None

    def _plan(self, grouped: dict[str, dict[str, _Group]], carve: dict[str, float]) -> dict[str, dict[str, str]]:
        """Canonical split of every group; val / test carved from train by a seeded fraction of images."""
        plan = {}
        for source_name, groups in grouped.items():
            plan[source_name] = (
                {key: target for key in groups for target in [source_name]} if source_name in SPLITS else {}
            )
        train_keys = list(grouped["train"])
        rng = np.random.default_rng([self.seed, 7])
        order = rng.permutation(len(train_keys))
        start = 0
        for split, fraction in carve.items():
            n = max(1, int(round(fraction * len(train_keys))))
            if n >= len(train_keys) - start:
                raise DataError(f"cannot carve '{split}' ({fraction:.0%}) from the {len(train_keys)} training images")
            for j in order[start : start + n]:
                plan["train"][train_keys[j]] = split
            start += n
        return plan

    def _canonical(self, row, key, group: _Group, image_id: int, to_index, pixels: bytes, right: bytes | None) -> dict:
        out = {
            "image_id": image_id,
            "pixels": pixels,
            "image_size": self.image_size,
            "image_format": self.image_format,
            "captions": group.captions,
        }
        if right is not None:
            out["pixels_right"] = right
        if self.cols.label:
            out["caption_labels"] = [to_index(v) for v in group.caption_labels]
        if self.cols.question:
            out.update(questions=group.questions, answers=group.answers, all_answers=group.all_answers)
            if self.cols.question_type:
                out["question_types"] = group.question_types
        regions = self._regions(row, group, key)
        if regions is not None:
            feats, boxes, labels = regions
            out.update(region_feats=feats, boxes=boxes.tolist())
            if labels is not None:
                out["labels"] = labels.tolist()
        return out

    def _regions(self, row, group: _Group, key: str):
        if self.region_dir is not None:
            if group.source_id is not None:
                name = str(group.source_id)
            elif self.cols.image and not key.startswith(("sha1:", "row:")):
                name = Path(key).stem
            else:
                raise DataError(
                    "data.source.region_dir needs data.source.columns.image_id or image paths to name "
                    "each image's region file"
                )
            return region_io.load_region_file(self.region_dir, name)
        if self.cols.region_feats:
            if not self.cols.boxes:
                raise DataError("data.source.columns.region_feats is set but columns.boxes is not")
            labels = _get(row, self.cols.region_labels) if self.cols.region_labels else None
            try:
                return region_io.check_regions(
                    _get(row, self.cols.region_feats),
                    _get(row, self.cols.boxes),
                    labels,
                    where=f"image {group.source_id if group.source_id is not None else key}",
                )
            except region_io.RegionError as err:
                raise DataError(str(err)) from err
        return None


def _image_ids(grouped: dict[str, dict[str, _Group]], plan: dict[str, dict[str, str]]) -> dict[str, int]:
    """image_id of every planned group: the source's integer id, else its index in conversion order (known
    before any image is read, so a resumed conversion numbers images as an uninterrupted one)."""
    ids: dict[str, int] = {}
    counter = 0
    for source_name, groups in grouped.items():
        for key, group in groups.items():
            if key not in plan[source_name]:
                continue
            source_id = group.source_id
            if isinstance(source_id, (int, np.integer)) and not isinstance(source_id, bool):
                ids[key] = int(source_id)
            elif key not in ids:
                ids[key] = counter
                counter += 1
    return ids


class _Progress:
    """Logs images converted, their rate and the time left, every `PROGRESS_EVERY_S` seconds."""

    def __init__(self, total: int, what: str):
        self.total, self.what, self.done = total, what, 0
        self.start = self.last = time.monotonic()

    def add(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= PROGRESS_EVERY_S and self.done < self.total:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            log.info(
                "converting %s: %s / %s images (%.0f/s, %.0f s left)",
                self.what,
                f"{self.done:,}",
                f"{self.total:,}",
                rate,
                (self.total - self.done) / max(rate, 1e-9),
            )
