"""Shapes' text grammar, written once: the templates its texts are written from and the parser that
reads a text back into its canonical claim (`claim_of`), with every claim true of a scene (`scene_facts`).

The caption, question and matching generators (`text`) and the counterfactual renderer
(`mmbench.data.counterfactual`) use these; nothing else writes or parses Shapes text.
"""

from __future__ import annotations

import re
from functools import lru_cache

from mmbench.data.shapes.scene import (
    COLORS,
    SHAPES,
    SIZES,
    Description,
    Scene,
    ShapeObject,
    count_objects,
    strict_relations,
)

RELATIONS = ("left of", "right of", "above", "below")
LONG_RELATION = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}
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

ATTRIBUTE_TEMPLATES = (
    "a {size} {color} {shape}",
    "there is a {size} {color} {shape}",
    "a {color} {shape}",
    "there is a {color} {shape}",
    "the image shows a {size} {color} {shape}",
)
RELATION_TEMPLATES = ("a {a} {rel} a {b}", "there is a {a} {rel} a {b}", "a {a} is {long_rel} a {b}")


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
    """Every object by shape, e.g. "two circles and a square" (shapes in `SHAPES` order); "nothing" for an empty
    scene (never generated; a generated image read back by the t2i oracle can be one)."""
    parts = []
    for shape in SHAPES:
        n = count_objects(scene, shape)
        if n:
            parts.append(f"a {shape}" if n == 1 else f"{number_word(n)} {PLURALS[shape]}")
    if len(parts) <= 1:
        return parts[0] if parts else "nothing"
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def relation_text(a: Description, relation: str, b: Description, template: int = 0) -> str:
    return RELATION_TEMPLATES[template].format(
        a=" ".join(a), rel=relation, long_rel=LONG_RELATION[relation], b=" ".join(b)
    )


def order_swapped(text: str) -> str:
    """A relation text with its two objects swapped, same words and template ("a red circle left of a
    blue square" -> "a blue square left of a red circle"); "" for a text that is not a relation. The
    word-order hard negative of NegCLIP (Yuksekgonul et al., ICLR 2023): a bag of words cannot tell it
    from the original."""
    m = _CLAIM_RELATION.match(text)
    if m is None:
        return ""
    c1, s1, _, c2, s2 = m.groups()
    start, end = m.span(1)[0], m.span(5)[1]
    middle = text[m.span(2)[1] : m.span(4)[0]]  # " left of a " / " is to the left of a "
    return f"{text[:start]}{c2} {s2}{middle}{c1} {s1}{text[end:]}"


def attribute_text(o: ShapeObject, template: int = 0) -> str:
    return ATTRIBUTE_TEMPLATES[template].format(size=o.size, color=o.color, shape=o.shape)


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
        count, _, word = part.partition(" ")
        n = 1 if count == "a" else number(count)
        shape = word if n == 1 else _SHAPE_OF_PLURAL.get(word)
        if n is None or shape not in SHAPES or shape in counts:
            return ""
        counts[shape] = n
    scene = tuple(ShapeObject(0, 0, shape, COLORS[0], SIZES[0]) for shape, n in counts.items() for _ in range(n))
    return f"inventory:{text}" if scene and inventory_text(scene) == text else ""
