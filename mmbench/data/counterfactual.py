"""Counterfactual Shapes scenes: the second image of a Winoground pair (the `diagnostics` protocol).

For a true statement P of a test image and its hard negative N (`match_positives` /
`match_negatives`), `counterfactual` edits the image's scene so that N becomes true and P false:
the two named objects with their colours / shapes swapped (attribute swap), with their cells
exchanged (relation swap), or one object removed or added (count change), and renders it. Every
edit is checked against the scene's truth (`claim_of`, `relation_claim_true`, `has_object`), and
statements it cannot parse or edits that fail the check give None.

Shapes supplies it to the evaluation suite through its data config (`data.counterfactuals`, a
partial of `counterfactual` with the scene grid), so the protocol itself knows no dataset:

    render(columns, positive, negative, kind, image_size) -> (image (S, S, 3) uint8, boxes, labels) | None
"""

from __future__ import annotations

from mmbench.data import shapes as S


def scene_of_row(columns: dict, image_size: int, grid: int) -> S.Scene:
    """The ShapeObjects of one Shapes row (obj_shape, obj_color, obj_size, boxes), centres recovered
    from the boxes, so that `S.render` reproduces the stored image."""
    lay = S.layout(image_size, grid)
    objects = []
    for shape, color, size, box in zip(
        columns["obj_shape"], columns["obj_color"], columns["obj_size"], columns["boxes"]
    ):
        x0, y0 = lay.stamps[(shape, size)].extent[:2]
        x, y = round(box[0] * image_size) - x0, round(box[1] * image_size) - y0
        objects.append(S.ShapeObject(y * grid // image_size, x * grid // image_size, shape, color, size, x, y))
    return tuple(objects)


def _count_edit(scene: S.Scene, target: int, grid: int, max_objects: int | None) -> S.Scene | None:
    """The scene with one object fewer or more (in the first free cell), if that makes `target`
    objects and the data holds scenes of that size (at most `max_objects`; None: no bound)."""
    if max_objects is not None and target > max_objects:
        return None
    if target == len(scene) - 1:
        return scene[:-1]
    if target == len(scene) + 1:
        used = {(o.row, o.col) for o in scene}
        free = [(r, c) for r in range(grid) for c in range(grid) if (r, c) not in used]
        if free:
            o = scene[0]
            return scene + (S.ShapeObject(*free[0], o.shape, o.color, "small"),)
    return None


def _pair_edit(scene: S.Scene, p: list[str], n: list[str], kind: str) -> S.Scene | None:
    """Edit of the pair a, b named by relation claim p = [a, rel, b] so that n = [a', rel, b'] holds."""
    (a_text, rel, b_text), (na_desc, _, nb_desc) = p, n
    a_desc, b_desc = tuple(a_text.split()), tuple(b_text.split())
    pair = next(
        (
            (a, b)
            for a in scene
            for b in scene
            if a is not b and a.desc == a_desc and b.desc == b_desc and rel in S.strict_relations(a, b)
        ),
        None,
    )
    if pair is None:
        return None
    a, b = pair
    if kind == "relation_swap":  # exchange the cells (centred, as object sizes may differ)
        new_a = S.ShapeObject(b.row, b.col, a.shape, a.color, a.size)
        new_b = S.ShapeObject(a.row, a.col, b.shape, b.color, b.size)
    else:  # attribute swap: a takes the first description of n, b the second
        (d1, t1), (d2, t2) = na_desc.split(), nb_desc.split()
        new_a = S.ShapeObject(a.row, a.col, t1, d1, a.size, a.x, a.y)
        new_b = S.ShapeObject(b.row, b.col, t2, d2, b.size, b.x, b.y)
    return tuple(new_a if o is a else new_b if o is b else o for o in scene)


def counterfactual(
    columns: dict,
    positive: str,
    negative: str,
    kind: str,
    image_size: int,
    grid: int,
    max_objects: int | None = None,
):
    """A rendering of the row's scene edited so that `negative` is true and `positive` false, or None.

    columns: the dataset row's columns (it reads obj_shape, obj_color, obj_size, boxes). Returns (image (S, S, 3) uint8, boxes,
    labels). Statements are read by their claims (`S.claim_of`), the grammar Shapes writes them in.
    max_objects: the most objects the data's scenes hold; a count edit beyond it gets no counterfactual,
    since a scene of a size never seen in training (and its count word never true) would score the
    model on something it cannot know (with max_objects 3, "four objects" was a fifth of the
    count-change pairs and capped every model's group score at 0.80: docs/results.md).
    """
    scene = scene_of_row(columns, image_size, grid)
    (p_kind, _, p), (n_kind, _, n) = S.claim_of(positive).partition(":"), S.claim_of(negative).partition(":")
    if kind == "count_change" and p_kind == n_kind == "count":
        edited = _count_edit(scene, int(n), grid, max_objects)
    elif kind == "attribute_swap" and len(scene) == 1 and p_kind == n_kind == "object":
        if len(n.split()) != 3:  # "size colour shape"
            return None
        size, color, shape = n.split()
        o = scene[0]
        edited = (S.ShapeObject(o.row, o.col, shape, color, size),)
    elif kind in ("attribute_swap", "relation_swap") and p_kind == n_kind == "relation":
        edited = _pair_edit(scene, p.split("|"), n.split("|"), kind)
    else:
        return None
    if edited is None:
        return None
    facts = S.scene_facts(edited)
    if S.claim_of(negative) not in facts or S.claim_of(positive) in facts:
        return None
    image, boxes = S.render(edited, image_size, grid)
    return image, boxes, [o.label for o in edited]
