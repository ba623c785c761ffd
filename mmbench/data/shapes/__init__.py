"""The built-in "Shapes" benchmark: procedurally generated scenes with captions, VQA and hard negatives.

A scene holds 1-3 objects (shape, colour, size) on a 3x3 grid; every caption, question, matching statement,
box and claim is derived from that symbolic description, so all text is true by construction. Generation is
deterministic from `seed`; `build_shapes` caches the splits as Arrow under `<cache_dir>/shapes-<config hash>`.
What each column holds, the hold-out and the splits: docs/shapes.md.

One concept per module; every public name is also importable from here (`mmbench.data.shapes.X`,
as `conf/data/shapes.yaml` names `build_shapes`):

    scene      objects, the vocabulary (SHAPES, COLORS, SIZES) and what is true of a scene
    grammar    the text templates and the claim parser (`claim_of`, `scene_facts`)
    text       captions, questions and the matching statement with its hard negatives
    sampling   the random stream, drawing a scene key and placing its objects
    rendering  stamps, layout and painting; decoding stored pixels
    settings   the generator's settings and their checks (`config_problems` for config validation)
    generate   split ownership, generating splits as columns (`COLUMNS`, `FEATURES`), `provided_fields`
    build      `build_shapes`: the cached Arrow dataset
"""

from __future__ import annotations

from mmbench.data.shapes.build import build_shapes, shapes_config_hash
from mmbench.data.shapes.generate import (
    FEATURES,
    GENERATION_ORDER,
    GENERATOR_VERSION,
    MAX_ATTEMPTS,
    SPLIT_INDEX,
    SPLIT_SHARES,
    SPLITS,
    generate_shapes,
    generate_split,
    provided_fields,
    split_of,
)
from mmbench.data.shapes.grammar import (
    ATTRIBUTE_TEMPLATES,
    LONG_RELATION,
    NUMBER_WORDS,
    PLURALS,
    RELATION_TEMPLATES,
    RELATIONS,
    attribute_text,
    claim_of,
    count_text,
    inventory_text,
    number_word,
    order_swapped,
    relation_text,
    scene_facts,
    shape_count_text,
)
from mmbench.data.shapes.rendering import (
    BACKGROUND,
    COLOR_RGB,
    JITTER,
    SIZE_RADIUS,
    Layout,
    Stamp,
    decode_pixels,
    layout,
    paint,
    render,
    shape_mask,
)
from mmbench.data.shapes.sampling import RANDOM_BLOCK, RandomStream
from mmbench.data.shapes.scene import (
    COLORS,
    NUM_LABELS,
    SHAPES,
    SIZES,
    Description,
    Scene,
    SceneKey,
    ShapeObject,
    count_objects,
    has_object,
    relation_claim_true,
    scene_key,
    strict_relations,
    unique_objects,
)
from mmbench.data.shapes.settings import (
    MIN_CELL_PIXELS,
    MIN_IMAGE_SIZE,
    SHAPES_CONFIG_KEYS,
    SceneSettings,
    ShapesSettings,
    config_problems,
    normalize_holdout,
    normalize_question_mix,
    scene_capacity,
    shapes_config,
)
from mmbench.data.shapes.text import (
    INVERSE_RELATION,
    NEGATIVE_TYPES,
    QUESTION_TYPES,
    RELATION_QUESTION,
    available_question_types,
    make_captions,
    make_match,
    make_questions,
)

__all__ = [
    "ATTRIBUTE_TEMPLATES",
    "BACKGROUND",
    "COLORS",
    "COLOR_RGB",
    "Description",
    "FEATURES",
    "GENERATION_ORDER",
    "GENERATOR_VERSION",
    "INVERSE_RELATION",
    "JITTER",
    "LONG_RELATION",
    "Layout",
    "MAX_ATTEMPTS",
    "MIN_CELL_PIXELS",
    "MIN_IMAGE_SIZE",
    "NEGATIVE_TYPES",
    "NUMBER_WORDS",
    "NUM_LABELS",
    "PLURALS",
    "QUESTION_TYPES",
    "RANDOM_BLOCK",
    "RELATIONS",
    "RELATION_QUESTION",
    "RELATION_TEMPLATES",
    "RandomStream",
    "SHAPES",
    "SHAPES_CONFIG_KEYS",
    "SIZES",
    "SIZE_RADIUS",
    "SPLITS",
    "SPLIT_INDEX",
    "SPLIT_SHARES",
    "Scene",
    "SceneKey",
    "SceneSettings",
    "ShapeObject",
    "ShapesSettings",
    "Stamp",
    "attribute_text",
    "available_question_types",
    "build_shapes",
    "claim_of",
    "config_problems",
    "count_objects",
    "count_text",
    "decode_pixels",
    "generate_shapes",
    "generate_split",
    "has_object",
    "inventory_text",
    "layout",
    "make_captions",
    "make_match",
    "make_questions",
    "normalize_holdout",
    "normalize_question_mix",
    "number_word",
    "order_swapped",
    "paint",
    "provided_fields",
    "relation_claim_true",
    "relation_text",
    "render",
    "scene_capacity",
    "scene_facts",
    "scene_key",
    "shape_count_text",
    "shape_mask",
    "shapes_config",
    "shapes_config_hash",
    "split_of",
    "strict_relations",
    "unique_objects",
]
