"""Shared fixtures: a tiny Shapes config cached once per session, compose-API helpers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mmbench.config import compose_train

# A suite started in the background by a non-interactive shell (`nohup ... &`) inherits SIGINT as ignored,
# and so would every run it starts; the interruption tests send themselves SIGINT (Ctrl-C), which must arrive.
signal.signal(signal.SIGINT, signal.default_int_handler)

# Under pytest-xdist (scripts/test.sh runs `-n auto`: one worker per core) the workers share the cores:
# each worker's torch, and every process a test starts (OMP_NUM_THREADS is inherited), gets its share
# instead of every core, which would oversubscribe them.
if workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0")):
    import torch

    _threads = max(1, (os.cpu_count() or 1) // workers)
    os.environ["OMP_NUM_THREADS"] = str(_threads)
    torch.set_num_threads(_threads)

ROOT = Path(__file__).resolve().parent.parent
CONF = str(ROOT / "conf")


def user_env(extra: dict | None = None) -> dict:
    """The environment of a command as a user runs it from this checkout: W&B offline and silent, this checkout on
    PYTHONPATH, `extra` laid over it."""
    return {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONPATH": str(ROOT), **(extra or {})}


def cli(
    args: list[str],
    cwd: Path | str | None = None,
    env: dict | None = None,
    timeout: float = 300,
    module: str = "mmbench.train",
) -> subprocess.CompletedProcess:
    """`python -m <module> <args>` in `cwd`, in `user_env(env)`; its output captured as text."""
    command = [sys.executable, "-m", module, *args]
    return subprocess.run(command, cwd=cwd, env=user_env(env), capture_output=True, text=True, timeout=timeout)


# a small Shapes benchmark and a tiny model: a full run takes seconds
# every objective of the ViLT-style recipe (the default run leaves ITM out for time); tiny_cfg runs use it
ALL_OBJECTIVES = "objective=[itc,itm,mlm,vqa]"

TINY = [
    "data.source.num_train=240",
    "data.source.num_val=48",
    "data.source.num_test=48",
    "data.batch_size=32",
    "data.eval_batch_size=64",
    "model.sizes.tiny.dim=32",
    "model.sizes.tiny.heads=2",
    "model.sizes.tiny.fusion_depth=1",
    "objective.itc.embed_dim=16",
    "logger=csv",
    "~callbacks.progress_bar",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=4",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "eval.robustness.max_images=16",  # the evaluation suite at the end of every run: robustness on a
    "eval.robustness.levels=[0.5]",  # small subset at one level keeps a tiny run's evaluation ~1-2 s
]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mmbench-cache")
    os.environ["MMBENCH_CACHE"] = str(path)  # also inherited by CLI subprocesses
    return path


@pytest.fixture(autouse=True)
def _wandb_offline(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


def compose_cfg(overrides: list[str], output_dir: Path | None = None):
    """Compose conf/train.yaml like the CLI does (mmbench.config.compose_train)."""
    return compose_train(overrides, output_dir)


@pytest.fixture
def tiny_cfg(cache_dir, tmp_path):
    def make(*extra: str):
        return compose_cfg([ALL_OBJECTIVES, *TINY, *extra], tmp_path / "run")

    return make


STOP_AT = "+callbacks.signal._target_=tests.sweep_faults.SignalAtStep"  # SIGINT (Ctrl-C) before step `step`


def stopped_then_resumed(args: list[str], out: Path, step: int, monkeypatch) -> dict:
    """Run `args` in `out`, stopped by Ctrl-C before training step `step` (tests/sweep_faults.py SignalAtStep),
    then the same command again, which resumes from out/checkpoints/last.ckpt: the resumed run's record."""
    import pytest

    from mmbench.pipeline import run

    command = [*args, STOP_AT, f"+callbacks.signal.step={step}"]
    monkeypatch.setenv("MMBENCH_TEST_SIGNAL", "1")
    with pytest.raises(KeyboardInterrupt):
        run(compose_cfg(command, out))
    monkeypatch.delenv("MMBENCH_TEST_SIGNAL")
    return run(compose_cfg(command, out))
