"""The GPU path checked in one unattended run: `bash scripts/gpu_check.sh` (which calls this driver).

    bash scripts/gpu_check.sh [--out DIR] [--jobs N] [--presets vilt,clip] [--budget-s 345]
    bash scripts/gpu_check.sh --cpu          # the same driver on CPU, tiny settings: tests its logic

What a user would check on a new GPU machine, within 6 minutes on one GPU (`--budget-s`, 345 s, plus
start-up):

1. `default_run`: the default experiment (`scripts/train.sh`: `model=lxmert`, one epoch of 500 steps;
   `--default-steps N` caps it) on `trainer=gpu` (bf16-mixed, TF32), CSV logger only: it completes,
   metrics.json is written, the final training loss is finite; its wall time and metrics are recorded.
2. `presets`: `--steps` (20) training steps of every preset (conf/model/*.yaml, each with every objective
   it supports, as tests/test_presets.py decides) at bf16-mixed with `model.compile=true`, and the same
   steps at fp32 (exact fp32 matmuls, eager) from the same seed: every loss finite, the first and the
   last step's loss of the bf16 run within `TOLERANCES` of the fp32 run's. Also the step time after the
   compile warm-up (`--warmup` steps; only one process at a time runs its timed steps), the warm-up's
   extra time (compilation) and the graphs compiled inside the timed window (a recompile per step).
3. `eval`: `mmbench-eval` on the default run's best checkpoint: its metrics equal those the training run
   reported at its end within `TOLERANCES["eval"]` (TF32 at the end of training, fp32 in mmbench-eval).
4. `sync`: a few training steps of the default experiment (and of ViLT with ITM, whose negatives are
   sampled on the device) under `torch.cuda.set_sync_debug_mode("warn")`: each host-device sync inside
   the steps is counted with the stack it came from. Pass: none. Findings are reported, never fixed here.

Parts run as separate processes (their logs in `<out>/logs/`), at most `--jobs` at once (8 on 16 cores:
the budget holds 17 compilations only side by side, so the default run's wall time and the step times are
measured beside other parts compiling; `--jobs 1` for figures measured alone); each has a timeout, and a
part that runs out of time, or does not start before the budget is spent, is recorded as such while the
others go on. `<out>/results.json` (rewritten after every part)
and `<out>/summary.md` hold every figure; `<out>/runs/` the run directories (checkpoints deleted at the
end unless `--keep-checkpoints`). docs/performance.md says what the checks prove and what they do not.

`--cpu`: accelerator cpu, fp32, no compile, tiny data and model, a few steps and presets: the whole
driver on a machine without a GPU (tests/test_gpu_check.py). Its sync check is a stand-in (CUDA's sync
debug mode needs CUDA): Python-level calls that would sync on a GPU (`.item()`, `bool(t)`, `.tolist()`,
`.cpu()`, ...) are counted with their stacks instead.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import fcntl
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

import pytorch_lightning as pl
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the tests' tiny sizes and preset table (gpu_check.sh sets PYTHONPATH too)

from tests.conftest import TINY  # noqa: E402

PRESETS = tuple(sorted(p.stem for p in (ROOT / "conf" / "model").glob("*.yaml")))  # as tests/test_presets.py

# Relative |bf16 - fp32| / |fp32| of the training loss. Step 1 (before any update): bf16 keeps 8 bits of
# mantissa (a relative rounding of 2^-9 = 2e-3 per operation) and autocast computes softmax and the
# losses in fp32, so a loss a few operations deep differs by ~1e-3; 1e-2 leaves 5x for deep presets. The
# last step: 20 AdamW updates (--steps) from slightly different gradients move the two runs apart; on the same batch
# the loss still agrees within a few per cent unless the path is broken (a wrong dtype, a dropped scale
# gives 10-100%). Eval: the end-of-training suite ran with TF32 matmuls, mmbench-eval in fp32; near-ties
# may flip, so 1e-2 absolute (10 of 1,000 test items) or 1e-2 relative beyond 1.
TOLERANCES = {"loss_first_rel": 1e-2, "loss_last_rel": 5e-2, "eval": 1e-2}
# Protocols of the suite whose numbers mmbench-eval recomputes (tests/test_eval.py compares these groups)
EVAL_GROUPS = ("retrieval", "vqa", "diagnostics", "zeroshot", "robustness", "captioning", "classification")
DEFAULT_RUN = ("model=lxmert",)  # scripts/train.sh: the README's default experiment
REPORT_METRICS = (
    "train/loss_step",
    "train/loss_epoch",
    "val/loss",
    "test/vqa/acc",
    "test/retrieval/rmean",
    "test/diagnostics/match_acc",
    "test/zeroshot/top1",
)
SYNC_MESSAGE = "called a synchronizing CUDA operation"
# what the --cpu stand-in counts: the calls that copy a device tensor's value to the host
HOST_READS = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__")
# the --cpu mode's data and model: tests/conftest.py's TINY sizes, every run in seconds
SMALL = (
    *(o for o in TINY if o.startswith(("data.", "model.", "objective."))),
    "eval.protocols=[retrieval,vqa]",  # the suite's two cheapest protocols: enough to compare mmbench-eval
)
# the 20-step runs: no test and no checkpoints, only the steps (validation comes at the epoch's end, later)
STEP_RUN = (
    "trainer.limit_val_batches=1",
    "test=false",
    "logger=csv",
    "~callbacks.model_checkpoint",
    "~callbacks.last_checkpoint",
)


@dataclasses.dataclass(frozen=True)
class Mode:
    """Everything that differs between the GPU check and its CPU rehearsal."""

    name: str
    trainer: tuple[str, ...]  # overrides of every run
    test_run: tuple[str, ...]  # the run under test, on top of `trainer`
    reference_run: tuple[str, ...]  # its fp32 reference
    sizes: tuple[str, ...]  # data and model sizes (GPU: the defaults)
    default_extra: tuple[str, ...]  # the default run's own (GPU: none, one full epoch)
    presets: tuple[str, ...]
    steps: int
    warmup: int
    jobs: int
    budget_s: float
    default_timeout_s: float
    task_timeout_s: float
    eval_device: str
    eval_tolerance: float
    sync_runs: tuple[tuple[str, tuple[str, ...]], ...]  # (name, overrides)
    sync_window: tuple[int, int]  # count syncs in the steps after `first` up to `last`


GPU = Mode(
    name="gpu",
    trainer=("trainer=gpu",),
    test_run=("model.compile=true",),  # trainer=gpu's bf16-mixed, TF32 fp32 matmuls
    reference_run=("trainer.precision=32", "callbacks.matmul_precision.cuda=highest"),
    sizes=(),
    default_extra=(),
    presets=PRESETS,
    steps=20,
    warmup=10,
    jobs=min(8, max(1, (os.cpu_count() or 2) // 2)),
    budget_s=345.0,  # + ~10 s of start-up: 6 minutes
    default_timeout_s=300.0,
    task_timeout_s=240.0,
    eval_device="cuda",
    eval_tolerance=TOLERANCES["eval"],
    sync_runs=(("default_run", DEFAULT_RUN), ("vilt_itm", ("model=vilt", "objective=[itc,itm,mlm,vqa]"))),
    sync_window=(2, 10),
)
CPU = Mode(
    name="cpu",
    trainer=("trainer=cpu",),
    test_run=(),
    reference_run=(),
    sizes=SMALL,
    default_extra=("trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1"),
    presets=("albef", "concat", "vilt"),
    steps=6,
    warmup=2,
    jobs=2,
    budget_s=600.0,
    default_timeout_s=300.0,
    task_timeout_s=300.0,
    eval_device="cpu",
    eval_tolerance=0.0,  # same device, same kernels: the same numbers (tests/test_eval.py)
    sync_runs=(("default_run", DEFAULT_RUN),),
    sync_window=(1, 3),
)


# ---------------------------------------------------------------- callbacks, added with +callbacks.<name>


class StepProbe(pl.Callback):
    """Keeps every training step's loss (on the device: no sync per step) and times the steps after
    `warmup` (synchronised at both ends), holding an exclusive lock on `lock` meanwhile so that parallel
    runs time their steps one at a time; writes it all to `out` at the end of training."""

    def __init__(self, out: str, warmup: int = 10, lock: str | None = None):
        self.out, self.warmup, self.lock = Path(out), warmup, lock
        self.losses: list[torch.Tensor] = []
        self.times: dict[str, float] = {}
        self.graphs: dict[str, int] = {}
        self._lock_file = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)  # this run's peak, not the worker's earlier run's
        self.graphs["start"], self.graphs["breaks"] = _compiled_graphs(), _graph_breaks()  # a worker's earlier runs
        self.times["start"] = time.perf_counter()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_step == self.warmup:
            _synchronize(pl_module.device)
            self.times["warm"] = time.perf_counter()
            if self.lock:
                self._lock_file = open(self.lock, "w")  # held across hooks, closed in _release
                fcntl.flock(self._lock_file, fcntl.LOCK_EX)
            self.graphs["window_start"] = _compiled_graphs()
            _synchronize(pl_module.device)
            self.times["timed_start"] = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(loss.detach().float().reshape(()))
        if trainer.global_step == 1:
            _synchronize(pl_module.device)
            self.times["first_step"] = time.perf_counter()
        if trainer.global_step == trainer.max_steps and "timed_start" in self.times:
            _synchronize(pl_module.device)
            self.times["timed_end"] = time.perf_counter()
            self.graphs["window_end"] = _compiled_graphs()
            self._release()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._release()
        t = self.times
        timed = trainer.global_step - self.warmup if "timed_end" in t else 0
        step_s = (t["timed_end"] - t["timed_start"]) / timed if timed > 0 else None
        warmup_s = t["warm"] - t["start"] if "warm" in t else None
        on_cuda = pl_module.device.type == "cuda"
        result = {
            "losses": [_number(v) for v in torch.stack(self.losses).tolist()] if self.losses else [],
            "first_step_s": round(t["first_step"] - t["start"], 3) if "first_step" in t else None,
            "warmup_steps": self.warmup,
            "warmup_s": round(warmup_s, 3) if warmup_s is not None else None,
            "timed_steps": timed,
            "step_ms": round(1000 * step_s, 3) if step_s is not None else None,
            # what the warm-up cost beyond as many steady steps: compilation (and first-call set-up)
            "compile_s": round(warmup_s - self.warmup * step_s, 3) if step_s is not None and warmup_s else None,
            "graphs_compiled": _compiled_graphs() - self.graphs["start"],
            "graphs_compiled_in_timed_window": self.graphs.get("window_end", 0) - self.graphs.get("window_start", 0),
            "graph_breaks": _graph_breaks() - self.graphs["breaks"],
            "peak_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if on_cuda else None,
        }
        self.out.write_text(json.dumps(result, indent=1))

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._release()

    def _release(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # closing the file releases the lock
            self._lock_file = None


class SyncProbe(pl.Callback):
    """Counts host-device syncs in the training steps after global step `first` up to `last` and where
    each came from, then writes them to `out`. On CUDA: `torch.cuda.set_sync_debug_mode("warn")`, every
    warning caught with its Python stack. On CPU (no sync to detect): the stand-in of the module
    docstring, the Python-level reads of a tensor's value (`HOST_READS`)."""

    def __init__(self, out: str, first: int = 2, last: int = 10):
        self.out, self.first, self.last = Path(out), first, last
        self.events: list[list[str]] = []  # one formatted stack per sync, innermost frame last
        self.mode: str | None = None
        self._undo: Callable[[], None] | None = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_step == self.first and self._undo is None:
            self._undo = self._watch_cuda() if pl_module.device.type == "cuda" else self._watch_host_reads()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.last:
            self._stop()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop()
        self.out.write_text(json.dumps({"mode": self.mode, "steps": self.last - self.first, "events": self.events}))

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._stop()

    def _stop(self) -> None:
        if self._undo is not None:
            self._undo()
            self._undo = None

    def _record(self) -> None:
        frames = [f for f in traceback.extract_stack() if f.filename not in (__file__, warnings.__file__)]
        self.events.append([f"{_short(f.filename)}:{f.lineno} {f.name}" for f in frames])

    def _watch_cuda(self) -> Callable[[], None]:
        self.mode = "cuda sync debug mode"
        shown = warnings.showwarning

        def showwarning(message, category, filename, lineno, file=None, line=None):
            if SYNC_MESSAGE in str(message):
                self._record()
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.filterwarnings("always", message=f".*{SYNC_MESSAGE}.*")  # every one, not once per place
        warnings.showwarning = showwarning
        torch.cuda.set_sync_debug_mode("warn")

        def undo() -> None:
            torch.cuda.set_sync_debug_mode("default")
            warnings.showwarning = shown

        return undo

    def _watch_host_reads(self) -> Callable[[], None]:
        self.mode = "cpu stand-in: " + ", ".join(HOST_READS)
        saved = {name: torch.Tensor.__dict__.get(name) for name in HOST_READS}
        torch_dir = str(Path(torch.__file__).parent)

        def counting(name: str):
            original = getattr(torch.Tensor, name)

            def read(tensor, *args, **kwargs):
                # torch's own reads are left out: they read host-side scalars (Adam's step count), which
                # stay on the host in a GPU run too; CUDA's detector sees those of torch that do sync
                if not sys._getframe(1).f_code.co_filename.startswith(torch_dir):
                    self._record()
                return original(tensor, *args, **kwargs)

            return read

        for name in HOST_READS:
            setattr(torch.Tensor, name, counting(name))

        def undo() -> None:
            for name, value in saved.items():
                if value is None:
                    delattr(torch.Tensor, name)  # inherited from the C base again
                else:
                    setattr(torch.Tensor, name, value)

        return undo


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _compiled_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _graph_breaks() -> int:
    from torch._dynamo.utils import counters

    return int(sum(counters["graph_break"].values()))


