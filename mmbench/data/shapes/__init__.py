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
               ("there are two objects" describes a third of all scenes);
* negatives  - per caption its word-order hard negative (`caption_negatives`, from `order_swapped`: a
               relation caption with its objects swapped, verified false; "" for other captions), for
               ITM's `text_negatives` (NegCLIP-style training against a bag of words).

A compositional hold-out (`holdout=[[colour, shape], ...]`) removes those colour x shape
combinations from train/val/test and adds a `test_holdout` split whose scenes all contain one.
Splits are disjoint as scenes (see `scene_key`). Generation is deterministic from `seed`
(numpy Generators seeded with [seed, split index]; no global RNG state) and fast: rendering
pastes precomputed numpy masks, so tens of thousands of scenes take a few seconds.

`build_shapes` generates the splits once and caches them as Arrow (HF `datasets`) under
`<cache_dir>/shapes-<config hash>`; later calls load the cache.

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
