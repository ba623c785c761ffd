"""The jobs of sweeps as `mmbench-report` reads them: a `Job` per job directory (its final
`metrics.json` and Hydra overrides), `find_jobs` under directories, the jobs a basic-sweeper
`multirun.yaml` promised that have no directory yet (status 'missing'), and the completed and failed
jobs of an earlier report's `runs.csv` (`read_runs_csv`): a sweep run in parts, on machines whose
outputs are gone, is reported from the small files that were committed."""

from __future__ import annotations

import csv
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from mmbench.overrides import override_key, override_values
from mmbench.record import machine_label, read_record
from mmbench.sweep import SUMMARY_STATE, job_dirname, swept_keys


@dataclass
class Job:
    name: str
    path: Path
    status: str  # completed | failed | unfinished | missing
    overrides: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    params: float | None = None  # complexity.params
    flops: float | None = None  # complexity.flops_per_sample: a forward pass, FLOPs per sample
    mfu: float | None = None  # complexity.mfu: the training steps' model FLOPs utilisation
    peak_memory_mb: float | None = None  # complexity.peak_memory_mb
    peak_memory_scope: str = ""  # complexity.peak_memory_scope: "run" (this run's own peak) or "process"
    wall_s: float | None = None  # the run's own wall time (metrics.json wall_s; a resumed run: its last part)
    machine: str = ""  # where it ran (`record.machine_label` of metrics.json `machine`; '' if not recorded)
    error: str = ""
    # the override keys this job is known by: None = all of them (a job directory); a runs.csv row
    # knows only the keys its report grouped by, plus seed
    known_keys: tuple[str, ...] | None = None

    def knows(self, key: str) -> bool:
        return self.known_keys is None or key in self.known_keys


def _hydra_overrides(job_dir: Path) -> list[str]:
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.exists():
        return []
    from omegaconf import OmegaConf

    return [str(o) for o in OmegaConf.load(path)]


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _number_or_none(v) -> float | int | None:
    return v if _is_number(v) else None  # None too for keys older runs did not record


def read_job(job_dir: Path) -> Job:
    rec = read_record(job_dir)
    if rec is None:
        return Job(
            job_dir.name,
            job_dir,
            "unfinished",
            override_values(_hydra_overrides(job_dir)),
            error="no final metrics.json (killed, or still running)",
        )
    status = SUMMARY_STATE.get(str(rec.get("status")), "unfinished")  # as the sweep summary: diverged = failed
    error = (rec.get("error") or "").strip().splitlines()
    complexity = rec.get("complexity") or {}
    return Job(
        name=job_dir.name,
        path=job_dir,
        status=status,
        overrides=override_values(rec.get("overrides") or _hydra_overrides(job_dir)),
        metrics={k: float(v) for k, v in (rec.get("metrics") or {}).items() if _is_number(v)},
        params=_number_or_none(complexity.get("params")),
        flops=_number_or_none(complexity.get("flops_per_sample")),
        mfu=_number_or_none(complexity.get("mfu")),
        peak_memory_mb=_number_or_none(complexity.get("peak_memory_mb")),
        peak_memory_scope=str(complexity.get("peak_memory_scope") or ""),
        wall_s=_number_or_none(rec.get("wall_s")),
        machine=machine_label(rec.get("machine")),
        error=error[-1].strip() if error else ("" if status != "unfinished" else "metrics.json says running"),
    )


# the columns of runs.csv around its group keys and metrics: formats.write_runs_csv writes them, read_runs_csv reads them
RUNS_CSV_HEAD = ("job", "status")
RUNS_CSV_COMPLEXITY = (
    "seed",
    "params",
    "flops_per_sample",
    "peak_memory_mb",
    "peak_memory_scope",
    "wall_s",
    "machine",
    "mfu",
)
# a runs.csv row in another state was a snapshot (a job still running or not started then): not read
RUNS_CSV_STATES = ("completed", "failed")


