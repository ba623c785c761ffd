"""Lightning callbacks that make a run resumable (see pipeline._train and docs/sweeps.md §2).

- `LastCheckpoint` writes `checkpoints/last.ckpt`, the state a rerun resumes from, at every epoch end
  and every N steps / T minutes within an epoch.
- `RNGState` and `MidEpochResume` add what an exact resume needs beyond Lightning's checkpoints: the
  global RNGs; the train loader's position within the epoch (`mmbench.data.loaders.ResumableLoader`)
  and the running sums of the epoch's training metrics. A checkpoint that cannot be resumed exactly is
  refused (`check_resumable`).
"""

from __future__ import annotations

import logging
import random
import time
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.trainer.states import TrainerFn

from mmbench.checkpoints import CheckpointError

if TYPE_CHECKING:
    from pytorch_lightning.loops.fetchers import _DataFetcher

    from mmbench.module import MMBenchModule

log = logging.getLogger(__name__)


class LastCheckpoint(ModelCheckpoint):
    """`last.ckpt`: the latest training state, whatever the monitored metric did (the `best` checkpoint
    callback keeps `best.ckpt`). Written at the end of every epoch (after its validation) and, within an
    epoch, every `every_n_train_steps` optimizer steps and every `every_n_minutes` of training, whichever
    comes first (0 or null turns a trigger off). A killed run thus loses at most that much work.

    Lightning's ModelCheckpoint takes only one of these triggers, and since 2.6 its `save_last` writes
    only when a top-k checkpoint is written, i.e. when the monitored metric improves.

    An interval save is skipped on a batch after which Lightning resumes differently from how it goes
    on: one that ends the epoch or the run or is followed by validation (Lightning resumes such a
    checkpoint *after* that validation / epoch end, so they would be skipped; the epoch-end or
    validation-end save follows anyway), and one inside a gradient-accumulation window (gradients are
    not checkpointed).
    """

    def __init__(
        self,
        dirpath: str,
        filename: str = "last",
        every_n_train_steps: int | None = 100,
        every_n_minutes: float | None = None,
    ):
        # one file, overwritten; the intervals are not passed on, so Lightning's state key (and thus the
        # restored state) does not depend on them
        super().__init__(
            dirpath=dirpath,
            filename=filename,
            monitor=None,
            save_top_k=1,
            every_n_epochs=1,
            auto_insert_metric_name=False,
            enable_version_counter=False,
        )
        if (every_n_train_steps or 0) < 0 or (every_n_minutes or 0) < 0:
            raise ValueError(
                f"LastCheckpoint: every_n_train_steps={every_n_train_steps} and every_n_minutes="
                f"{every_n_minutes} must be >= 0 (0 or null: no saves within an epoch)"
            )
        self.every_n_train_steps = int(every_n_train_steps or 0)
        self.every_n_minutes = float(every_n_minutes or 0)
        self._last_time = time.monotonic()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._last_time = time.monotonic()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        steps_due = self.every_n_train_steps > 0 and trainer.global_step % self.every_n_train_steps == 0
        time_due = False
        if self.every_n_minutes > 0:  # rank 0 decides, so that every rank saves (or not) together
            time_due = trainer.strategy.broadcast(time.monotonic() - self._last_time >= 60 * self.every_n_minutes)
        if not (steps_due or time_due) or self._should_skip_saving_checkpoint(trainer):
            return
        if _ends_a_stage(trainer, batch_idx):
            return
        self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))  # monitor=None: writes <filename>.ckpt
        self._last_time = time.monotonic()


def _ends_a_stage(trainer: pl.Trainer, batch_idx: int) -> bool:
    """Whether the training batch that just ended is not a point to resume from within the epoch: it
    leaves a gradient-accumulation window open, or ends the epoch or the run, or validation follows it
    (`_should_check_val_fx` is the test Lightning itself applies right after this hook)."""
    loop = trainer.fit_loop.epoch_loop
    return (
        (batch_idx + 1) % trainer.accumulate_grad_batches != 0
        or loop.batch_progress.is_last_batch
        or trainer.should_stop
        or 0 <= trainer.max_steps <= trainer.global_step
        or loop._should_check_val_fx(cast("_DataFetcher", trainer.fit_loop._data_fetcher))  # set while fitting
    )


