"""The settings of the Shapes generator, checked in one place: `SceneSettings` (what every scene of a split
is generated from), `ShapesSettings` (every `data.source` key of `build_shapes`: scenes and split sizes),
how many distinct scenes a grid holds, and what config validation asks of a config (`config_problems`),
answered from the config alone."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np

from mmbench.data.shapes.scene import COLORS, SHAPES, SIZES
from mmbench.data.shapes.text import QUESTION_TYPES

MIN_IMAGE_SIZE = 16
MIN_CELL_PIXELS = 8


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def normalize_holdout(holdout) -> list[list[str]]:
    """Validated, sorted, de-duplicated [colour, shape] pairs (accepts any iterable of pairs)."""
    pairs = set()
    for item in holdout or ():
        pair = [str(x) for x in item] if not isinstance(item, str) else [item]
        if len(pair) != 2:
            raise ValueError(f"holdout entries must be [colour, shape] pairs, got {item!r}")
        color, shape = pair
        if color not in COLORS:
            raise ValueError(f"holdout: unknown colour {color!r}; valid colours: {list(COLORS)}")
        if shape not in SHAPES:
            raise ValueError(f"holdout: unknown shape {shape!r}; valid shapes: {list(SHAPES)}")
        pairs.add((color, shape))
    if len(pairs) == len(COLORS) * len(SHAPES):
        raise ValueError("holdout covers every colour x shape combination; nothing is left for train/val/test")
    return [list(p) for p in sorted(pairs)]


@dataclass(frozen=True)
class SceneSettings:
    """What every scene of a split is generated from: the one place these settings have defaults and
    are checked (ValueError). `question_mix` and `holdout` are stored normalised."""

    seed: int = 0
    image_size: int = 64
    grid: int = 3
    min_objects: int = 1
    max_objects: int = 3
    captions_per_image: int = 4
    questions_per_image: int = 4
    question_mix: dict[str, int] | None = None
    holdout: Sequence = ()
    relation_directions: int = 2  # 2: "further left" / "higher"; 4: also "further right" / "lower" (v6)
    caption_relation_directions: int = 4  # relation words of captions: 4 (v8); 2: "left of" / "above"

    def __post_init__(self) -> None:
        self._set_int("seed", 0)
        self._set_int("image_size", MIN_IMAGE_SIZE)
        self._set_int("grid", 1)
        if self.image_size < MIN_CELL_PIXELS * self.grid:
            raise ValueError(
                f"image_size={self.image_size} is too small for grid={self.grid}: cells need >= {MIN_CELL_PIXELS} "
                f"pixels, i.e. image_size >= {MIN_CELL_PIXELS * self.grid} or a smaller grid"
            )
        self._set_int("min_objects", 1)
        self._set_int("max_objects", self.min_objects)
        if self.max_objects > self.grid * self.grid:
            raise ValueError(
                f"max_objects={self.max_objects} exceeds the {self.grid * self.grid} cells of grid={self.grid} "
                f"(grid*grid must be >= max_objects)"
            )
        self._set_int("captions_per_image", 1)
        self._set_int("questions_per_image", 0)
        object.__setattr__(self, "question_mix", normalize_question_mix(self.question_mix))
        object.__setattr__(self, "holdout", normalize_holdout(self.holdout))
        self._set_directions("relation_directions", "one direction per axis", "both")
        self._set_directions(
            "caption_relation_directions", "relations stated as 'left of' / 'above' only", "all four relation words"
        )

    def _set_directions(self, name: str, two: str, four: str) -> None:
        """Check a 2-or-4 directions field (ValueError saying what each means) and store it as an int."""
        if _check_int(name, getattr(self, name), 2) not in (2, 4):
            raise ValueError(f"{name} must be 2 ({two}) or 4 ({four}), got {getattr(self, name)}")
        self._set_int(name, 2)

    def _set_int(self, name: str, minimum: int) -> None:
        """Check an int field (ValueError) and store it as a plain int (numpy ints arrive from configs)."""
        object.__setattr__(self, name, _check_int(name, getattr(self, name), minimum))


def normalize_question_mix(mix) -> dict[str, int] | None:
    """Validated {question type: integer weight} with every type present (missing types weigh 1), or
    None for the uniform mix. At least one type must have a positive weight."""
    if mix is None:
        return None
    try:
        items = dict(mix).items()
    except (TypeError, ValueError):
        raise ValueError(f"question_mix must map question types to integer weights, got {mix!r}") from None
    weights = dict.fromkeys(QUESTION_TYPES, 1)
    for qtype, weight in items:
        if qtype not in QUESTION_TYPES:
            raise ValueError(f"question_mix: unknown question type {qtype!r}; valid types: {list(QUESTION_TYPES)}")
        weights[qtype] = _check_int(f"question_mix.{qtype}", weight, 0)
    if not any(weights.values()):
        raise ValueError("question_mix: every weight is 0; give at least one question type a positive weight")
    return None if all(w == 1 for w in weights.values()) else weights


def scene_capacity(grid: int, min_objects: int, max_objects: int, holdout=(), held_out_split: bool = False) -> int:
    """Number of distinct scene keys available to the regular splits (or to `test_holdout`)."""
    n_held = len(normalize_holdout(holdout))
    total, allowed = len(SHAPES) * len(COLORS) * len(SIZES), (len(SHAPES) * len(COLORS) - n_held) * len(SIZES)
    cells = grid * grid
    return sum(
        math.comb(cells, k) * (total**k - allowed**k if held_out_split else allowed**k)
        for k in range(min_objects, max_objects + 1)
    )


@dataclass(frozen=True)
class ShapesSettings(SceneSettings):
    """Every setting of `build_shapes` (its `data.source` keys): the scenes and the split sizes."""

    num_train: int = 8000
    num_val: int = 1000
    num_test: int = 1000
    num_holdout: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("num_train", "num_val", "num_test"):
            self._set_int(name, 0)
        sizes = {name: getattr(self, name) for name in ("num_train", "num_val", "num_test")}
        if self.holdout:
            num_holdout = self.num_test if self.num_holdout is None else _check_int("num_holdout", self.num_holdout, 0)
        elif self.num_holdout:
            raise ValueError(
                f"num_holdout={self.num_holdout} needs a non-empty holdout (list of [colour, shape] pairs)"
            )
        else:
            num_holdout = 0
        object.__setattr__(self, "num_holdout", num_holdout)
        grid, lo, hi = self.grid, self.min_objects, self.max_objects
        capacity = scene_capacity(grid, lo, hi, self.holdout)
        if sum(sizes.values()) > capacity:
            raise ValueError(
                f"num_train + num_val + num_test = {sum(sizes.values())} exceeds the {capacity} distinct "
                f"scenes of grid={grid}, objects {lo}..{hi}, holdout={self.holdout}"
            )
        held_capacity = scene_capacity(grid, lo, hi, self.holdout, held_out_split=True)
        if num_holdout > held_capacity:
            raise ValueError(f"num_holdout={num_holdout} exceeds the {held_capacity} distinct held-out scenes")

    def canonical(self) -> dict:
        """JSON-able config, the cache key's payload (`question_mix` absent when uniform and
        `relation_directions` when 2 and `caption_relation_directions` when 4, so caches written before
        they existed stay valid)."""
        config = {f.name: getattr(self, f.name) for f in fields(self)}
        if config["question_mix"] is None:
            del config["question_mix"]
        if config["relation_directions"] == 2:
            del config["relation_directions"]
        if config["caption_relation_directions"] == 4:
            del config["caption_relation_directions"]
        return config

    def scene(self) -> dict:
        """The `SceneSettings` part, as keyword arguments of `generate_split`."""
        return {f.name: getattr(self, f.name) for f in fields(SceneSettings)}


SHAPES_CONFIG_KEYS = tuple(f.name for f in fields(ShapesSettings))


def shapes_config(**settings) -> dict:
    """Validated, canonical (JSON-able) config of `build_shapes`; raises ValueError on bad arguments."""
    return ShapesSettings(**settings).canonical()


def config_problems(**settings) -> list[str]:
    """What is wrong with a `build_shapes` config (its `data.source` keys), from the config alone:
    config validation reports it before anything is generated."""
    known = {k: v for k, v in settings.items() if k in SHAPES_CONFIG_KEYS}
    try:
        shapes_config(**known)
    except (ValueError, TypeError) as err:
        return [f"data.source (Shapes): {err}"]
    return []
