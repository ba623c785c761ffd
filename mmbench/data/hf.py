"""Real image-text data through HF `datasets`: a hub id or local data -> the canonical columns.

`build_hf` is a data source like `build_shapes` (conf/data/hf.yaml instantiates it `_partial_` as
`data.source`). It loads with `datasets.load_dataset` (a hub id, a local directory -- imagefolder with
metadata.jsonl, parquet, json -- or data files), maps the dataset's columns onto roles

    image, text, question, answers, answer, question_type, label, image_id, region_feats, boxes, region_labels

and converts every split into the canonical columns of `mmbench.data.datamodule`: one row per image
with `image_id`, `pixels` (raw HWC uint8 bytes, resized on the short side and centre-cropped to
`image_size` once) + `image_size`, `captions` (list), and when mapped `questions` / `answers` (the
majority answer per question) / `all_answers` (every annotator answer, for VQA soft scores) /
`question_types`, `caption_labels` (one class index per caption), `region_feats` / `boxes` /
`labels` (precomputed regions, see `mmbench.data.regions`). Rows of the source that share an image
(an `image_id`, or the same image file) become one canonical row, so captions of one image are
positives for each other and never negatives. A row without text uses its question as its caption.

The converted splits are written as Arrow files under `<cache_dir>/hf-<hash>`, where the hash
covers the source config, the converter version and the data's identity (file sizes and mtimes for
local data, the split fingerprints for hub datasets); the next run memory-maps them. An entry that
does not load (a truncated Arrow file) is converted again, with a warning naming it, or, when the
source cannot be loaded now, refused with a message naming the directory to delete.

Bad rows are named: a local JSON Lines / CSV file `datasets` cannot parse fails with the file and its
line; empty captions are dropped with one warning giving their count and rows (counted from 1), and a
split whose captions are all empty is refused.

Network: nothing is downloaded when `offline` is true or when the hub does not answer within a few
seconds; a hub id that is not in the local HF cache then fails at once with a message saying so.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import shutil
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import datasets
import numpy as np
from omegaconf import DictConfig, ListConfig, OmegaConf

from mmbench import hub
from mmbench.config import ConfigError
from mmbench.data import cache as data_cache
from mmbench.data import regions as region_io
from mmbench.data.errors import DataError  # a ConfigError: the CLI prints one message, exit code 2

log = logging.getLogger(__name__)

CONVERTER_VERSION = 1  # bump when the converted data changes; part of the cache key
SPLITS = ("train", "val", "test")
ROLES = (
    "image",
    "text",
    "question",
    "answers",
    "answer",
    "question_type",
    "label",
    "image_id",
    "region_feats",
    "boxes",
    "region_labels",
)
BAD_IMAGE_POLICIES = ("raise", "skip")
LOCAL_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv", ".arrow": "arrow"}
MAX_LISTED = 20  # skipped image paths kept in stats.json


class HubUnavailableError(DataError):
    """A hub id that is neither cached locally nor reachable."""


# --------------------------------------------------------------------------- hub access without hangs
# (the policy -- offline variables, reachability probe -- is mmbench.hub's)


@contextlib.contextmanager
def hub_access(name: str, offline: bool = False, what: str = "dataset") -> Iterator[bool]:
    """Context for loading `name` from the hub; yields True when only the local cache may be used.

    Offline (requested, set in the environment, or the hub unreachable) the body runs in HF offline
    mode, and a failure to find `name` locally becomes one `HubUnavailableError` naming the reason,
    instead of minutes of retries.
    """
    reason = "data.offline=true" if offline else hub.hub_allowed()
    if reason is None:
        yield False
        return
    try:
        with hub.offline_mode():
            yield True
    except (ConnectionError, OSError, FileNotFoundError, ValueError) as err:
        if isinstance(err, ConfigError) and not isinstance(err, HubUnavailableError):
            raise
        from huggingface_hub import constants

        cause = err.__cause__ if isinstance(err, ValueError) and err.__cause__ is not None else err
        detail = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        cache = datasets.config.HF_DATASETS_CACHE if what == "dataset" else constants.HF_HUB_CACHE
        setting = "data.source.path" if what == "dataset" else "data.tokenizer.name_or_path"
        raise HubUnavailableError(
            f"{what} {name!r} is not in the local HF cache ({cache}) and cannot be downloaded: {reason}. "
            f"Download it once with network access, or set {setting} to a local copy "
            f"[{type(cause).__name__}: {detail}]"
        ) from err


# --------------------------------------------------------------------------- config


@dataclass
class Columns:
    """Dataset column (or `a.b` path into a list of dicts / a dict) per role; None = not used."""

    image: str | None = "image"
    text: str | None = "text"
    question: str | None = None
    answers: str | None = None
    answer: str | None = None
    question_type: str | None = None
    label: str | None = None
    image_id: str | None = None
    region_feats: str | None = None
    boxes: str | None = None
    region_labels: str | None = None

    @classmethod
    def parse(cls, mapping) -> Columns:
        mapping = _plain(mapping) or {}
        if not isinstance(mapping, dict):
            raise DataError(f"data.source.columns must be a mapping role -> column, got {mapping!r}")
        unknown = sorted(set(mapping) - set(ROLES))
        if unknown:
            raise DataError(f"data.source.columns: unknown role(s) {unknown}; valid roles: {list(ROLES)}")
        image = mapping.get("image", "image")
        if isinstance(image, (list, tuple)):
            raise DataError(
                f"data.source.columns.image={list(image)}: examples with several images (NLVR2's image pairs) are "
                f"not supported; the model interface encodes one image per example (encode_image). "
                f"Use a single-image dataset, or split each pair into two single-image examples yourself"
            )
        values = {k: (None if v in (None, "", "null") else str(v)) for k, v in mapping.items()}
        return cls(**values)

    def used(self) -> dict[str, str]:
        return {role: getattr(self, role) for role in ROLES if getattr(self, role)}


def _plain(value):
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value


# --------------------------------------------------------------------------- loading


def _is_local(path: str) -> bool:
    return Path(os.path.expanduser(path)).exists()


def _load_kwargs(path: str, name, data_dir, data_files, revision, streaming, hf_cache_dir) -> tuple[str, dict]:
    """(builder or path, kwargs) for load_dataset; a local file becomes a packaged builder + data_files."""
    kwargs = dict(
        name=name,
        data_dir=data_dir,
        data_files=_plain(data_files),
        revision=revision,
        streaming=streaming,
        cache_dir=hf_cache_dir,
    )
    local = Path(os.path.expanduser(path))
    if local.is_file():
        builder = LOCAL_BUILDERS.get(local.suffix.lower())
        if builder is None:
            raise DataError(
                f"data.source.path={path!r}: cannot tell the format of a {local.suffix!r} file; "
                f"use one of {sorted(LOCAL_BUILDERS)} or a directory"
            )
        kwargs["data_files"] = str(local)
        return builder, kwargs
    return (str(local) if local.exists() else path), kwargs


def _local_roots(path: str, data_files) -> list[Path]:
    """The local path and every `data_files` entry (a string, a list, or a split -> file(s) mapping)."""
    roots = [Path(os.path.expanduser(path))]
    files = _plain(data_files)
    if files:
        flat = files.values() if isinstance(files, dict) else [files]
        for f in flat:
            roots += [Path(os.path.expanduser(p)) for p in ([f] if isinstance(f, str) else f)]
    return roots


def _local_identity(path: str, data_files, image_root) -> list:
    """(relative path, size, mtime_ns) of every file of local data: part of the cache key."""
    entries = []
    roots = _local_roots(path, data_files)
    for root in roots:
        if root.is_file():
            st = root.stat()
            entries.append([str(root), st.st_size, st.st_mtime_ns])
        elif root.is_dir():
            for p in sorted(root.rglob("*")):
                if p.is_file():
                    st = p.stat()
                    entries.append([str(p.relative_to(root)), st.st_size, st.st_mtime_ns])
    return entries


def load_source(
    path: str,
    *,
    name=None,
    data_dir=None,
    data_files=None,
    revision=None,
    streaming=False,
    offline=False,
    hf_cache_dir=None,
):
    """The raw (Iterable)DatasetDict of a hub id or local data, never hanging on the network."""
    builder, kwargs = _load_kwargs(path, name, data_dir, data_files, revision, streaming, hf_cache_dir)
    if _is_local(path) or builder in LOCAL_BUILDERS.values() or builder in ("imagefolder",):
        # local data: never touch the network; a malformed row is reported below with its line, not by the
        # builder's own log line (which counts rows from 0 within a block)
        with hub.offline_mode(), _quiet("datasets.packaged_modules"):
            try:
                loaded = datasets.load_dataset(builder, **kwargs)
            except (FileNotFoundError, ValueError) as err:
                raise DataError(f"cannot load local data {path!r}: {err}") from err
            except datasets.exceptions.DatasetGenerationError as err:  # a malformed row of a JSON / CSV file
                raise DataError(_malformed(path, data_files, err)) from err
    else:
        with hub_access(path, offline=offline, what="dataset"):
            loaded = datasets.load_dataset(builder, **kwargs)
    if isinstance(loaded, (datasets.Dataset, datasets.IterableDataset)):
        loaded = {"train": loaded}
    return loaded


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Only critical records from the logger `name` (and its children) for the duration."""
    logger = logging.getLogger(name)
    saved = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(saved)


