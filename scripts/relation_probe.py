"""Does a trained model compare the two objects a Shapes relation question names? Measured on a checkpoint.

    .venv/bin/python scripts/relation_probe.py <run>/checkpoints/best.ckpt [--split test]

Every relation question of the split ("which is further left, the <A> or the <B>?", Shapes v6) is
asked three ways against the same image: as generated; with the two names swapped ("..., the <B> or
the <A>?"), which keeps the true answer; and with the opposite direction ("which is further right,
..."), which makes the other object the answer. Printed: the accuracy of each, `order_consistent`
(the same answer to a question and its name swap: 1.0 for a model that compares the objects, low for
one that picks by position in the question) and `direction_flips` (a different answer when the
direction is reversed: 1.0 for a model that reads the direction word, 0.0 for one that ignores it).
Since Shapes v7 the data asks one direction per axis ("further left", "higher") unless
`data.source.relation_directions=4`; on the default data the reversed words ("further right", "lower")
were never asked in training, so the reversed-direction figures mean something only for runs on
`relation_directions=4` data.
"""

from __future__ import annotations

import argparse
import re

RELATION = re.compile(r"which is (further left|further right|higher|lower), the (\w+ \w+) or the (\w+ \w+)\?")
OPPOSITE = {"further left": "further right", "further right": "further left", "higher": "lower", "lower": "higher"}


def other(answer: str, a: str, b: str) -> str:
    """The word naming the object that `answer` does not name (shapes if they differ, else colours)."""
    (ca, sa), (cb, sb) = a.split(), b.split()
    pair = (sa, sb) if sa != sb else (ca, cb)
    return pair[1] if answer == pair[0] else pair[0]


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
    asked = []  # (row, as generated, names swapped, direction reversed, answer, answer when reversed)
    for r, (qs, ans, ts) in enumerate(zip(questions, answers, qtypes)):
        for q, a, t in zip(qs, ans, ts):
            m = RELATION.fullmatch(q) if t == "relation" else None
            if m:
                d, x, y = m.groups()
                swapped, reversed_ = (
                    f"which is {d}, the {y} or the {x}?",
                    f"which is {OPPOSITE[d]}, the {x} or the {y}?",
                )
                asked.append((r, q, swapped, reversed_, a, other(a, x, y)))
    if not asked:
        raise SystemExit(f"no relation questions of the v6 form in split {args.split!r}")

    inputs = Inputs(dataset, dm.tokenizer, module.device)
    vocab = dm.info.answers
    predictions: dict[str, list[str]] = {k: [] for k in ("original", "swapped", "reversed")}
    with eval_mode(module), torch.no_grad():
        for s in range(0, len(asked), 256):
            chunk = asked[s : s + 256]
            image = encode_images(module.model, inputs, [c[0] for c in chunk], 256)
            for k, col in (("original", 1), ("swapped", 2), ("reversed", 3)):
                ids, mask = inputs.texts([c[col] for c in chunk])
                batch = {f"{head.question_field}_ids": ids, f"{head.question_field}_mask": mask}
                logits = head.answer_logits(module.model, batch, None, image)  # (b, A)
                predictions[k] += [vocab[i] for i in logits.argmax(-1).tolist()]
    n = len(asked)
    acc = lambda preds, col: sum(p == c[col] for p, c in zip(preds, asked)) / n
    same = lambda x, y: sum(p == q for p, q in zip(predictions[x], predictions[y])) / n
    print(f"{args.ckpt}: {n} relation questions of split {args.split!r}")
    print(f"  accuracy, as generated:       {acc(predictions['original'], 4):.3f}")
    print(f"  accuracy, names swapped:      {acc(predictions['swapped'], 4):.3f}")
    print(f"  accuracy, direction reversed: {acc(predictions['reversed'], 5):.3f}")
    print(f"  order_consistent (same answer with the names swapped): {same('original', 'swapped'):.3f}")
    print(f"  direction_flips (another answer with the direction reversed): {1 - same('original', 'reversed'):.3f}")


if __name__ == "__main__":
    main()