def _number(value: float) -> float | None:
    return value if math.isfinite(value) else None  # JSON has no NaN: a non-finite loss is null


def _short(filename: str) -> str:
    """A frame's file relative to the checkout or to site-packages."""
    marker = "site-packages/"
    if marker in filename:
        return filename.split(marker, 1)[1]
    path = Path(filename)
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else filename


# ---------------------------------------------------------------- workers: one process per preset / sync run


def worker(spec_path: Path) -> None:
    """Run what `spec_path` (JSON) describes, writing `spec["result"]` after every training run so that a
    worker stopped by its timeout still leaves what it finished."""
    import torch._inductor.config

    from mmbench.noise import silence_known_noise

    silence_known_noise()
    torch._inductor.config.fallback_random = True  # compiled random ops draw eager's numbers (same MLM masks)
    spec = json.loads(spec_path.read_text())
    out = Path(spec["result"])
    result: dict = {"kind": spec["kind"], "runs": {}}
    overrides = list(spec["overrides"])
    if spec["kind"] == "preset":
        from tests.test_presets import supported_objectives  # what each preset trains, as the tests say

        result["preset"] = spec["preset"]
        result["objectives"] = supported_objectives(spec["preset"])
        overrides = [f"model={spec['preset']}", f"objective=[{','.join(result['objectives'])}]", *overrides]
    out.write_text(json.dumps(result, indent=1))
    for name, extra in spec["runs"]:
        run_dir = Path(spec["dir"]) / name
        probe = run_dir.parent / f"{name}.probe.json"
        with _exact_convolutions(name == "reference"):
            result["runs"][name] = _train([*overrides, *extra, f"+callbacks.gpu_check.out={probe}"], run_dir, probe)
        out.write_text(json.dumps(result, indent=1))


