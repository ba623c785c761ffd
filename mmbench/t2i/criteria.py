"""What an image generated from a Shapes caption gets right of it: the compositional criteria of text-to-image.

The caption is not re-read: its claim is Shapes' canonical form (the `caption_claims` column, written by
`grammar.claim_of`), and the image is the scene the oracle reads from it (`oracle.SceneOracle.read`). Each
criterion asks one thing of the scene, so that a failure says which thing went wrong (a colour swapped
fails `color` alone). The caption type is the claim's kind:

* attribute, `object:[size] colour shape` ("a small red circle"):
  present  - an object of the shape;  color - an object of the shape has the colour;
  size     - an object of the shape has the size (only when the caption names one);
* relation, `relation:c1 s1|rel|c2 s2` ("a red circle left of a blue square"):
  present  - two objects, of shapes s1 and s2;  color - two objects, described c1 s1 and c2 s2;
  relation - an s1 stands in `rel` to an s2 by Shapes' rule (`scene.strict_relations`: other column / row);
* count, `count:n` ("there are two objects"):
  present  - at least n objects;  count - exactly n;  extra - at most n;
* shape_count, `shapes:shape=n` ("there are two circles"):
  present  - at least n of the shape;  count - exactly n of the shape;
* inventory, `inventory:two circles and a square`:
  present  - at least the named number of each named shape;  count - each named shape's number exactly;
  extra    - no shape beyond its named number (0 for a shape not named).

"Nothing extra" applies where the caption states the scene's whole inventory (count, inventory): an
attribute, relation or shape-count caption says nothing of the other objects, and Shapes' own scenes
hold up to `max_objects` besides the named ones. The relation is judged on shapes alone (which object
stands where), so that a wrong colour fails `color` and not also `relation`; both at once are
`caption_true`. Two summaries per image:

* `faithful`: every criterion of its type holds;
* `caption_true`: the claim is among the scene's facts (`grammar.scene_facts`), Shapes' own rule of
  truth: "a red circle left of a blue square" needs that red circle left of that blue square.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence

from mmbench.data.shapes import (
    COLORS,
    NUMBER_WORDS,
    PLURALS,
    SHAPES,
    SIZES,
    Scene,
    ShapeObject,
    count_objects,
    inventory_text,
    scene_facts,
    strict_relations,
)

#: caption type of each claim kind (the text before ':' of a canonical claim)
CAPTION_TYPES = {
    "object": "attribute",
    "relation": "relation",
    "count": "count",
    "shapes": "shape_count",
    "inventory": "inventory",
}
CRITERIA = ("present", "color", "size", "count", "relation", "extra")
SUMMARIES = ("faithful", "caption_true")
OVERALL = "overall"  # the group of every caption type together

_SHAPE_OF_PLURAL = {plural: shape for shape, plural in PLURALS.items()}


def inventory_counts(text: str) -> dict[str, int]:
    """{shape: number} of an inventory text ("two circles and a square"), checked by writing it back with
    Shapes' own `inventory_text`, so the reading cannot drift from the grammar; ValueError otherwise."""
    counts: dict[str, int] = {}
    for part in re.split(r", | and ", text):
        word, _, noun = part.partition(" ")
        n = 1 if word == "a" else NUMBER_WORDS.index(word) if word in NUMBER_WORDS else None
        shape = noun if n == 1 else _SHAPE_OF_PLURAL.get(noun)
        if n is None or shape is None or shape in counts:
            break
        counts[shape] = n
    scene = tuple(ShapeObject(0, 0, shape, COLORS[0], SIZES[0]) for shape, n in counts.items() for _ in range(n))
    if not scene or inventory_text(scene) != text:
        raise ValueError(f"{text!r} is not a Shapes inventory (e.g. 'two circles and a square')")
    return counts