def read_runs_csv(path: Path) -> list[Job]:
    """The completed and failed jobs of a report's `runs.csv`: its group keys (the columns between
    `status` and `seed`) and seed as overrides, params, FLOPs, peak memory and every metric column."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        if tuple(header[:2]) != RUNS_CSV_HEAD or "seed" not in header or header[-1] != "error":
            raise ValueError(
                f"{path}: not a runs.csv of mmbench-report (expected the columns job, status, <keys>, "
                f"seed, params, ..., error; got {', '.join(header[:6])}, ...)"
            )
        seed_at = header.index("seed")
        keys = header[2:seed_at]
        # the columns after seed, up to the first metric; a runs.csv written before 2026-12-05 has no
        # wall_s, one written before 2026-12-05 20:30 UTC no machine, one before 2026-12-07 no mfu
        known = [h for h in RUNS_CSV_COMPLEXITY[1:] if h in header[seed_at + 1 : seed_at + len(RUNS_CSV_COMPLEXITY)]]
        metrics_at = seed_at + 1 + len(known)
        jobs = []
        for line, row in enumerate(reader, start=2):
            if len(row) != len(header):
                raise ValueError(f"{path}, line {line}: {len(row)} cells for {len(header)} columns")
            cell = dict(zip(header, row, strict=True))
            if cell["status"] not in RUNS_CSV_STATES:
                continue
            overrides = {k: cell[k] for k in [*keys, "seed"] if cell[k] != ""}
            jobs.append(
                Job(
                    name=cell["job"],
                    path=path.parent / "runs.csv" / cell["job"],  # no directory: nothing else (curves) to read
                    status=cell["status"],
                    overrides=overrides,
                    metrics={k: float(cell[k]) for k in header[metrics_at:-1] if _float_or_none(cell[k]) is not None},
                    params=_int_or_none(cell["params"]),
                    flops=_float_or_none(cell["flops_per_sample"]),
                    peak_memory_mb=_float_or_none(cell["peak_memory_mb"]),
                    peak_memory_scope=cell["peak_memory_scope"],
                    wall_s=_float_or_none(cell.get("wall_s", "")),
                    machine=cell.get("machine", ""),
                    mfu=_float_or_none(cell.get("mfu", "")),
                    error=cell["error"],
                    known_keys=(*keys, "seed"),
                )
            )
    return jobs


def _float_or_none(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _int_or_none(text: str) -> int | None:
    value = _float_or_none(text)
    return int(value) if value is not None else None


def find_jobs(dirs: list[Path]) -> list[Job]:
    """Every job under the given directories (a job dir has a .hydra/ or a metrics.json), plus the
    jobs a multirun.yaml promised that have no directory yet (status 'missing'); a path to a file is
    read as an earlier report's runs.csv (`read_runs_csv`)."""
    found: dict[Path, Job] = {}
    for root in dirs:
        root = Path(root)
        if root.is_file():
            for job in read_runs_csv(root):
                found.setdefault(job.path.resolve(), job)
            continue
        candidates = {p.parent for p in root.rglob("metrics.json")} | {
            p.parent for p in root.rglob(".hydra") if p.is_dir()
        }
        for job_dir in sorted(candidates):
            if "wandb" in job_dir.parts or job_dir.name == "report":
                continue
            found.setdefault(job_dir.resolve(), read_job(job_dir))
        for sweep in [root, *root.iterdir()] if root.is_dir() else []:
            for missing in _missing_jobs(sweep, {j.path.resolve() for j in found.values()}):
                found.setdefault(missing.path.resolve(), missing)
    return sorted(found.values(), key=lambda j: (str(j.path.parent), j.name))


def _missing_jobs(sweep_dir: Path, present: set[Path]) -> list[Job]:
    """Jobs of a basic-sweeper multirun (from its multirun.yaml) that have no directory yet."""
    path = sweep_dir / "multirun.yaml"
    if not path.exists():
        return []
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from omegaconf import OmegaConf

        cfg = OmegaConf.load(path)
        if "BasicSweeper" not in str(OmegaConf.select(cfg, "hydra.sweeper._target_", default="")):
            return []
        task = [str(o) for o in cfg.hydra.overrides.task]
        params = cast(dict, OmegaConf.to_container(cfg.hydra.sweeper.params)) if cfg.hydra.sweeper.get("params") else {}
        names = {override_key(o) for o in task}
        arguments = task + [f"{k}={v}" for k, v in (params or {}).items() if override_key(k) not in names]
        parser = OverridesParser.create()
        batches = BasicSweeper.split_arguments(parser.parse_overrides(arguments), None)
        swept = swept_keys(task, params)
        jobs = []
        for batch in batches:
            for overrides in batch:
                job_dir = sweep_dir / job_dirname(list(overrides), swept)
                if job_dir.resolve() not in present:
                    jobs.append(Job(job_dir.name, job_dir, "missing", override_values(overrides), error="not started"))
        return jobs
    except Exception as err:  # a report on what exists is still useful
        print(f"mmbench-report: could not expand {path}: {err}", file=sys.stderr)
        return []
