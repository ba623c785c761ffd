"""Every job of a multirun in a process of its own, so that a native crash or the OOM killer stops one job, not
the sweep.

mmbench's launchers (the classes in `hydra_plugins/mmbench_launcher/`, chosen by
conf/hydra/launcher/{sequential,parallel,local,slurm}.yaml) are Hydra's with one change, `IsolatedJobs.setup`:
the task function is wrapped in `IsolatedTask`, which runs it in a child process started with multiprocessing's
'spawn' context and waits for it. What the child returns, raises or exits with reaches the launcher as it would
in-process; a child that dies without returning is recorded in its job's metrics.json as `failed` with the
cause (`death_cause`) and the job returns NaN, so the sweep goes on. SIGTERM (and SIGINT outside the terminal's
foreground process group) is forwarded to the child; SLURM's time-limit signal requeues the job only once the
child has stopped. Under `hydra/launcher=parallel` with GPUs each job sees one GPU (`one_gpu_each`).
The behaviour, its measured cost and why a process per job and 'spawn': docs/sweeps.md §3 and §4.

Light imports only (no torch): Hydra imports this module when it scans its plugins.
"""

from __future__ import annotations

import copy
import errno
import faulthandler
import fcntl
import functools
import importlib
import inspect
import logging
import multiprocessing
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, cast

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger(__name__)

EXIT_GRACE_S = 120.0  # a child that returned its value but has not exited after this long is killed
STOPS = (signal.SIGINT, signal.SIGTERM)  # the job was asked to stop: an interruption, which stops the sweep
CRASHES = (signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGABRT)


class IsolatedJobs(Launcher):
    """A Hydra launcher whose jobs run in child processes (`IsolatedTask`). Put it first among the bases of a
    launcher: `class IsolatedBasicLauncher(IsolatedJobs, BasicLauncher)`."""

    one_gpu_each = False  # jobs run side by side on one machine: give each its own GPU (`one_gpu_each`)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        # train.main() tells Hydra's refusal of a command line (exit 1, turned into 2) from a sweep whose jobs
        # failed (exit 1) by the run directories its own process started: jobs started here count as such
        self._started = getattr(task_function, "__globals__", {}).get("_JOBS_STARTED")
        task = IsolatedTask(task_function, one_gpu_each=self.one_gpu_each)
        super().setup(hydra_context=hydra_context, task_function=task, config=config)  # type: ignore[safe-super]

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        returns = super().launch(job_overrides, initial_job_idx)  # type: ignore[safe-super]
        if isinstance(self._started, list):
            self._started.extend(str(r.hydra_cfg.hydra.runtime.output_dir) for r in returns if r.hydra_cfg)
        return returns


@dataclass(frozen=True)
class TaskRef:
    """Where a child process finds the task function: its module's import name and its name there. (The
    function does not pickle by reference: `@hydra.main` put the decorated function under its name.)"""

    module: str
    qualname: str

    @classmethod
    def of(cls, function: Callable) -> TaskRef:
        module = function.__module__
        main = sys.modules.get("__main__")
        spec = getattr(main, "__spec__", None)
        if module == "__main__" and spec is not None:  # `python -m mmbench.train` runs mmbench.train as __main__
            module = spec.name
        # a script run by path stays "__main__": multiprocessing runs it again as the child's __main__
        return cls(module, function.__qualname__)

    def load(self) -> Callable:
        found: Any = importlib.import_module(self.module)
        try:
            found = functools.reduce(getattr, self.qualname.split("."), found)
        except AttributeError:
            raise RuntimeError(
                f"a job's process cannot find the task function {self.qualname} in {self.module}: run the sweep "
                f"through an installed module (`mmbench-train`, `python -m mmbench.train`), or choose Hydra's "
                f"in-process launcher with hydra/launcher=basic"
            ) from None
        return inspect.unwrap(found)  # the function under @hydra.main


