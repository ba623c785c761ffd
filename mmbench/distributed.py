"""DDP launch handling: this process's rank, and Lightning's local DDP launcher inside a Hydra multirun.

Lightning's local launcher (`trainer=ddp` without SLURM) starts the ranks other than 0 by re-running this
process's command line (`sys.argv`) with MASTER_ADDR, MASTER_PORT, NODE_RANK, LOCAL_RANK and WORLD_SIZE
in the environment. In a multirun that command line is the whole `-m` sweep, so for each DDP job:

- `ddp_single_run(saved)` makes it the job's own single run (its overrides, its directory as
  hydra.run.dir) and records in `saved` (a `SavedLaunch`) the sweep's command line and those variables;
- `ddp_cleanup(saved)` after the job frees the process group and puts back what `saved` holds, so the
  next job launches its own ranks. pipeline.run creates one `SavedLaunch` per run and always cleans up.

`global_rank()` says which rank this process is (one metrics.json and one run-directory lock per run).
Kept free of torch/Lightning imports at module level: a refused or skipped job must stay fast.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import cast

# set by Lightning's launcher for the ranks it starts (and read by the next launch if left in place)
DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


@dataclass
class SavedLaunch:
    """What `ddp_single_run` changed for one DDP job of a multirun, for `ddp_cleanup` to put back: the
    sweep's command line (None: nothing was changed) and the DDP_ENV variables as they were (None: unset)."""

    argv: list[str] | None = None
    env: dict[str, str | None] = field(default_factory=dict)


def ddp_single_run(saved: SavedLaunch) -> bool:
    """Inside a multirun job about to start Lightning's local DDP launcher: make the command that
    Lightning re-executes for the other ranks this job's own single run (its overrides, its
    directory as hydra.run.dir) instead of the whole `-m` sweep, noting in `saved` what to undo.
    Returns True if it did. Undo with `ddp_cleanup(saved)` after the job. Not needed (and not done)
    under SLURM."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import DictConfig, read_write

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN or "SLURM_NTASKS" in os.environ:
        return False
    hc = cast(DictConfig, HydraConfig.get())  # a DictConfig at run time, typed as the HydraConf dataclass
    saved.argv = list(sys.argv)
    saved.env = {k: os.environ.get(k) for k in DDP_ENV}
    sys.argv = [sys.argv[0], *[str(o) for o in hc.overrides.task]]
    with read_write(hc):
        hc.run.dir = hc.runtime.output_dir
    return True


def ddp_cleanup(saved: SavedLaunch) -> None:
    """After a DDP job of a multirun: free the process group so the next job can start its own, and put
    back the command line and environment that `ddp_single_run(saved)` changed."""
    if "torch" not in sys.modules:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    if saved.argv is not None:
        sys.argv, saved.argv = saved.argv, None
        # Lightning's launcher set these for its ranks; left in place, the next job would believe
        # its processes are created externally (LOCAL_RANK) and wait for ranks nobody starts
        for key, value in saved.env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def global_rank() -> int:
    """This process's global rank (Lightning's once a Trainer exists, else the launcher's env)."""
    if "pytorch_lightning" in sys.modules:
        from pytorch_lightning.utilities.rank_zero import rank_zero_only

        rank = getattr(rank_zero_only, "rank", None)
        if rank is not None:
            return int(rank)
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if key in os.environ:
            return int(os.environ[key])
    return 0
