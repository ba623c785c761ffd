"""Hard-negative matching diagnostics (the bag-of-words test), scored Winoground-style.

For every test image the data holds hard negatives that reuse the words of a true statement
(attribute swap, relation swap) or change a count, each paired with its true counterpart of the same
template (`match_positives`). Scores come from the objective with the highest `pair_score_rank`
(ITM's joint match log-odds before ITC's cosine similarity), so the same protocol applies to every
architecture: a two-tower model is judged by its embeddings, a fusion model by its matching head.

Per perturbation type:

* `<type>_acc`: the true statement P scores above its negative N on the image I;
  `match_acc` counts images where this holds for every pair.
* Winoground scores (Thrush et al., 2022) need a second image I' for which N is true and P false,
  which the data renders when it can (`inputs.counterfactuals`; Shapes: mmbench/data/counterfactual.py,
  from the scene's symbolic columns); pairs without a valid one are left out, and data without a
  renderer gets no Winoground scores. With s(text, image):
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

from collections import defaultdict

import numpy as np
import torch

from mmbench.metrics.common import Inputs, Unavailable, chunks, eval_mode, pair_scorer, required_column

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
    """Hard-negative accuracy and (with `winoground`, on data that renders counterfactual scenes,
    i.e. Shapes: `inputs.counterfactuals`) Winoground scores per perturbation type."""
    dataset = inputs.dataset
    columns = dataset.split.column_names
    scorer = pair_scorer(module)
    if "match_positives" not in columns:
        raise Unavailable("the data has no hard-negative matching columns (match_text, match_positives, ...: Shapes)")
    if scorer is None:
        raise Unavailable("needs an objective that scores image-text pairs: itc or itm")
    n = len(dataset.images) if max_images is None else min(max_images, len(dataset.images))
    positives, negatives, kinds = (
        required_column(dataset, c)[:n] for c in ("match_positives", "match_negatives", "match_negative_types")
    )

    # flatten (image row, statement): per image its positives, then its negatives
    pair_rows = [r for r in range(n) for _ in range(len(positives[r]) + len(negatives[r]))]
    pair_texts = [t for r in range(n) for t in [*positives[r], *negatives[r]]]
    model = module.model
    with eval_mode(module):
        flat = _score(scorer, model, inputs, inputs.images, pair_rows, pair_texts, batch_size)

    wins: defaultdict[str, int] = defaultdict(int)
    total: defaultdict[str, int] = defaultdict(int)
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
    if winoground and inputs.counterfactuals is not None:
        out.update(_winoground(module, scorer, inputs, quads, batch_size))
    return out


def _winoground(module, scorer, inputs: Inputs, quads: list, batch_size: int) -> dict[str, float]:
    image_size = int(inputs.dataset.images[0].shape[0])
    # the renderer reads the scene from the row's columns: which ones is the data's business, not this
    # protocol's (every column but the pixel bytes, read once per dataset)
    names = [c for c in inputs.dataset.split.column_names if c != "pixels"]
    cols = {c: required_column(inputs.dataset, c) for c in names}
    items: list[dict] = []
    valid: list[int] = []
    counterfactuals = inputs.counterfactuals
    assert counterfactuals is not None  # `matching_diagnostics` calls this only with a renderer
    for q, (kind, pos, neg, _, _, r) in enumerate(quads):
        cf = counterfactuals({c: v[r] for c, v in cols.items()}, pos, neg, kind, image_size)
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
    scores: defaultdict[str, np.ndarray] = defaultdict(lambda: np.zeros(3))  # (text, image, group) wins
    counts: defaultdict[str, int] = defaultdict(int)
    for i, q in enumerate(valid):
        kind, _, _, p_i, n_i, _ = quads[q]
        p_cf, n_cf = flat[2 * i].item(), flat[2 * i + 1].item()
        text = p_i > n_i and n_cf > p_cf
        image = p_i > p_cf and n_cf > n_i
        for key in (kind, "all"):
            scores[key] += (text, image, text and image)
            counts[key] += 1
    out = {"diagnostics/winoground_pairs": float(counts["all"])}
    for key, (t_wins, i_wins, g_wins) in scores.items():
        prefix = "diagnostics/" if key == "all" else f"diagnostics/{key}_"
        out.update(
            {
                f"{prefix}text_score": float(t_wins / counts[key]),
                f"{prefix}image_score": float(i_wins / counts[key]),
                f"{prefix}group_score": float(g_wins / counts[key]),
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
