"""metrics.json: the one file per run that reports and dashboards read (see docs/design.md).

Its `status` is `running` while the run lives, then one of
- `completed`;
- `failed`: an error (with its traceback, or one message for an invalid config or checkpoint);
- `diverged`: training met a non-finite loss or weights (`Diverged`); the checkpoints hold the
  last finite weights;
- `interrupted`: Ctrl-C or SIGTERM (`Interrupted`); a rerun resumes it from `checkpoints/last.ckpt`.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from importlib import metadata
from pathlib import Path

_PACKAGES = (
    "mmbench",
    "torch",
    "pytorch-lightning",
    "hydra-core",
    "omegaconf",
    "datasets",
    "tokenizers",
    "torchmetrics",
    "wandb",
)


class Diverged(RuntimeError):
    """Training produced a non-finite loss or weights: the run stops with status `diverged`."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM stopped the run: status `interrupted`. A KeyboardInterrupt, so that
    whatever stops on Ctrl-C (a sweep, pytest, a notebook) stops on it and `except Exception` does not
    swallow it."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


def versions() -> dict[str, str | None]:
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_sha() -> str | None:
    """Commit of the mmbench source tree (None outside a git checkout); '+dirty' if modified."""
    src = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def write_metrics(path: str | os.PathLike, record: dict) -> None:
    """Write atomically, so an interrupted write never leaves a truncated metrics.json; strict JSON,
    so NaN and infinities are written as null (a bare NaN token is rejected by strict parsers)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(
        json.dumps(
            _finite(record), indent=2, sort_keys=False, allow_nan=False, default=lambda value: _finite(float(value))
        )
    )  # numpy / torch scalars
    os.replace(tmp, path)


def _finite(value):
    """`value` with every non-finite float, at any depth, replaced by None."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