def _text_files(path: str, data_files) -> list[Path]:
    """The JSON / JSON Lines / CSV files of local data (a file, a directory, data_files)."""
    roots = _local_roots(path, data_files)
    out = []
    for root in roots:
        candidates = [root] if root.is_file() else sorted(root.rglob("*")) if root.is_dir() else []
        out += [p for p in candidates if p.is_file() and p.suffix.lower() in (".json", ".jsonl", ".csv")]
    return list(dict.fromkeys(out))


def _bad_json_line(file: Path) -> str | None:
    """'line N: <what is wrong>' for the first line of a JSON Lines file that is not a JSON object
    (or where a JSON document stops parsing); None when the file parses."""
    text = file.read_text(encoding="utf-8", errors="replace")
    try:
        json.loads(text)
        return None  # one valid JSON document
    except json.JSONDecodeError as whole:
        document_error = whole
    lines = text.splitlines()
    first = next((line for line in lines if line.strip()), "")
    try:
        json.loads(first)
        json_lines = True
    except json.JSONDecodeError:
        json_lines = document_error.msg == "Extra data"
    if json_lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                return f"line {number}: invalid JSON ({err.msg} at column {err.colno})"
            if not isinstance(value, dict):
                return f"line {number}: a JSON {type(value).__name__}, not an object with one field per column"
        return None
    return f"line {document_error.lineno}: invalid JSON ({document_error.msg} at column {document_error.colno})"