class IsolatedTask:
    """A task function that runs `task_function(cfg)` in a child process and waits for it (module docstring)."""

    def __init__(self, task_function: TaskFunction, one_gpu_each: bool = False):
        self.task = TaskRef.of(task_function)
        self.one_gpu_each = one_gpu_each

    def __call__(self, cfg: DictConfig) -> Any:
        from hydra.core.hydra_config import HydraConfig

        hydra = HydraConfig.get()  # this job's Hydra config, as run_job set it
        out_dir = Path(str(hydra.runtime.output_dir))
        # sent as plain containers: a plugin's config node (the launcher's, the sweeper's) does not pickle, as
        # Hydra's plugin scan defines its class a second time
        hydra_node = OmegaConf.to_container(cast(DictConfig, hydra), resolve=False)
        if multiprocessing.get_start_method(allow_none=True) not in (None, "fork", "spawn", "forkserver"):
            # a joblib (loky) worker sets a start method of its own, which a spawned child cannot find
            multiprocessing.set_start_method("spawn", force=True)
        context = multiprocessing.get_context("spawn")
        reader, writer = context.Pipe(duplex=False)
        started = time.time()
        with ExitStack() as held:
            env = held.enter_context(one_gpu_each(cfg, job=out_dir.name)) if self.one_gpu_each else {}
            gpu = env.get("CUDA_VISIBLE_DEVICES")
            note = f"this job's GPU: CUDA_VISIBLE_DEVICES={gpu} (hydra/launcher=parallel: one per job)" if gpu else ""
            child = context.Process(
                target=_job_process,
                args=(writer, self.task, hydra_node, cfg, note),
                name=f"mmbench job {out_dir.name}",
            )
            # the child starts with this process's environment and `env`; the resource tracker that multiprocessing
            # starts beside the first child keeps the requeue signal blocked (SLURM sends it to every process of
            # the job, and its default action would end the tracker: a warning and a KeyError traceback)
            with _environment(env), _blocked(requeue_signal()):
                child.start()
            writer.close()  # the child holds the only writer: the reader sees its end
            with _forwarded_signals(child) as requeue:
                outcome = _wait(child, reader)
        if requeue and (outcome is None or outcome[0] == "exit"):  # stopped for SLURM's requeue signal
            return _requeue(requeue, out_dir, cfg, since=started)
        if outcome is not None:
            kind, value = outcome
            if kind == "return":
                return value
            if kind == "exit":
                raise SystemExit(value)
            raise value
        # the child died before it returned: record why, then go on with the sweep (or stop it, if asked to)
        assert child.exitcode is not None and child.pid is not None
        cause = death_cause(child.exitcode, child.pid)
        stopped = -child.exitcode in STOPS
        try:
            recorded = record_death(out_dir, cfg, cause, since=started, status="interrupted" if stopped else "failed")
        except Exception as err:  # the sweep goes on all the same
            log.warning(
                "could not record the end of job %s in its metrics.json: %s: %s", out_dir.name, type(err).__name__, err
            )
            recorded = False
        log.error(
            "job %s %s%s",
            out_dir.name,
            cause,
            "" if recorded else " (not recorded in its metrics.json, which holds another run or its own ending)",
        )
        if stopped:
            raise SystemExit(128 - child.exitcode)
        return float("nan")  # a failed trial, as a job that raises returns (train.py)


def _wait(child: multiprocessing.process.BaseProcess, reader: Connection) -> tuple[str, Any] | None:
    """The child's message ('return' | 'exit' | 'raise', value), or None if it ended without one."""
    ready = wait([reader, child.sentinel])
    message = None
    if reader in ready or reader.poll():
        with suppress(EOFError):  # ready because the child ended without writing
            message = reader.recv()
    child.join(EXIT_GRACE_S if message is not None else None)
    if child.exitcode is None:  # returned, but stuck on its way out (a thread, an atexit hook)
        log.warning("job process %s returned but did not exit within %.0f s: killed", child.pid, EXIT_GRACE_S)
        child.kill()
        child.join()
    elif message is not None and child.exitcode != 0 and message[0] != "exit":  # "exit": it exits with its code
        log.warning(
            "job process %s ended after the job returned: %s", child.pid, death_cause(child.exitcode, child.pid or 0)
        )
    return message


