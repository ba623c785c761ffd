"""metrics.json: the one file per run that reports and dashboards read (see docs/design.md), written and
read here: `RunRecord` (what `mmbench-train` and `mmbench-eval` write), `read_record`, `write_metrics`.

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
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

RECORD_FILE = "metrics.json"

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


@dataclass
class RunRecord:
    """A run's metrics.json, for a training run (`training`: pipeline.run) and for a re-evaluation of a
    checkpoint (`evaluation`: evaluate.run_eval). `as_dict` is what is written: the keys of its mode in the
    order they have always had, then those of `WHEN_SET` that are set."""

    mode: str  # "train" or "eval" (written for "eval" only: training records never had the key)
    status: str  # "running", then "completed", "failed", "diverged" or "interrupted" (module docstring)
    choices: dict | None  # the config-group choices (config.choices_of); an eval: those of the run it evaluates
    overrides: list[str]  # the command line's task overrides
    versions: dict[str, str | None]  # `versions()`
    git: str | None  # `git_sha()`
    machine: dict[str, str | int | None]  # `machine()`
    metrics: dict[str, float] = field(default_factory=dict)
    complexity: dict[str, Any] = field(default_factory=dict)  # metrics.complexity.complexity
    wall_s: float | None = None
    # a training run
    config_hash: str | None = None  # mmbench.rundir.config_identity; also in every checkpoint
    seed: Any = None  # as given: an int once validate() has passed, a refused `seed=abc` as it was written
    config: dict | None = None  # resolved, without the keys that say how to run (rundir.IGNORED)
    # an evaluation
    ckpt_path: str | None = None
    run_dir: str | None = None  # the training run the checkpoint is from
    eval_s: float | None = None
    vqa_server_file: str | None = None  # answers for the VQA evaluation server (`vqa_server.questions`)
    # a training run: where this process's seconds went (pipeline._train: setup_s, train_s, validation_s,
    # test_s, suite_s, finish_s)
    timing: dict[str, float] | None = None
    # how a run that did not complete ended
    error: str | None = None
    traceback: str | None = None

    # the keys written, per mode, in their order; then those of WHEN_SET that are set
    # fmt: off
    KEYS: ClassVar[dict[str, tuple[str, ...]]] = {
        "train": ("status", "config_hash", "choices", "overrides", "seed", "metrics", "complexity",
                  "versions", "git", "machine", "wall_s", "config"),
        "eval": ("status", "mode", "ckpt_path", "run_dir", "choices", "overrides", "metrics", "complexity",
                 "versions", "git", "machine", "eval_s", "wall_s"),
    }
    # fmt: on
    WHEN_SET: ClassVar[tuple[str, ...]] = ("error", "traceback", "vqa_server_file", "timing")

    @classmethod
    def training(cls, *, config_hash: str, choices: dict, overrides: list[str], seed: Any, config: dict) -> RunRecord:
        """A training run's record as it starts (`running`), with this process's provenance."""
        return cls(
            mode="train",
            status="running",
            config_hash=config_hash,
            choices=choices,
            overrides=overrides,
            seed=seed,
            versions=versions(),
            git=git_sha(),
            machine=machine(),
            config=config,
        )

    @classmethod
    def evaluation(
        cls,
        *,
        ckpt_path: str,
        run_dir: str,
        choices: dict | None,
        overrides: list[str],
        metrics: dict[str, float],
        complexity: dict[str, Any],
        eval_s: float,
        wall_s: float,
        vqa_server_file: str | None = None,
    ) -> RunRecord:
        """A completed evaluation's record, with this process's provenance."""
        return cls(
            mode="eval",
            status="completed",
            ckpt_path=ckpt_path,
            run_dir=run_dir,
            choices=choices,
            overrides=overrides,
            metrics=metrics,
            complexity=complexity,
            versions=versions(),
            git=git_sha(),
            machine=machine(),
            eval_s=eval_s,
            wall_s=wall_s,
            vqa_server_file=vqa_server_file,
        )

    def as_dict(self) -> dict[str, Any]:
        """The record as metrics.json holds it (before `write_metrics` writes non-finite numbers as null)."""
        if self.mode not in self.KEYS:
            raise ValueError(f"RunRecord mode {self.mode!r}: one of {sorted(self.KEYS)}")
        out = {key: getattr(self, key) for key in self.KEYS[self.mode]}
        return out | {key: getattr(self, key) for key in self.WHEN_SET if getattr(self, key) is not None}

    def write(self, run_dir: str | os.PathLike) -> None:
        """`<run_dir>/metrics.json`, atomically (`write_metrics`)."""
        write_metrics(Path(run_dir) / RECORD_FILE, self.as_dict())


def read_record(run_dir: str | os.PathLike) -> dict | None:
    """The metrics.json of a run directory as written (any mmbench's, or `launch.record_death`'s), None when
    there is none or it does not parse."""
    try:
        return json.loads((Path(run_dir) / RECORD_FILE).read_text())
    except (OSError, ValueError):
        return None
