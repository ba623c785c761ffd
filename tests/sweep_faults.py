"""Fault injection for tests/test_sweep.py: a Lightning callback that SIGKILLs its own process.

Added to a run with `+callbacks.kill._target_=tests.sweep_faults.KillAtEpoch +callbacks.kill.epoch=1`;
it only fires when MMBENCH_TEST_KILL=1, so the same command (same overrides, same job directory)
can be run once to be killed and once more to resume.
"""

from __future__ import annotations

import os
import signal

import pytorch_lightning as pl


class KillAtEpoch(pl.Callback):
    def __init__(self, epoch: int = 1):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if os.environ.get("MMBENCH_TEST_KILL") == "1" and trainer.current_epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no metrics.json: like a node failure
