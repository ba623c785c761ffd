"""`mmbench-train` / `python -m mmbench.train`: the Hydra entry point (thin; see pipeline.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from mmbench.config import register_resolvers

register_resolvers()

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
    from mmbench.config import ConfigError
    from mmbench.pipeline import run

    try:
        record = run(cfg)
    except ConfigError as err:
        print(f"mmbench: {err}", file=sys.stderr)
        sys.exit(2)
    # returned for Hydra sweepers (e.g. optuna) that optimise the monitored metric
    return record["metrics"].get(cfg.monitor.metric)


if __name__ == "__main__":
    main()