class MidEpochResume(pl.Callback):
    """Makes a resume from a checkpoint written within an epoch continue as an uninterrupted run would,
    or refuses it (`check_resumable`).

    - Data: Lightning builds the train loader, to count the steps for the LR schedule, before it
      restores the checkpoint, so it never hands the loader its saved position (`ResumableLoader`);
      this does, at the start of training, before the first batch is drawn.
    - Metrics: Lightning's checkpoints hold the loop counters but not the running sums of the metrics
      logged with `on_epoch=True` (`train/loss_epoch`, `train/<objective>/...`), which would then
      average only the batches after the checkpoint. This saves the sums (tensors, as `weights_only`
      loading requires) and adds them back once the first resumed batch has logged its values:
      `saved + first` is the float sum of the uninterrupted run (addition commutes), so the epoch's
      metrics are bit-identical on CPU.
    """

    def __init__(self) -> None:
        self._trainer: pl.Trainer | None = None
        self._pending: dict[str, dict[str, torch.Tensor]] = {}  # sums to add back after the resumed batch
        self._resume_at: tuple[int, int] | None = None  # (epoch, batch index) of the first resumed batch

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer  # state_dict() is called without it

    def state_dict(self) -> dict[str, Any]:
        trainer = self._trainer
        if trainer is None or trainer.state.fn != TrainerFn.FITTING:
            return {}
        loop = trainer.fit_loop.epoch_loop
        sums = {}
        for key, metric in loop._results.items():
            if metric.is_tensor and metric.meta.on_epoch:
                sums[key] = {
                    name: getattr(metric, name).detach().cpu().clone()
                    for name in ("value", "cumulated_batch_size")
                    if hasattr(metric, name)
                }
        # Lightning types `current` as the base tracker; it is a _ProcessedTracker
        batches = loop.batch_progress.current.processed  # type: ignore[attr-defined]
        return {"epoch": trainer.current_epoch, "batches": batches, "sums": sums}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("sums"):
            self._pending = dict(state_dict["sums"])
            self._resume_at = (int(state_dict["epoch"]), int(state_dict["batches"]))

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        check_resumable(checkpoint)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # what Lightning's FitLoop.setup_data does when it builds the loader after the restore: hands the
        # saved loader states to the loaders (only when resuming within an epoch)
        trainer.fit_loop._load_combined_loader_states()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        if not self._pending:
            return
        if self._resume_at != (trainer.current_epoch, batch_idx):  # resumed at an epoch end: a new epoch
            self._pending = {}
            return
        results = trainer.fit_loop.epoch_loop._results
        for key, saved in self._pending.items():
            metric = results.get(key)
            if metric is None:
                log.warning(
                    "resume: %s was logged before the checkpoint but not by the first resumed batch; "
                    "its epoch value covers the batches after the checkpoint only",
                    key,
                )
                continue
            for name, value in saved.items():
                current = getattr(metric, name)
                if metric.meta.is_max_reduction or metric.meta.is_min_reduction:
                    setattr(metric, name, metric.meta.reduce_fx(value.to(current), current))
                else:  # mean (weighted sum and count) or sum
                    setattr(metric, name, value.to(current) + current)
        self._pending = {}


