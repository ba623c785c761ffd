"""The batch schema, written once: every column of the canonical dataset and every tensor of a batch.

A data source (Shapes' generator, the HF converter) writes `COLUMNS` (one Arrow row per image, or per
image pair with `pixels_right` (NLVR2), types from `features`); the datamodule turns each (image, caption k)
pair into an example and the collator stacks examples into the tensors of `FIELDS`, each made from the
dataset columns it names and padded with its `pad`. A source declares the batch fields it yields from the
columns it writes (`fields_from`), and config validation compares them with the fields encoders and
objectives read (`batch_fields` / `fields_read`).

Adding a column: one `Column` here, and one `Field` if it reaches the batch; the sources that write it
name it in their own column list. A column with one value per caption or per image (`Column.per`) whose
field is made from it alone is carried into examples and stacked into the batch by the generic path
(`stacked_fields`), with no other code (`caption_labels` -> `labels` is one); a ragged or derived field
(padded lists, tokens, scores) also has its lines in the collator (`mmbench/data/collate.py`), and an
image column (`pixels`, `pixels_right`) is decoded by `PairDataset` and normalised by the collator.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import datasets
import torch

_STRINGS = datasets.List(datasets.Value("string"))


@dataclass(frozen=True)
class Column:
    """A column of the canonical dataset (one row per image)."""

    name: str
    feature: Any  # its Arrow type (a `datasets` feature); None: the source sizes it (see `features`)
    item: str | None  # key of its value in a dataset example (`PairDataset`); None: evaluation-only
    doc: str
    # "caption" (a list, one value per caption) or "image" (one value): the example carries the value of
    # its caption / image under `item` with no code of its own (None: `PairDataset` handles it itself)
    per: str | None = None


@dataclass(frozen=True)
class Field:
    """A tensor of the collated batch."""

    name: str
    dtype: torch.dtype
    shape: tuple[str | int, ...]  # named dims: B batch, T / Tq tokens, A answers, R objects (>= 1), F facts / features
    pad: bool | int | float | None  # the value of padded (or absent) positions; None: never padded
    columns: tuple[str, ...]  # the dataset columns it is made from: the batch has it when the data has them all
    doc: str


COLUMNS: dict[str, Column] = {
    c.name: c
    for c in (
        Column("image_id", datasets.Value("int64"), "image_id", "equal ids = same image"),
        Column(
            "pixels",
            datasets.Value("binary"),
            "image",
            "the image_size x image_size RGB image: raw HWC uint8 bytes, or a JPEG / PNG file (`image_format`)",
        ),
        Column(
            "pixels_right",
            datasets.Value("binary"),
            "image_right",
            "the second image of a two-image example (NLVR2's right; `pixels` is the left), encoded as `pixels`",
        ),
        Column("image_size", datasets.Value("int32"), None, "side of the square image, in pixels"),
        Column(
            "image_format",
            datasets.Value("string"),
            None,
            "how `pixels` (and `pixels_right`) are stored: jpeg, png or raw (absent: raw); decoded by `PairDataset`",
        ),
        Column("captions", _STRINGS, "caption", "the texts of the image; (image, caption k) is one example"),
        Column(
            "caption_labels",
            datasets.List(datasets.Value("int64")),
            "label",
            "class per caption, -1 = unknown",
            "caption",
        ),
        Column("questions", _STRINGS, "question", "example k asks question k mod #questions"),
        Column("answers", _STRINGS, "answer", "one (majority) answer per question"),
        Column("all_answers", datasets.List(_STRINGS), "answer_soft", "every annotator answer per question (VQAv2)"),
        Column("question_types", _STRINGS, None, "type per question (VQA accuracy per type)"),
        Column("boxes", datasets.List(datasets.List(datasets.Value("float32"))), "boxes", "normalised x0 y0 x1 y1"),
        Column("labels", datasets.List(datasets.Value("int64")), "labels", "class per object (region labels)"),
        Column("region_feats", None, "region_feats", "(R, F) float32 precomputed region features"),
        Column("caption_claims", _STRINGS, "claim", "canonical claim per caption, '' = unknown (data/claims.py)"),
        Column("image_facts", _STRINGS, "facts", "every claim true of the image"),
        Column(
            "caption_negatives",
            _STRINGS,
            "negative",
            "per caption a hard negative text (false of the image, e.g. its objects swapped), '' = none",
            "caption",
        ),
        # evaluation-only columns of Shapes, read from the Arrow table by protocols (never batched)
        Column("obj_shape", _STRINGS, None, "shape per object"),
        Column("obj_color", _STRINGS, None, "colour per object"),
        Column("obj_size", _STRINGS, None, "size per object"),
        Column("match_text", datasets.Value("string"), None, "a true statement of the image"),
        Column("match_negatives", _STRINGS, None, "hard negatives of the statement"),
        Column("match_positives", _STRINGS, None, "per negative, the true statement of the same template"),
        Column("match_negative_types", _STRINGS, None, "attribute_swap / relation_swap / count_change"),
    )
}

FIELDS: dict[str, Field] = {
    f.name: f
    for f in (
        Field("input_ids", torch.long, ("B", "T"), None, ("captions",), "caption tokens (the tokenizer pads)"),
        Field("attention_mask", torch.long, ("B", "T"), 0, ("captions",), "1 = a caption token"),
        Field("pixel_values", torch.float32, ("B", 3, "H", "W"), None, ("pixels",), "normalised to [-1, 1]"),
        Field(
            "pixel_values_right",
            torch.float32,
            ("B", 3, "H", "W"),
            None,
            ("pixels_right",),
            "the right image of a pair, normalised as pixel_values",
        ),
        Field("image_id", torch.long, ("B",), None, ("image_id",), "equal ids = same image (ITC positives)"),
        Field("text_claim", torch.long, ("B",), None, ("caption_claims", "image_facts"), "claim code, 0 = unknown"),
        Field(
            "image_facts",
            torch.long,
            ("B", "F"),
            0,
            ("caption_claims", "image_facts"),
            "fact codes, F = the data's widest row",
        ),
        Field("labels", torch.long, ("B",), None, ("caption_labels",), "class of the caption"),
        Field(
            "negative_ids",
            torch.long,
            ("B", "T"),
            None,
            ("captions", "caption_negatives"),
            "the caption's hard negative, tokenised with the captions (same T)",
        ),
        Field("negative_mask", torch.long, ("B", "T"), 0, ("captions", "caption_negatives"), "1 = a negative's token"),
        Field("has_negative", torch.bool, ("B",), None, ("captions", "caption_negatives"), "False = no negative"),
        Field("question_ids", torch.long, ("B", "Tq"), None, ("questions", "answers"), "question tokens"),
        Field("question_mask", torch.long, ("B", "Tq"), 0, ("questions", "answers"), "1 = a question token"),
        Field("answer", torch.long, ("B",), None, ("questions", "answers"), "answer index, -1 = not in vocab"),
        Field(
            "answer_scores",
            torch.float32,
            ("B", "A"),
            0.0,
            ("questions", "answers"),
            "one-hot, or min(1, #annotators / 3) with all_answers",
        ),
        Field(
            "qa_ids",
            torch.long,
            ("B", "Tqa"),
            None,
            ("questions", "answers"),
            "'question answer' tokens (generative VQA; the tokenizer pads)",
        ),
        Field("qa_mask", torch.long, ("B", "Tqa"), 0, ("questions", "answers"), "1 = a question or answer token"),
        Field(
            "answer_start",
            torch.long,
            ("B",),
            None,
            ("questions", "answers"),
            "position of the first answer token in qa_ids",
        ),
        Field("region_boxes", torch.float32, ("B", "R", 4), 0.0, ("boxes",), "object boxes, x0 y0 x1 y1 in [0, 1]"),
        Field("region_mask", torch.bool, ("B", "R"), False, ("boxes",), "True = a real object"),
        Field("region_labels", torch.long, ("B", "R"), -1, ("boxes", "labels"), "class per object"),
        Field("region_feats", torch.float32, ("B", "R", "F"), 0.0, ("boxes", "region_feats"), "region features"),
    )
}


def features(names: Iterable[str], *, region_feat_dim: int | None = None, overrides: dict | None = None):
    """`datasets.Features` of the named columns, in that order (the Arrow types a source writes).

    region_feat_dim: F of `region_feats` (its type depends on the data). overrides: column -> feature,
    for a source whose cache format predates a type here (Shapes).
    """
    spec = {}
    for name in names:
        feature = (overrides or {}).get(name, COLUMNS[name].feature)
        if feature is None:  # region_feats
            if region_feat_dim is None:
                raise ValueError(f"column {name!r} needs its width (region_feat_dim)")
            feature = datasets.Array2D(shape=(None, int(region_feat_dim)), dtype="float32")
        spec[name] = feature
    return datasets.Features(spec)


def fields_from(columns: Iterable[str]) -> frozenset[str]:
    """The batch fields made from these dataset columns (those whose columns are all present)."""
    present = set(columns)
    return frozenset(f.name for f in FIELDS.values() if present.issuperset(f.columns))


def columns_of_item(item: dict) -> set[str]:
    """The dataset columns a dataset example carries (by the keys of their values in it)."""
    return {c.name for c in COLUMNS.values() if c.item is not None and c.item in item}


def stacked_fields(fields: Iterable[str]) -> list[tuple[str, str]]:
    """(field, example key) of the given fields the generic path makes: one per-caption / per-image
    column each, stacked as they are (`Column.per`)."""
    wanted, out = set(fields), []
    for name in (f for f in FIELDS if f in wanted):  # schema order, whatever the order of `fields`
        (source, *more) = FIELDS[name].columns
        column = COLUMNS[source]
        if not more and column.per is not None and column.item is not None:
            out.append((name, column.item))
    return out


def padded(name: str, *size: int) -> torch.Tensor:
    """A tensor of field `name` with the given size, filled with the field's padding value."""
    field = FIELDS[name]
    if field.pad is None:
        raise ValueError(f"batch field {name!r} is never padded")
    return torch.full(size, field.pad, dtype=field.dtype)


def values(name: str, data) -> torch.Tensor:
    """A tensor of field `name` (its dtype) from a list / array."""
    return torch.tensor(data, dtype=FIELDS[name].dtype)
