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
import platform
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
    out: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def machine() -> dict[str, str | int | None]:
    """Where a run's numbers came from. The same code, data, seed and thread count give the same numbers
    on one machine, but not across machines of one kind: oneDNN and MKL pick kernels and blockings by
    the CPU's instruction set and caches, and 1,000 steps amplify a last-bit difference into the third
    decimal (docs/results.md, objective_ablation on Shapes v8). So each run records its CPU (Linux's
    /proc/cpuinfo and sysfs cache sizes; None where they are not readable), and the report says when a
    table mixes machines."""
    import torch  # lazy: metrics.json's writers have it loaded; this module's importers need not

    info = _cpuinfo()
    return {
        "cpu": info.get("model name") or platform.processor() or None,
        "cpu_id": " ".join(f"{k.split()[-1]} {info[k]}" for k in CPU_ID_KEYS if k in info) or None,
        "isa": torch.backends.cpu.get_cpu_capability(),
        "cpus": os.cpu_count(),
        "caches": _caches(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


CPU_ID_KEYS = ("cpu family", "model", "stepping")  # with the vendor's model name: which CPU generation


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ({} elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields = {}
    for line in text.split("\n\n")[0].splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def _caches() -> str | None:
    """'L1d 32K L1i 32K L2 1024K L3 32768K': the first CPU's caches (sysfs; None elsewhere)."""
    names = {"Data": "d", "Instruction": "i", "Unified": ""}
    parts = []
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level, kind, size = ((index / f).read_text().strip() for f in ("level", "type", "size"))
        except OSError:
            continue
        parts.append(f"L{level}{names.get(kind, '')} {size}")
    return " ".join(parts) or None


def machine_label(record: dict | None) -> str:
    """One line naming a machine record (`machine()`), '' for none: 'AMD EPYC (family 25 model 17
    stepping 1), avx512, 2 CPUs, L1d 32K L1i 32K L2 1024K L3 32768K'."""
    if not record:
        return ""
    cpu = record.get("cpu") or "unknown CPU"
    if record.get("cpu_id"):
        cpu += f" ({record['cpu_id']})"
    parts = [cpu, str(record.get("isa") or "").lower(), f"{record['cpus']} CPUs" if record.get("cpus") else ""]
    parts += [record.get("caches") or "", record.get("gpu") or ""]
    return ", ".join(p for p in parts if p)


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
