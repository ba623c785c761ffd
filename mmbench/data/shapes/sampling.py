"""Shapes' randomness: buffered uniform draws (`RandomStream`), drawing a scene key and placing its
objects at jittered centres. Every draw of the generator goes through one `RandomStream` per split."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from mmbench.data.shapes.scene import SIZES, Description, Scene, SceneKey, ShapeObject

if TYPE_CHECKING:
    from mmbench.data.shapes.rendering import Layout

RANDOM_BLOCK = 4096


class RandomStream:
    """Uniform draws from a numpy Generator, buffered in blocks (much cheaper per draw in Python)."""

    def __init__(self, rng: np.random.Generator, block: int = RANDOM_BLOCK):
        self.rng = rng
        self.block = block
        self.buffer: list[float] = []
        self.pos = 0

    def uniform(self) -> float:
        if self.pos == len(self.buffer):
            self.buffer, self.pos = self.rng.random(self.block).tolist(), 0
        self.pos += 1
        return self.buffer[self.pos - 1]

    def below(self, n: int) -> int:
        """An int in [0, n)."""
        if self.pos == len(self.buffer):
            self.buffer, self.pos = self.rng.random(self.block).tolist(), 0
        self.pos += 1
        return min(int(self.buffer[self.pos - 1] * n), n - 1)

    def pick(self, seq: Sequence):
        return seq[self.below(len(seq))]

    def coin(self) -> bool:
        return self.uniform() < 0.5

    def sample(self, n: int, k: int) -> list[int]:
        """k distinct ints of range(n) in random order (partial Fisher-Yates)."""
        pool = list(range(n))
        for i in range(k):
            j = i + self.below(n - i)
            pool[i], pool[j] = pool[j], pool[i]
        return pool[:k]


def triples(pairs: Iterable[Description]) -> list[tuple[str, str, str]]:
    """(shape, colour, size) options for objects whose (colour, shape) is in pairs."""
    return [(shape, color, size) for color, shape in pairs for size in SIZES]


def draw_key(
    rs: RandomStream,
    grid: int,
    min_objects: int,
    max_objects: int,
    options: list[tuple[str, str, str]],
    forced: list[tuple[str, str, str]] | None,
) -> SceneKey:
    """A random scene key; with `forced`, the first object is drawn from those options."""
    k = min_objects + rs.below(max_objects - min_objects + 1)
    objects = []
    for j, cell in enumerate(rs.sample(grid * grid, k)):
        shape, color, size = rs.pick(forced if forced and j == 0 else options)
        objects.append((cell, shape, color, size))
    return tuple(sorted(objects))


def place(key: SceneKey, rs: RandomStream, lay: Layout) -> Scene:
    """Objects of a scene key with jittered centres."""
    objects = []
    for cell, shape, color, size in key:
        row, col = divmod(cell, lay.grid)
        (xlo, xhi), (ylo, yhi) = lay.centres[(col, size)], lay.centres[(row, size)]
        x, y = xlo + rs.below(xhi - xlo + 1), ylo + rs.below(yhi - ylo + 1)
        objects.append(ShapeObject(row, col, shape, color, size, x, y))
    return tuple(objects)
