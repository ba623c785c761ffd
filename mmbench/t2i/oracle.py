"""The oracle of text-to-image on Shapes: a small classifier that reads an image back into a Shapes scene.

Shapes' renderer knows the truth of every scene; the oracle inverts it, one grid cell at a time. An object
never leaves its cell (the renderer keeps its whole stamp inside: `rendering.layout`), so a cell's pixels
say everything about its content: empty, or one object of a shape, a colour and a size (`scene.SHAPES`,
`COLORS`, `SIZES`). Each cell is cropped (cells of unequal width, 21/21/22 px at 64 px, are padded with
the background to the widest) and classified by one small CNN shared by every cell, with four heads:
occupied or not, and the shape, colour and size of an occupied cell. Factored heads learn each attribute
from every object that has it, where one 49-way softmax (empty + 4 x 6 x 2) learns each combination from
its own ~1/48 of the objects: with the same CNN, the factored heads read 100% of held-out cells after 150
steps, the joint softmax 99.1% after 200 and 99.9% after 300 (docs/pending/t2i_oracle.md).

It is trained on scenes drawn and rendered by Shapes' own sampler and renderer (`sampling`, `rendering`):
0..grid*grid objects in uniformly random cells at the renderer's jittered positions, every (shape, colour,
size) alike -- held-out combinations included, since the oracle must read what a generator was never
shown. Pixel noise (Gaussian, standard deviation uniform in [0, `noise`] on the [-1, 1] pixel scale) is
added in training so that slightly imperfect samples are read as the nearest render.

    oracle = shapes_oracle(cache_dir=".cache/mmbench", image_size=48, grid=3)
    scenes = oracle.read(images)        # (N, S, S, 3) uint8 -> N Shapes scenes: cell, shape, colour, size
    feats = oracle.features(images)     # (N, grid*grid*F): the penultimate features, cells in row-major order
    oracle.accuracy                     # {"cell": ..., "scene": ...} on held-out renders, measured when trained

Training is deterministic from `seed` (its own RNG streams; the global RNG is left as it was) and takes
seconds on one CPU thread. The result is cached as `<cache_dir>/t2i-oracle-<hash>.pt` (weights only),
keyed by what changes renders (image size, grid, the renderer's constants, Shapes' GENERATOR_VERSION),
by the training settings and by `ORACLE_VERSION`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import pickle
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmbench.data.collate import pixel_values
from mmbench.data.shapes import (
    BACKGROUND,
    COLOR_RGB,
    COLORS,
    GENERATOR_VERSION,
    JITTER,
    SHAPES,
    SIZE_RADIUS,
    SIZES,
    RandomStream,
    Scene,
    SceneSettings,
    ShapeObject,
    layout,
    render,
)
from mmbench.data.shapes.sampling import draw_key, place, triples
from mmbench.t2i.scores import single_thread

log = logging.getLogger(__name__)

ORACLE_VERSION = 1  # bump when the oracle's architecture or training changes; part of the cache key
TRAIN_STREAM, HELD_OUT_STREAM = 0, 1  # second word of the training / held-out renders' RNG seeds
READ_BATCH = 512  # images per forward when reading


@dataclass(frozen=True)
class OracleSettings:
    """What an oracle is trained from: the Shapes layout it reads and its training budget."""

    image_size: int = 48
    grid: int = 3
    seed: int = 0
    renders: int = 1000  # training scenes (x grid*grid cells)
    steps: int = 300
    batch_size: int = 256  # cells per step
    lr: float = 1e-2  # peak of the one-cycle schedule (Adam)
    noise: float = 0.1  # largest pixel-noise standard deviation, [-1, 1] pixel scale
    width: int = 8  # channels of the first convolution (the second has twice as many)
    feature_dim: int = 32  # per-cell penultimate features
    held_out_renders: int = 1000  # scenes of the accuracy measured after training

    def __post_init__(self) -> None:
        SceneSettings(image_size=self.image_size, grid=self.grid)  # ValueError: a layout Shapes cannot render
        for name in ("renders", "steps", "batch_size", "width", "feature_dim", "held_out_renders"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"oracle setting {name} must be an int >= 1, got {value!r}")
        if not self.lr > 0 or not self.noise >= 0:
            raise ValueError(f"oracle settings need lr > 0 and noise >= 0, got lr={self.lr}, noise={self.noise}")


def cache_key(settings: OracleSettings) -> dict:
    """The JSON payload an oracle's cache file is keyed by: its settings and everything that changes renders."""
    renderer = {
        "shapes": SHAPES,
        "colors": COLORS,
        "sizes": SIZES,
        "color_rgb": COLOR_RGB,
        "size_radius": SIZE_RADIUS,
        "background": BACKGROUND,
        "jitter": JITTER,
        "generator_version": GENERATOR_VERSION,  # bumped when Shapes' generated data (stamps, sampling) changes
    }
    payload = {"oracle_version": ORACLE_VERSION, "settings": asdict(settings), "renderer": renderer}
    return json.loads(json.dumps(payload, sort_keys=True))  # tuples -> lists: equal to what a file loads back