@contextlib.contextmanager
def _exact_convolutions(exact: bool):
    """cuDNN convolutions in plain fp32 (`exact`; TF32 is torch's default for them on CUDA): the fp32
    reference is exact fp32 throughout, its matmuls through `callbacks.matmul_precision.cuda=highest`."""
    cudnn = torch.backends.cudnn
    saved = cudnn.allow_tf32  # the API of set_float32_matmul_precision's generation: the two do not mix
    cudnn.allow_tf32 = saved and not exact
    try:
        yield
    finally:
        cudnn.allow_tf32 = saved


def _train(overrides: list[str], run_dir: Path, probe: Path) -> dict:
    """One training run through `mmbench.pipeline.run`, as `mmbench-train` runs it; its probe's record."""
    import torch._dynamo

    from mmbench.config import compose_train
    from mmbench.pipeline import run

    torch._dynamo.reset()  # this run's compilation from scratch (in-memory caches; inductor's disk cache stays)
    start = time.perf_counter()
    try:
        cfg = compose_train(overrides, run_dir)
        record = run(cfg)
        status, error = record["status"], None
    except Exception as err:  # recorded, and the worker's next run still runs
        status, error = "failed", f"{type(err).__name__}: {err}"
    result = {"status": status, "wall_s": round(time.perf_counter() - start, 2), "overrides": overrides}
    if error:
        result["error"] = error[-2000:]
    if probe.is_file():
        result.update(json.loads(probe.read_text()))
    return result


