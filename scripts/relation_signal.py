"""Can gradient descent find Shapes' relation questions at all? A model-free check of the data.

    .venv/bin/python scripts/relation_signal.py --directions 2 [--steps 1500] [override ...]
    .venv/bin/python scripts/relation_signal.py --directions 4

Trains the plainest model that can answer "which is further left, the red circle or the blue square?"
on two-object scenes with nothing but relation questions: a 16-px patch projection (one patch per
grid cell) plus a learned embedding per cell, a bag of the question's words, and a 3-layer MLP over
both; plain PyTorch, AdamW, cross-entropy on the answer. It prints validation accuracy every
`--every` steps. No mmbench model is involved, so the curve says whether the *data* gives a learner
something to start from: with `--directions 4` (Shapes v6's form, both directions of each axis asked
equally often) no single feature of the image or the question correlates with the answer, and the
curve stays at 0.5; with `--directions 2` (the default data since v7) it leaves chance.
(docs/results.md, calibration part 6.) Further arguments are Hydra overrides of the data.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--directions", type=int, choices=(2, 4), default=2, help="data.source.relation_directions")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--every", type=int, default=250, help="validate every this many steps")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="outputs/relation_signal", help="paths.output_dir (the data cache is shared)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data.source.num_train=4000")
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F
    from torch import nn

    from mmbench.builder import build_datamodule
    from mmbench.config import compose_train

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    only_relations = "{relation:1,color:0,shape:0,count:0,exist:0}"
    cfg = compose_train(
        [
            "data.source.min_objects=2",
            "data.source.max_objects=2",
            f"data.source.question_mix={only_relations}",
            f"++data.source.relation_directions={args.directions}",
            *args.overrides,
        ],
        output_dir=args.out,
    )
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup()
    grid, size = cfg.data.source.grid, cfg.data.image_size
    patch = size // grid

    class CellsAndWords(nn.Module):
        """Per-cell patch embedding + a learned embedding per cell, a bag of question words, an MLP."""

        def __init__(self, d: int, vocab: int, answers: int):
            super().__init__()
            self.cells = nn.Conv2d(3, d, patch, stride=patch)  # one patch per grid cell
            self.where = nn.Parameter(0.1 * torch.randn(1, d, grid, grid))
            self.words = nn.EmbeddingBag(vocab, d, mode="sum")
            self.mlp = nn.Sequential(
                nn.Linear(d * grid * grid + d, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, answers)
            )

        def forward(self, batch) -> torch.Tensor:
            image = F.relu(self.cells(batch["pixel_values"]) + self.where).flatten(1)  # (B, d * cells)
            mask = batch["question_mask"].float()
            words = self.words(batch["question_ids"], per_sample_weights=mask)  # (B, d)
            return self.mlp(torch.cat([image, words], 1))  # (B, A)

    net = CellsAndWords(args.width, dm.info.vocab_size, len(dm.info.answers))
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr)
    val = dm.val_dataloader()
    val = val[0] if isinstance(val, list) else val

    def accuracy() -> float:
        net.eval()
        with torch.no_grad():
            hits = torch.cat([(net(b).argmax(1) == b["answer"]).float() for b in val])
        net.train()
        return hits.mean().item()

    print(
        f"relation_directions={args.directions}: {len(dm.info.answers)} answers, val accuracy 0 steps {accuracy():.3f}"
    )
    step, start = 0, time.perf_counter()
    while step < args.steps:
        for batch in dm.train_dataloader():
            loss = F.cross_entropy(net(batch), batch["answer"])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step % args.every == 0:
                print(
                    f"step {step}: train loss {loss.item():.3f}, val accuracy {accuracy():.3f} "
                    f"({time.perf_counter() - start:.0f} s)",
                    flush=True,
                )
            if step == args.steps:
                break


if __name__ == "__main__":
    main()
