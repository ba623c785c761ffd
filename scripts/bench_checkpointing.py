"""What the memory levers save and cost: peak memory and time of one training step of a preset, in a fresh
process per setting.

    .venv/bin/python scripts/bench_checkpointing.py [--model vilt] [--size base] [--batch 32] [--steps 3]
    .venv/bin/python scripts/bench_checkpointing.py --levers lm --model llava --size base --batch 16

`--levers checkpointing` (the default): `model.gradient_checkpointing` false and true, one forward + backward
per step. `--levers lm`: the language model trained, frozen, frozen with LoRA r=16 (`language_model.lora.r`),
and that with gradient checkpointing, each step forward + backward + an AdamW step, so the optimizer's state
counts in the peak.

Prints, per setting: trainable parameters, the bytes the forward pass saved for the backward pass
(`mmbench.memory.saved_tensors`: each storage once, parameters and buffers left out), the process's peak RSS
and its growth over the steps, and seconds per step (after one warm-up step).
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
LORA = ["language_model.freeze=true", "language_model.lora.r=16", "language_model.lora.alpha=32"]
LEVERS = {
    "checkpointing": {
        "gradient_checkpointing=false": ["model.gradient_checkpointing=false"],
        "gradient_checkpointing=true": ["model.gradient_checkpointing=true"],
    },
    "lm": {
        "LM trained": [],
        "LM frozen": ["language_model.freeze=true"],
        "LM frozen + LoRA r=16": LORA,
        "LM frozen + LoRA r=16 + gradient checkpointing": [*LORA, "model.gradient_checkpointing=true"],
    },
}


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
        *json.loads(args.setting),
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
    trainable = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable) if args.levers == "lm" else None
    saved = [nbytes for nbytes, _ in saved_tensors(module, batch)]  # what the memory check's probe counts

    def step() -> None:
        module.shared_step(batch, "train").backward()
        if optimizer is not None:
            optimizer.step()
        module.zero_grad()

    step()  # warm-up (and the optimizer's state)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    seconds = (time.perf_counter() - t0) / args.steps
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        "RESULT "
        + json.dumps(
            {
                "trainable_params": sum(p.numel() for p in trainable),
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
    parser.add_argument("--levers", choices=sorted(LEVERS), default="checkpointing")
    parser.add_argument("--setting", default=None, help="(internal) the overrides of one setting, as JSON")
    args = parser.parse_args()
    if args.setting is not None:
        return child(args)
    for label, overrides in LEVERS[args.levers].items():
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
            "--levers",
            args.levers,
            "--setting",
            json.dumps(overrides),
        ]
        out = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
        lines = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
        print(f"{label}:", lines[0][7:] if lines else out.stderr[-2000:], flush=True)


if __name__ == "__main__":
    main()
