"""Where a sweep's time went, and how far it is from the machine's limit (issue 36, part 3).

    .venv/bin/python scripts/sweep_time.py outputs/multiruns/<sweep> [--workers 2] [--wall 2160]

Reads every job's metrics.json (`timing`: setup, training, validation, test, evaluation suite, finish;
`complexity`: the training step's FLOPs per sample, the measured peak, MFU) and prints, per group of jobs
(the swept model, or whatever varies but the seed): the mean seconds of each part, the evaluation's share
of a job (validation + test + suite), the training's MFU, and the training at 100% of the peak. Then the
sweep's limit: every job's training FLOPs at the measured peak plus its set-up, divided over the workers,
beside the sum of the jobs' wall times over the workers and the sweep's measured wall time (`--wall`, or
the first job's start to the last metrics.json written).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from mmbench.report.jobs import find_jobs
from mmbench.report.tables import group_keys

PARTS = ("setup_s", "train_s", "validation_s", "test_s", "suite_s", "finish_s")


def job_times(path: Path) -> dict[str, float] | None:
    """A completed job's seconds per part, its wall time and its training at the peak, or None."""
    record = json.loads((path / "metrics.json").read_text())
    timing, comp = record.get("timing"), record.get("complexity") or {}
    if record.get("status") != "completed" or not timing:
        return None  # a job of a version without `timing`, or one that did not complete
    out = {part: float(timing[part]) for part in PARTS}
    out["wall_s"] = float(record["wall_s"])
    flops, peak, rate = comp.get("train_flops_per_sample"), comp.get("peak_flops"), comp.get("train_samples_per_s")
    out["mfu"] = float(comp["mfu"]) if comp.get("mfu") is not None else float("nan")
    # the training's samples are its seconds x its rate; at the peak they would have taken FLOPs / peak
    out["train_at_peak_s"] = out["train_s"] * rate * flops / peak if flops and peak and rate else float("nan")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path, nargs="+", help="multirun directories (or job directories)")
    parser.add_argument("--workers", type=int, default=2, help="jobs that ran at once (hydra.launcher.n_jobs)")
    parser.add_argument("--wall", type=float, default=None, help="the sweep's measured wall time in seconds")
    args = parser.parse_args()

    jobs = [j for j in find_jobs(args.sweep) if j.status == "completed"]
    keys = group_keys(jobs)
    groups: dict[str, list[dict[str, float]]] = defaultdict(list)
    for job in jobs:
        times = job_times(job.path)
        if times is not None:
            groups[",".join(f"{k}={job.overrides.get(k)}" for k in keys) or "all"].append(times)
    if not groups:
        raise SystemExit(f"no completed job with `timing` in its metrics.json under {', '.join(map(str, args.sweep))}")

    head = ["group", "jobs", "wall s", "setup", "train", "valid.", "test", "suite", "finish", "eval share", "MFU"]
    print("| " + " | ".join([*head, "train at peak s"]) + " |")
    print("|" + "---|" * (len(head) + 1))
    every = [t for ts in groups.values() for t in ts]
    for name, ts in groups.items():
        mean = {k: sum(t[k] for t in ts) / len(ts) for k in ts[0]}
        share = (mean["validation_s"] + mean["test_s"] + mean["suite_s"]) / mean["wall_s"]
        cells = [name, str(len(ts)), f"{mean['wall_s']:.0f}", *(f"{mean[p]:.0f}" for p in PARTS)]
        print(
            "| " + " | ".join([*cells, f"{share:.0%}", f"{mean['mfu']:.0%}", f"{mean['train_at_peak_s']:.0f}"]) + " |"
        )

    total_wall = sum(t["wall_s"] for t in every)
    limit = sum(t["train_at_peak_s"] + t["setup_s"] for t in every)
    evaluation = sum(t["validation_s"] + t["test_s"] + t["suite_s"] for t in every)
    wall = args.wall
    if wall is None:  # the first job's start (its wall time before its metrics.json) to the last one written
        ends = {job.path: (job.path / "metrics.json").stat().st_mtime for job in jobs}
        starts = [ends[job.path] - job.wall_s for job in jobs if job.wall_s]
        wall = max(ends.values()) - min(starts) if starts else float("nan")
    w = args.workers
    print()
    print(
        f"{len(every)} jobs; their wall times sum to {total_wall:.0f} s: {total_wall / w / 60:.1f} min over {w} workers"
    )
    print(
        f"evaluation (validation + test + suite): {evaluation:.0f} s, {evaluation / total_wall:.0%} of the jobs' time"
    )
    print(f"limit (training at the measured peak + set-up, over {w} workers): {limit / w / 60:.1f} min")
    print(f"the sweep's wall time: {wall / 60:.1f} min")


if __name__ == "__main__":
    main()
