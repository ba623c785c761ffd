"""The built-in "Shapes" benchmark: procedurally generated scenes with captions, VQA and hard negatives.

Every scene is a small RGB image (default 64x64) on a light-gray background holding 1-3 objects
placed on a 3x3 grid (at most one object per cell). An object has a shape (`SHAPES`), a colour
(`COLORS`) and a size (`SIZES`); its centre is jittered by a few pixels inside its cell. Everything
said about a scene is derived from this symbolic description, so all text is true by construction:

* captions   - template captions with paraphrases: attributes ("a small red circle"), relations
               ("a red circle left of a blue square", derived from the grid cells and only stated
               when strictly true) and counts ("there are two objects", "two circles and a square");
* VQA        - questions of types color / shape / count / exist / relation ("which is further left,
               the red circle or the blue square?" -> "circle"), answers balanced so that no answer
               dominates;
* matching   - one true statement per scene (`match_text`) and Winoground-style hard negatives
               built from the same words (`attribute_swap`, `relation_swap`) or a wrong count
               (`count_change`); a bag-of-words model cannot tell them apart. Each negative has
               its true counterpart of the same template in `match_positives` (the match text, or
               the true count for `count_change`), so a score compares like with like;
* regions    - a normalised box and a label (shape_index * len(COLORS) + color_index) per object;
* claims     - what each caption asserts in canonical form (`caption_claims`, from `claim_of`) and
               every claim true of the scene (`image_facts`, from `scene_facts`), so that a text
               of another image is known to be true of this one when its claim is among the facts
               ("there are two objects" describes a third of all scenes).

A compositional hold-out (`holdout=[[colour, shape], ...]`) removes those colour x shape
combinations from train/val/test and adds a `test_holdout` split whose scenes all contain one.
Splits are disjoint as scenes (see `scene_key`). Generation is deterministic from `seed`
(numpy Generators seeded with [seed, split index]; no global RNG state) and fast: rendering
pastes precomputed numpy masks, so tens of thousands of scenes take a few seconds.

`build_shapes` generates the splits once and caches them as Arrow (HF `datasets`) under
`<cache_dir>/shapes-<config hash>`; later calls load the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path

import datasets
import numpy as np

from mmbench.data import cache as data_cache

log = logging.getLogger(__name__)

GENERATOR_VERSION = 6  # bump when the generated data changes; part of the cache key

SHAPES = ("circle", "square", "triangle", "cross")
COLORS = ("red", "green", "blue", "yellow", "purple", "cyan")
SIZES = ("small", "large")
NUM_LABELS = len(SHAPES) * len(COLORS)  # region labels are shape_index * len(COLORS) + color_index
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

RELATIONS = ("left of", "right of", "above", "below")
INVERSE_RELATION = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
# A relation question names two objects and asks which lies further along one direction (GQA's
# "choose" form): the words of the direction, for a relation "a R b" read as "a is further ...".
RELATION_QUESTION = {"left of": "further left", "right of": "further right", "above": "higher", "below": "lower"}
LONG_RELATION = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}
QUESTION_TYPES = ("color", "shape", "count", "exist", "relation")
NEGATIVE_TYPES = ("attribute_swap", "relation_swap", "count_change")
NUMBER_WORDS = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
)
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}

SPLITS = ("train", "val", "test", "test_holdout")
SPLIT_INDEX = {name: i for i, name in enumerate(SPLITS)}  # second word of each split's RNG seed
# evaluation splits first, so their scenes do not change when num_train changes
GENERATION_ORDER = ("test", "test_holdout", "val", "train")

MIN_IMAGE_SIZE = 16
MIN_CELL_PIXELS = 8
MAX_ATTEMPTS = 100_000  # draws per scene before giving up on finding one owned by the split
RANDOM_BLOCK = 4096

ATTRIBUTE_TEMPLATES = (
    "a {size} {color} {shape}",
    "there is a {size} {color} {shape}",
    "a {color} {shape}",
    "there is a {color} {shape}",
    "the image shows a {size} {color} {shape}",
)
RELATION_TEMPLATES = ("a {a} {rel} a {b}", "there is a {a} {rel} a {b}", "a {a} is {long_rel} a {b}")

FEATURES = datasets.Features(
    {
        "image_id": datasets.Value("int64"),
        "pixels": datasets.Value("binary"),
        "image_size": datasets.Value("int32"),
        "boxes": datasets.Sequence(datasets.Sequence(datasets.Value("float32"), length=4)),
        "labels": datasets.Sequence(datasets.Value("int32")),
        "obj_shape": datasets.Sequence(datasets.Value("string")),
        "obj_color": datasets.Sequence(datasets.Value("string")),
        "obj_size": datasets.Sequence(datasets.Value("string")),
        "captions": datasets.Sequence(datasets.Value("string")),
        "questions": datasets.Sequence(datasets.Value("string")),
        "answers": datasets.Sequence(datasets.Value("string")),
        "question_types": datasets.Sequence(datasets.Value("string")),
        "match_text": datasets.Value("string"),
        "match_negatives": datasets.Sequence(datasets.Value("string")),
        "match_positives": datasets.Sequence(datasets.Value("string")),
        "match_negative_types": datasets.Sequence(datasets.Value("string")),
        "caption_claims": datasets.Sequence(datasets.Value("string")),
        "image_facts": datasets.Sequence(datasets.Value("string")),
    }
)

Description = tuple[str, str]  # (colour, shape): how objects are named in relations and questions
SceneKey = tuple[tuple[int, str, str, str], ...]


# --------------------------------------------------------------------------- scenes and their truth


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


# --------------------------------------------------------------------------- text


def number_word(n: int) -> str:
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


def count_text(n: int, template: int = 0) -> str:
    """ "there are {n} objects" (template 0) or "the image contains {n} objects" (template 1)."""
    noun = "object" if n == 1 else "objects"
    if template == 0:
        return f"there {'is' if n == 1 else 'are'} {number_word(n)} {noun}"
    return f"the image contains {number_word(n)} {noun}"


def shape_count_text(shape: str, n: int) -> str:
    return f"there is one {shape}" if n == 1 else f"there are {number_word(n)} {PLURALS[shape]}"


def inventory_text(scene: Scene) -> str:
    """Every object by shape, e.g. "two circles and a square" (shapes in `SHAPES` order)."""
    parts = []
    for shape in SHAPES:
        n = count_objects(scene, shape)
        if n:
            parts.append(f"a {shape}" if n == 1 else f"{number_word(n)} {PLURALS[shape]}")
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def relation_text(a: Description, relation: str, b: Description, template: int = 0) -> str:
    return RELATION_TEMPLATES[template].format(
        a=" ".join(a), rel=relation, long_rel=LONG_RELATION[relation], b=" ".join(b)
    )


def attribute_text(o: ShapeObject, template: int = 0) -> str:
    return ATTRIBUTE_TEMPLATES[template].format(size=o.size, color=o.color, shape=o.shape)


# --------------------------------------------------------------------------- claims


_CLAIM_COUNT = re.compile(r"^(?:there (?:is|are)|the image contains) (\w+) objects?$")
_CLAIM_SHAPES = re.compile(r"^there (?:is|are) (\w+) (\w+)$")
_CLAIM_RELATION = re.compile(
    r"^(?:there is )?a (\w+) (\w+) (?:is )?(left of|right of|above|below|to the left of|"
    r"to the right of) a (\w+) (\w+)$"
)
_CLAIM_OBJECT = re.compile(r"^(?:there is |the image shows )?a (?:(small|large) )?(\w+) (\w+)$")
_SHAPE_OF_PLURAL = {plural: shape for shape, plural in PLURALS.items()}
_SHORT_RELATION = {long: short for short, long in LONG_RELATION.items()}


def scene_facts(scene: Scene) -> list[str]:
    """Every claim (in the canonical form of `claim_of`) that is true of the scene, sorted."""
    facts = {f"count:{len(scene)}", f"inventory:{inventory_text(scene)}"}
    for o in scene:
        facts |= {
            f"object:{o.color} {o.shape}",
            f"object:{o.size} {o.color} {o.shape}",
            f"shapes:{o.shape}={count_objects(scene, o.shape)}",
        }
        for other in scene:
            if other is not o:
                facts |= {
                    f"relation:{o.color} {o.shape}|{rel}|{other.color} {other.shape}"
                    for rel in strict_relations(o, other)
                }
    return sorted(facts)


@lru_cache(maxsize=1 << 16)
def claim_of(text: str) -> str:
    """The canonical claim of a Shapes text (caption, statement or hard negative), "" when unknown.

    Paraphrases share a claim ("a red circle left of a blue square" and "a red circle is to the left
    of a blue square" are both `relation:red circle|left of|blue square`), so a text is true of a
    scene exactly when its claim is in `scene_facts(scene)`. Counts and inventories are exact.
    """

    def number(word: str) -> int | None:
        return NUMBER_WORDS.index(word) if word in NUMBER_WORDS else int(word) if word.isdigit() else None

    if m := _CLAIM_COUNT.match(text):
        return "" if number(m.group(1)) is None else f"count:{number(m.group(1))}"
    if m := _CLAIM_RELATION.match(text):
        c1, s1, rel, c2, s2 = m.groups()
        if {c1, c2} <= set(COLORS) and {s1, s2} <= set(SHAPES):
            return f"relation:{c1} {s1}|{_SHORT_RELATION.get(rel, rel)}|{c2} {s2}"
        return ""
    if m := _CLAIM_OBJECT.match(text):
        size, color, shape = m.groups()
        if color in COLORS and shape in SHAPES:
            return f"object:{size} {color} {shape}" if size else f"object:{color} {shape}"
    if m := _CLAIM_SHAPES.match(text):
        n, word = number(m.group(1)), m.group(2)
        shape = word if n == 1 else _SHAPE_OF_PLURAL.get(word)
        if n is not None and shape in SHAPES:
            return f"shapes:{shape}={n}"
    # an inventory ("two circles, a square and a cross") is its own canonical form
    parts = re.split(r", | and ", text)
    counts = {}
    for part in parts:
        n, _, word = part.partition(" ")
        n = 1 if n == "a" else number(n)
        shape = word if n == 1 else _SHAPE_OF_PLURAL.get(word)
        if n is None or shape not in SHAPES or shape in counts:
            return ""
        counts[shape] = n
    scene = tuple(ShapeObject(0, 0, shape, COLORS[0], SIZES[0]) for shape, n in counts.items() for _ in range(n))
    return f"inventory:{text}" if scene and inventory_text(scene) == text else ""


# --------------------------------------------------------------------------- randomness


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


def _fresh(generators: Sequence[Callable[[], object]], taken: Sequence, tries: int = 6):
    """The first output of the generators (tried in order) not in `taken`; a repeat if none is new."""
    out = None
    for generate in generators:
        for _ in range(tries):
            out = generate()
            text = out[0] if isinstance(out, tuple) else out
            if text not in taken:
                return out
    return out


# --------------------------------------------------------------------------- captions


def _attribute_caption(scene: Scene, rs: RandomStream) -> str:
    return attribute_text(rs.pick(scene), rs.below(len(ATTRIBUTE_TEMPLATES)))


def _relation_caption(scene: Scene, rs: RandomStream) -> str:
    i, j = rs.sample(len(scene), 2)
    a, b = scene[i], scene[j]
    return relation_text(a.desc, rs.pick(strict_relations(a, b)), b.desc, rs.below(len(RELATION_TEMPLATES)))


def _count_caption(scene: Scene, rs: RandomStream) -> str:
    kind = rs.below(3)
    if kind == 0:
        return count_text(len(scene), rs.below(2))
    if kind == 1:
        return inventory_text(scene)
    shape = rs.pick(scene).shape
    return shape_count_text(shape, count_objects(scene, shape))


def make_captions(scene: Scene, n: int, rs: RandomStream) -> list[str]:
    """n captions, distinct when possible, mixing attribute, relation (>= 2 objects) and count captions."""
    kinds = {"attribute": _attribute_caption, "relation": _relation_caption, "count": _count_caption}
    plan = ("relation", "attribute", "count", "relation") if len(scene) > 1 else ("attribute", "count")
    available = [k for k in kinds if k != "relation" or len(scene) > 1]
    offset = rs.below(len(plan))
    captions: list[str] = []
    for k in range(n):
        first = plan[(offset + k) % len(plan)]
        order = [first] + [kind for kind in available if kind != first]
        captions.append(_fresh([lambda kind=kind: kinds[kind](scene, rs) for kind in order], captions))
    return captions


# --------------------------------------------------------------------------- questions


def _color_question(scene: Scene, rs: RandomStream) -> tuple[str, str]:
    shapes = [o.shape for o in scene]
    o = rs.pick([o for o in scene if shapes.count(o.shape) == 1])
    return f"what color is the {o.shape}?", o.color


def _shape_question(scene: Scene, rs: RandomStream) -> tuple[str, str]:
    colors = [o.color for o in scene]
    o = rs.pick([o for o in scene if colors.count(o.color) == 1])
    return f"what shape is the {o.color} object?", o.shape


def _count_question(scene: Scene, rs: RandomStream) -> tuple[str, str]:
    if rs.coin():
        return "how many objects are there?", number_word(len(scene))
    shape = rs.pick(SHAPES)  # may be absent -> "zero"
    return f"how many {PLURALS[shape]} are there?", number_word(count_objects(scene, shape))


def _exist_question(scene: Scene, rs: RandomStream, banned: frozenset[Description]) -> tuple[str, str]:
    if rs.coin():
        o = rs.pick(scene)
        return f"is there a {o.color} {o.shape}?", "yes"
    present = {o.desc for o in scene}
    # held-out combinations are never named in train/val/test text: "no" would leak that they never occur
    absent = [(c, s) for s in SHAPES for c in COLORS if (c, s) not in present and (c, s) not in banned]
    if not absent:  # only possible with an extreme holdout
        o = rs.pick(scene)
        return f"is there a {o.color} {o.shape}?", "yes"
    color, shape = rs.pick(absent)
    return f"is there a {color} {shape}?", "no"


def _relation_question(scene: Scene, rs: RandomStream) -> tuple[str, str]:
    """A choice between two named objects, as GQA's "choose" questions: "which is further left, the red
    circle or the blue square?" -> "circle" (the word that tells the two apart: their shapes if these
    differ, else their colours).

    The objects are named in a random order and the direction (further left / right, higher / lower) is
    drawn on an axis where they differ, so the answer is the first-named object half of the time and
    each named word is equally likely: a model must locate both named objects and compare them. The
    answer does not depend on the order of the names, so this form does not test word order; the
    `relation_swap` matching diagnostic does ("the red circle left of the blue square" against its
    swap). History (docs/results.md, calibration): the yes/no form of version 4 made the answer the XOR
    of the relation word and the objects' order; the order-sensitive choice of version 5 ("is the red
    circle left or right of the blue square?" -> "left") stayed at chance for every preset, every
    share of relation questions and budgets up to 5,000 steps.
    """
    unique = unique_objects(scene)
    i, j = rs.sample(len(unique), 2)  # a random order of the names
    a, b = unique[i], unique[j]
    relation = rs.pick(strict_relations(a, b))  # a is `relation` b
    winner = a
    if rs.coin():  # ask the opposite direction of the same axis: then b is the answer
        relation, winner = INVERSE_RELATION[relation], b
    answer = winner.shape if a.shape != b.shape else winner.color
    return f"which is {RELATION_QUESTION[relation]}, the {a.color} {a.shape} or the {b.color} {b.shape}?", answer


def available_question_types(scene: Scene) -> list[str]:
    """Question types that can be asked unambiguously about the scene."""
    shapes, colors = [o.shape for o in scene], [o.color for o in scene]
    types = []
    if any(shapes.count(s) == 1 for s in shapes):
        types.append("color")
    if any(colors.count(c) == 1 for c in colors):
        types.append("shape")
    types += ["count", "exist"]
    if len(unique_objects(scene)) >= 2:
        types.append("relation")
    return types


def make_questions(
    scene: Scene,
    n: int,
    rs: RandomStream,
    banned: frozenset[Description] = frozenset(),
    mix: dict[str, int] | None = None,
) -> tuple[list[str], list[str], list[str]]:
    """n (question, answer, type) triples, distinct when possible.

    The type is drawn among the types the scene can answer (`available_question_types`), each with its
    integer weight in `mix` (None: all 1, i.e. uniform). A type of weight 0 is asked only when the scene
    answers no type of positive weight.
    """
    makers = {
        "color": _color_question,
        "shape": _shape_question,
        "count": _count_question,
        "exist": lambda s, r: _exist_question(s, r, banned),
        "relation": _relation_question,
    }
    types = available_question_types(scene)
    positive = [t for t in types if mix is None or mix[t] > 0]
    # a scene that answers no type of positive weight: its available types, uniformly
    weighted = [t for t in positive for _ in range(1 if mix is None else mix[t])] or types
    types = positive or types
    questions, answers, qtypes = [], [], []
    for _ in range(n):
        first = rs.pick(weighted)  # with all weights 1 the draws are those of a uniform pick
        order = [first] + [t for t in types if t != first]
        q, a, t = _fresh([lambda t=t: (*makers[t](scene, rs), t) for t in order], questions)
        questions.append(q)
        answers.append(a)
        qtypes.append(t)
    return questions, answers, qtypes


# --------------------------------------------------------------------------- matching diagnostics


def _match_pair(scene: Scene, rs: RandomStream) -> tuple[ShapeObject, ShapeObject]:
    """Two objects for the relation statement, preferring uniquely described objects that differ in
    both colour and shape (only then is an attribute swap different from swapping the objects)."""
    pairs = [(a, b) for a in scene for b in scene if a is not b]
    unique = unique_objects(scene)
    both = [(a, b) for a, b in pairs if a.color != b.color and a.shape != b.shape]
    for pool in (
        [p for p in both if p[0] in unique and p[1] in unique],
        both,
        [p for p in pairs if p[0] in unique and p[1] in unique],
        [p for p in pairs if p[0].desc != p[1].desc],
    ):
        if pool:
            return rs.pick(pool)
    return rs.pick(pairs)


def _wrong_count(scene: Scene, rs: RandomStream) -> str:
    n = len(scene)
    return count_text(rs.pick([n - 1, n + 1]) if n > 1 else n + 1)


def make_match(scene: Scene, rs: RandomStream) -> tuple[str, list[str], list[str], list[str]]:
    """A true statement, hard negatives (each verified false), their types, and for each negative
    the true statement of the same template (the statement itself, or the true count)."""
    negatives: list[tuple[str, str]] = []
    if len(scene) == 1:
        o = scene[0]
        text = attribute_text(o)
        if rs.coin():
            changed = ShapeObject(o.row, o.col, o.shape, rs.pick([c for c in COLORS if c != o.color]), o.size)
        else:
            changed = ShapeObject(o.row, o.col, rs.pick([s for s in SHAPES if s != o.shape]), o.color, o.size)
        if not has_object(scene, changed.color, changed.shape, changed.size):
            negatives.append(("attribute_swap", attribute_text(changed)))
    else:
        a, b = _match_pair(scene, rs)
        relation = rs.pick(strict_relations(a, b))
        text = relation_text(a.desc, relation, b.desc)
        # swap colours or shapes; when the other attribute is equal, that would just swap the objects
        swaps = [((b.color, a.shape), (a.color, b.shape)), ((a.color, b.shape), (b.color, a.shape))]
        if a.color == b.color or a.shape == b.shape:
            swaps = []
        elif rs.coin():
            swaps.reverse()
        for x, y in swaps:
            if not relation_claim_true(scene, x, relation, y):
                negatives.append(("attribute_swap", relation_text(x, relation, y)))
                break
        if not relation_claim_true(scene, b.desc, relation, a.desc):
            negatives.append(("relation_swap", relation_text(b.desc, relation, a.desc)))
    negatives.append(("count_change", _wrong_count(scene, rs)))
    positives = [count_text(len(scene)) if kind == "count_change" else text for kind, _ in negatives]
    return text, [t for _, t in negatives], [kind for kind, _ in negatives], positives


# --------------------------------------------------------------------------- rendering


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


# --------------------------------------------------------------------------- scene sampling


def _triples(pairs: Iterable[Description]) -> list[tuple[str, str, str]]:
    """(shape, colour, size) options for objects whose (colour, shape) is in pairs."""
    return [(shape, color, size) for color, shape in pairs for size in SIZES]


def _draw_key(
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


def _place(key: SceneKey, rs: RandomStream, lay: Layout) -> Scene:
    """Objects of a scene key with jittered centres."""
    objects = []
    for cell, shape, color, size in key:
        row, col = divmod(cell, lay.grid)
        (xlo, xhi), (ylo, yhi) = lay.centres[(col, size)], lay.centres[(row, size)]
        x, y = xlo + rs.below(xhi - xlo + 1), ylo + rs.below(yhi - ylo + 1)
        objects.append(ShapeObject(row, col, shape, color, size, x, y))
    return tuple(objects)


# --------------------------------------------------------------------------- validation


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


# --------------------------------------------------------------------------- splits

#: share of the scene space owned by each evaluation split; every other scene key belongs to train
SPLIT_SHARES = (("test", 0.1), ("val", 0.1))


def split_of(key: SceneKey) -> str:
    """The split that owns a scene key, from a stable hash of the key.

    Partitioning the scene space (instead of drawing test first and rejecting its scenes later)
    keeps the distribution of object counts equal across splits: there are only 432 one-object
    scenes, and drawing test first used to leave train almost none of them. A split may repeat a
    key it owns (objects then sit at other jittered positions), never a key of another split.
    """
    h = int.from_bytes(hashlib.blake2b(repr(key).encode(), digest_size=4).digest(), "big") / 2**32
    for split, share in SPLIT_SHARES:
        if h < share:
            return split
        h -= share
    return "train"


def generate_split(split: str, n: int, *, id_offset: int, **scene) -> dict[str, list]:
    """Generate n scenes of one split as a column dict (see `FEATURES`); `scene`: `SceneSettings`.

    Only scene keys owned by the split (`split_of`) are kept, so splits are disjoint; test_holdout
    scenes contain a held-out combination that no other split has. Image ids are id_offset, id_offset + 1, ...
    """
    if split not in SPLIT_INDEX:
        raise ValueError(f"unknown split {split!r}; valid splits: {list(SPLITS)}")
    settings = SceneSettings(**scene)
    seed, image_size, grid = settings.seed, settings.image_size, settings.grid
    min_objects, max_objects, mix = settings.min_objects, settings.max_objects, settings.question_mix
    n = _check_int("n", n, 0)
    held = [tuple(p) for p in settings.holdout]
    if split == "test_holdout" and not held:
        raise ValueError("split 'test_holdout' needs a non-empty holdout")

    all_pairs = [(c, s) for s in SHAPES for c in COLORS]
    options = _triples(all_pairs if split == "test_holdout" else [p for p in all_pairs if p not in held])
    forced = _triples(held) if split == "test_holdout" else None
    banned = frozenset() if split == "test_holdout" else frozenset(held)
    lay = layout(image_size, grid)
    rs = RandomStream(np.random.default_rng([seed, SPLIT_INDEX[split]]))

    image = np.empty((image_size, image_size, 3), dtype=np.uint8)  # reused canvas
    columns: dict[str, list] = {name: [] for name in FEATURES}
    for i in range(n):
        for _ in range(MAX_ATTEMPTS):
            key = _draw_key(rs, grid, min_objects, max_objects, options, forced)
            if split == "test_holdout" or split_of(key) == split:
                break
        else:
            raise RuntimeError(
                f"split {split!r}: no scene of this split after {MAX_ATTEMPTS} draws; the scene space "
                f"(grid={grid}, objects {min_objects}..{max_objects}) is nearly exhausted"
            )
        scene = _place(key, rs, lay)
        image.fill(BACKGROUND)
        boxes = paint(image, scene, lay)
        captions = make_captions(scene, settings.captions_per_image, rs)
        questions, answers, qtypes = make_questions(scene, settings.questions_per_image, rs, banned, mix)
        match_text, negatives, negative_types, positives = make_match(scene, rs)
        row = {
            "image_id": id_offset + i,
            "pixels": image.tobytes(),
            "image_size": image_size,
            "boxes": boxes,
            "labels": [o.label for o in scene],
            "obj_shape": [o.shape for o in scene],
            "obj_color": [o.color for o in scene],
            "obj_size": [o.size for o in scene],
            "captions": captions,
            "questions": questions,
            "answers": answers,
            "question_types": qtypes,
            "match_text": match_text,
            "match_negatives": negatives,
            "match_positives": positives,
            "match_negative_types": negative_types,
            "caption_claims": [claim_of(c) for c in captions],
            "image_facts": scene_facts(scene),
        }
        for name, value in row.items():
            columns[name].append(value)
    return columns


def decode_pixels(pixels: bytes, image_size: int) -> np.ndarray:
    """The (S, S, 3) uint8 image of a `pixels` cell."""
    return np.frombuffer(pixels, dtype=np.uint8).reshape(image_size, image_size, 3)


# --------------------------------------------------------------------------- cached dataset


def shapes_config_hash(**kwargs) -> str:
    """16 hex chars identifying a generator config (and GENERATOR_VERSION)."""
    payload = json.dumps({"config": kwargs, "generator_version": GENERATOR_VERSION}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


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
        """JSON-able config, the cache key's payload (`question_mix` absent when uniform, so caches
        written before it existed stay valid)."""
        config = {f.name: getattr(self, f.name) for f in fields(self)}
        if config["question_mix"] is None:
            del config["question_mix"]
        return config

    def scene(self) -> dict:
        """The `SceneSettings` part, as keyword arguments of `generate_split`."""
        return {f.name: getattr(self, f.name) for f in fields(SceneSettings)}


SHAPES_CONFIG_KEYS = tuple(f.name for f in fields(ShapesSettings))


def shapes_config(**settings) -> dict:
    """Validated, canonical (JSON-able) config of `build_shapes`; raises ValueError on bad arguments."""
    return ShapesSettings(**settings).canonical()


def generate_shapes(config: dict) -> datasets.DatasetDict:
    """All splits of a canonical config (see `shapes_config`), in memory."""
    scene_args = ShapesSettings(**config).scene()
    sizes = {"train": config["num_train"], "val": config["num_val"], "test": config["num_test"]}
    if config["holdout"]:
        sizes["test_holdout"] = config["num_holdout"]
    offset = 0
    splits = {}
    for split in (s for s in GENERATION_ORDER if s in sizes):
        columns = generate_split(split, sizes[split], id_offset=offset, **scene_args)
        splits[split] = datasets.Dataset.from_dict(columns, features=FEATURES)
        offset += sizes[split]
    return datasets.DatasetDict({split: splits[split] for split in SPLITS if split in splits})


def _is_complete(directory: Path, config: dict) -> bool:
    try:
        saved = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return saved == config and (directory / "dataset_dict.json").is_file()


def config_problems(**settings) -> list[str]:
    """What is wrong with a `build_shapes` config (its `data.source` keys), from the config alone:
    config validation reports it before anything is generated."""
    known = {k: v for k, v in settings.items() if k in SHAPES_CONFIG_KEYS}
    try:
        shapes_config(**known)
    except (ValueError, TypeError) as err:
        return [f"data.source (Shapes): {err}"]
    return []


def provided_fields(*, questions_per_image: int = 4, **_settings) -> frozenset[str]:
    """Batch fields (docs of `mmbench.data.datamodule`) a Shapes config yields, known from the config
    alone: config validation compares them with the fields the encoders and objectives read."""
    fields = {
        "input_ids",
        "attention_mask",
        "pixel_values",
        "image_id",
        "text_claim",
        "image_facts",
        "region_boxes",
        "region_mask",
        "region_labels",
    }  # no precomputed region_feats, no caption labels
    if int(questions_per_image) > 0:
        fields |= {"question_ids", "question_mask", "answer", "answer_scores"}
    return frozenset(fields)


def build_shapes(cache_dir: str | os.PathLike, **settings) -> tuple[datasets.DatasetDict, Path]:
    """The Shapes benchmark of `settings` (`ShapesSettings`) as a DatasetDict, and its cache directory
    `<cache_dir>/shapes-<hash>`.

    Loads the cache when it is complete; otherwise generates the data, saves it into a temporary
    sibling directory and renames that into place, so a crash never leaves a cache that loads. A cache
    entry that fails to load (a truncated Arrow file) is regenerated, with a warning naming it; orphaned
    temporary directories of interrupted builds are removed (`mmbench.data.cache`).
    """
    config = shapes_config(**settings)
    root = Path(cache_dir)
    target = root / f"shapes-{shapes_config_hash(**config)}"
    if _is_complete(target, config):
        try:
            return _load(target), target
        except data_cache.LOAD_ERRORS as err:  # a truncated / damaged file: generated data, so rebuild it
            log.warning("the cached Shapes data %s is damaged (%s); regenerating it", target, data_cache.describe(err))
            shutil.rmtree(target, ignore_errors=True)
    _write_atomically(generate_shapes(config), config, target)
    return _load(target), target


def _load(target: Path) -> datasets.DatasetDict:
    """The cached splits; raises one of `data_cache.LOAD_ERRORS` when a file of the entry is damaged."""
    dsd = datasets.load_from_disk(str(target))
    for split in dsd.values():
        len(split)  # the Arrow tables are opened (and their metadata read) here
    return dsd


def _write_atomically(dsd: datasets.DatasetDict, config: dict, target: Path) -> None:
    with data_cache.temporary_sibling(target) as tmp:  # removes orphans of interrupted builds first
        bars_were_disabled = datasets.are_progress_bars_disabled()
        datasets.disable_progress_bars()  # a few fast local writes; keep logs clean
        try:
            dsd.save_to_disk(str(tmp))
        finally:
            if not bars_were_disabled:
                datasets.enable_progress_bars()
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        if target.exists() and not _is_complete(target, config):
            shutil.rmtree(target)  # a stale or foreign directory, never a complete cache
        try:
            os.replace(tmp, target)
        except OSError:
            if not _is_complete(target, config):  # another process finished first: keep its copy
                raise
