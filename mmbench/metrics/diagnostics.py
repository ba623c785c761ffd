"""Hard-negative matching diagnostics (the bag-of-words test).

For every test image the data holds hard negatives that reuse the words of a true statement
(attribute swap, relation swap) or change a count, each paired with its true counterpart of the same
template (`match_positives`). Per perturbation type, a model is right when it scores the true
statement above the negative (Winoground's text score for one image); `match_acc` counts images where
it is right for every pair. Scores come from the objective with the highest `pair_score_rank` (ITM's
joint match log-odds before ITC's cosine similarity), so the same protocol applies to every
architecture: a two-tower model is judged by its embeddings, a fusion model by its matching head.

Metric names: `<split>/diagnostics/match_acc` and `<split>/diagnostics/<type>_acc`.
"""

from __future__ import annotations

from collections import defaultdict

import torch


@torch.no_grad()
def matching_diagnostics(module, datamodule, split: str = "test", batch_size: int = 256) -> dict[str, float]:
    dataset = datamodule.datasets[split]
    columns = dataset.split.column_names
    scorers = [o for o in module.objectives.values() if o.pair_score_rank > 0]
    if "match_positives" not in columns or not scorers:
        return {}
    scorer = max(scorers, key=lambda o: o.pair_score_rank)
    positives = dataset.split["match_positives"]
    negatives = dataset.split["match_negatives"]
    neg_types = dataset.split["match_negative_types"]

    # flatten (image row, statement) pairs: per image its positives, then its negatives
    pairs = [(r, t) for r in range(len(negatives)) for t in [*positives[r], *negatives[r]]]
    model = module.model
    was_training = module.training
    module.eval()
    scores = []
    for start in range(0, len(pairs), batch_size):
        items = [dataset.image_item(r, t) for r, t in pairs[start : start + batch_size]]
        batch = {k: v.to(module.device) for k, v in datamodule.collate(items).items()}
        text = model.encode_text(batch["input_ids"], batch["attention_mask"])
        image = model.encode_image(batch)
        scores.append(scorer.pair_score(model, text, image).float().cpu())
    module.train(was_training)
    flat = torch.cat(scores)

    wins, total = defaultdict(int), defaultdict(int)
    offset = 0
    for r in range(len(negatives)):
        n = len(negatives[r])
        pos_scores, neg_scores = flat[offset : offset + n], flat[offset + n : offset + 2 * n]
        offset += 2 * n
        right = pos_scores > neg_scores  # (n,)
        wins["match"] += int(bool(right.all()))
        total["match"] += 1
        for kind, ok in zip(neg_types[r], right.tolist()):
            wins[kind] += int(ok)
            total[kind] += 1
    return {f"{split}/diagnostics/{k}_acc": wins[k] / total[k] for k in total}
