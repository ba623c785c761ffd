"""Drawing a Shapes scene: the per-(shape, size) stamps and allowed centres of a layout, painting the
objects into an image, and decoding a stored `pixels` cell. Rendering pastes precomputed numpy masks."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from mmbench.data.shapes.scene import SHAPES, SIZES, Scene, ShapeObject

COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 200, 20),
    "purple": (140, 50, 180),
    "cyan": (30, 200, 210),
}
SIZE_RADIUS = {"small": 0.22, "large": 0.38}  # object half-extent, as a fraction of the cell side
BACKGROUND = 230  # light-gray background value (all three channels)
JITTER = 0.2  # max offset of an object centre from its cell centre, as a fraction of the cell side


@dataclass(frozen=True)
class Stamp:
    """Precomputed mask of one (shape, size), centred on pixel (half, half)."""

    mask: np.ndarray  # (2*half+1, 2*half+1) bool
    half: int
    extent: tuple[int, int, int, int]  # painted x0, y0, x1, y1 (exclusive) relative to the centre pixel


@dataclass(frozen=True)
class Layout:
    """Everything rendering needs for one (image_size, grid): stamps and allowed centre positions."""

    image_size: int
    grid: int
    stamps: dict[tuple[str, str], Stamp]
    centres: dict[tuple[int, str], tuple[int, int]]  # (row or col index, size) -> [lo, hi] centre pixel


def shape_mask(shape: str, radius: float) -> np.ndarray:
    """Boolean mask of a shape of half-extent `radius` (pixels) on the integer grid around its centre."""
    half = int(math.floor(radius))
    d = np.arange(-half, half + 1, dtype=np.float64)
    dy, dx = np.meshgrid(d, d, indexing="ij")
    if shape == "circle":
        return dx**2 + dy**2 <= radius**2
    if shape == "square":
        side = 0.8 * radius
        return (np.abs(dx) <= side) & (np.abs(dy) <= side)
    if shape == "triangle":  # apex up, base at the bottom
        return (dy <= radius) & (np.abs(dx) <= (dy + radius) / 2)
    if shape == "cross":
        bar = radius / 3
        return ((np.abs(dx) <= bar) & (np.abs(dy) <= radius)) | ((np.abs(dy) <= bar) & (np.abs(dx) <= radius))
    raise ValueError(f"unknown shape {shape!r}; valid shapes: {list(SHAPES)}")


def _stamp(shape: str, radius: float) -> Stamp:
    mask = shape_mask(shape, radius)
    half = mask.shape[0] // 2
    ys, xs = np.nonzero(mask)
    return Stamp(
        mask, half, (int(xs.min()) - half, int(ys.min()) - half, int(xs.max()) - half + 1, int(ys.max()) - half + 1)
    )


@lru_cache(maxsize=16)
def layout(image_size: int, grid: int) -> Layout:
    cell = image_size / grid
    stamps = {(shape, size): _stamp(shape, SIZE_RADIUS[size] * cell) for shape in SHAPES for size in SIZES}
    jitter = int(math.floor(JITTER * cell))
    centres = {}
    for i in range(grid):
        lo, hi = i * image_size // grid, (i + 1) * image_size // grid  # pixels [lo, hi) of cell i
        mid = (lo + hi - 1) / 2
        for size in SIZES:
            half = stamps[("circle", size)].half  # same half for every shape of this size
            first, last = max(lo + half, math.ceil(mid - jitter)), min(hi - 1 - half, math.floor(mid + jitter))
            centres[(i, size)] = (first, last) if first <= last else (round(mid), round(mid))
    return Layout(image_size, grid, stamps, centres)


def _centre(o: ShapeObject, lay: Layout) -> tuple[int, int]:
    """Centre pixel of an object: its own, or the middle of its allowed range (= its cell centre)."""
    if o.x is not None and o.y is not None:
        return o.x, o.y
    (xlo, xhi), (ylo, yhi) = lay.centres[(o.col, o.size)], lay.centres[(o.row, o.size)]
    return (xlo + xhi) // 2, (ylo + yhi) // 2


def paint(image: np.ndarray, scene: Scene, lay: Layout) -> list[list[float]]:
    """Paint the objects into an HWC uint8 image (in place); return their normalised boxes."""
    boxes = []
    size = lay.image_size
    for o in scene:
        stamp = lay.stamps[(o.shape, o.size)]
        x, y = _centre(o, lay)
        h = stamp.half
        image[y - h : y + h + 1, x - h : x + h + 1][stamp.mask] = COLOR_RGB[o.color]
        x0, y0, x1, y1 = stamp.extent
        boxes.append([(x + x0) / size, (y + y0) / size, (x + x1) / size, (y + y1) / size])
    return boxes


def render(scene: Scene, image_size: int = 64, grid: int = 3) -> tuple[np.ndarray, list[list[float]]]:
    """Render a scene: (S, S, 3) uint8 image and the normalised (x0, y0, x1, y1) box of each object."""
    image = np.full((image_size, image_size, 3), BACKGROUND, dtype=np.uint8)
    return image, paint(image, scene, layout(image_size, grid))


def decode_pixels(pixels: bytes, image_size: int) -> np.ndarray:
    """The (S, S, 3) uint8 image of a `pixels` cell."""
    return np.frombuffer(pixels, dtype=np.uint8).reshape(image_size, image_size, 3)
