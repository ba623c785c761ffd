"""Train-step throughput of mmbench presets on Shapes batches: forward, backward and optimizer step.

    .venv/bin/python scripts/bench_throughput.py [--models vilt,visualbert,...] [--objectives itc,itm,vqa]
        [--threads 1] [--steps 10] [--repeats 3] [--batch-size 64] [--size tiny] [overrides ...]

Each preset is composed like `mmbench-train model=<preset>` (trailing arguments are more Hydra
overrides), its module built on the default Shapes data, and timed on real training batches: `--steps`
optimizer steps after two warm-up steps, `--repeats` times, presets alternating so that machine noise
hits all of them; the median is printed with the spread, next to FLOPs per sample (a forward pass of the
three calls, torch's FlopCounterMode) and parameters. It sizes sweeps: a job's training time is about
steps x 64 / (samples/s) at its thread count.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

PRESETS = "vilt,visualbert,vilbert,lxmert,albef,flamingo,concat,late,tfn,lmf,gated,bilinear"


def build(preset: str, objectives: str, size: str, batch_size: int, overrides: list[str]):
    """(module, optimizer, batches) of one preset, composed as the CLI composes it."""
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    from mmbench.builder import build_datamodule, build_module
    from mmbench.config import register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    conf = Path(__file__).resolve().parent.parent / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"model={preset}",
                f"objective=[{objectives}]",
                f"model.size={size}",
                f"data.batch_size={batch_size}",
                "logger=csv",
                *overrides,
            ],
        )
    with open_dict(cfg):
        cfg.paths.output_dir = "/tmp/mmbench-bench"
    dm = build_datamodule(cfg)
    dm.setup("fit")
    module = build_module(cfg, dm.info)
    module.train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=float(cfg.optimizer.lr))  # the step's cost, no schedule
    batches = []
    for batch in dm.train_dataloader():
        batches.append(batch)
        if len(batches) == 4:
            break
    return module, optimizer, batches


def step(module, optimizer, batch) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss = module.shared_step(batch, "train")
    loss.backward()
    optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=PRESETS)
    parser.add_argument("--objectives", default="itc,itm,vqa")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--size", default="tiny")
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the encoders, fusion and objectives (time reported)"
    )
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    import warnings

    import torch

    from mmbench.metrics.complexity import flops_per_sample

    warnings.filterwarnings("ignore", message=".*self.log.*")  # shared_step logs; no Trainer is attached here
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    parts, flops, params, warmup = {}, {}, {}, {}
    for preset in args.models.split(","):
        module, optimizer, batches = build(preset, args.objectives, args.size, args.batch_size, args.overrides)
        module.eval()
        flops[preset] = flops_per_sample(module.model, batches[0])  # eager: the counter does not see compiled code
        module.train()
        t0 = time.perf_counter()
        if args.compile:
            for part in (
                module.model.text_encoder,
                module.model.vision_encoder,
                module.model.fusion,
                *module.objectives.values(),
            ):
                part.compile(dynamic=None)
        for b in batches[:2]:  # warm-up (and compilation)
            step(module, optimizer, b)
        warmup[preset] = time.perf_counter() - t0
        parts[preset] = (module, optimizer, batches)
        params[preset] = sum(p.numel() for p in module.parameters())
    rates: dict[str, list[float]] = {p: [] for p in parts}
    for _ in range(args.repeats):
        for preset, (module, optimizer, batches) in parts.items():
            t0 = time.perf_counter()
            for i in range(args.steps):
                step(module, optimizer, batches[i % len(batches)])
            rates[preset].append(args.steps * args.batch_size / (time.perf_counter() - t0))
    print(
        f"torch {torch.__version__}{' compiled' if args.compile else ''}, {args.threads} thread(s), objectives [{args.objectives}], batch {args.batch_size}, "
        f"size {args.size}, median of {args.repeats} x {args.steps} steps"
    )
    print("| preset | params | FLOPs/sample (fwd) | samples/s | s/step | range samples/s | warm-up s (2 steps) |")
    print("|---|---|---|---|---|---|---|")
    for preset, r in rates.items():
        med = statistics.median(r)
        print(
            f"| {preset} | {params[preset] / 1e6:.2f}M | {flops[preset]:.3g} | {med:.1f} | "
            f"{args.batch_size / med:.3f} | {min(r):.1f}-{max(r):.1f} | {warmup[preset]:.1f} |"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
