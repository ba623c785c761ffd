"""Caption generation with and without the language model's key/value cache: tokens/s, same tokens.

    .venv/bin/python scripts/bench_generation.py [--preset llava] [--size small] [--images 32] [--max-len 30] [--beams 1]

Builds the preset at random init (the speed of a decoding step does not depend on the weights), forces
every caption to the full `max_len` (no early stop at [SEP]) so both paths run the same number of steps,
and times `LM.generate` with `use_cache=True` and `False` alternately (median of `--repeats`). Prints a
Markdown row per path; docs/performance.md has the results.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hydra.utils import instantiate

from mmbench.builder import build_model, data_kwargs, model_kwargs
from mmbench.config import compose_train
from mmbench.data.datamodule import DataInfo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="llava")
    parser.add_argument("--size", default="small")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--max-len", type=int, default=30)
    parser.add_argument("--beams", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    vocab = 1000
    cfg = compose_train([f"model={args.preset}", f"model.size={args.size}", "objective=[lm]"])
    info = DataInfo.of_vocab(vocab, max_text_len=40, image_size=cfg.data.image_size)
    torch.manual_seed(0)
    model = build_model(cfg, info).eval()
    lm = instantiate(cfg.objective.lm, **data_kwargs(cfg.objective.lm, info), **model_kwargs(cfg.objective.lm, model))
    batch = {"pixel_values": torch.randn(args.images, 3, cfg.data.image_size, cfg.data.image_size)}
    never = vocab + 10  # an eos id no step can produce: every caption runs max_len steps
    times: dict[bool, list[float]] = {True: [], False: []}
    outputs = {}
    with torch.no_grad():
        for _ in range(args.repeats):
            for cached in (True, False):
                t0 = time.perf_counter()
                outputs[cached] = lm.generate(
                    model, batch, args.max_len, args.beams, bos_id=2, eos_id=never, use_cache=cached
                )
                times[cached].append(time.perf_counter() - t0)
    same = outputs[True].tolist() == outputs[False].tolist()
    tokens = args.images * args.max_len
    print(
        f"{args.preset}-{args.size}, {args.images} images x {args.max_len} tokens, beams {args.beams}, threads "
        f"{torch.get_num_threads()}; same tokens: {same}"
    )
    print("| path | s per batch (median) | tokens/s |")
    print("|---|---|---|")
    for cached in (True, False):
        s = statistics.median(times[cached])
        print(f"| {'KV cache' if cached else 'full re-run'} | {s:.2f} | {tokens / s:.0f} |")


if __name__ == "__main__":
    main()
