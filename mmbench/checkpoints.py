"""Reading a run's checkpoints back: weights only, and the CSV log up to the step a run resumes from.

- `load_checkpoint`: `torch.load(weights_only=True)`, so a file planted in a run directory cannot run code;
  `CheckpointError` names a file that is refused, or a checkpoint that this run cannot continue (raised also
  by the resumable train loader, mmbench/data/loaders.py, and `callbacks.check_resumable`).
- `csv_history` / `restore_csv_history`: Lightning's CSV logger deletes metrics.csv when it starts, so a
  resumed run keeps the rows written before its checkpoint.

Light imports only: torch and Lightning are imported by the functions that need them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mmbench.distributed import global_rank


class CheckpointError(ValueError):
    """A checkpoint that `torch.load(weights_only=True)` refuses or cannot read, or that this run cannot
    continue exactly."""


def load_checkpoint(path: str | os.PathLike) -> dict:
    """A checkpoint, loaded on the CPU with `weights_only=True`: tensors and plain containers only, so
    unpickling a file that someone else put in a run directory cannot run code. Lightning's and
    mmbench's checkpoints need nothing more (`RNGState` saves plain types). Raises CheckpointError
    naming the file when it is refused or unreadable."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        lines = str(err).splitlines() or [type(err).__name__]
        reason = next((line for line in lines if "Unsupported" in line), lines[0])
        # without torch's hint to allow-list the global
        reason = reason.split(". Please use")[0].replace("WeightsUnpickler error: ", "").strip()
        raise CheckpointError(
            f"{path} is not a checkpoint that loads as weights only ({reason}). mmbench reads checkpoints with "
            "torch.load(weights_only=True) and unpickles nothing else, since unpickling can run code; a checkpoint "
            "written by mmbench-train always loads. If you did not write this file, delete it"
        ) from None


def csv_history(loggers, step: int | None) -> list[tuple[Any, list[dict]]]:
    """Rows that the CSV loggers wrote before global step `step`, the checkpoint a run resumes from
    (Lightning's CSV writer deletes metrics.csv when it starts); put back with `restore_csv_history`."""
    if step is None or global_rank() != 0:  # only rank 0 writes the CSV log
        return []
    import csv

    from pytorch_lightning.loggers import CSVLogger

    saved = []
    for lg in loggers:
        path = Path(lg.log_dir) / "metrics.csv" if isinstance(lg, CSVLogger) else None
        if path is None or not path.exists():
            continue
        with open(path, newline="") as f:  # rows logged after the checkpoint are logged again
            rows = [
                {k: v for k, v in r.items() if v != ""}
                for r in csv.DictReader(f)
                if r.get("step") and int(r["step"]) < step
            ]
        saved.append((lg, rows))
    return saved


def restore_csv_history(saved: list[tuple[Any, list[dict]]]) -> None:
    for lg, rows in saved:
        lg.experiment.metrics[:0] = rows  # written with the resumed run's rows at the next save