def _bad_csv_row(file: Path) -> str | None:
    """'line N: <what is wrong>' for the first row of a CSV file that does not parse or has a wrong field count."""
    import csv

    with open(file, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.reader(f, strict=True)
        width, start = None, 1
        while True:
            start = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                return None
            except csv.Error as err:
                if "unexpected end of data" in str(err):
                    return f"line {start}: a quoted field that starts on this line is never closed"
                return f"line {start}: {err}"
            if not row:
                continue
            if width is None:
                width = len(row)
            elif len(row) != width:
                return f"line {start}: {len(row)} fields where the header has {width}"


def _malformed(path: str, data_files, err: BaseException) -> str:
    """One message for a local file `datasets` cannot parse: the file, the line, what is wrong."""
    cause = err.__cause__ or err.__context__ or err
    detail = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    for file in _text_files(path, data_files):
        try:
            where = _bad_csv_row(file) if file.suffix.lower() == ".csv" else _bad_json_line(file)
        except OSError:
            continue
        if where:
            return f"cannot read local data {file}, {where}; fix or remove that row"
    return f"cannot read local data {path!r}: {type(cause).__name__}: {detail}"


# --------------------------------------------------------------------------- values of a row


def _get(row: Mapping, column: str):
    """row[column], or for 'a.b' the field b of row['a'] (a dict, or a list of dicts -> list)."""
    if column in row:
        return row[column]
    head, _, rest = column.partition(".")
    value = row[head]
    for part in rest.split(".") if rest else ():
        if isinstance(value, list):
            value = [v[part] if isinstance(v, dict) else v for v in value]
        elif isinstance(value, dict):
            value = value[part]
    return value


def _as_list(value) -> list:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return [value]


def _texts(value) -> list[str]:
    return [str(v) for v in _as_list(value) if v is not None and str(v).strip()]


def _majority(answers: list[str]) -> str:
    """Most frequent answer; ties go to the first seen (Counter keeps insertion order)."""
    return Counter(answers).most_common(1)[0][0]


_TEMPLATE = re.compile(r"\{([^{}]+)\}")


def _image_value(row: Mapping, image: str):
    """The image cell of a row; a template such as '{filepath}/{filename}' builds a path from columns."""
    if "{" in image:
        return _TEMPLATE.sub(lambda m: str(_get(row, m.group(1))), image)
    return _get(row, image)


def _base_column(column: str, names) -> str:
    """The dataset column a role reads: the column itself, or `a` for a path `a.b` into it."""
    return column if names is None or column in names else column.split(".")[0]


def _image_columns(image: str | None, names=None) -> list[str]:
    if image is None:
        return []
    if "{" in image:
        return [_base_column(m, names) for m in _TEMPLATE.findall(image)]
    return [_base_column(image, names)]


def _role_columns(cols: Columns, roles, names) -> list[str]:
    """Dataset columns read by the given roles (those that are mapped)."""
    out = set()
    for role in roles:
        column = getattr(cols, role)
        if column:
            out.update(_image_columns(column, names) if role == "image" else [_base_column(column, names)])
    return sorted(out)


def _image_key(value) -> str | None:
    """Identity of an image cell: its path if it has one, else a hash of its bytes."""
    if isinstance(value, dict):
        if value.get("path"):
            return str(value["path"])
        value = value.get("bytes")
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        return "sha1:" + hashlib.sha1(value).hexdigest()
    if value is not None and hasattr(value, "tobytes"):  # a decoded PIL image
        return "sha1:" + hashlib.sha1(value.tobytes()).hexdigest()
    return None


# --------------------------------------------------------------------------- images


def square_image(image, size: int) -> np.ndarray:
    """RGB image -> (size, size, 3) uint8: resize the short side to `size` (bicubic), centre-crop.

    Already square images of the right size are used as they are. Normalisation is not done here:
    the datamodule maps pixels to [-1, 1] and pretrained vision encoders re-normalise to their statistics.
    """
    from PIL import Image

    image = image.convert("RGB")
    w, h = image.size
    if (w, h) != (size, size):
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        image = image.resize((nw, nh), Image.Resampling.BICUBIC)
        left, top = (nw - size) // 2, (nh - size) // 2
        image = image.crop((left, top, left + size, top + size))
    return np.asarray(image, dtype=np.uint8)


def _resolve_path(path: str, image_root: Path | None) -> Path:
    p = Path(os.path.expanduser(path))
    return p if p.is_absolute() or image_root is None else image_root / p


def read_image(value, size: int, image_root: Path | None) -> np.ndarray:
    """Decode an image cell (PIL image, {bytes, path} dict, bytes, or a path) to (size, size, 3) uint8.

    Raises OSError / ValueError naming the path when the image is missing or unreadable.
    """
    from PIL import Image, UnidentifiedImageError

    path = None
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        value = data if data is not None else path
    if isinstance(value, str):
        if urlparse(value).scheme in ("http", "https"):
            raise ValueError(
                f"image {value} is a URL; mmbench does not download images, set data.source.image_root "
                f"to a local copy and map a path column"
            )
        path = _resolve_path(value, image_root)
        try:
            value = path.read_bytes()
        except FileNotFoundError as err:
            raise OSError("no such file") from err
    if isinstance(value, (bytes, bytearray)):
        try:
            with Image.open(io.BytesIO(value)) as img:
                return square_image(img, size)
        except UnidentifiedImageError as err:
            raise OSError("not an image file PIL can read") from err
        except (OSError, SyntaxError) as err:
            raise OSError(f"cannot decode it ({err})") from err
    if value is not None and hasattr(value, "convert"):
        return square_image(value, size)
    raise ValueError(f"image cell {value!r} is neither a path, bytes nor an image")


def _describe(value, image_root) -> str:
    if isinstance(value, dict):
        value = value.get("path") or "<embedded bytes>"
    if isinstance(value, str):
        return str(_resolve_path(value, image_root)) if urlparse(value).scheme not in ("http", "https") else value
    return "<embedded bytes>"


# --------------------------------------------------------------------------- conversion


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
    wanted = _role_columns(cols, [r for r in ROLES if r not in ("region_feats", "boxes", "region_labels")], names)
    groups: dict[str, _Group] = {}
    for i, row in enumerate(_rows(split, wanted)):
        if cols.image_id:
            source_id = _get(row, cols.image_id)
            key = f"id:{source_id}"
        elif cols.image:
            source_id = None
            key = _image_key(_image_value(row, cols.image))
            key = key if key is not None else f"row:{i}"
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
        self.writer = None
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
    strings = datasets.List(datasets.Value("string"))
    spec = {
        "image_id": datasets.Value("int64"),
        "pixels": datasets.Value("binary"),
        "image_size": datasets.Value("int32"),
        "captions": strings,
        "caption_labels": datasets.List(datasets.Value("int64")),
        "questions": strings,
        "answers": strings,
        "all_answers": datasets.List(strings),
        "question_types": strings,
        "boxes": datasets.List(datasets.List(datasets.Value("float32"))),
        "labels": datasets.List(datasets.Value("int64")),
    }
    if "region_feats" in row:
        spec["region_feats"] = datasets.Array2D(
            shape=(None, int(np.asarray(row["region_feats"]).shape[1])), dtype="float32"
        )
    return datasets.Features({k: spec[k] for k in row})


@dataclass
class _Converter:
    cols: Columns
    image_size: int
    image_root: Path | None
    region_dir: Path | None
    bad_images: str
    seed: int
    source: str = "the dataset"  # the path or hub id, for messages
    skipped: dict = field(default_factory=dict)  # split -> [paths]

    def convert(self, source_splits: dict[str, Any], carve: dict[str, float], out: Path) -> dict:
        """Write the canonical splits into `out`; returns stats (rows, skipped images, label names, ...)."""
        where = lambda s: f"split {s!r} of {self.source}"  # noqa: E731
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
        label_names, to_index = ([], None)
        if self.cols.label:
            feature = getattr(source_splits["train"], "features", None)
            label_feature = feature.get(self.cols.label) if feature is not None else None
            label_names, to_index = _label_index(grouped["train"], label_feature)
        ids: dict[str, int] = {}
        plan = self._plan(grouped, carve)
        writers = {s: _SplitWriter(out, s) for s in SPLITS}
        try:
            for source_name, split in source_splits.items():
                targets = plan[source_name]  # group key -> canonical split
                by_row = {g.first_row: (key, g) for key, g in grouped[source_name].items() if key in targets}
                cols = _role_columns(
                    self.cols, ("image", "region_feats", "boxes", "region_labels"), getattr(split, "column_names", None)
                )
                rows = _rows(split, cols) if cols else ({} for _ in range(max(by_row, default=-1) + 1))
                for i, row in enumerate(rows):
                    if i not in by_row:
                        continue
                    key, group = by_row[i]
                    canonical = self._canonical(row, key, group, ids, to_index, targets[key])
                    if canonical is not None:
                        writers[targets[key]].write(canonical)
        finally:
            for w in writers.values():
                w.close()
        counts = {s: writers[s].rows for s in SPLITS}
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
        }

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

    def _canonical(self, row, key, group: _Group, ids: dict, to_index, split: str) -> dict | None:
        if self.cols.image:
            value = _image_value(row, self.cols.image)
            try:
                pixels = read_image(value, self.image_size, self.image_root)
            except (OSError, ValueError) as err:
                path = _describe(value, self.image_root)
                if self.bad_images == "raise":
                    raise DataError(
                        f"unreadable image {path} (split '{split}'): {err}; set data.source.bad_images=skip "
                        f"to skip such images (they are counted and logged)"
                    ) from err
                self.skipped.setdefault(split, []).append(path)
                return None
        else:
            pixels = np.zeros((self.image_size, self.image_size, 3), dtype=np.uint8)
        source_id = group.source_id
        if isinstance(source_id, (int, np.integer)) and not isinstance(source_id, bool):
            image_id = int(source_id)
        else:
            image_id = ids.setdefault(key, len(ids))
        out = {
            "image_id": image_id,
            "pixels": pixels.tobytes(),
            "image_size": self.image_size,
            "captions": group.captions,
        }
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