def _job_process(conn: Connection, task: TaskRef, hydra_node: dict, cfg: DictConfig, note: str = "") -> None:
    """The child: Hydra's state for this job as run_job set it, then the task function; sends back its outcome.
    `note` goes to the job's log first."""
    from hydra.conf import HydraConf
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import configure_log, setup_globals

    faulthandler.enable()  # a native crash prints every thread's Python stack to stderr before the process dies
    # SLURM sends submitit's requeue signal to every process of the job: the waiting process answers it (and
    # stops this one with SIGTERM first). Ignored here, it does not end this process (the default action of
    # SIGUSR2), nor the data loader workers started from here, which inherit the disposition
    signal.signal(requeue_signal(), signal.SIG_IGN)
    _stop_with_parent()
    try:
        setup_globals()  # Hydra's resolvers (${hydra:...}, ${now:...})
        node = OmegaConf.structured(HydraConf)
        OmegaConf.set_struct(node, False)  # Hydra's node holds keys beyond HydraConf's (env, ...)
        node.merge_with(hydra_node)
        config = copy.deepcopy(cfg)  # the job's whole config, as run_job holds it; the task gets `cfg`
        with read_write(config), open_dict(config):
            config.hydra = node
        HydraConfig.instance().set_config(config)
        function = task.load()  # imports the entry point, which registers its resolvers
        configure_log(config.hydra.job_logging, config.hydra.verbose)
        if note:
            log.info(note)
        value = function(cfg)
    except SystemExit as stop:  # the job asks to stop the sweep (Ctrl-C, SIGTERM)
        conn.send(("exit", stop.code))
        raise
    except KeyboardInterrupt:  # a Ctrl-C the job did not catch, e.g. while it imports
        conn.send(("exit", 128 + signal.SIGINT))
        sys.exit(128 + signal.SIGINT)
    except Exception as err:
        traceback.print_exc()  # the child's traceback; the waiting process raises the exception again
        try:
            conn.send(("raise", err))
        except Exception:  # an exception that does not pickle
            conn.send(("raise", RuntimeError(f"{type(err).__name__}: {err}")))
    else:
        conn.send(("return", value))


def _stop_with_parent() -> None:
    """In the child: if the process waiting for it dies, stop as if sent SIGTERM (recorded as interrupted
    inside Lightning's loops; a rerun resumes the job) rather than train on with nobody waiting."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        wait([parent.sentinel])
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="mmbench-parent-watch", daemon=True).start()


@contextmanager
def _forwarded_signals(child: multiprocessing.process.BaseProcess) -> Iterator[dict[int, Callable]]:
    """While waiting for `child`: SIGTERM, and SIGINT unless a terminal sent it to the child too, go to the
    child, whose handlers record the interruption (the waiting process then stops with its exit code).

    The requeue signal, where a handler of this process answers it (submitit's: save the resubmission,
    `scontrol requeue`, exit), stops the child with SIGTERM instead; yields {signal: that handler} once it came,
    for the caller to run when the child has ended (`_requeue`)."""
    requeue: dict[int, Callable] = {}
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield requeue
        return

    def forward(signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and _terminal_foreground():
            return
        with suppress(ProcessLookupError):
            os.kill(child.pid, signum)  # type: ignore[arg-type]

    def stop_for_requeue(signum: int, frame: Any) -> None:
        requeue[signum] = cast(Callable, previous[signum])
        with suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGTERM)  # type: ignore[arg-type]

    previous: dict[int, Any] = {signum: signal.signal(signum, forward) for signum in STOPS}
    usr = requeue_signal()
    if callable(signal.getsignal(usr)):  # submitit's handler (under SLURM or submitit's local executor)
        previous[usr] = signal.signal(usr, stop_for_requeue)
    try:
        yield requeue
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def requeue_signal() -> signal.Signals:
    """The signal that SLURM sends before a job's time limit, and submitit for a preemption: submitit's own
    (SIGUSR2 in submitit >= 1.5, unless SUBMITIT_PREEMPT_SIGNAL names another)."""
    try:
        from submitit.core.job_environment import JobEnvironment
    except ImportError:  # no submitit (mmbench without its [sweep] extra): nothing sends it
        name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    else:
        name = JobEnvironment.USR_SIG
    try:
        return signal.Signals[f"SIG{name}"]
    except KeyError:
        raise ValueError(
            f"SUBMITIT_PREEMPT_SIGNAL={name!r} is not a signal: unset it (SIGUSR2) or name one without SIG, e.g. USR1"
        ) from None


def _requeue(requeue: dict[int, Callable], out_dir: Path, cfg: DictConfig, since: float) -> Any:
    """After the child stopped for the requeue signal: run the handler that the signal found (submitit's, which
    requeues the job and exits this process); if it does not requeue, record the job as failed with the
    reason and return NaN, so that the sweep goes on and its summary lists the job."""
    ((signum, handler),) = requeue.items()
    log.warning(
        "job %s: %s (SLURM: its time limit is near, or it is preempted) stopped its process; its last checkpoint "
        "stays, and the job resumes from it if it is requeued",
        out_dir.name,
        signal.Signals(signum).name,
    )
    try:
        handler(signum, None)  # submitit: the resubmission saved, `scontrol requeue <job>`, then sys.exit
    except Exception as err:  # not requeued: e.g. it timed out more often than max_num_timeout allows
        cause = (
            f"stopped at its time limit (SLURM's {signal.Signals(signum).name}) and not requeued: {err} Rerun the "
            f"same command to resume it from its last checkpoint; to let submitit resubmit it, raise "
            f"hydra.launcher.max_num_timeout (or hydra.launcher.timeout_min)"
        )
        try:
            record_death(out_dir, cfg, cause, since=since, replace=True)
        except Exception as record_err:
            log.warning("could not record the end of job %s: %s", out_dir.name, record_err)
        log.error("job %s %s", out_dir.name, cause)
        return float("nan")
    # the handler returned: this task is not the one that requeues (another rank of the job is)
    raise SystemExit(128 + signal.SIGTERM)


def _terminal_foreground() -> bool:
    """Whether this process is in its terminal's foreground process group, to which a Ctrl-C goes."""
    try:
        fd = os.open("/dev/tty", os.O_RDONLY)
    except OSError:  # no controlling terminal
        return False
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return False
    finally:
        os.close(fd)


