"""Sweeps that can be rerun: stable directories, job identity from overrides, failure summary.

- A multirun's directory is `outputs/multiruns/<sweep name>`: `sweep_name=...` if given, else the
  experiment name (or `sweep`) plus a short hash of the other command-line overrides. Rerunning the
  same command therefore finds the same directory; `resume=false` appends a timestamp (fresh sweep).
- A job's directory inside it is named from its own overrides (sorted), never from its job number,
  so reordering or extending a sweep keeps every finished job where the rerun looks for it.
- `train.py` skips a job whose `metrics.json` says completed and resumes any other one (unfinished,
  interrupted, failed, diverged) from `checkpoints/last.ckpt` (pipeline.py), if its directory holds a run
  of the same config (mmbench/rundir.py); `RNGState` makes that resume bit-exact on CPU. Checkpoints are
  read weights only (mmbench/checkpoints.py), so a file planted in a run directory cannot run code.
- `SweepSummary` (a Hydra callback) prints the state of every job at the end of a multirun and makes
  the command exit non-zero when one of them failed, diverged or is unfinished, or when its run directory
  refused it (busy with another process, or holding a run of another config: `note_refusal`).
- `torch_threads`: threads per job ('auto': the cores shared among the joblib launcher's parallel jobs).

The DDP launch inside a multirun job (argv / environment for Lightning's launcher) is mmbench/distributed.py;
override strings are read by mmbench/overrides.py, metrics.json by mmbench/record.py.
Kept free of torch/Lightning imports at module level: Hydra instantiates the callback before any job.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from mmbench.overrides import RUN_KEYS, override_key
from mmbench.record import RECORD_FILE, read_record

# the sweep's name and swept keys, set by SweepSummary.on_multirun_start for the resolvers (no module state)
_SWEEP_ENV, _SWEPT_ENV = "MMBENCH_SWEEP_NAME", "MMBENCH_SWEPT_KEYS"
_REFUSALS_ENV = "MMBENCH_SWEEP_REFUSALS"  # file where jobs note that their run directory refused them


def _digest(items: list[str]) -> str:
    return hashlib.sha1("\n".join(items).encode()).hexdigest()[:8]


def sweep_name(task_overrides: list[str], name: str | None = None, resume: bool = True) -> str:
    """Directory name of a sweep: `name`, or `<experiment|sweep>[-<hash of the other overrides>]`."""
    if not name:
        overrides = [str(o) for o in task_overrides]
        named = ("experiment", "hparams_search")  # a named sweep is called after its config
        experiment = [o.split("=", 1)[1] for o in overrides if override_key(o) in named]
        rest = sorted(o for o in overrides if override_key(o) not in (*named, *RUN_KEYS))
        name = "+".join(experiment) if experiment else "sweep"
        if rest or not experiment:
            name = f"{name}-{_digest(rest)}"
    if not resume:
        name = f"{name}-{datetime.now():%Y-%m-%d_%H-%M-%S}"
    return _safe(str(name))


def swept_keys(task_overrides: list[str], sweeper_params: dict | None = None) -> list[str]:
    """Keys a multirun varies: sweep overrides on the command line (`seed=0,1`, `x=range(3)`) and
    the sweeper's `params` (set by experiments and hparams_search configs)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides([str(o) for o in task_overrides])
    keys = [o.key_or_group for o in parsed if o.is_sweep_override()]
    keys += [override_key(str(k)) for k in (sweeper_params or {})]
    return sorted(set(keys) - set(RUN_KEYS))


def job_dirname(task_overrides: list[str], swept: list[str] | None = None, max_len: int = 100) -> str:
    """Directory name of a job from its overrides: the swept ones when known (the others are the
    same for every job and are part of the sweep's name), e.g. `model=vilt,seed=0`; hashed when long."""
    items = sorted(str(o) for o in task_overrides if override_key(str(o)) not in RUN_KEYS)
    if swept:
        items = [o for o in items if override_key(o) in swept] or items
    if not items:
        return "default"
    name = _safe(",".join(items))
    if len(name) > max_len:
        name = f"{name[: max_len - 9]}-{_digest(items)}"
    return name


