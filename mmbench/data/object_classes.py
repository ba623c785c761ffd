"""Zero-shot classes of a dataset whose images list their objects' attributes (Shapes): the `zeroshot` protocol.

The protocol's prompt template names attributes ("a {color} {shape}"); the classes are every
combination of the values those attributes take in the split, and an image's true classes are the
combinations its objects have (a Shapes scene holds 1-3 objects: one class per object, repeats kept). Shapes stores each
object attribute as a list column `obj_<attribute>`; it supplies this function to the evaluation suite
through its data config (`data.zeroshot_classes`), so the protocol itself knows no dataset:

    classes(split, fields, n) -> (classes [(value per field), ...], truth [per image row: one class tuple per object])

A dataset of another kind (one label per image, say) supplies its own function of that form.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

PREFIX = "obj_"


def object_classes(split, fields: Sequence[str], n: int) -> tuple[list[tuple[str, ...]], list[list[tuple[str, ...]]]]:
    """Classes and per-image truth for the first `n` rows of `split` (a `datasets.Dataset` with `obj_*` columns).

    Raises ValueError naming the attributes the data has when a field is not one of them.
    """
    have = sorted(c[len(PREFIX) :] for c in split.column_names if c.startswith(PREFIX))
    missing = [f for f in fields if f not in have]
    if missing:
        raise ValueError(f"the data's object attributes are {have}; the template names {missing}")
    rows = split.select(range(n)) if n < len(split) else split
    objects = [rows[f"{PREFIX}{f}"] for f in fields]  # per field: per image its objects' values
    truth = [list(zip(*(values[r] for values in objects))) for r in range(len(rows))]
    values = [sorted({v for per_image in field_values for v in per_image}) for field_values in objects]
    return list(itertools.product(*values)), truth