def check_resumable(checkpoint: dict[str, Any]) -> None:
    """Raise CheckpointError if `checkpoint` stopped within an epoch but does not say where the train
    loader was (written by an older mmbench, or saved by hand with `trainer.save_checkpoint`), or says a
    position other than Lightning's: resuming it would train on other batches than an uninterrupted run."""
    fit = checkpoint.get("loops", {}).get("fit_loop", {})
    progress = fit.get("epoch_loop.batch_progress")
    if not progress:
        return
    done, last = int(progress["current"]["ready"]), bool(progress["is_last_batch"])
    if done == 0 or last:  # at the start or the end of an epoch: the next epoch starts afresh
        return
    loaders = fit.get("state_dict", {}).get("combined_loader") or []
    position = loaders[0].get("batches") if loaders else None
    if position != done:
        epoch = int(fit["epoch_progress"]["current"]["processed"])
        where = "no train-loader position" if position is None else f"the train loader at batch {position}"
        raise CheckpointError(
            f"this checkpoint stopped after {done} batches of epoch {epoch} but holds {where}: resuming it would "
            "train on other batches than an uninterrupted run, so it is refused. Delete the run's checkpoints/ to "
            "start it afresh"
        )


class RNGState(pl.Callback):
    """Saves the python / numpy / torch RNG states in every checkpoint and restores them on resume.

    Lightning checkpoints hold the model, optimizer, scheduler and loop state but not the global
    RNGs, which MLM masking and ITM negative sampling draw from; without this a resumed run would
    draw different masks than an uninterrupted one. (CUDA RNGs are saved too when available.)
    """

    def state_dict(self) -> dict[str, Any]:
        # the legacy tuple (numpy's stubs type the default call as the dict form)
        kind, keys, pos, has_gauss, gauss = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
        # plain types and tensors only, so the checkpoint still loads with torch.load(weights_only=True)
        state = {
            "python": random.getstate(),
            "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        random.setstate(state_dict["python"])
        kind, keys, pos, has_gauss, gauss = state_dict["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        torch.set_rng_state(state_dict["torch"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])


class ProgressLog(pl.Callback):
    """A log line every `every_n_steps` optimizer steps (step, loss, samples/s, ETA) when stdout is not a
    terminal: in a SLURM log, under nohup or in CI a live progress bar prints nothing for minutes.

    Lightning's bars (Rich, tqdm) redraw one line in place and go quiet without a terminal; it has no
    plain periodic logger, hence this one. It writes through `logging`, so the lines land in train.log too.
    """

    def __init__(self, every_n_steps: int = 50, only_without_tty: bool = True):
        self.every_n_steps = int(every_n_steps)
        self.only_without_tty = only_without_tty
        self.active = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        import sys

        self.active = self.every_n_steps > 0 and not (self.only_without_tty and sys.stdout.isatty())
        self.t0, self.step0, self.samples = time.perf_counter(), trainer.global_step, 0

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        if not self.active:
            return
        self.samples += int(batch["input_ids"].shape[0])
        step = trainer.global_step
        if step == self.step0 or step % self.every_n_steps or not trainer.is_global_zero:
            return
        elapsed = time.perf_counter() - self.t0
        total = trainer.estimated_stepping_batches
        eta = (total - step) * elapsed / (step - self.step0)
        loss = trainer.callback_metrics.get("train/loss_step")
        log.info(
            "step %d/%d  epoch %d  loss %s  %.1f samples/s%s  ETA %dm%02ds",
            step,
            total,
            trainer.current_epoch,
            f"{float(loss):.4f}" if loss is not None else "-",
            self.samples / elapsed,
            self._mfu(pl_module, self.samples / elapsed),
            eta // 60,
            eta % 60,
        )

    def _mfu(self, pl_module: pl.LightningModule, samples_per_s: float) -> str:
        """ "  MFU 41%": the wall-clock model FLOPs utilisation so far (data loading and validation included), once
        StepFlops has counted a step and the device has a known peak."""
        cost = _step_cost(pl_module)
        flops, peak = cost.get("flops_per_sample"), cost.get("peak_flops")
        return f"  MFU {100 * flops * samples_per_s / peak:.0f}%" if flops is not None and peak else ""


class ValidationTime(pl.Callback):
    """Seconds spent in validation during `trainer.fit` (the sanity check included), summed over every
    validation of this process, so a run can say how its time splits between training and evaluation
    (`timing` in metrics.json). Lightning's `Timer` keeps only the last validation's interval."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._t0: float | None = None

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0 = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._t0 is not None:
            self.seconds += time.perf_counter() - self._t0
            self._t0 = None


class StepFlops(pl.Callback):
    """The cost of a training step, for model FLOPs utilisation (`complexity.mfu`, mmbench/metrics/peak.py).

    - FLOPs: torch's `FlopCounterMode` around one whole training step of this process (its first; the second
      when parts are compiled, so that compilation is not inside it): the forward and backward passes of every
      objective, ITM's negative passes and MLM / MRM's own passes included; matmul-like ops only, 2 per
      multiply-add; the optimizer's elementwise updates are not model FLOPs. Per sample of the local batch.
    - Time: every other training step of this process, from batch start to batch end (forward, backward,
      optimizer; not the data loading or validation between them), timed with CUDA events on a GPU, so nothing
      waits for the device inside the loop.
    - The device's peak FLOP/s (mmbench/metrics/peak.py: a GPU's spec, or the best CPU GEMM rate measured on the
      machine, kept in `cache_dir`), before the first step.
    Results go to the LightningModule's `step_cost` (flops_per_sample, seconds, samples, steps, peak_flops,
    peak_flops_source); counting runs the step unchanged, so a counted run equals an uncounted one.
    """

    def __init__(self, cache_dir: str) -> None:
        self.cache_dir = cache_dir
        self._counter: Any = None  # the FlopCounterMode of the counted step, while it runs

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from mmbench.metrics.peak import peak_flops

        _step_cost(pl_module)["peak_flops"], _step_cost(pl_module)["peak_flops_source"] = peak_flops(
            pl_module.device, self.cache_dir
        )
        self._cuda = pl_module.device.type == "cuda"
        compiled = any(getattr(m, "_compiled_call_impl", None) is not None for m in pl_module.modules())
        self._count_at = 1 if compiled else 0  # the batch of this process that is counted
        self._batches, self._samples = 0, 0
        self._counter = None
        self._start: Any = None  # the step's start: a CUDA event, or perf_counter seconds
        self._timed: list = []  # (start, end) CUDA event pairs, or seconds

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        if self._batches == self._count_at:
            from torch.utils.flop_counter import FlopCounterMode

            self._counter = FlopCounterMode(display=False)
            self._counter.__enter__()
        elif self._cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        size = int(batch["input_ids"].shape[0])
        if self._counter is not None:
            self._counter.__exit__(None, None, None)
            _step_cost(pl_module)["flops_per_sample"] = self._counter.get_total_flops() / size
            self._counter = None
        elif self._start is not None:
            if self._cuda:
                end = torch.cuda.Event(enable_timing=True)
                end.record()
                self._timed.append((self._start, end))
            else:
                self._timed.append(time.perf_counter() - self._start)
            self._samples += size
            self._start = None
        self._batches += 1

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._cuda and self._timed:
            torch.cuda.synchronize(pl_module.device)  # once, after the loop
        seconds = sum(a.elapsed_time(b) / 1000 for a, b in self._timed) if self._cuda else sum(self._timed)
        _step_cost(pl_module).update(seconds=seconds, samples=self._samples, steps=len(self._timed))

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self._counter is not None:  # the counted step raised: leave torch's dispatch as it was
            self._counter.__exit__(None, None, None)
            self._counter = None


def _step_cost(pl_module: pl.LightningModule) -> dict[str, Any]:
    return cast("MMBenchModule", pl_module).step_cost


class MatmulPrecision(pl.Callback):
    """fp32 matmul precision per device: `cuda` on a CUDA device (default "high": TF32 tensor cores on
    Ampere and later, ~2-8x faster fp32 matmuls at a 10-bit mantissa), `cpu` elsewhere (default
    "highest": plain fp32; the CPU has no TF32). Lightning only warns about it. Set at setup, so the
    process-wide torch flag follows the device of the run that is starting."""

    def __init__(self, cuda: str = "high", cpu: str = "highest"):
        self.cuda, self.cpu = cuda, cpu

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        precision = self.cuda if trainer.strategy.root_device.type == "cuda" else self.cpu
        torch.set_float32_matmul_precision(precision)