# ---------------------------------------------------------------- the scheduler: parts as processes


@dataclasses.dataclass
class Task:
    """One part, run as a process with its own log and timeout."""

    name: str
    argv: Callable[[], list[str]]  # called when the task starts; NotRunnable says why it cannot
    timeout_s: float
    collect: Callable[[Task], None]  # reads what the process wrote, once it has stopped
    after: tuple[str, ...] = ()  # tasks that must have stopped first
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    state: str = "queued"  # queued | running | finished | timeout | not run
    returncode: int | None = None
    wall_s: float | None = None
    reason: str | None = None
    log: Path | None = None
    proc: subprocess.Popen | None = None
    started: float = 0.0
    stop_at: float = 0.0


class NotRunnable(Exception):
    """A task whose inputs are missing (the default run left no checkpoint to evaluate)."""


def run_tasks(tasks: list[Task], *, jobs: int, deadline: float, logs: Path, on_change: Callable[[], None]) -> None:
    """Start the tasks in order, at most `jobs` at once (a task waits for those named in its `after`);
    stop each at its timeout or at `deadline`; a task not started by `deadline` is not run."""
    pending: list[Task] = list(tasks)
    running: list[Task] = []
    try:
        _schedule(pending, running, jobs=jobs, deadline=deadline, logs=logs, on_change=on_change)
    finally:  # stopped from outside (SIGTERM, Ctrl-C): no part outlives the check
        for task in running:
            if task.proc is not None:
                _kill(task.proc)
            task.state, task.reason = "timeout", "the check itself was stopped"
            task.wall_s = round(time.monotonic() - task.started, 2)
            _collect(task)
        on_change()


