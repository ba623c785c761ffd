"""Does a trained model read word order in Shapes relation questions? Measured on a checkpoint.

    .venv/bin/python scripts/relation_probe.py <run>/checkpoints/best.ckpt [--split test]

Every relation question of the split ("is the <A> left or right of the <B>?") is asked twice against
the same image: as generated, and with its two objects swapped ("is the <B> left or right of the
<A>?"), which flips the true answer (left <-> right, above <-> below) and keeps the bag of words. A
model blind to word order answers both alike: the `order_blind` rate (same prediction for a question
and its swap) is 1.0 for such a model and 0.0 for a model that is right on both.
"""

from __future__ import annotations

import argparse
import re

RELATION = re.compile(r"is the (\w+ \w+) (left or right|above or below) of the (\w+ \w+)\?")
FLIP = {"left": "right", "right": "left", "above": "below", "below": "above"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt", help="a run's checkpoint (<run>/checkpoints/<name>.ckpt) with a vqa objective")
    parser.add_argument("--split", default="test")
    args = parser.parse_args()

    import torch
    from omegaconf import OmegaConf

    from mmbench.builder import build_datamodule, build_module
    from mmbench.evaluate import load_weights, training_config
    from mmbench.metrics.common import Inputs, column, encode_images, eval_mode
    from mmbench.metrics.vqa import vqa_objective

    cfg, _ = training_config(args.ckpt)
    OmegaConf.set_struct(cfg, False)
    dm = build_datamodule(cfg)
    dm.setup()
    module = build_module(cfg, dm.info)
    load_weights(module, args.ckpt)
    head = vqa_objective(module)
    if head is None:
        raise SystemExit(f"{args.ckpt}: the run has no vqa objective; objectives: {sorted(module.objectives)}")
    dataset = dm.datasets[args.split]
    questions, answers, qtypes = (column(dataset, c) for c in ("questions", "answers", "question_types"))
    asked = []  # (row, original, swapped, answer)
    for r, (qs, ans, ts) in enumerate(zip(questions, answers, qtypes)):
        for q, a, t in zip(qs, ans, ts):
            m = RELATION.fullmatch(q) if t == "relation" else None
            if m:
                x, choice, y = m.groups()
                asked.append((r, q, f"is the {y} {choice} of the {x}?", a))
    if not asked:
        raise SystemExit(f"no relation questions in split {args.split!r}")

    inputs = Inputs(dataset, dm.tokenizer, module.device)
    vocab = dm.info.answers
    predictions = {k: [] for k in ("original", "swapped")}
    with eval_mode(module), torch.no_grad():
        for s in range(0, len(asked), 256):
            chunk = asked[s : s + 256]
            image = encode_images(module.model, inputs, [c[0] for c in chunk], 256)
            for k, col in (("original", 1), ("swapped", 2)):
                ids, mask = inputs.texts([c[col] for c in chunk])
                batch = {f"{head.question_field}_ids": ids, f"{head.question_field}_mask": mask}
                logits = head.answer_logits(module.model, batch, None, image)  # (b, A)
                predictions[k] += [vocab[i] for i in logits.argmax(-1).tolist()]
    truth = [c[3] for c in asked]
    n = len(asked)
    acc = lambda preds, flip: sum(p == (FLIP[t] if flip else t) for p, t in zip(preds, truth)) / n  # noqa: E731
    print(f"{args.ckpt}: {n} relation questions of split {args.split!r}")
    print(f"  accuracy, as generated:         {acc(predictions['original'], False):.3f}")
    print(f"  accuracy, objects swapped:      {acc(predictions['swapped'], True):.3f}")
    blind = sum(a == b for a, b in zip(predictions["original"], predictions["swapped"])) / n
    print(f"  order_blind (same answer to a question and its swap): {blind:.3f}")
    first = sum(p in ("left", "above") for p in predictions["original"]) / n
    print(
        f"  share of 'left'/'above' answers: {first:.3f} (truth: {sum(t in ('left', 'above') for t in truth) / n:.3f})"
    )


if __name__ == "__main__":
    main()
