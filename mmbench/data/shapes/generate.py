"""Generating Shapes splits: the columns Shapes writes (`COLUMNS`, `FEATURES`) and the batch fields they
make (`provided_fields`), which split owns a scene (`split_of`), one split as columns (`generate_split`)
and every split of a config in memory (`generate_shapes`).

Splits are disjoint as scenes (see `scene_key`). Generation is deterministic from `seed` (numpy
Generators seeded with [seed, split index]; no global RNG state) and fast. A compositional hold-out
(`holdout=[[colour, shape], ...]`) removes those colour x shape combinations from train/val/test and
adds a `test_holdout` split whose scenes all contain one.
"""

from __future__ import annotations

import hashlib

import datasets
import numpy as np

from mmbench.data import columns as schema
from mmbench.data.shapes.grammar import claim_of, order_swapped, scene_facts
from mmbench.data.shapes.rendering import BACKGROUND, layout, paint
from mmbench.data.shapes.sampling import RandomStream, draw_key, place, triples
from mmbench.data.shapes.scene import COLORS, SHAPES, SceneKey
from mmbench.data.shapes.settings import SceneSettings, ShapesSettings, _check_int
from mmbench.data.shapes.text import make_captions, make_match, make_questions

GENERATOR_VERSION = 8  # bump when the generated data changes; part of the cache key

SPLITS = ("train", "val", "test", "test_holdout")
SPLIT_INDEX = {name: i for i, name in enumerate(SPLITS)}  # second word of each split's RNG seed
# evaluation splits first, so their scenes do not change when num_train changes
GENERATION_ORDER = ("test", "test_holdout", "val", "train")

MAX_ATTEMPTS = 100_000  # draws per scene before giving up on finding one owned by the split

#: the dataset columns Shapes writes, in this order (types: `mmbench.data.columns`)
COLUMNS = (
    "image_id",
    "pixels",
    "image_size",
    "boxes",
    "labels",
    "obj_shape",
    "obj_color",
    "obj_size",
    "captions",
    "questions",
    "answers",
    "question_types",
    "match_text",
    "match_negatives",
    "match_positives",
    "match_negative_types",
    "caption_claims",
    "caption_negatives",
    "image_facts",
)
FEATURES = schema.features(
    COLUMNS,
    # Shapes' cache format (part of GENERATOR_VERSION): narrower types than the canonical ones
    overrides={
        "boxes": datasets.List(datasets.List(datasets.Value("float32"), length=4)),
        "labels": datasets.List(datasets.Value("int32")),
    },
)


def provided_fields(*, questions_per_image: int = 4, **_settings) -> frozenset[str]:
    """Batch fields (`mmbench.data.columns.FIELDS`) a Shapes config yields, known from the config alone:
    config validation compares them with the fields the encoders and objectives read. Its question
    columns hold empty lists without questions; it has no caption labels and no region features."""
    written = set(COLUMNS)
    if int(questions_per_image) <= 0:
        written -= {"questions", "answers", "question_types"}
    return schema.fields_from(written)


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


def generate_split(split: str, n: int, *, id_offset: int, **scene_args) -> dict[str, list]:
    """Generate n scenes of one split as a column dict (see `FEATURES`); `scene_args`: `SceneSettings`.

    Only scene keys owned by the split (`split_of`) are kept, so splits are disjoint; test_holdout
    scenes contain a held-out combination that no other split has. Image ids are id_offset, id_offset + 1, ...
    """
    if split not in SPLIT_INDEX:
        raise ValueError(f"unknown split {split!r}; valid splits: {list(SPLITS)}")
    settings = SceneSettings(**scene_args)
    seed, image_size, grid = settings.seed, settings.image_size, settings.grid
    min_objects, max_objects, mix = settings.min_objects, settings.max_objects, settings.question_mix
    n = _check_int("n", n, 0)
    held = [tuple(p) for p in settings.holdout]
    if split == "test_holdout" and not held:
        raise ValueError("split 'test_holdout' needs a non-empty holdout")

    all_pairs = [(c, s) for s in SHAPES for c in COLORS]
    options = triples(all_pairs if split == "test_holdout" else [p for p in all_pairs if p not in held])
    forced = triples(held) if split == "test_holdout" else None
    banned = frozenset() if split == "test_holdout" else frozenset(held)
    lay = layout(image_size, grid)
    rs = RandomStream(np.random.default_rng([seed, SPLIT_INDEX[split]]))

    image = np.empty((image_size, image_size, 3), dtype=np.uint8)  # reused canvas
    columns: dict[str, list] = {name: [] for name in FEATURES}
    for i in range(n):
        for _ in range(MAX_ATTEMPTS):
            key = draw_key(rs, grid, min_objects, max_objects, options, forced)
            if split == "test_holdout" or split_of(key) == split:
                break
        else:
            raise RuntimeError(
                f"split {split!r}: no scene of this split after {MAX_ATTEMPTS} draws; the scene space "
                f"(grid={grid}, objects {min_objects}..{max_objects}) is nearly exhausted"
            )
        scene = place(key, rs, lay)
        image.fill(BACKGROUND)
        boxes = paint(image, scene, lay)
        captions = make_captions(scene, settings.captions_per_image, rs, settings.caption_relation_directions)
        questions, answers, qtypes = make_questions(
            scene, settings.questions_per_image, rs, banned, mix, settings.relation_directions
        )
        match_text, negatives, negative_types, positives = make_match(scene, rs, settings.caption_relation_directions)
        facts = scene_facts(scene)
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
            # per caption its word-order hard negative (NegCLIP), "" when it has none or the swap is true
            "caption_negatives": [n if n and claim_of(n) not in facts else "" for n in map(order_swapped, captions)],
            "image_facts": facts,
        }
        for name, value in row.items():
            columns[name].append(value)
    return columns


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