def _attribute(scene: Scene, words: list[str]) -> dict[str, bool]:
    *size, color, shape = words
    of_shape = [o for o in scene if o.shape == shape]
    out = {"present": bool(of_shape), "color": any(o.color == color for o in of_shape)}
    if size:
        out["size"] = any(o.size == size[0] for o in of_shape)
    return out


def _relation(scene: Scene, a: str, relation: str, b: str) -> dict[str, bool]:
    (color_a, shape_a), (color_b, shape_b) = a.split(), b.split()
    pairs = [(x, y) for x in scene for y in scene if x is not y and x.shape == shape_a and y.shape == shape_b]
    return {
        "present": bool(pairs),
        "color": any(x.color == color_a and y.color == color_b for x, y in pairs),
        "relation": any(relation in strict_relations(x, y) for x, y in pairs),
    }


def _counts(scene: Scene, named: dict[str, int], *, inventory: bool) -> dict[str, bool]:
    """present / count over the named shapes; with `inventory`, extra over every shape (unnamed: 0)."""
    have = {shape: count_objects(scene, shape) for shape in SHAPES}
    out = {
        "present": all(have[s] >= n for s, n in named.items()),
        "count": all(have[s] == n for s, n in named.items()),
    }
    if inventory:
        out["extra"] = all(have[s] <= named.get(s, 0) for s in SHAPES)
    return out


def judge(scene: Scene, claim: str) -> dict[str, bool]:
    """The criteria of the claim's type (`CRITERIA`, module docstring), each true or false of the scene, then
    `faithful` and `caption_true`. ValueError for a claim that is not Shapes' canonical form (e.g. "")."""
    kind, _, body = claim.partition(":")
    if kind not in CAPTION_TYPES or not body:
        raise ValueError(
            f"not a Shapes caption claim: {claim!r}; claims are the `caption_claims` column "
            f"(grammar.claim_of), of kinds {list(CAPTION_TYPES)}"
        )
    if kind == "object":
        out = _attribute(scene, body.split())
    elif kind == "relation":
        out = _relation(scene, *body.split("|"))
    elif kind == "count":
        n = int(body)
        out = {"present": len(scene) >= n, "count": len(scene) == n, "extra": len(scene) <= n}
    elif kind == "shapes":
        shape, number = body.split("=")
        out = _counts(scene, {shape: int(number)}, inventory=False)
    else:
        out = _counts(scene, inventory_counts(body), inventory=True)
    out["faithful"] = all(out.values())
    # an empty scene has no facts (and `scene_facts` would fail on its empty inventory); no caption claims 0 objects
    out["caption_true"] = bool(scene) and claim in scene_facts(scene)
    return out


def compositional_scores(scenes: Sequence[Scene], claims: Sequence[str]) -> dict[str, float]:
    """Share of images that meet each criterion, per caption type and over all types (`overall`), each among
    the images whose type has that criterion: `<type>/<criterion>` for every criterion and summary that
    applies, and `<type>/images`, the number of images of the type. `scenes[i]` is read from the image
    generated for the caption of claim `claims[i]`."""
    if len(scenes) != len(claims):
        raise ValueError(f"{len(scenes)} scenes for {len(claims)} claims; give one claim per generated image")
    met: defaultdict[str, int] = defaultdict(int)
    seen: defaultdict[str, int] = defaultdict(int)
    for scene, claim in zip(scenes, claims):
        verdict = judge(scene, claim)  # ValueError for a claim of no type
        ctype = CAPTION_TYPES[claim.partition(":")[0]]
        for name, ok in verdict.items():
            for group in (ctype, OVERALL):
                met[f"{group}/{name}"] += ok
                seen[f"{group}/{name}"] += 1
        for group in (ctype, OVERALL):
            seen[f"{group}/images"] += 1
    out = {key: met[key] / n for key, n in seen.items() if not key.endswith("/images")}
    out.update({key: float(n) for key, n in seen.items() if key.endswith("/images")})
    return dict(sorted(out.items()))