def cell_bounds(image_size: int, grid: int) -> list[tuple[int, int]]:
    """Pixels [lo, hi) of each row / column of cells: the renderer's (`rendering.layout`)."""
    return [(i * image_size // grid, (i + 1) * image_size // grid) for i in range(grid)]


# --------------------------------------------------------------------------- the classifier


@dataclass
class CellOutput:
    """The classifier's output for B cells."""

    features: torch.Tensor  # (B, F) penultimate features
    occupied: torch.Tensor  # (B, 2) logits: empty, occupied
    shape: torch.Tensor  # (B, len(SHAPES)) logits
    color: torch.Tensor  # (B, len(COLORS)) logits
    size: torch.Tensor  # (B, len(SIZES)) logits

    def loss(self, target: torch.Tensor) -> torch.Tensor:
        """Summed cross-entropy of the four heads; target (B, 4): occupied, shape, colour, size (-1: empty)."""
        heads = (self.occupied, self.shape, self.color, self.size)
        losses = [F.cross_entropy(logits, target[:, k], ignore_index=-1) for k, logits in enumerate(heads)]
        return torch.stack(losses).sum()


class CellClassifier(nn.Module):
    """(B, 3, c, c) cell crops in [-1, 1] -> `CellOutput`. Max pooling makes it indifferent to where the
    object sits in its cell (the renderer's jitter)."""

    def __init__(self, *, width: int, feature_dim: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B, w, c/2, c/2)
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),  # (B, 2w)
            nn.Linear(2 * width, feature_dim),
            nn.ReLU(),  # (B, F)
        )
        self.occupied = nn.Linear(feature_dim, 2)
        self.shape = nn.Linear(feature_dim, len(SHAPES))
        self.color = nn.Linear(feature_dim, len(COLORS))
        self.size = nn.Linear(feature_dim, len(SIZES))

    def forward(self, cells: torch.Tensor) -> CellOutput:
        h = self.body(cells)
        return CellOutput(h, self.occupied(h), self.shape(h), self.color(h), self.size(h))


@dataclass
class Reading:
    """What the oracle reads in N images of C = grid*grid cells (row-major)."""

    occupied: torch.Tensor  # (N, C) bool
    shape: torch.Tensor  # (N, C) index into SHAPES (meaningless where empty)
    color: torch.Tensor  # (N, C) index into COLORS
    size: torch.Tensor  # (N, C) index into SIZES
    features: torch.Tensor  # (N, C, F)


