"""Fault injection and test hooks for tests/test_sweep.py, tests/test_reliability.py, tests/test_crash_isolation.py
and tests/test_slurm.py: Lightning callbacks that signal their own process, poison the weights, or wait at a
known point so that a test can act on the job meanwhile.

Added to a run with `+callbacks.kill._target_=tests.sweep_faults.KillAtEpoch +callbacks.kill.epoch=1`;
KillAtEpoch and SignalAtStep only fire when MMBENCH_TEST_KILL=1 / MMBENCH_TEST_SIGNAL=1 (WaitAtStart, HoldAtStep
and MeetAtStart when their MMBENCH_TEST_* directory is set), so the same command (same overrides, same job
directory) can be run once to be stopped and once more to resume.
"""

from __future__ import annotations

import math
import os
import signal

import pytorch_lightning as pl
import torch


class KillAtEpoch(pl.Callback):
    def __init__(self, epoch: int = 1):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if os.environ.get("MMBENCH_TEST_KILL") == "1" and trainer.current_epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no metrics.json: like a node failure


class SignalAtStep(pl.Callback):
    """Sends `signum` (a name: SIGINT = Ctrl-C, SIGTERM) to its own process before training step `step`."""

    def __init__(self, step: int = 2, signum: str = "SIGINT"):
        self.step, self.signum = step, signal.Signals[signum]

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        if os.environ.get("MMBENCH_TEST_SIGNAL") == "1" and trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


class PoisonWeights(pl.Callback):
    """Fills one weight with NaN before validation of epoch `epoch`: the loss that produced these
    weights was finite, so only the checkpoint guard can keep them out of checkpoints/."""

    def __init__(self, epoch: int = 1):
        self.epoch = epoch

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.current_epoch == self.epoch:
            with torch.no_grad():
                next(p for p in pl_module.parameters() if p.is_floating_point()).fill_(math.nan)


class WaitAtStart(pl.Callback):
    """When MMBENCH_TEST_WAIT=<dir> is set: at the start of training, touches `<dir>/started` and waits
    (at most `timeout` seconds) for `<dir>/release`, so a test can start a second process meanwhile."""

    def __init__(self, timeout: float = 300.0):
        self.timeout = timeout

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        import time
        from pathlib import Path

        if not os.environ.get("MMBENCH_TEST_WAIT"):
            return
        wait = Path(os.environ["MMBENCH_TEST_WAIT"])
        (wait / "started").touch()
        deadline = time.time() + self.timeout
        while not (wait / "release").exists() and time.time() < deadline:
            time.sleep(0.2)


class HoldAtStep(pl.Callback):
    """When MMBENCH_TEST_HOLD=<dir> is set, on a job's first attempt (SLURM_RESTART_COUNT unset or 0: a job that
    SLURM requeued does not hold again): before training step `step` (after the steps before it, and the
    last.ckpt they wrote), writes `<dir>/held` (the SLURM job id, or the process id) and waits until Lightning
    has received SIGTERM (then the loop stops the run at the end of this batch) or `timeout` seconds passed."""

    def __init__(self, step: int = 2, timeout: float = 300.0):
        self.step, self.timeout = step, timeout

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        import time
        from pathlib import Path

        hold = os.environ.get("MMBENCH_TEST_HOLD")
        if not hold or os.environ.get("SLURM_RESTART_COUNT", "0") != "0" or trainer.global_step != self.step:
            return
        tmp = Path(hold) / f".held.{os.getpid()}"
        tmp.write_text(os.environ.get("SLURM_JOB_ID", str(os.getpid())))
        tmp.replace(Path(hold) / "held")  # atomic: a test polling for the file never reads it half written
        deadline = time.time() + self.timeout
        while not trainer.received_sigterm and time.time() < deadline:
            time.sleep(0.2)


class MeetAtStart(pl.Callback):
    """When MMBENCH_TEST_MEET=<dir> is set: at the start of training, writes `<dir>/<pid>` holding the process's
    CUDA_VISIBLE_DEVICES (`unset` if it has none) and waits (at most `timeout` seconds) until `parties` jobs have
    written theirs, so that a test knows the jobs ran at the same time."""

    def __init__(self, parties: int = 2, timeout: float = 180.0):
        self.parties, self.timeout = parties, timeout

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        import time
        from pathlib import Path

        if not os.environ.get("MMBENCH_TEST_MEET"):
            return
        meet = Path(os.environ["MMBENCH_TEST_MEET"])
        (meet / str(os.getpid())).write_text(os.environ.get("CUDA_VISIBLE_DEVICES", "unset"))
        deadline = time.time() + self.timeout
        while len(list(meet.iterdir())) < self.parties and time.time() < deadline:
            time.sleep(0.2)
