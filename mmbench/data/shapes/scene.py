"""Shapes' scenes and their truth: the vocabulary of objects, `ShapeObject`, and what is true of a scene.

Every scene is 1-3 objects on a grid (at most one per cell); an object has a shape (`SHAPES`), a colour
(`COLORS`) and a size (`SIZES`). Everything said about a scene (`grammar`, `text`) is derived from these
functions, so all text is true by construction.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

SHAPES = ("circle", "square", "triangle", "cross")
COLORS = ("red", "green", "blue", "yellow", "purple", "cyan")
SIZES = ("small", "large")
NUM_LABELS = len(SHAPES) * len(COLORS)  # region labels are shape_index * len(COLORS) + color_index

Description = tuple[str, str]  # (colour, shape): how objects are named in relations and questions
SceneKey = tuple[tuple[int, str, str, str], ...]


@dataclass(frozen=True)
class ShapeObject:
    """One object: grid cell (row, col), attributes and optionally its centre pixel (x, y)."""

    row: int
    col: int
    shape: str
    color: str
    size: str
    x: int | None = None  # centre pixel; None = the centre of the cell
    y: int | None = None

    @property
    def desc(self) -> Description:
        return (self.color, self.shape)

    @property
    def label(self) -> int:
        return SHAPES.index(self.shape) * len(COLORS) + COLORS.index(self.color)


Scene = tuple[ShapeObject, ...]


def scene_key(scene: Iterable[ShapeObject], grid: int) -> SceneKey:
    """Canonical identity of a scene: sorted (cell, shape, colour, size) of its objects, jitter excluded."""
    return tuple(sorted((o.row * grid + o.col, o.shape, o.color, o.size) for o in scene))


def strict_relations(a: ShapeObject, b: ShapeObject) -> list[str]:
    """The relations R for which "a R b" is strictly true (different column / row)."""
    rels = []
    if a.col != b.col:
        rels.append("left of" if a.col < b.col else "right of")
    if a.row != b.row:
        rels.append("above" if a.row < b.row else "below")
    return rels


def has_object(scene: Scene, color: str | None = None, shape: str | None = None, size: str | None = None) -> bool:
    """Whether some object matches all the given attributes."""
    return any(
        (color is None or o.color == color) and (shape is None or o.shape == shape) and (size is None or o.size == size)
        for o in scene
    )


def count_objects(scene: Scene, shape: str | None = None) -> int:
    return sum(1 for o in scene if shape is None or o.shape == shape)


def relation_claim_true(scene: Scene, a: Description, relation: str, b: Description) -> bool:
    """Truth of "a {a} {relation} a {b}": some object described by a stands in the relation to some b."""
    return any(
        x.desc == a and y.desc == b and relation in strict_relations(x, y) for x in scene for y in scene if x is not y
    )


def unique_objects(scene: Scene) -> list[ShapeObject]:
    """Objects whose (colour, shape) description names them unambiguously."""
    descs = [o.desc for o in scene]
    return [o for o in scene if descs.count(o.desc) == 1]
