"""`mmbench-train` / `python -m mmbench.train`: the Hydra entry point (thin; see pipeline.py)."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from mmbench.config import register_resolvers

register_resolvers()
log = logging.getLogger("mmbench.train")

# conf/ lives at the top of the repository (installed editable), beside the package.
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def main() -> None:
    """Console entry point: check list choices, then hand over to Hydra."""
    from mmbench.config import check_group_options

    problem = check_group_options(sys.argv[1:], CONFIG_DIR)
    if problem:
        print(f"mmbench: {problem}", file=sys.stderr)
        sys.exit(2)
    train()


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def train(cfg: DictConfig) -> float | None:
    """One job. In a multirun a failing or diverging job records `"status": "failed"` / `"diverged"`
    in its metrics.json and returns normally, so the sweep goes on (SweepSummary exits non-zero at the
    end); a single run keeps failing loudly (exit code 2 and one message for an invalid config or
    checkpoint, 1 and one message for a diverged run). Ctrl-C or SIGTERM records `"interrupted"` and
    stops the run or the whole sweep (exit code 130 / 143); rerunning the command resumes it."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from mmbench.config import ConfigError
    from mmbench.record import Diverged, Interrupted
    from mmbench.sweep import CheckpointError, read_record, torch_threads

    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    out_dir = Path(cfg.paths.output_dir)
    previous = read_record(out_dir) if cfg.get("resume", True) else None
    if previous and previous.get("status") == "completed":
        log.info("skipping %s: completed by an earlier run of this sweep (resume=false reruns it)", out_dir)
        value = previous["metrics"].get(cfg.monitor.metric)
        return float("nan") if value is None else value  # metrics.json writes NaN as null
    if previous and previous.get("status") == "diverged":
        log.warning("%s diverged in its previous run (%s). Rerun with the same settings, it diverges again: it "
                    "resumes from its last finite checkpoint if it has one (delete %s to start afresh)",
                    out_dir, previous.get("error"), out_dir / "checkpoints")

    threads = torch_threads(cfg.get("torch_threads"))
    if threads:
        import torch

        torch.set_num_threads(threads)
        log.info("torch threads per job: %d", threads)

    from mmbench.pipeline import run

    try:
        record = run(cfg)
    except (ConfigError, CheckpointError) as err:
        print(f"mmbench: {err}", file=sys.stderr)
        if multirun:
            return float("nan")  # a failed trial for sweepers that optimise the returned value
        sys.exit(2)
    except KeyboardInterrupt as err:  # metrics.json says interrupted
        print(f"mmbench: {str(err) or 'interrupted by SIGINT (Ctrl-C)'}; rerun the same command to resume from "
              f"{out_dir / 'checkpoints'}", file=sys.stderr)
        sys.exit(128 + int(err.signum if isinstance(err, Interrupted) else signal.SIGINT))
    except Diverged as err:  # metrics.json says diverged
        if multirun:
            log.error("job %s %s", out_dir.name, err)
            return float("nan")
        print(f"mmbench: {err}", file=sys.stderr)
        sys.exit(1)
    except Exception as err:  # noqa: BLE001 - metrics.json already says failed, with the traceback
        if not multirun:
            raise
        log.error("job %s failed: %s: %s (see its metrics.json)", out_dir.name, type(err).__name__, err)
        return float("nan")
    # returned for Hydra sweepers (e.g. optuna) that optimise the monitored metric
    return record["metrics"].get(cfg.monitor.metric)


if __name__ == "__main__":
    main()