def _safe(name: str) -> str:
    """A file-system friendly name: `/` -> `_`, lists `[a,b]` -> `a+b`, no quotes or spaces."""
    name = name.replace("/", "_")
    name = re.sub(r"\[([^\]]*)\]", lambda m: m.group(1).replace(",", "+"), name)
    return re.sub(r"[^A-Za-z0-9_.,=+@:-]", "", name)


def _resolve_sweep_name() -> str:
    """`${mmbench.sweep_name:}`: set by SweepSummary.on_multirun_start (cached by OmegaConf and
    copied into every job's config by Hydra, so all jobs of a sweep agree on it)."""
    return os.environ.get(_SWEEP_ENV) or f"{datetime.now():%Y-%m-%d_%H-%M-%S-%f}"


def _resolve_job_dir(overrides) -> str:
    swept = [k for k in os.environ.get(_SWEPT_ENV, "").split("\n") if k]
    return job_dirname(list(overrides or []), swept)


def _resolve_optuna_direction(mode: str) -> str:
    """monitor.mode (min/max) -> optuna's direction (minimize/maximize)."""
    return {"min": "minimize", "max": "maximize"}[str(mode)]


RESOLVERS: dict[str, tuple[Callable[..., Any], bool]] = {  # name -> (resolver, use_cache); config.register_resolvers
    "mmbench.optuna_direction": (_resolve_optuna_direction, False),
    "mmbench.sweep_name": (_resolve_sweep_name, True),
    "mmbench.job_dir": (_resolve_job_dir, False),
}


# ------------------------------------------------------------------------------------ job state


def job_dirs(sweep_dir: Path) -> list[Path]:
    """Job directories of a sweep: subdirectories holding a `.hydra/` or a `metrics.json`."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        return []
    return sorted(
        p for p in sweep_dir.iterdir() if p.is_dir() and ((p / ".hydra").is_dir() or (p / RECORD_FILE).exists())
    )


# a job's status in metrics.json -> its line in the sweep summary: a diverged job failed (its error
# says so); an interrupted one is unfinished like a killed one, and a rerun resumes both
SUMMARY_STATE = {"completed": "completed", "failed": "failed", "diverged": "failed", "interrupted": "unfinished"}


def summarize(sweep_dir: Path) -> dict[str, list[tuple[str, str]]]:
    """{'completed'|'failed'|'unfinished': [(job name, error or '')]} for a sweep directory."""
    state: dict[str, list[tuple[str, str]]] = {"completed": [], "failed": [], "unfinished": []}
    for job in job_dirs(sweep_dir):
        rec = read_record(job) or {}
        if rec.get("status") not in SUMMARY_STATE:
            state["unfinished"].append((job.name, "no final metrics.json (killed or still running)"))
        else:
            error = (rec.get("error") or "").strip().splitlines()
            state[SUMMARY_STATE[rec["status"]]].append((job.name, error[-1] if error else ""))
    return state


class SweepSummary(Callback):
    """Names the sweep directory at the start of a multirun; at its end prints every failed or
    unfinished job with its error and exits with code 1 if there is any."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        task = list(config.hydra.overrides.task)
        name = sweep_name(task, config.get("sweep_name"), bool(config.get("resume", True)))
        params = config.hydra.sweeper.get("params")
        swept = swept_keys(task, cast(dict, OmegaConf.to_container(params)) if params is not None else {})
        # read by the resolvers, in this process and in launchers' workers that start from a fresh
        # interpreter (joblib, submitit), which inherit the environment
        os.environ[_SWEEP_ENV], os.environ[_SWEPT_ENV] = name, "\n".join(swept)
        os.environ[_REFUSALS_ENV] = str(_refusals_file(config))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        state = summarize(sweep_dir)
        # jobs their run directory refused: its state is another run's (or another process's), not this sweep's
        refused = _take_refusals(_refusals_file(config))
        names = {job for job, _, _ in refused}
        state = {status: [j for j in jobs if j[0] not in names] for status, jobs in state.items()}
        for job, kind, message in refused:
            state.setdefault(kind, []).append((job, message.splitlines()[0]))
        bad = [j for status, jobs in state.items() if status != "completed" for j in jobs]
        total = sum(len(v) for v in state.values())
        extra = "".join(f", {len(state[k])} {k}" for k in ("busy", "refused") if state.get(k))
        print(
            f"mmbench: sweep {sweep_dir}: {len(state['completed'])}/{total} completed, "
            f"{len(state['failed'])} failed, {len(state['unfinished'])} unfinished{extra}",
            file=sys.stderr,
        )
        for status in ("failed", "unfinished", "busy", "refused"):
            for name, error in state.get(status, []):
                print(f"  {status}: {name}: {error}", file=sys.stderr)
        if state.get("busy"):
            print(
                "mmbench: a busy job is being trained by another process: rerun this command when that has "
                "ended, and the job is skipped or resumed",
                file=sys.stderr,
            )
        if state.get("refused"):
            print(
                "mmbench: a refused job's directory holds a run of another config (the messages above say which "
                "keys differ) and was left as it is: give this sweep its own directory with sweep_name=<a new "
                "name>, or resume=false (a new timestamped one)",
                file=sys.stderr,
            )
        if state["failed"] or state["unfinished"]:
            print(
                "mmbench: fix the cause and rerun the same command: completed jobs are skipped, "
                "the others resume from their last checkpoint",
                file=sys.stderr,
            )
        if bad:
            sys.stdout.flush()
            sys.stderr.flush()
            sys.exit(1)