# --------------------------------------------------------------------------- the source


def hf_config_hash(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


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


def config_problems(*, path: str | None = None, **_settings) -> list[str]:
    """What is wrong with a `build_hf` config, from the config alone (no hub, no file is read)."""
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


def provided_fields(*, columns=None, region_dir: str | None = None, **_settings) -> frozenset[str]:
    """Batch fields (docs of `mmbench.data.datamodule`) this source config yields, known from its column
    mapping alone: config validation compares them with the fields the encoders and objectives read."""
    cols = _plain(columns) or {}
    fields = {"input_ids", "attention_mask", "image_id"}
    if cols.get("image", "image"):
        fields.add("pixel_values")
    if cols.get("answers") or cols.get("answer"):
        fields |= {"answer", "answer_scores"}
        if cols.get("question"):
            fields |= {"question_ids", "question_mask"}
    if cols.get("label"):
        fields.add("labels")
    if cols.get("boxes") or region_dir:
        fields |= {"region_boxes", "region_mask"}
    if cols.get("region_feats") or region_dir:
        fields.add("region_feats")
    if cols.get("region_labels"):
        fields.add("region_labels")
    return frozenset(fields)


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
) -> tuple[datasets.DatasetDict, Path]:
    """A HF dataset (hub id or local data) in the canonical columns, and its cache directory.

    Returns (DatasetDict with train / val / test, `<cache_dir>/hf-<hash>`). See the module doc.
    """
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
        "seed": seed,
        "converter_version": CONVERTER_VERSION,
    }
    base = Path(cache_dir)
    loaded = None
    if local:
        settings["identity"] = _local_identity(path, data_files, None)
    else:
        loaded = load_source(
            path,
            name=name,
            data_dir=data_dir,
            data_files=data_files,
            revision=revision,
            streaming=streaming,
            offline=offline,
            hf_cache_dir=hf_cache_dir,
        )
        settings["identity"] = (
            {s: getattr(d, "_fingerprint", None) for s, d in loaded.items()} if not streaming else None
        )
    if region_dir:
        settings["region_identity"] = _local_identity(region_dir, None, None)
    target = base / f"hf-{hf_config_hash(settings)}"
    damaged = None  # why a complete-looking cache entry does not load
    if _is_complete(target, settings):
        try:
            dsd, stats = _load_entry(target)
        except data_cache.LOAD_ERRORS as err:
            damaged = data_cache.describe(err)
            log.warning("the cached dataset %s is damaged (%s); converting %s again", target, damaged, path)
    if damaged or not _is_complete(target, settings):
        try:
            if loaded is None:
                loaded = load_source(
                    path,
                    name=name,
                    data_dir=data_dir,
                    data_files=data_files,
                    revision=revision,
                    streaming=streaming,
                    offline=offline,
                    hf_cache_dir=hf_cache_dir,
                )
            _convert_into(
                target,
                loaded,
                settings,
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
            )
            dsd, stats = _load_entry(target)
        except (ConfigError, *data_cache.LOAD_ERRORS) as err:
            if not damaged:
                raise
            raise DataError(
                f"the cached dataset {target} is damaged ({damaged}) and cannot be rebuilt now "
                f"({data_cache.describe(err)}); delete {target} and rerun where {path!r} can be loaded"
            ) from err
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
            path,
            cols.text,
        )
    log.info("data %s: %s images per split (cache %s)", path, stats["rows"], target)
    return dsd, target


