"""metrics.json: the one file per run that reports and dashboards read (see DESIGN.md)."""

from __future__ import annotations

import json
import os
import subprocess
from importlib import metadata
from pathlib import Path

_PACKAGES = ("mmbench", "torch", "pytorch-lightning", "hydra-core", "omegaconf", "datasets", "tokenizers", "torchmetrics", "wandb")


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
        dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def write_metrics(path: str | os.PathLike, record: dict) -> None:
    """Write atomically, so an interrupted write never leaves a truncated metrics.json."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=False, default=float))
    os.replace(tmp, path)
