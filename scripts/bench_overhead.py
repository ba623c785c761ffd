"""Framework overhead: the same training steps through `mmbench-train`'s Lightning Trainer and through a
bare PyTorch loop, and the data loader's own rate.

    .venv/bin/python scripts/bench_overhead.py [--steps 60] [--repeats 3] [--threads 2] [--loader-only] [overrides ...]

The run is composed as `mmbench-train` composes it (trailing arguments are Hydra overrides; default:
the library default, ViLT-tiny with [itc, mlm, vqa]). `--steps` training batches are collated once
and both sides train on exactly those batches from the same initial weights:

* bare: zero_grad, `module.shared_step` (the objectives, in run order), backward, gradient clipping at
  `trainer.gradient_clip_val`, AdamW step, scheduler step: what Lightning runs, without Lightning;
* Lightning: `pl.Trainer` built from the run's `trainer` config with the run's own callbacks and
  loggers (`callbacks=default`: checkpoints every 100 steps and at the end, progress log, LR monitor,
  timer; CSV logger), no validation, fitted on the same batches.

Each side is timed from its 5th step to its last (warm-up excluded; a timing callback on the
Lightning side, hooks included), sides alternating over `--repeats`; the medians and the overhead
(Lightning / bare - 1) are printed. The loader line iterates the run's real train dataloader
(`data.num_workers` as configured) for `--steps` batches: samples/s it can deliver, to set beside the
model's samples/s; `--loader-only` measures that line alone (no training).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings

WARMUP = 4  # steps left out of every timing (first-call allocations, lazy inits)


def compose(overrides: list[str], out_dir: str, steps: int):
    from mmbench.config import compose_train

    return compose_train(
        [
            "logger=csv",
            "~callbacks.progress_bar",
            f"trainer.max_steps={steps}",
            "trainer.max_epochs=-1",
            "trainer.limit_val_batches=0",
            "+trainer.enable_progress_bar=false",
            *overrides,
        ],
        output_dir=out_dir,
    )


def bare_loop(cfg, dm, batches) -> float:
    """Seconds per step after the warm-up, a plain PyTorch loop over `batches`."""
    import pytorch_lightning as pl
    import torch
    from hydra.utils import instantiate

    from mmbench.builder import build_module

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    torch.use_deterministic_algorithms(bool(cfg.trainer.deterministic))  # as the Trainer sets it
    module = build_module(cfg, dm.info).train()
    optimizer = module.optimizer_factory(params=[p for p in module.parameters() if p.requires_grad])
    scheduler = instantiate(cfg.scheduler)(optimizer, total_steps=len(batches))
    clip = cfg.trainer.get("gradient_clip_val")
    for i, batch in enumerate(batches):
        if i == WARMUP:
            t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = module.shared_step(batch, "train")
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(module.parameters(), float(clip))
        optimizer.step()
        scheduler.step()
    return (time.perf_counter() - t0) / (len(batches) - WARMUP)


class Batches:
    """The collated batches as one iterable: a bare list would be read by Lightning as a list of loaders."""

    def __init__(self, batches: list):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def lightning_fit(cfg, dm, batches) -> float:
    """Seconds per step after the warm-up, `trainer.fit` with the run's callbacks and loggers."""
    import pytorch_lightning as pl
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from mmbench.builder import build_module
    from mmbench.callbacks import RNGState

    class StepTimer(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == WARMUP:
                self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.t1 = time.perf_counter()

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    module = build_module(cfg, dm.info)
    timer = StepTimer()
    # the run's callbacks and the RNG-state one mmbench-train adds (MidEpochResume needs the real loader)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()] + [RNGState(), timer]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values()]
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_cfg.pop("memory_check", None)  # mmbench's switch, not a Trainer argument (pipeline.py)
    trainer = instantiate(trainer_cfg, callbacks=callbacks, logger=loggers)
    trainer.fit(module, train_dataloaders=Batches(batches))
    return (timer.t1 - timer.t0) / (len(batches) - WARMUP)


def loader_rate(dm, steps: int) -> float:
    """Samples/s of the run's train dataloader alone (collation included)."""
    t0, n = time.perf_counter(), 0
    for i, batch in enumerate(dm.train_dataloader()):
        n += batch["input_ids"].shape[0]
        if i + 1 == steps:
            break
    return n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--loader-only", action="store_true", help="only the train dataloader's rate")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    if args.steps <= WARMUP + 1:
        parser.error(f"--steps must be > {WARMUP + 1} (the first {WARMUP} are warm-up)")

    import logging

    import torch

    from mmbench.builder import build_datamodule

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*self.log.*")  # the bare loop's shared_step has no Trainer
    for noise in ("num_workers", "many workers", "val_dataloader", "LeafSpec", "logging interval", "monitored key"):
        warnings.filterwarnings("ignore", message=f".*{noise}.*")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning_fabric").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose(args.overrides, tmp, args.steps)
        dm = build_datamodule(cfg)
        if args.loader_only:
            loader = [loader_rate(dm, args.steps) for _ in range(args.repeats)]
            print(
                f"train dataloader alone (data.num_workers={cfg.data.num_workers}, batch {cfg.data.batch_size}, "
                f"{args.steps} batches, median of {args.repeats}): {statistics.median(loader):.0f} samples/s"
            )
            return
        batches = []
        for batch in dm.train_dataloader():
            batches.append(batch)
            if len(batches) == args.steps:
                break
        loader = [loader_rate(dm, args.steps) for _ in range(args.repeats)]
        times: dict[str, list[float]] = {"bare": [], "lightning": []}
        for r in range(args.repeats):
            for side in ("bare", "lightning") if r % 2 == 0 else ("lightning", "bare"):
                run = bare_loop if side == "bare" else lightning_fit
                times[side].append(run(cfg, dm, batches))
    bare, light = statistics.median(times["bare"]), statistics.median(times["lightning"])
    B = batches[0]["input_ids"].shape[0]
    print(
        f"model={cfg.model.name} size={cfg.model.size}, objectives [{','.join(cfg.objective)}], batch {B}, "
        f"torch {torch.__version__}, {args.threads} thread(s); {args.steps} steps ({WARMUP} warm-up), "
        f"median of {args.repeats}, sides alternating"
    )
    print("| loop | s/step | samples/s | per repeat (s/step) |")
    print("|---|---|---|---|")
    for name, t in (("bare PyTorch", bare), ("mmbench-train (Lightning)", light)):
        per = times["bare" if name.startswith("bare") else "lightning"]
        print(f"| {name} | {t:.4f} | {B / t:.1f} | {', '.join(f'{v:.4f}' for v in per)} |")
    print(f"\nLightning + mmbench overhead per step: {100 * (light / bare - 1):+.1f}%")
    print(
        f"train dataloader alone (data.num_workers={cfg.data.num_workers}): {statistics.median(loader):.0f} samples/s "
        f"(model: {B / light:.0f} samples/s)"
    )


if __name__ == "__main__":
    main()
