"""What is said about a Shapes scene: captions, VQA questions with answers, and the matching statement
with its Winoground-style hard negatives, all built from the templates of `grammar` and true by construction.

* captions - attributes ("a small red circle"), relations ("a red circle left of a blue square", only
  stated when strictly true) and counts ("there are two objects", "two circles and a square");
* VQA      - questions of types color / shape / count / exist / relation, answers balanced so that no
  answer dominates;
* matching - one true statement per scene and hard negatives built from the same words
  (`attribute_swap`, `relation_swap`) or a wrong count (`count_change`), each with its true
  counterpart of the same template.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

from mmbench.data.shapes.grammar import (
    ATTRIBUTE_TEMPLATES,
    PLURALS,
    RELATION_TEMPLATES,
    attribute_text,
    count_text,
    inventory_text,
    number_word,
    relation_text,
    shape_count_text,
)
from mmbench.data.shapes.sampling import RandomStream
from mmbench.data.shapes.scene import (
    COLORS,
    SHAPES,
    Description,
    Scene,
    ShapeObject,
    count_objects,
    has_object,
    relation_claim_true,
    strict_relations,
    unique_objects,
)

INVERSE_RELATION = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
# the one direction per axis that relation questions ask and `stated` keeps when told to use two
FORWARD_RELATIONS = ("left of", "above")
# A relation question names two objects and asks which lies further along one direction (GQA's
# "choose" form): the words of the direction, for a relation "a R b" read as "a is further ...".
RELATION_QUESTION = {"left of": "further left", "right of": "further right", "above": "higher", "below": "lower"}
QUESTION_TYPES = ("color", "shape", "count", "exist", "relation")
NEGATIVE_TYPES = ("attribute_swap", "relation_swap", "count_change")


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


def stated(a: ShapeObject, relation: str, b: ShapeObject, directions: int) -> tuple[ShapeObject, str, ShapeObject]:
    """How "a <relation> b" is stated: as is with all four relation words (`directions=4`), and with
    `directions=2` one word per axis, "left of" / "above", the objects named in the order that makes it
    true ("a right of b" -> "b left of a").

    Why 2 exists (docs/results.md, `experiment=word_order` results): with four words, whether "A rel B"
    holds is the XOR of which object is named first, where it lies and which way the word points, the
    form no model learnt in v6's relation questions; with two, it is which object is named first x where
    it lies, the order of v7's questions."""
    if directions == 2 and relation not in FORWARD_RELATIONS:
        return b, INVERSE_RELATION[relation], a
    return a, relation, b


def _relation_caption(scene: Scene, rs: RandomStream, directions: int = 4) -> str:
    i, j = rs.sample(len(scene), 2)
    a, relation, b = stated(scene[i], rs.pick(strict_relations(scene[i], scene[j])), scene[j], directions)
    return relation_text(a.desc, relation, b.desc, rs.below(len(RELATION_TEMPLATES)))


def _count_caption(scene: Scene, rs: RandomStream) -> str:
    kind = rs.below(3)
    if kind == 0:
        return count_text(len(scene), rs.below(2))
    if kind == 1:
        return inventory_text(scene)
    shape = rs.pick(scene).shape
    return shape_count_text(shape, count_objects(scene, shape))


def make_captions(scene: Scene, n: int, rs: RandomStream, relation_directions: int = 4) -> list[str]:
    """n captions, distinct when possible, mixing attribute, relation (>= 2 objects) and count captions;
    `relation_directions`: the relation words used (`stated`)."""
    kinds: dict[str, Callable[[Scene, RandomStream], str]] = {
        "attribute": _attribute_caption,
        "relation": lambda s, r: _relation_caption(s, r, relation_directions),
        "count": _count_caption,
    }
    plan = ("relation", "attribute", "count", "relation") if len(scene) > 1 else ("attribute", "count")
    available = [k for k in kinds if k != "relation" or len(scene) > 1]
    offset = rs.below(len(plan))
    captions: list[str] = []
    for k in range(n):
        first = plan[(offset + k) % len(plan)]
        order = [first] + [kind for kind in available if kind != first]
        captions.append(_fresh([partial(kinds[kind], scene, rs) for kind in order], captions))
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


