"""The column mapping of a HF source: which dataset column (or `a.b` path) plays each role (`ROLES`,
`Columns`), and reading a role's values from a source row (paths into lists of dicts, image path
templates such as '{filepath}/{filename}', the identity of an image cell)."""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from omegaconf import DictConfig, ListConfig, OmegaConf

from mmbench.data.errors import DataError  # a ConfigError: the CLI prints one message, exit code 2

ROLES = (
    "image",
    "image_right",
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


@dataclass
class Columns:
    """Dataset column (or `a.b` path into a list of dicts / a dict) per role; None = not used."""

    image: str | None = "image"
    image_right: str | None = None  # the second image of a pair (NLVR2): written as `pixels_right`
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
                f"data.source.columns.image={list(image)}: an example with several images is mapped as "
                f"columns.image (the first / left image) and columns.image_right (the second); NLVR2's released "
                f"files are read by data=nlvr2 data.root=<dir> (docs/data.md)"
            )
        values = {k: (None if v in (None, "", "null") else str(v)) for k, v in mapping.items()}
        return cls(**values)

    def used(self) -> dict[str, str]:
        return {role: getattr(self, role) for role in ROLES if getattr(self, role)}


def _plain(value):
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value


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
            out.update(
                _image_columns(column, names) if role in ("image", "image_right") else [_base_column(column, names)]
            )
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


def _check_columns(names: list[str], cols: Columns, where: str) -> None:
    missing = []
    for role in cols.used():
        missing += [f"{c!r} (data.source.columns.{role})" for c in _role_columns(cols, [role], names) if c not in names]
    if missing:
        raise DataError(f"{where} has no column {', '.join(missing)}; its columns are {names}")
