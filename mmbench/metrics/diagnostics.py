"""Hard-negative matching diagnostics (the bag-of-words test), scored Winoground-style.

For every test image the data holds hard negatives that reuse the words of a true statement
(attribute swap, relation swap) or change a count, each paired with its true counterpart of the same
template (`match_positives`). Scores come from the objective with the highest `pair_score_rank`
(ITM's joint match log-odds before ITC's cosine similarity), so the same protocol applies to every
architecture: a two-tower model is judged by its embeddings, a fusion model by its matching head.

Per perturbation type:

* `<type>_acc`: the true statement P scores above its negative N on the image I;
  `match_acc` counts images where this holds for every pair.
* Winoground scores (Thrush et al., 2022) need a second image I' for which N is true and P false.
  On Shapes it is rendered from the scene's symbolic columns (`counterfactual`): the two named
  objects with their colours / shapes swapped (attribute swap), with their cells exchanged
  (relation swap), or one object removed or added (count change); every counterfactual is checked
  to make N true and P false, and pairs without a valid one are left out. With s(text, image):
    text score  = s(P, I) > s(N, I)  and  s(N, I') > s(P, I')
    image score = s(P, I) > s(P, I') and  s(N, I') > s(N, I)
    group score = text and image.
  Ties are not wins.

`holdout_gap` compares a model on the compositional hold-out split (`test_holdout`: scenes with
colour x shape combinations never seen in training) with the in-distribution test split.

Names (prefixed with the split by the suite): `diagnostics/match_acc`, `diagnostics/<type>_acc`,
`diagnostics/{text,image,group}_score`, `diagnostics/<type>_{text,image,group}_score`,
`diagnostics/winoground_pairs`; `holdout_gap/<metric>` = test/<metric> - test_holdout/<metric>.
"""

from __future__ import annotations

import re
from collections import defaultdict

import numpy as np
import torch

from mmbench.metrics.common import Inputs, chunks, column, eval_mode, pair_scorer

_RELATION = re.compile(r"^a (\w+) (\w+) (left of|right of|above|below) a (\w+) (\w+)$")
_ATTRIBUTE = re.compile(r"^a (\w+) (\w+) (\w+)$")  # "a {size} {color} {shape}"
_COUNT = re.compile(r"^there (?:is|are) (\w+) objects?$")


# --------------------------------------------------------------------------- counterfactual images (Shapes)


