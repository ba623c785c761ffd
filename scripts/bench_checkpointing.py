"""What `model.gradient_checkpointing=true` saves and costs: peak memory and time of one training step
(forward + backward) of a preset, in a fresh process each way.

    .venv/bin/python scripts/bench_checkpointing.py [--model vilt] [--size base] [--batch 32] [--steps 3]

Prints, per setting: the bytes the forward pass saved for the backward pass (`mmbench.memory.saved_tensors`:
each storage once, parameters and buffers left out),
the process's peak RSS growth over the steps, and seconds per step (after one warm-up step).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(args) -> None:
    sys.path.insert(0, str(ROOT))
    import torch

    from mmbench.builder import build_datamodule, build_module
    from mmbench.memory import saved_tensors
    from tests.conftest import compose_cfg
    from tests.test_presets import supported_objectives

    objectives = ",".join(supported_objectives(args.model))
    overrides = [
        f"model={args.model}",
        f"model.size={args.size}",
        f"objective=[{objectives}]",
        f"data.batch_size={args.batch}",
        f"model.gradient_checkpointing={args.checkpointing}",
        "data.image_size=96",  # base sizes use 32-px patches
        "data.source.num_train=512",
        "data.source.num_val=32",
        "data.source.num_test=32",
    ]
    cfg = compose_cfg(overrides, Path(tempfile.mkdtemp()) / "run")
    dm = build_datamodule(cfg)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    torch.manual_seed(0)
    module = build_module(cfg, dm.info).train()
    saved = [nbytes for nbytes, _ in saved_tensors(module, batch)]  # what the memory check's probe counts
    module.shared_step(batch, "train").backward()  # warm-up
    module.zero_grad()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    for _ in range(args.steps):
        module.shared_step(batch, "train").backward()
        module.zero_grad()
    seconds = (time.perf_counter() - t0) / args.steps
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        "RESULT "
        + json.dumps(
            {
                "saved_mb": sum(saved) / 2**20,
                "peak_rss_mb": peak / 1024,
                "rss_growth_mb": (peak - before) / 1024,
                "s_per_step": seconds,
            }
        ),
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vilt")
    parser.add_argument("--size", default="base")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--checkpointing", default=None)
    args = parser.parse_args()
    if args.checkpointing is not None:
        return child(args)
    for setting in ("false", "true"):
        argv = [
            sys.executable,
            __file__,
            "--model",
            args.model,
            "--size",
            args.size,
            "--batch",
            str(args.batch),
            "--steps",
            str(args.steps),
            "--checkpointing",
            setting,
        ]
        out = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
        lines = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
        print(f"gradient_checkpointing={setting}:", lines[0][7:] if lines else out.stderr[-2000:], flush=True)


if __name__ == "__main__":
    main()