def _load_entry(target: Path) -> tuple[datasets.DatasetDict, dict]:
    """The splits and stats.json of a cache entry; raises one of `data_cache.LOAD_ERRORS` when a file is damaged."""
    stats = json.loads((target / "stats.json").read_text())
    stats["rows"]  # noqa: B018 - a stats.json without it is damaged (KeyError)
    dsd = datasets.DatasetDict({s: datasets.Dataset.from_file(str(target / f"{s}.arrow")) for s in SPLITS})
    return dsd, stats


def _convert_into(
    target: Path,
    loaded,
    settings: dict,
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
) -> None:
    """Convert the loaded source into the cache entry `target` (built beside it, renamed into place)."""
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
    )
    with data_cache.temporary_sibling(target) as tmp:  # removes orphans of interrupted builds first
        stats = converter.convert(chosen, carve, tmp)
        (tmp / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
        (tmp / "config.json").write_text(json.dumps(settings, indent=2, sort_keys=True, default=str) + "\n")
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)  # stale, or damaged
        try:
            os.replace(tmp, target)
        except OSError:
            if not _is_complete(target, settings):  # another process finished first: keep its copy
                raise


def _is_complete(directory: Path, settings: dict) -> bool:
    try:
        saved = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return False
    expected = json.loads(json.dumps(settings, sort_keys=True, default=str))
    return saved == expected and all((directory / f"{s}.arrow").is_file() for s in SPLITS)


def read_stats(cache_dir: str | os.PathLike) -> dict:
    """stats.json of a converted dataset ({} for other sources)."""
    try:
        return json.loads((Path(cache_dir) / "stats.json").read_text())
    except (OSError, ValueError):
        return {}