def _scene(columns: dict, image_size: int, grid: int):
    """The ShapeObjects of one Shapes row, centres recovered from the boxes."""
    from mmbench.data.shapes import ShapeObject, layout

    lay = layout(image_size, grid)
    objects = []
    for shape, color, size, box in zip(
        columns["obj_shape"], columns["obj_color"], columns["obj_size"], columns["boxes"]
    ):
        x0, y0 = lay.stamps[(shape, size)].extent[:2]
        x, y = round(box[0] * image_size) - x0, round(box[1] * image_size) - y0
        objects.append(ShapeObject(y * grid // image_size, x * grid // image_size, shape, color, size, x, y))
    return tuple(objects)


def counterfactual(columns: dict, positive: str, negative: str, kind: str, image_size: int, grid: int):
    """A scene of the row's objects edited so that `negative` is true and `positive` false, or None.

    columns: the row's obj_shape, obj_color, obj_size, boxes. Returns (image (S, S, 3) uint8,
    boxes, labels) or None when the statements cannot be parsed or no valid edit exists.
    """
    from mmbench.data import shapes as S

    scene = _scene(columns, image_size, grid)
    edited = None
    if kind == "count_change":
        p, n = _COUNT.match(positive), _COUNT.match(negative)
        if not (p and n) or n.group(1) not in S.NUMBER_WORDS:
            return None
        target = S.NUMBER_WORDS.index(n.group(1))
        if target == len(scene) - 1:
            edited = scene[:-1]
        elif target == len(scene) + 1:
            used = {(o.row, o.col) for o in scene}
            free = [(r, c) for r in range(grid) for c in range(grid) if (r, c) not in used]
            if free:
                o = scene[0]
                edited = scene + (S.ShapeObject(*free[0], o.shape, o.color, "small"),)
        ok = edited is not None and len(edited) == target and len(edited) != len(scene)
    elif kind == "attribute_swap" and len(scene) == 1:
        p, n = _ATTRIBUTE.match(positive), _ATTRIBUTE.match(negative)
        if not (p and n):
            return None
        o = scene[0]
        size, color, shape = n.groups()
        edited = (S.ShapeObject(o.row, o.col, shape, color, size),)
        ok = S.has_object(edited, color, shape, size) and not S.has_object(edited, *p.groups()[1:], p.group(1))
    else:  # attribute_swap / relation_swap of a relation statement "a c1 s1 rel a c2 s2"
        p, n = _RELATION.match(positive), _RELATION.match(negative)
        if not (p and n):
            return None
        (c1, s1, rel, c2, s2), (d1, t1, _, d2, t2) = p.groups(), n.groups()
        pair = next(
            (
                (a, b)
                for a in scene
                for b in scene
                if a is not b and a.desc == (c1, s1) and b.desc == (c2, s2) and rel in S.strict_relations(a, b)
            ),
            None,
        )
        if pair is None:
            return None
        a, b = pair
        if kind == "relation_swap":  # exchange the cells (centred, as object sizes may differ)
            new_a, new_b = (
                S.ShapeObject(b.row, b.col, a.shape, a.color, a.size),
                S.ShapeObject(a.row, a.col, b.shape, b.color, b.size),
            )
        else:  # attribute swap: a takes (d1, t1), b takes (d2, t2)
            new_a, new_b = (
                S.ShapeObject(a.row, a.col, t1, d1, a.size, a.x, a.y),
                S.ShapeObject(b.row, b.col, t2, d2, b.size, b.x, b.y),
            )
        edited = tuple(new_a if o is a else new_b if o is b else o for o in scene)
        ok = S.relation_claim_true(edited, (d1, t1), rel, (d2, t2)) and not S.relation_claim_true(
            edited, (c1, s1), rel, (c2, s2)
        )
    if edited is None or not ok:
        return None
    image, boxes = S.render(edited, image_size, grid)
    return image, boxes, [o.label for o in edited]


# --------------------------------------------------------------------------- scoring


@torch.no_grad()
def _score(
    scorer, model, inputs: Inputs, image_batches, rows_per_pair: list[int], texts: list[str], batch_size: int
) -> torch.Tensor:
    """Scores of (texts[p], image rows_per_pair[p]); image_batches(rows) -> image batch of those rows."""
    out = []
    for s in chunks(len(texts), batch_size):
        rows = rows_per_pair[s]
        unique = sorted(set(rows))
        image = model.encode_image(image_batches(unique))  # each image of the chunk once
        where = {r: i for i, r in enumerate(unique)}
        idx = torch.tensor([where[r] for r in rows], device=inputs.device)
        text = model.encode_text(*inputs.texts(texts[s]))
        out.append(scorer.pair_score(model, text, image.index(idx)).float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


def matching_diagnostics(
    module, inputs: Inputs, *, batch_size: int, max_images: int | None, winoground: bool
) -> dict[str, float]:
    """Hard-negative accuracy and (with `winoground`, on data that renders its scenes, i.e. Shapes:
    `inputs.scene_grid`) Winoground scores per perturbation type."""
    dataset = inputs.dataset
    columns = dataset.split.column_names
    scorer = pair_scorer(module)
    if "match_positives" not in columns or scorer is None:
        return {}
    n = len(dataset.images) if max_images is None else min(max_images, len(dataset.images))
    positives, negatives, kinds = (
        column(dataset, c)[:n] for c in ("match_positives", "match_negatives", "match_negative_types")
    )

    # flatten (image row, statement): per image its positives, then its negatives
    pair_rows = [r for r in range(n) for _ in range(len(positives[r]) + len(negatives[r]))]
    pair_texts = [t for r in range(n) for t in [*positives[r], *negatives[r]]]
    model = module.model
    with eval_mode(module):
        flat = _score(scorer, model, inputs, inputs.images, pair_rows, pair_texts, batch_size)

    wins, total = defaultdict(int), defaultdict(int)
    quads = []  # (type, P, N, s(P, I), s(N, I), row)
    offset = 0
    for r in range(n):
        k = len(negatives[r])
        pos_scores, neg_scores = flat[offset : offset + k], flat[offset + k : offset + 2 * k]
        offset += 2 * k
        right = pos_scores > neg_scores  # (k,)
        wins["match"] += int(bool(right.all()))
        total["match"] += 1
        for j, (kind, ok) in enumerate(zip(kinds[r], right.tolist())):
            wins[kind] += int(ok)
            total[kind] += 1
            quads.append((kind, positives[r][j], negatives[r][j], pos_scores[j].item(), neg_scores[j].item(), r))
    out = {f"diagnostics/{k}_acc": wins[k] / total[k] for k in total}
    grid = inputs.scene_grid
    if winoground and grid and {"obj_shape", "obj_color", "obj_size", "boxes"} <= set(columns):
        out.update(_winoground(module, scorer, inputs, quads, grid, batch_size))
    return out


def _winoground(module, scorer, inputs: Inputs, quads: list, grid: int, batch_size: int) -> dict[str, float]:
    image_size = int(inputs.dataset.images[0].shape[0])
    cols = {c: column(inputs.dataset, c) for c in ("obj_shape", "obj_color", "obj_size", "boxes")}
    items, valid = [], []
    for q, (kind, pos, neg, _, _, r) in enumerate(quads):
        cf = counterfactual({c: v[r] for c, v in cols.items()}, pos, neg, kind, image_size, grid)
        if cf is not None:
            image, boxes, labels = cf
            items.append({"image": image, "image_id": -1 - len(items), "boxes": boxes, "labels": labels})
            valid.append(q)
    if not valid:
        return {}
    # s(P, I') and s(N, I') for every counterfactual I'
    rows = [i for i in range(len(valid)) for _ in range(2)]
    texts = [t for q in valid for t in (quads[q][1], quads[q][2])]
    with eval_mode(module):
        flat = _score(
            scorer,
            module.model,
            inputs,
            lambda idx: inputs.image_items([items[i] for i in idx]),
            rows,
            texts,
            batch_size,
        )
    scores = defaultdict(lambda: np.zeros(3))
    counts = defaultdict(int)
    for i, q in enumerate(valid):
        kind, _, _, p_i, n_i, _ = quads[q]
        p_cf, n_cf = flat[2 * i].item(), flat[2 * i + 1].item()
        text = p_i > n_i and n_cf > p_cf
        image = p_i > p_cf and n_cf > n_i
        for key in (kind, "all"):
            scores[key] += (text, image, text and image)
            counts[key] += 1
    out = {"diagnostics/winoground_pairs": float(counts["all"])}
    for key, (t, i, g) in scores.items():
        prefix = "diagnostics/" if key == "all" else f"diagnostics/{key}_"
        out.update(
            {
                f"{prefix}text_score": float(t / counts[key]),
                f"{prefix}image_score": float(i / counts[key]),
                f"{prefix}group_score": float(g / counts[key]),
            }
        )
    return out


def holdout_gap(metrics: dict[str, float], split: str = "test", holdout: str = "test_holdout") -> dict[str, float]:
    """`<split>/holdout_gap/<m>` = <split>/<m> - <holdout>/<m> for every metric both splits have."""
    out = {}
    for key, value in metrics.items():
        if key.startswith(f"{holdout}/"):
            name = key[len(holdout) + 1 :]
            if f"{split}/{name}" in metrics and not name.endswith("_pairs"):
                out[f"{split}/holdout_gap/{name}"] = metrics[f"{split}/{name}"] - value
    return out