def _schedule(
    pending: list[Task], running: list[Task], *, jobs: int, deadline: float, logs: Path, on_change: Callable[[], None]
) -> None:
    finished: set[str] = set()
    while pending or running:
        now = time.monotonic()
        for task in list(running):
            if task.proc is None:
                continue
            code = task.proc.poll()
            if code is None and now < task.stop_at:
                continue
            if code is None:
                _kill(task.proc)
                task.state = "timeout"
                task.reason = f"stopped after {now - task.started:.0f} s " + (
                    "(the check's budget was spent)"
                    if task.stop_at >= deadline
                    else f"(its timeout, {task.timeout_s:.0f} s)"
                )
            else:
                task.state, task.returncode = "finished", code
            task.wall_s = round(time.monotonic() - task.started, 2)
            running.remove(task)
            finished.add(task.name)
            _collect(task)
            on_change()
        for task in list(pending):
            if any(name not in finished for name in task.after):
                continue
            if len(running) >= jobs:
                break
            pending.remove(task)
            if now >= deadline - 5:
                task.state, task.reason = "not run", "the check's time budget was spent before it could start"
                finished.add(task.name)
                _collect(task)
                on_change()
                continue
            try:
                argv = task.argv()
            except NotRunnable as err:
                task.state, task.reason = "not run", str(err)
                finished.add(task.name)
                _collect(task)
                on_change()
                continue
            task.log = logs / f"{task.name}.log"
            with open(task.log, "w") as log:
                log.write(" ".join(argv) + "\n\n")
                log.flush()
                env = {**os.environ, **task.env}
                task.proc = subprocess.Popen(
                    argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
            task.state, task.started = "running", time.monotonic()
            task.stop_at = min(task.started + task.timeout_s, deadline)
            running.append(task)
        time.sleep(0.2)


def _collect(task: Task) -> None:
    try:
        task.collect(task)
    except Exception as err:  # a collector's bug is one failed part, not a lost report
        task.reason = f"collecting its results failed: {type(err).__name__}: {err}"


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL to the part's process group (its compile workers too): at once, since a part busy compiling
    would notice a SIGTERM only at its next step; whatever it wrote before stays."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    proc.wait()


# ---------------------------------------------------------------- the checks


class Check:
    """Builds the tasks of one run of the GPU check and turns what they wrote into `results`."""

    def __init__(self, mode: Mode, out: Path, *, keep_checkpoints: bool):
        self.mode, self.out, self.keep_checkpoints = mode, out, keep_checkpoints
        self.runs, self.logs = out / "runs", out / "logs"
        self.python = sys.executable
        self.started = time.monotonic()
        self.results: dict = {
            "mode": mode.name,
            "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "budget_s": mode.budget_s,
            "wall_s": None,
            "passed": None,
            "environment": environment(),
            "settings": {
                "steps": mode.steps,
                "warmup_steps": mode.warmup,
                "jobs": mode.jobs,
                "tolerances": {**TOLERANCES, "eval": mode.eval_tolerance},
                "test_run": [*mode.trainer, *mode.test_run],
                "reference_run": [*mode.trainer, *mode.reference_run],
                "sizes": list(mode.sizes),
                "default_run": [*DEFAULT_RUN, *mode.trainer, *mode.sizes, *mode.default_extra, "logger=csv"],
            },
            "checks": {
                "default_run": {"status": "not run"},
                "eval": {"status": "not run"},
                "presets": {"status": "not run", "runs": {}},
                "sync": {"status": "not run", "runs": {}},
            },
        }

    # -- tasks

    def tasks(self) -> list[Task]:
        mode = self.mode
        pool_env = {  # each part its share of the cores
            "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // mode.jobs)),
            "TORCHINDUCTOR_COMPILE_THREADS": str(max(1, (os.cpu_count() or 1) // mode.jobs)),
        }
        default = Task(
            "default_run",
            lambda: [
                self.python,
                "-m",
                "mmbench.train",
                *self.results["settings"]["default_run"],
                f"hydra.run.dir={self.runs / 'default_run'}",
            ],
            mode.default_timeout_s,
            self.collect_default,
            env=pool_env,
        )
        evaluation = Task(
            "eval",
            self.eval_argv,
            mode.task_timeout_s,
            self.collect_eval,
            after=("default_run",),
            env=pool_env,
        )
        sync = [
            Task(
                f"sync_{name}",
                self.worker_argv(
                    f"sync_{name}",
                    "sync",
                    [
                        *overrides,
                        *mode.trainer,
                        *mode.sizes,
                        *STEP_RUN,
                        f"trainer.max_steps={mode.sync_window[1]}",
                        "+callbacks.gpu_check._target_=scripts.gpu_check.SyncProbe",
                        f"+callbacks.gpu_check.first={mode.sync_window[0]}",
                        f"+callbacks.gpu_check.last={mode.sync_window[1]}",
                    ],
                    [["run", []]],
                ),
                mode.task_timeout_s,
                self.collect_sync,
                env=pool_env,
            )
            for name, overrides in mode.sync_runs
        ]
        presets = [
            Task(
                f"preset_{preset}",
                self.worker_argv(
                    f"preset_{preset}",
                    "preset",
                    [
                        *mode.trainer,
                        *mode.sizes,
                        *STEP_RUN,
                        "~callbacks.progress_bar",
                        f"trainer.max_steps={mode.steps}",
                        "+callbacks.gpu_check._target_=scripts.gpu_check.StepProbe",
                        f"+callbacks.gpu_check.warmup={mode.warmup}",
                        f"+callbacks.gpu_check.lock={self.runs / 'timing.lock'}",
                    ],
                    [["reference", list(mode.reference_run)], ["test", list(mode.test_run)]],
                    preset=preset,
                ),
                mode.task_timeout_s,
                self.collect_preset,
                env=pool_env,
            )
            for preset in mode.presets
        ]
        return [default, evaluation, *sync, *presets]

    def worker_argv(self, name: str, kind: str, overrides: list[str], runs: list, preset: str | None = None):
        def argv() -> list[str]:
            directory = self.runs / name
            directory.mkdir(parents=True, exist_ok=True)
            spec = {
                "kind": kind,
                "preset": preset,
                "overrides": overrides,
                "runs": runs,
                "dir": str(directory),
                "result": str(directory / "result.json"),
            }
            (directory / "spec.json").write_text(json.dumps(spec, indent=1))
            return [self.python, str(Path(__file__).resolve()), "--worker", str(directory / "spec.json")]

        return argv

    def eval_argv(self) -> list[str]:
        ckpt = self.runs / "default_run" / "checkpoints" / "best.ckpt"
        if not ckpt.is_file():
            raise NotRunnable(f"the default run left no {ckpt.relative_to(self.out)} to evaluate")
        return [
            self.python,
            "-m",
            "mmbench.evaluate",
            f"ckpt_path={ckpt}",
            f"device={self.mode.eval_device}",
            "logger=csv",
            f"hydra.run.dir={self.runs / 'eval'}",
        ]

    # -- collectors: Task -> self.results["checks"][...]

    def _base(self, task: Task) -> dict:
        entry: dict = {"status": task.state, "wall_s": task.wall_s}
        if task.log is not None:
            entry["log"] = str(task.log.relative_to(self.out))
        if task.reason:
            entry["reason"] = task.reason
        if task.state == "finished" and task.returncode:
            entry.update(status="fail", reason=f"exit status {task.returncode}: {_tail(task.log)}")
        return entry

    def collect_default(self, task: Task) -> None:
        entry = self._base(task)
        record = _read_json(self.runs / "default_run" / "metrics.json")
        if task.state == "finished" and record is not None:
            metrics = record.get("metrics", {})
            loss = next((metrics[k] for k in ("train/loss_step", "train/loss_epoch") if k in metrics), None)
            entry["run_status"] = record.get("status")
            entry["final_train_loss"] = loss
            entry["metrics"] = {k: v for k, v in metrics.items() if k in REPORT_METRICS or k.startswith("test/vqa/acc")}
            entry["train_samples_per_s"] = record.get("complexity", {}).get("train_samples_per_s")
            entry["run_wall_s"] = record.get("wall_s")
            problems = []
            if record.get("status") != "completed":
                problems.append(f"metrics.json status is {record.get('status')}: {record.get('error', '')[:300]}")
            if not isinstance(loss, (int, float)) or not math.isfinite(loss):
                problems.append(f"the final training loss is not finite ({loss})")
            if not (self.runs / "default_run" / "checkpoints" / "best.ckpt").is_file():
                problems.append("no checkpoints/best.ckpt")
            entry["status"] = "fail" if problems else "pass"
            if problems:
                entry["reason"] = "; ".join(problems)
        elif task.state == "finished" and entry["status"] == "finished":
            entry.update(status="fail", reason="no metrics.json written")
        self.results["checks"]["default_run"] = entry

    def collect_eval(self, task: Task) -> None:
        entry = self._base(task)
        train = _read_json(self.runs / "default_run" / "metrics.json")
        evaluated = _read_json(self.runs / "eval" / "metrics.json")
        if task.state == "finished" and entry["status"] == "finished":
            if evaluated is None or train is None:
                entry.update(status="fail", reason="mmbench-eval wrote no metrics.json")
            else:
                entry.update(compare_metrics(train["metrics"], evaluated["metrics"], self.mode.eval_tolerance))
                entry["eval_s"] = evaluated.get("eval_s")
        self.results["checks"]["eval"] = entry

    def collect_preset(self, task: Task) -> None:
        entry = self._base(task)
        result = _read_json(self.runs / task.name / "result.json") or {}
        verdict = preset_verdict(result, steps=self.mode.steps, finished=entry["status"] == "finished")
        reasons = [entry.get("reason"), verdict.pop("reason", None)]
        entry.update(verdict, reason="; ".join(r for r in reasons if r))
        if not entry["reason"]:
            del entry["reason"]
        entry["status"] = entry.pop("verdict") if entry["status"] == "finished" else entry["status"]
        self.results["checks"]["presets"]["runs"][task.name.removeprefix("preset_")] = entry
        self.results["checks"]["presets"]["status"] = _overall(self.results["checks"]["presets"]["runs"])

    def collect_sync(self, task: Task) -> None:
        entry = self._base(task)
        result = _read_json(self.runs / task.name / "result.json") or {}
        run = result.get("runs", {}).get("run", {})
        if entry["status"] == "finished":
            if run.get("status") != "completed" or "events" not in run:
                entry.update(status="fail", reason=run.get("error") or "the run wrote no sync record")
            else:
                entry.update(sync_summary(run["events"], steps=run["steps"]))
                entry["detector"] = run["mode"]
                entry["status"] = "pass" if not run["events"] else "fail"
        self.results["checks"]["sync"]["runs"][task.name.removeprefix("sync_")] = entry
        self.results["checks"]["sync"]["status"] = _overall(self.results["checks"]["sync"]["runs"])

    # -- output

    def write(self) -> None:
        self.results["wall_s"] = round(time.monotonic() - self.started, 1)
        statuses = [c["status"] for c in self.results["checks"].values()]
        self.results["passed"] = all(s == "pass" for s in statuses)
        (self.out / "results.json").write_text(json.dumps(self.results, indent=1))
        (self.out / "summary.md").write_text(summary(self.results))

    def finish(self) -> None:
        if not self.keep_checkpoints:
            for ckpt in self.runs.rglob("*.ckpt"):
                ckpt.unlink()
        self.write()


def compare_metrics(train: dict, evaluated: dict, tolerance: float) -> dict:
    """mmbench-eval's suite metrics against the training run's: |a - b| <= tolerance * max(1, |b|)."""
    keys = sorted(k for k in evaluated if k in train and k.split("/")[1:2] and k.split("/")[1] in EVAL_GROUPS)
    diffs = {}
    for key in keys:
        a, b = evaluated[key], train[key]
        if a is None or b is None:  # metrics.json writes a non-finite number as null
            diffs[key] = 0.0 if a is b else math.inf
        else:
            diffs[key] = abs(a - b) / max(1.0, abs(b))
    worst = max(diffs, key=lambda k: diffs[k]) if diffs else None
    out = {
        "compared": len(keys),
        "identical": sum(d == 0.0 for d in diffs.values()),
        "max_diff": diffs[worst] if worst else None,
        "worst_key": worst,
        "tolerance": tolerance,
    }
    if not keys:
        return {**out, "status": "fail", "reason": "no suite metric in both metrics.json files"}
    bad = [k for k, d in diffs.items() if d > tolerance]
    if bad:
        shown = ", ".join(f"{k}: {train[k]} -> {evaluated[k]}" for k in bad[:5])
        return {**out, "status": "fail", "reason": f"{len(bad)} metrics differ beyond the tolerance ({shown})"}
    return {**out, "status": "pass"}


def preset_verdict(result: dict, *, steps: int, finished: bool) -> dict:
    """The bf16 + compile run (`test`) against its fp32 reference: finite losses, every step run, the first
    and last losses within TOLERANCES; with the figures of both runs."""
    runs = result.get("runs", {})
    out: dict = {"objectives": result.get("objectives")}
    problems = []
    for name in ("reference", "test"):
        run = runs.get(name)
        if run is None:
            problems.append(f"the {name} run did not run")
            continue
        losses = run.get("losses", [])
        out[name] = {
            key: run.get(key)
            for key in (
                "status",
                "wall_s",
                "step_ms",
                "compile_s",
                "first_step_s",
                "graphs_compiled",
                "graphs_compiled_in_timed_window",
                "graph_breaks",
                "peak_memory_mb",
            )
        }
        out[name]["loss_first"] = losses[0] if losses else None
        out[name]["loss_last"] = losses[-1] if losses else None
        if run.get("status") != "completed":
            problems.append(f"{name} run {run.get('status')}: {run.get('error', '')[:300]}")
        elif len(losses) != steps:
            problems.append(f"{name} run recorded {len(losses)} of {steps} steps")
        elif any(v is None for v in losses):
            problems.append(f"{name} run has a non-finite loss at step {losses.index(None) + 1}")
    ref, test = out.get("reference", {}), out.get("test", {})
    for which, key in (("first", "loss_first_rel"), ("last", "loss_last_rel")):
        a, b = test.get(f"loss_{which}"), ref.get(f"loss_{which}")
        if a is not None and b is not None:
            rel = abs(a - b) / abs(b) if b else abs(a - b)
            out[f"loss_{which}_rel_diff"] = rel
            if rel > TOLERANCES[key]:
                problems.append(f"step-{which} loss {a:.5g} vs fp32 {b:.5g}: {rel:.2e} > {TOLERANCES[key]:.0e}")
    if problems:
        out["reason"] = "; ".join(problems)
    out["verdict"] = "fail" if problems or not finished else "pass"
    return out


def sync_summary(events: list[list[str]], *, steps: int) -> dict:
    """Syncs grouped by where they came from: the innermost frame outside torch, and whether inside the
    LightningModule's training_step (forward and losses), the backward, the optimizer or elsewhere."""
    sites: dict[tuple[str, str], dict] = {}
    for stack in events:
        ours = [f for f in stack if not f.startswith("torch/")]
        where = ours[-1] if ours else stack[-1]
        if any(f.endswith(" training_step") and f.startswith("mmbench/") for f in stack):
            phase = "training_step"
        elif any(f.endswith(" backward") for f in stack):
            phase = "backward"
        elif any(f.startswith("torch/optim/") for f in stack):
            phase = "optimizer"
        else:
            phase = "Lightning loop / callbacks"
        site = sites.setdefault((where, phase), {"where": where, "phase": phase, "count": 0, "stack": ours[-12:]})
        site["count"] += 1
    ordered = sorted(sites.values(), key=lambda s: -s["count"])
    return {
        "steps": steps,
        "syncs": len(events),
        "per_step": round(len(events) / steps, 2) if steps else None,
        "in_training_step": sum(s["count"] for s in ordered if s["phase"] == "training_step"),
        "sites": ordered,
    }


def _overall(entries: dict) -> str:
    """A check of several parts: its worst part's status (fail, then timeout, then not run)."""
    statuses = {e["status"] for e in entries.values()}
    return next((s for s in ("fail", "timeout", "not run") if s in statuses), "pass" if statuses else "not run")


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _tail(log: Path | None, lines: int = 3) -> str:
    if log is None or not log.is_file():
        return ""
    return " | ".join(line.strip() for line in log.read_text(errors="replace").splitlines()[-lines:])


def environment() -> dict:
    """Device, driver and versions, for the record."""
    from importlib import metadata

    env: dict = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "lightning": metadata.version("pytorch-lightning"),
        "cpus": os.cpu_count(),
        "device": None,
        "nvidia_smi": None,
        "bf16_supported": None,
    }
    if torch.cuda.is_available():
        env["device"] = torch.cuda.get_device_name(0)
        env["bf16_supported"] = torch.cuda.is_bf16_supported()
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
        res = subprocess.run(query, capture_output=True, text=True, timeout=30)
        env["nvidia_smi"] = res.stdout.strip() or res.stderr.strip()
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    cache = Path(cache_dir())  # TORCHINDUCTOR_CACHE_DIR, else /tmp/torchinductor_<user>: compilations kept on disk
    env["inductor_cache"] = "warm" if cache.is_dir() and any(cache.iterdir()) else "cold"
    return env


def summary(results: dict) -> str:
    """summary.md: the record in a page."""
    env, checks, settings = results["environment"], results["checks"], results["settings"]
    lines = [
        f"# GPU check ({results['mode']} mode), {results['date_utc']}",
        "",
        f"- device: {env['device'] or 'none (CPU)'}; nvidia-smi: {env['nvidia_smi'] or 'n/a'}",
        f"- torch {env['torch']} (CUDA {env['cuda']}, cuDNN {env['cudnn']}), Lightning {env['lightning']}, "
        f"Python {env['python']}, {env['cpus']} CPUs, inductor cache {env['inductor_cache']} at start",
        f"- wall {results['wall_s']} s of a {results['budget_s']:.0f} s budget; {settings['jobs']} parts "
        f"side by side; overall: **{'pass' if results['passed'] else 'FAIL'}**",
        f"- run under test: `{' '.join(settings['test_run'])}`; reference: `{' '.join(settings['reference_run'])}`",
        *([f"- **not run: {results['error']}**"] if results.get("error") else []),
        "",
        "| check | status | figures |",
        "|---|---|---|",
    ]
    d = checks["default_run"]
    m = d.get("metrics", {})
    lines.append(
        f"| default run | {d['status']} | wall {d.get('wall_s')} s, {_fmt(d.get('train_samples_per_s'))} train "
        f"samples/s, final loss {_fmt(d.get('final_train_loss'))}, VQA {_fmt(m.get('test/vqa/acc'))}, "
        f"retrieval rmean {_fmt(m.get('test/retrieval/rmean'))} {_why(d)}|"
    )
    e = checks["eval"]
    lines.append(
        f"| mmbench-eval = end of training | {e['status']} | {e.get('compared', 0)} metrics, {e.get('identical', 0)} "
        f"identical, max diff {_fmt(e.get('max_diff'))} ({e.get('worst_key')}), tolerance {e.get('tolerance')} "
        f"{_why(e)}|"
    )
    p = checks["presets"]
    counts = {s: sum(r["status"] == s for r in p["runs"].values()) for s in ("pass", "fail", "timeout", "not run")}
    lines.append(f"| presets: {settings['steps']} steps, run under test vs fp32 reference | {p['status']} | {counts} |")
    s = checks["sync"]
    sync_figures = ", ".join(f"{k}: {r.get('per_step', '-')} syncs/step" for k, r in s["runs"].items())
    lines.append(f"| no host-device sync in the steps | {s['status']} | {sync_figures} |")
    lines += [
        "",
        f"## Presets ({settings['steps']} steps, step time over the last {settings['steps'] - settings['warmup_steps']})",
        "",
        "| preset | status | objectives | loss step 1 fp32 / test (rel) | loss last fp32 / test (rel) | ms/step fp32 "
        "| ms/step test | compile s | graphs in window | graph breaks | peak MiB test |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in sorted(p["runs"].items()):
        ref, test = r.get("reference", {}), r.get("test", {})
        lines.append(
            f"| {name} | {r['status']} | {','.join(r.get('objectives') or [])} "
            f"| {_fmt(ref.get('loss_first'))} / {_fmt(test.get('loss_first'))} ({_fmt(r.get('loss_first_rel_diff'))}) "
            f"| {_fmt(ref.get('loss_last'))} / {_fmt(test.get('loss_last'))} ({_fmt(r.get('loss_last_rel_diff'))}) "
            f"| {_fmt(ref.get('step_ms'))} | {_fmt(test.get('step_ms'))} | {_fmt(test.get('compile_s'))} "
            f"| {_fmt(test.get('graphs_compiled_in_timed_window'))} | {_fmt(test.get('graph_breaks'))} "
            f"| {_fmt(test.get('peak_memory_mb'))} |"
        )
    failed = {n: r["reason"] for n, r in p["runs"].items() if r.get("reason")}
    lines += [f"- {n}: {' '.join(why.split())[:600]}" for n, why in sorted(failed.items())]
    lines += ["", "## Host-device syncs in the training steps", ""]
    for name, r in s["runs"].items():
        lines.append(
            f"- {name}: {r['status']}, {r.get('syncs', '-')} syncs in {r.get('steps', '-')} steps "
            f"({r.get('in_training_step', '-')} inside training_step); detector: {r.get('detector', '-')} {_why(r)}"
        )
        for site in r.get("sites", [])[:10]:
            lines.append(
                f"  - {site['count']}x `{site['where']}` ({site['phase']}); stack: {' <- '.join(site['stack'][::-1][:6])}"
            )
    return "\n".join(lines) + "\n"


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _why(entry: dict) -> str:
    return f"({' '.join(entry['reason'].split())[:400]}) " if entry.get("reason") else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu_check_out"))
    parser.add_argument("--cpu", action="store_true", help="rehearse on CPU: fp32, no compile, tiny sizes")
    parser.add_argument("--presets", help="comma-separated subset of conf/model/ (default: every preset; --cpu: 3)")
    parser.add_argument("--jobs", type=int, help="parts run side by side (default: cores // 2, at most 8)")
    parser.add_argument("--budget-s", type=float, help="stop starting parts and stop running ones after this")
    parser.add_argument("--steps", type=int, help="training steps per preset run")
    parser.add_argument("--warmup", type=int, help="steps left out of the step time (compilation)")
    parser.add_argument("--default-steps", type=int, help="cap the default run at N steps (default: its epoch)")
    parser.add_argument("--keep-checkpoints", action="store_true", help="keep the runs' .ckpt files")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return
    mode = CPU if args.cpu else GPU
    changes = {
        k: v for k, v in (("jobs", args.jobs), ("budget_s", args.budget_s), ("steps", args.steps)) if v is not None
    }
    if args.warmup is not None:
        changes["warmup"] = args.warmup
    if args.presets:
        unknown = sorted(set(args.presets.split(",")) - set(PRESETS))
        if unknown:
            parser.error(f"--presets: no preset {unknown}; conf/model/ has {', '.join(PRESETS)}")
        changes["presets"] = tuple(args.presets.split(","))
    if args.default_steps:
        kept = tuple(o for o in mode.default_extra if not o.startswith("trainer.limit_train_batches="))
        changes["default_extra"] = (*kept, f"trainer.limit_train_batches={args.default_steps}")
    mode = dataclasses.replace(mode, **changes)
    if not 0 < mode.warmup < mode.steps:
        parser.error(f"--warmup must lie between 0 and --steps ({mode.steps}), excluded; got {mode.warmup}")
    out = args.out.resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    (out / "runs").mkdir(exist_ok=True)
    check = Check(mode, out, keep_checkpoints=args.keep_checkpoints)
    if mode.name == "gpu" and not torch.cuda.is_available():
        message = (
            f"no CUDA device: torch {torch.__version__} (CUDA build: {torch.version.cuda}) sees none; "
            "run this on a GPU machine, or `--cpu` to rehearse the driver here"
        )
        check.results["error"] = message
        check.write()
        print(f"gpu_check: {message}", file=sys.stderr)
        sys.exit(2)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit("gpu_check: stopped by SIGTERM"))
    # every part imports mmbench and scripts.gpu_check (its callbacks) from this checkout; nothing goes online
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    try:
        deadline = time.monotonic() + mode.budget_s - 10  # 10 s kept for the report
        run_tasks(check.tasks(), jobs=mode.jobs, deadline=deadline, logs=out / "logs", on_change=check.write)
    finally:
        check.finish()
    print((out / "summary.md").read_text())
    print(f"results: {out / 'results.json'}")
    sys.exit(0 if check.results["passed"] else 1)


if __name__ == "__main__":
    main()