class SceneOracle(nn.Module):
    """Reads (N, S, S, 3) uint8 images of one Shapes layout (image size S, grid) into Shapes scenes."""

    def __init__(self, *, image_size: int, grid: int, width: int = 8, feature_dim: int = 32):
        super().__init__()
        self.image_size, self.grid = image_size, grid
        self.classifier = CellClassifier(width=width, feature_dim=feature_dim)
        self.num_features = grid * grid * feature_dim  # per image; torchmetrics' FID reads this attribute
        self.accuracy: dict[str, float] = {}  # on held-out renders, set by `train_oracle`
        self._bounds = cell_bounds(image_size, grid)
        self._crop = max(hi - lo for lo, hi in self._bounds)

    def pixel_values(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) float in [-1, 1] of (N, S, S, 3) uint8 images (the data's normalisation); ValueError
        for images of another layout."""
        array = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        S = self.image_size
        if array.ndim != 4 or array.shape[1:] != (S, S, 3) or array.dtype != np.uint8:
            raise ValueError(
                f"the oracle reads (N, {S}, {S}, 3) uint8 images (Shapes at image_size={S}, grid={self.grid}), "
                f"got shape {tuple(array.shape)} and dtype {array.dtype}; read other sizes with an oracle "
                f"trained for them (shapes_oracle(image_size=..., grid=...))"
            )
        if len(array) == 0:
            return torch.zeros(0, 3, S, S)
        return pixel_values(list(array))

    def cells(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) -> (N * grid*grid, 3, c, c): each cell's crop in row-major order, padded with the
        background to the widest cell (c)."""
        c, pad = self._crop, BACKGROUND / 127.5 - 1.0
        crops = [
            F.pad(pixels[:, :, y0:y1, x0:x1], (0, c - (x1 - x0), 0, c - (y1 - y0)), value=pad)
            for y0, y1 in self._bounds
            for x0, x1 in self._bounds
        ]
        return torch.stack(crops, 1).flatten(0, 1)  # (N, C, 3, c, c) -> (N*C, 3, c, c)

    @torch.no_grad()
    def predict(self, images: np.ndarray | torch.Tensor) -> Reading:
        """Every cell of every image classified (in batches of `READ_BATCH` images, eval mode)."""
        pixels = self.pixel_values(images)
        N, C = len(pixels), self.grid * self.grid
        device = next(self.parameters()).device
        was_training = self.training
        self.eval()
        parts = []
        with single_thread():  # small convolutions (`scores.single_thread`)
            for start in range(0, N, READ_BATCH):
                out = self.classifier(self.cells(pixels[start : start + READ_BATCH].to(device)))
                parts.append(
                    (
                        out.occupied.argmax(-1) == 1,
                        out.shape.argmax(-1),
                        out.color.argmax(-1),
                        out.size.argmax(-1),
                        out.features,
                    )
                )
        self.train(was_training)
        if not parts:
            empty = torch.zeros(0, C, dtype=torch.long)
            return Reading(empty.bool(), empty, empty, empty, torch.zeros(0, C, self.classifier.occupied.in_features))
        occupied, shape, color, size, features = (torch.cat(p).cpu() for p in zip(*parts))
        return Reading(
            occupied.view(N, C), shape.view(N, C), color.view(N, C), size.view(N, C), features.view(N, C, -1)
        )

    def read(self, images: np.ndarray | torch.Tensor) -> list[Scene]:
        """The Shapes scene of each image: its objects (cell row, col, shape, colour, size; centres unknown),
        in row-major cell order."""
        r = self.predict(images)
        scenes = []
        for occupied, shape, color, size in zip(
            r.occupied.tolist(), r.shape.tolist(), r.color.tolist(), r.size.tolist()
        ):
            scenes.append(
                tuple(
                    ShapeObject(
                        cell // self.grid, cell % self.grid, SHAPES[shape[cell]], COLORS[color[cell]], SIZES[size[cell]]
                    )
                    for cell in range(len(occupied))
                    if occupied[cell]
                )
            )
        return scenes

    def features(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(N, grid*grid*F) float32: every cell's penultimate features, cells in row-major order (so the
        layout of a scene, not only its contents, shapes the distribution; `scores.frechet_distance`)."""
        return self.predict(images).features.flatten(1)


# --------------------------------------------------------------------------- training data


def random_scenes(n: int, *, image_size: int, grid: int, seed: Sequence[int]) -> tuple[np.ndarray, list[Scene]]:
    """n scenes of 0..grid*grid objects drawn by Shapes' sampler (uniform object count, cells, and (shape,
    colour, size) over every combination; the renderer's jitter) and rendered: ((n, S, S, 3) uint8, scenes)."""
    lay = layout(image_size, grid)
    rs = RandomStream(np.random.default_rng(list(seed)))
    options = triples([(color, shape) for shape in SHAPES for color in COLORS])
    images = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
    scenes = []
    for i in range(n):
        scene = place(draw_key(rs, grid, 0, grid * grid, options, None), rs, lay)
        images[i] = render(scene, image_size, grid)[0]
        scenes.append(scene)
    return images, scenes


def cell_targets(scenes: Sequence[Scene], grid: int) -> torch.Tensor:
    """(N, grid*grid, 4) int64 per cell: occupied (0 / 1), shape, colour, size indices (-1 where empty)."""
    target = torch.full((len(scenes), grid * grid, 4), -1, dtype=torch.long)
    target[:, :, 0] = 0
    for i, scene in enumerate(scenes):
        for o in scene:
            target[i, o.row * grid + o.col] = torch.tensor(
                [1, SHAPES.index(o.shape), COLORS.index(o.color), SIZES.index(o.size)]
            )
    return target


def accuracy(oracle: SceneOracle, images: np.ndarray, scenes: Sequence[Scene]) -> dict[str, float]:
    """Share of cells read right (empty, or shape, colour and size all right) and of scenes read right in
    every cell."""
    r = oracle.predict(images)
    truth = cell_targets(scenes, oracle.grid)  # (N, C, 4)
    read = torch.stack([r.occupied.long(), r.shape, r.color, r.size], -1)  # (N, C, 4)
    read[~r.occupied] = torch.tensor([0, -1, -1, -1])
    right = (read == truth).all(-1)  # (N, C)
    return {"cell": right.float().mean().item(), "scene": right.all(1).float().mean().item()}


