"""The type of a collated batch, for the type checker: the tensors of `mmbench.data.columns.FIELDS` by name.

A module of its own, apart from the schema, so that models and objectives can name it without importing
`datasets` (which the schema's Arrow types need).
"""

from __future__ import annotations

from typing import TypedDict, cast

import torch


class Batch(TypedDict, total=False):
    """A collated batch: the tensors of `FIELDS` by name (their dtypes, shapes and padding there). Which of them
    a batch holds follows from the data's columns (`fields_from`); config validation checks that every field a
    part reads is there. tests/test_columns.py keeps this list equal to `mmbench.data.columns.FIELDS`."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    pixel_values: torch.Tensor
    pixel_values_right: torch.Tensor
    image_id: torch.Tensor
    text_claim: torch.Tensor
    image_facts: torch.Tensor
    labels: torch.Tensor
    negative_ids: torch.Tensor
    negative_mask: torch.Tensor
    has_negative: torch.Tensor
    question_ids: torch.Tensor
    question_mask: torch.Tensor
    answer: torch.Tensor
    answer_scores: torch.Tensor
    qa_ids: torch.Tensor
    qa_mask: torch.Tensor
    answer_start: torch.Tensor
    region_boxes: torch.Tensor
    region_mask: torch.Tensor
    region_labels: torch.Tensor
    region_feats: torch.Tensor


def named_field(batch: Batch, name: str) -> torch.Tensor:
    """The batch's field `name`, a name that comes from the config (e.g. an objective's `label_field`), so the
    type checker cannot check it: validation has checked that the data provides it."""
    return cast(dict, batch)[name]


def to_device(batch: Batch, device: torch.device | str) -> Batch:
    """The batch with every tensor on `device`."""
    return cast(Batch, {name: tensor.to(device) for name, tensor in cast(dict, batch).items()})