def _relation_question(scene: Scene, rs: RandomStream, directions: int = 2) -> tuple[str, str]:
    """A choice between two named objects, as GQA's "choose" questions: "which is further left, the red
    circle or the blue square?" -> "circle" (the word that tells the two apart: their shapes if these
    differ, else their colours).

    The objects are named in a random order and the axis is drawn among those on which they differ. With
    `directions=2` (the default) the direction is "further left" on the horizontal axis and "higher" on
    the vertical one; with 4 it is either way of the axis ("further right", "lower" too). The answer is
    the first-named object half of the time, so a model must locate both named objects and compare them;
    it does not depend on the order of the names (word order is what the `relation_swap` matching
    diagnostic tests).

    Why two directions by default (Shapes v7; docs/results.md, calibration part 6): when both directions
    of an axis are asked equally often, where an object lies says nothing about the answer until the
    model also reads the direction word -- no single feature correlates with the answer, the XOR case --
    and every model tried, down to a plain CNN + bag-of-words MLP, stayed at chance for thousands of
    steps (v6). With one direction per axis the object further left is the answer of every horizontal
    question, a first-order signal, and models leave chance within a few hundred steps. `directions=4`
    keeps the harder form. History: v4's yes/no form made the answer the XOR of the relation word and
    the objects' order; v5's order-sensitive choice ("is the red circle left or right of the blue
    square?") also stayed at chance.
    """
    unique = unique_objects(scene)
    i, j = rs.sample(len(unique), 2)  # a random order of the names
    a, b = unique[i], unique[j]
    relation = rs.pick([r for r in FORWARD_RELATIONS if r in strict_relations(a, b) + strict_relations(b, a)])
    if directions == 4 and rs.coin():  # the opposite direction of the same axis
        relation = INVERSE_RELATION[relation]
    winner = a if relation in strict_relations(a, b) else b
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
    relation_directions: int = 2,
) -> tuple[list[str], list[str], list[str]]:
    """n (question, answer, type) triples, distinct when possible.

    The type is drawn among the types the scene can answer (`available_question_types`), each with its
    integer weight in `mix` (None: all 1, i.e. uniform). A type of weight 0 is asked only when the scene
    answers no type of positive weight. `relation_directions`: see `_relation_question`.
    """
    makers: dict[str, Callable[[Scene, RandomStream], tuple[str, str]]] = {
        "color": _color_question,
        "shape": _shape_question,
        "count": _count_question,
        "exist": lambda s, r: _exist_question(s, r, banned),
        "relation": lambda s, r: _relation_question(s, r, relation_directions),
    }
    types = available_question_types(scene)
    positive = [t for t in types if mix is None or mix[t] > 0]
    # a scene that answers no type of positive weight: its available types, uniformly
    weighted = [t for t in positive for _ in range(1 if mix is None else mix[t])] or types
    types = positive or types
    questions: list[str] = []
    answers: list[str] = []
    qtypes: list[str] = []

    def ask(t: str) -> tuple[str, str, str]:  # (question, answer, type)
        return (*makers[t](scene, rs), t)

    for _ in range(n):
        first = rs.pick(weighted)  # with all weights 1 the draws are those of a uniform pick
        order = [first] + [t for t in types if t != first]
        q, a, t = _fresh([partial(ask, t) for t in order], questions)
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


def make_match(
    scene: Scene, rs: RandomStream, relation_directions: int = 4
) -> tuple[str, list[str], list[str], list[str]]:
    """A true statement, hard negatives (each verified false), their types, and for each negative
    the true statement of the same template (the statement itself, or the true count);
    `relation_directions`: the relation words used (`stated`)."""
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
        a, relation, b = stated(a, rs.pick(strict_relations(a, b)), b, relation_directions)
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