def train_oracle(settings: OracleSettings) -> SceneOracle:
    """An oracle trained from scratch (deterministic from `settings.seed`), its held-out accuracy measured on
    `held_out_renders` scenes of another random stream (`oracle.accuracy`)."""
    s = settings
    t0 = time.perf_counter()
    images, scenes = random_scenes(s.renders, image_size=s.image_size, grid=s.grid, seed=(s.seed, TRAIN_STREAM))
    with single_thread(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(s.seed)  # the initial weights
        oracle = SceneOracle(image_size=s.image_size, grid=s.grid, width=s.width, feature_dim=s.feature_dim)
        cells = oracle.cells(oracle.pixel_values(images)).contiguous()  # (n*C, 3, c, c)
        target = cell_targets(scenes, s.grid).flatten(0, 1)  # (n*C, 4)
        generator = torch.Generator().manual_seed(s.seed)
        optimizer = torch.optim.Adam(oracle.parameters(), lr=s.lr)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=s.lr, total_steps=s.steps, pct_start=0.1)
        oracle.train()
        for _ in range(s.steps):
            idx = torch.randint(len(cells), (s.batch_size,), generator=generator)
            x = cells[idx]
            sigma = torch.rand(len(x), 1, 1, 1, generator=generator) * s.noise
            x = x + sigma * torch.randn(x.shape, generator=generator)
            loss = oracle.classifier(x).loss(target[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        oracle.eval().requires_grad_(False)
        held = random_scenes(s.held_out_renders, image_size=s.image_size, grid=s.grid, seed=(s.seed, HELD_OUT_STREAM))
        oracle.accuracy = accuracy(oracle, *held)
    log.info(
        "trained the t2i oracle (%d px, grid %d) in %.1fs: held-out accuracy %.4f per cell, %.4f per scene",
        s.image_size,
        s.grid,
        time.perf_counter() - t0,
        oracle.accuracy["cell"],
        oracle.accuracy["scene"],
    )
    return oracle


# --------------------------------------------------------------------------- the cache

# what loading a damaged or foreign file raises (a truncated zip, a bad pickle, a missing key)
_LOAD_ERRORS = (OSError, RuntimeError, EOFError, ValueError, KeyError, TypeError, pickle.UnpicklingError)


def cache_path(settings: OracleSettings, cache_dir: str | os.PathLike) -> Path:
    """`<cache_dir>/t2i-oracle-<16 hex chars of the cache key>.pt`."""
    digest = hashlib.sha256(json.dumps(cache_key(settings), sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"t2i-oracle-{digest}.pt"


def load_or_train(settings: OracleSettings, cache_dir: str | os.PathLike | None) -> SceneOracle:
    """The oracle of `settings`: loaded from `cache_dir` when a complete file of the same key is there, else
    trained and written there atomically (a temporary file renamed into place); `cache_dir=None`: trained,
    not cached. A damaged or foreign file is replaced, with a warning naming it."""
    if cache_dir is None:
        return train_oracle(settings)
    key, path = cache_key(settings), cache_path(settings, cache_dir)
    if path.is_file():
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            if saved["key"] != key:
                raise ValueError("its key differs (a hash collision or a file written by other code)")
            oracle = SceneOracle(
                image_size=settings.image_size,
                grid=settings.grid,
                width=settings.width,
                feature_dim=settings.feature_dim,
            )
            oracle.classifier.load_state_dict(saved["state_dict"])
            oracle.accuracy = {k: float(v) for k, v in saved["accuracy"].items()}
            return oracle.eval().requires_grad_(False)
        except _LOAD_ERRORS as err:
            log.warning(
                "the cached t2i oracle %s does not load (%s: %s); training it again", path, type(err).__name__, err
            )
    oracle = train_oracle(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    try:
        torch.save({"key": key, "state_dict": oracle.classifier.state_dict(), "accuracy": oracle.accuracy}, tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return oracle


def shapes_oracle(*, cache_dir: str | os.PathLike | None, image_size: int, grid: int, seed: int = 0) -> SceneOracle:
    """The oracle of a Shapes layout (the data's `image_size` and `source.grid`) with the default training
    settings, trained once and cached in `cache_dir` (the Shapes cache: `${paths.cache_dir}`)."""
    return load_or_train(OracleSettings(image_size=image_size, grid=grid, seed=seed), cache_dir)