def death_cause(exitcode: int, pid: int) -> str:
    """One line: why a job's process `pid` ended without returning. `exitcode` as multiprocessing gives it
    (-N: killed by signal N)."""
    if exitcode >= 0:
        return (
            f"its process ({pid}) exited with code {exitcode} before the job returned (a native library's exit(), "
            f"os._exit, or an error before the job started); the sweep's stderr says why"
        )
    try:
        name = signal.Signals(-exitcode).name
    except ValueError:
        name = f"signal {-exitcode}"
    head = f"killed by {name} (signal {-exitcode}), process {pid}"
    if -exitcode == signal.SIGKILL:
        return (
            f"{head}: the kernel's OOM killer (out of memory) or `kill -9`. If it was the OOM killer, `dmesg` "
            f"(or `journalctl -k`) has 'Out of memory: Killed process {pid}'; under SLURM, `sacct` says OUT_OF_MEMORY"
        )
    if -exitcode in CRASHES:
        return (
            f"{head}: a crash in native code (PyTorch, a CUDA driver, a C extension); the sweep's stderr has the "
            f"Python stack of every thread at the crash (faulthandler)"
        )
    if -exitcode in STOPS:
        return f"{head}: interrupted before it could record it"
    return f"{head}: sent by another process"


def record_death(
    out_dir: Path, cfg: DictConfig, cause: str, since: float, status: str = "failed", replace: bool = False
) -> bool:
    """Write `status` and `cause` into the metrics.json of a job whose process, started at `since` (time.time()),
    died before it returned; unless its run completed, the job recorded its own end since then (`replace`: write
    over that record, e.g. an `interrupted` that was followed by no requeue), or its directory holds a run of
    another config (which its process refused). Returns whether it wrote."""
    from hydra.core.hydra_config import HydraConfig

    from mmbench.config import choices_of, register_resolvers
    from mmbench.record import RunRecord, read_record
    from mmbench.rundir import config_identity, holds, read_identity

    path = out_dir / "metrics.json"
    record = read_record(out_dir)
    if record and (record.get("status") == "completed" or (path.stat().st_mtime >= since and not replace)):
        return False  # a completed run (being skipped), or one that died on its way out, after recording its end
    register_resolvers()  # this config's ${mmbench.*} (a joblib worker resolves it here)
    config_hash, config = config_identity(cfg)
    held = read_identity(out_dir) or record
    if held is not None and not holds(held, config_hash, config):
        return False
    dead = RunRecord.training(
        config_hash=config_hash,
        choices=choices_of(cfg),
        overrides=list(HydraConfig.get().overrides.task),
        seed=cfg.get("seed"),
        config=config,
    )
    dead.status, dead.error, dead.wall_s = status, cause, round(time.time() - since, 3)
    dead.write(out_dir)  # with this process's provenance (versions, git, machine)
    return True