def _refusals_file(config: DictConfig) -> Path:
    """Where the jobs of this sweep invocation note refusals (in the sweep directory, which every launcher's
    workers see; named by the launching process, so two invocations of one sweep keep theirs apart)."""
    return Path(str(config.hydra.sweep.dir)).resolve() / f".refused-{os.getpid()}.jsonl"


def note_refusal(job: str, kind: str, message: str) -> None:
    """A job of a multirun that its run directory refused (`mmbench.rundir.RunDirError`): noted for
    SweepSummary, which lists it at the end (the job may run in another process: joblib, submitit)."""
    path = os.environ.get(_REFUSALS_ENV)
    if not path:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:  # one short line per append
        f.write(json.dumps({"job": job, "kind": kind, "message": message}) + "\n")


def _take_refusals(path: Path) -> list[tuple[str, str, str]]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    path.unlink(missing_ok=True)
    notes = [json.loads(line) for line in lines if line.strip()]
    return [(n["job"], n["kind"], n["message"]) for n in notes]


# ------------------------------------------------------------------------------------ threads


def torch_threads(value: Any) -> int | None:
    """Threads per job: an int, or 'auto' = the CPUs of a SLURM job's task (`SLURM_CPUS_PER_TASK`, whether or not
    the cluster pins the task to them), or cores / parallel jobs under the joblib launcher."""
    if value in (None, "null", ""):
        return None
    if str(value) != "auto":
        return int(value)
    if os.environ.get("SLURM_CPUS_PER_TASK", "").isdigit():
        return max(1, int(os.environ["SLURM_CPUS_PER_TASK"]))
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    launcher = HydraConfig.get().launcher
    target = str(launcher.get("_target_", ""))
    if "joblib" not in target.lower():
        return None
    cores = os.cpu_count() or 1
    n_jobs = int(launcher.get("n_jobs") or -1)
    n_jobs = cores if n_jobs < 0 else n_jobs
    return max(1, cores // max(1, n_jobs))


def oversubscribed(threads: int | None) -> str | None:
    """A warning when a run's torch threads would share busy cores: the 1-minute load average before the run
    already fills every core and the run asks for more than one thread (None: torch's default, one per core).
    Several threads on cores that other processes keep busy spin at each parallel region's barrier: a run at 2
    threads beside two one-thread jobs on 2 cores ran at 27 samples/s, at `torch_threads=1` at 374 (14x; milder
    cases ~5x, docs/sweeps.md). Only a warning: the load may be about to end, and the thread count changes
    floating-point sums, so it is not changed behind the user's back."""
    cores = os.cpu_count() or 1
    threads = threads or cores
    try:
        load = os.getloadavg()[0]
    except OSError:  # not on this platform
        return None
    if threads < 2 or load < cores:
        return None
    return (
        f"load average {load:.1f} on {cores} cores before this run: its {threads} torch threads will share cores that "
        f"other processes keep busy, which can make it several times slower (14x measured, docs/sweeps.md); "
        f"torch_threads=1 (or the number of idle cores) avoids it"
    )
