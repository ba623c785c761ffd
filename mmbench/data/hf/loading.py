"""Loading a HF source: a hub id or local data (imagefolder, parquet, JSON Lines, CSV, data files) into a
raw (Iterable)DatasetDict with `datasets.load_dataset`, never hanging on the network; the identity of
local data (file sizes and mtimes, part of the cache key); and, when `datasets` cannot parse a local
JSON Lines / CSV file, a message naming the file and its bad line."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import datasets

from mmbench import hub
from mmbench.data.errors import DataError  # a ConfigError: the CLI prints one message, exit code 2
from mmbench.data.hf.hub_access import hub_access
from mmbench.data.hf.roles import _plain

LOCAL_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv", ".arrow": "arrow"}


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