# ------------------------------------------------------------------ one GPU per job under hydra/launcher=parallel

GPU_COUNT_ENV = "MMBENCH_GPU_COUNT"  # how many GPUs jobs are handed; default: every GPU the NVIDIA driver lists
GPU_LOCKS_ENV = "MMBENCH_GPU_LOCKS"  # where the claims are; default: <temp dir>/mmbench-gpus-<uid>, per machine
MAX_JOBS_PER_GPU = 64


def gpu_count() -> int:
    """GPUs to hand out: MMBENCH_GPU_COUNT where set (fewer than the machine has, or a test's fake count), else
    the NVIDIA GPUs the driver lists in /proc/driver/nvidia/gpus (read without CUDA, and without importing torch
    in a process that only waits)."""
    value = os.environ.get(GPU_COUNT_ENV)
    if value is None:
        try:
            return len(os.listdir("/proc/driver/nvidia/gpus"))
        except OSError:  # no NVIDIA driver
            return 0
    if not value.strip().isdigit():
        raise ValueError(
            f"{GPU_COUNT_ENV}={value!r}: expected the number of GPUs to hand out to the jobs (an integer >= 0); "
            f"unset it to hand out every GPU the NVIDIA driver lists"
        )
    return int(value)


@contextmanager
def one_gpu_each(cfg: DictConfig, job: str = "") -> Iterator[dict[str, str]]:
    """The environment for the process of a job that runs beside others on this machine (hydra/launcher=parallel):
    CUDA_VISIBLE_DEVICES=<one GPU>, so that the job's `cuda:0` is a GPU of its own. The least used GPU is
    taken: one job per GPU while one is free; with more jobs at once than GPUs (hydra.launcher.n_jobs), they
    share them evenly (round-robin) rather than wait, as a researcher who runs 8 small jobs on 2 GPUs means them
    to. A claim is an flock on `<locks>/gpu<i>.<k>.lock` (the k-th job on GPU i), held while the block lasts;
    the kernel drops it when its process ends, however it ends. The claims are per machine, so two sweeps
    started side by side divide the GPUs between them too.

    Empty (the job's environment as it is) where the choice is not the launcher's to make:
    - CUDA_VISIBLE_DEVICES is set already: the user chose the devices (dividing their list would be a guess);
    - `trainer.devices` is not 1 (2, "auto", -1, a list of indices): the job places its ranks on the devices it
      names (DDP), which must all stay visible (docs/sweeps.md §5: DDP and this launcher do not mix);
    - `trainer.accelerator` is cpu (mmbench's default), or the machine has no GPU."""
    devices = OmegaConf.select(cfg, "trainer.devices", default=1)
    accelerator = str(OmegaConf.select(cfg, "trainer.accelerator", default="auto")).lower()
    count = gpu_count()
    if "CUDA_VISIBLE_DEVICES" in os.environ or str(devices) != "1" or accelerator == "cpu" or count == 0:
        yield {}
        return
    locks = Path(os.environ.get(GPU_LOCKS_ENV) or Path(tempfile.gettempdir()) / f"mmbench-gpus-{os.getuid()}")
    locks.mkdir(parents=True, exist_ok=True)
    for k in range(MAX_JOBS_PER_GPU):  # the least used GPU first
        for gpu in range(count):
            fd = os.open(locks / f"gpu{gpu}.{k}.lock", os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by the child
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    continue
                raise
            try:
                log.info("job %s: GPU %d of %d, with %d other job(s) on it", job, gpu, count, k)
                yield {"CUDA_VISIBLE_DEVICES": str(gpu)}
            finally:
                os.close(fd)  # the claim ends with the job
            return
    log.warning("job %s: %d jobs hold each of the %d GPUs: it sees all of them", job, MAX_JOBS_PER_GPU, count)
    yield {}


@contextmanager
def _blocked(signum: int) -> Iterator[None]:
    """`signum` blocked in this thread (pending until the block ends), and in the processes started within."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signum})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    """This process's os.environ with `env` added, while a child is started from it."""
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
