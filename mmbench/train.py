"""`mmbench-train` / `python -m mmbench.train`: the Hydra entry point (thin; see pipeline.py)."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from omegaconf import DictConfig

from mmbench import config
from mmbench.config import register_resolvers

if TYPE_CHECKING:
    from mmbench.rundir import RunDir

register_resolvers()
log = logging.getLogger("mmbench.train")

# conf/ lives at the top of the repository (installed editable), beside the package.
CONFIG_DIR = str(config.CONFIG_DIR)


def main() -> None:
    """Console entry point: check list choices, then hand over to Hydra."""
    from mmbench.config import check_group_options

    problem = check_group_options(sys.argv[1:], CONFIG_DIR)
    if problem:
        print(f"mmbench: {problem}", file=sys.stderr)
        sys.exit(2)
    try:
        train()
    except SystemExit as done:
        # Hydra refuses a command line it cannot compose (unknown key or option, bad syntax) with exit
        # code 1, before any job starts; mmbench's refusals of a config are exit code 2
        if done.code == 1 and not _JOBS_STARTED:
            sys.exit(2)
        raise


_JOBS_STARTED: list[str] = []  # run directories of the jobs this process started


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def train(cfg: DictConfig) -> float | None:
    """One job. In a multirun a failing or diverging job records `"status": "failed"` / `"diverged"`
    in its metrics.json and returns normally, so the sweep goes on (SweepSummary exits non-zero at the
    end); a single run keeps failing loudly (exit code 2 and one message for an invalid config or
    checkpoint, 1 and one message for a diverged run). Ctrl-C or SIGTERM records `"interrupted"` and
    stops the run or the whole sweep (exit code 130 / 143); rerunning the command resumes it. A run
    directory that another process is training, or that holds a run of another config (or any run, with
    resume=false), is refused before anything in it is written: exit code 2 and one message, or a job
    listed as busy / refused at the end of a multirun (mmbench/rundir.py)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from mmbench.config import ConfigError
    from mmbench.rundir import RunDirError, claim
    from mmbench.sweep import note_refusal
    from mmbench.validation import validate

    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    out_dir = Path(cfg.paths.output_dir)
    _JOBS_STARTED.append(str(out_dir))
    if not multirun:  # a single run's bad config is refused before its directory is touched; a sweep's
        try:  # job records it in its metrics.json (pipeline.run) so the sweep summary lists it
            validate(cfg)
        except ConfigError as err:
            print(f"mmbench: {err}", file=sys.stderr)
            sys.exit(2)
    # One process per run directory and one config per run directory (mmbench/rundir.py): lock it and
    # compare its identity with this config before anything in it is written
    try:
        run_dir = claim(out_dir, cfg, resume=bool(cfg.get("resume", True)), multirun=multirun)
    except RunDirError as err:
        print(f"mmbench: {err}", file=sys.stderr)
        if multirun:  # the sweep goes on; SweepSummary lists the job as busy / refused at the end
            note_refusal(out_dir.name, err.kind, str(err))
            return float("nan")
        sys.exit(2)
    with run_dir:  # the lock is held until the job ends (the next job of a sweep takes its own)
        return _job(cfg, out_dir, run_dir, multirun)


def _job(cfg: DictConfig, out_dir: Path, run_dir: RunDir, multirun: bool) -> float | None:
    from mmbench.checkpoints import CheckpointError
    from mmbench.config import ConfigError
    from mmbench.record import Diverged, Interrupted, read_record
    from mmbench.sweep import oversubscribed, torch_threads

    if run_dir.state == "completed":
        log.info(
            "skipping %s: it holds a completed run of this config (metrics.json kept; resume=false refuses, "
            "another directory reruns it)",
            out_dir,
        )
        value = (read_record(out_dir) or {}).get("metrics", {}).get(cfg.monitor.metric)
        return float("nan") if value is None else value  # metrics.json writes NaN as null
    previous = read_record(out_dir)
    if previous and previous.get("status") == "diverged":
        log.warning(
            "%s diverged in its previous run (%s). Rerun with the same settings, it diverges again: it "
            "resumes from its last finite checkpoint if it has one (delete %s to start afresh)",
            out_dir,
            previous.get("error"),
            out_dir / "checkpoints",
        )
    run_dir.start(cfg)  # identity.json and .hydra/

    threads = torch_threads(cfg.get("torch_threads"))
    if threads:
        import torch

        torch.set_num_threads(threads)
        log.info("torch threads per job: %d", threads)
    warning = oversubscribed(threads)
    if warning:
        log.warning(warning)

    from mmbench.models.pretrained.hub import PretrainedNotFound
    from mmbench.pipeline import run

    try:
        record = run(cfg)
    except (ConfigError, CheckpointError, PretrainedNotFound) as err:  # one message: what is missing, what to do
        print(f"mmbench: {err}", file=sys.stderr)
        if multirun:
            return float("nan")  # a failed trial for sweepers that optimise the returned value
        sys.exit(2)
    except KeyboardInterrupt as err:  # metrics.json says interrupted
        print(
            f"mmbench: {str(err) or 'interrupted by SIGINT (Ctrl-C)'}; rerun the same command to resume from "
            f"{out_dir / 'checkpoints'}",
            file=sys.stderr,
        )
        sys.exit(128 + int(err.signum if isinstance(err, Interrupted) else signal.SIGINT))
    except Diverged as err:  # metrics.json says diverged
        if multirun:
            log.error("job %s %s", out_dir.name, err)
            return float("nan")
        print(f"mmbench: {err}", file=sys.stderr)
        sys.exit(1)
    except Exception as err:  # metrics.json already says failed, with the traceback
        if not multirun:
            raise
        log.error("job %s failed: %s: %s (see its metrics.json)", out_dir.name, type(err).__name__, err)
        return float("nan")
    # returned for Hydra sweepers (e.g. optuna) that optimise the monitored metric
    return record["metrics"].get(cfg.monitor.metric)


if __name__ == "__main__":
    main()
