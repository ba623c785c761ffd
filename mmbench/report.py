"""`mmbench-report DIR [DIR ...]`: sweeps -> paper table (Markdown, CSV, LaTeX) and plots (PNG).

Reads only each job's `metrics.json` (and `csv/metrics.csv` for training curves), so it works
offline, on a sweep that is still running, and on one whose jobs partly failed:

- jobs are grouped by the *swept keys*: the overrides whose value differs between jobs, seed
  excluded (seeds are the repetitions);
- every numeric metric (default: the `test/*` ones, `--metrics` picks others by glob) gets
  mean ± std over seeds (sample std, ddof=1; 0 for one seed) and a 95% bootstrap confidence
  interval of the mean (percentile method, fixed RNG seed: the report is deterministic);
- the best group per column is bold: higher is better, except for names ending in `loss`, `ppl`
  or `perplexity` (lower is better); ties are all bold;
- failed jobs (with their error) and unfinished or never-started jobs are listed, never dropped.

Outputs in `--out` (default `<first DIR>/report`): `table.md`, `table.csv`, `table.tex`,
`runs.csv` (one row per job), `plots/bar_<metric>.png` (mean with std error bars per group) and
`plots/curve_<metric>.png` (training curves of every job, one colour per group).
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmbench.sweep import RUN_KEYS, job_dirname, override_key, swept_keys

LOWER_IS_BETTER = ("loss", "ppl", "perplexity")
NOT_GROUPED = ("seed", *RUN_KEYS)


@dataclass
class Job:
    name: str
    path: Path
    status: str  # completed | failed | unfinished | missing
    overrides: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    params: int | None = None
    error: str = ""


# ------------------------------------------------------------------------------------- reading


def _parse_overrides(items) -> dict[str, str]:
    out = {}
    for item in items or []:
        item = str(item)
        if "=" in item:
            key, value = item.split("=", 1)
            out[key.lstrip("+~")] = value
    return out


def _hydra_overrides(job_dir: Path) -> list[str]:
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.exists():
        return []
    from omegaconf import OmegaConf

    return [str(o) for o in OmegaConf.load(path)]


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def read_job(job_dir: Path) -> Job:
    try:
        rec = json.loads((job_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        rec = None
    if rec is None:
        return Job(job_dir.name, job_dir, "unfinished", _parse_overrides(_hydra_overrides(job_dir)),
                   error="no final metrics.json (killed, or still running)")
    status = rec.get("status", "unfinished")
    status = status if status in ("completed", "failed") else "unfinished"
    error = (rec.get("error") or "").strip().splitlines()
    return Job(
        name=job_dir.name,
        path=job_dir,
        status=status,
        overrides=_parse_overrides(rec.get("overrides") or _hydra_overrides(job_dir)),
        metrics={k: float(v) for k, v in (rec.get("metrics") or {}).items() if _is_number(v)},
        params=(rec.get("complexity") or {}).get("params"),
        error=error[-1].strip() if error else ("" if status != "unfinished" else "metrics.json says running"),
    )


def find_jobs(dirs: list[Path]) -> list[Job]:
    """Every job under the given directories (a job dir has a .hydra/ or a metrics.json), plus the
    jobs a multirun.yaml promised that have no directory yet (status 'missing')."""
    found: dict[Path, Job] = {}
    for root in dirs:
        root = Path(root)
        candidates = {p.parent for p in root.rglob("metrics.json")} | {p.parent for p in root.rglob(".hydra") if p.is_dir()}
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
        params = OmegaConf.to_container(cfg.hydra.sweeper.params) if cfg.hydra.sweeper.get("params") else {}
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
                    jobs.append(Job(job_dir.name, job_dir, "missing", _parse_overrides(overrides), error="not started"))
        return jobs
    except Exception as err:  # noqa: BLE001 - a report on what exists is still useful
        print(f"mmbench-report: could not expand {path}: {err}", file=sys.stderr)
        return []


# ------------------------------------------------------------------------------------ statistics


def lower_is_better(metric: str) -> bool:
    return metric.lower().endswith(LOWER_IS_BETTER)


def mean_std(values) -> tuple[float, float]:
    x = np.asarray(values, dtype=float)
    return float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else 0.0


def bootstrap_ci(values, level: float = 0.95, resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean; deterministic (fixed seed)."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(resamples, len(x)))].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def group_keys(jobs: list[Job]) -> list[str]:
    """Overrides that vary across the jobs, seed (the repetitions) and run options excluded."""
    keys = sorted({k for j in jobs for k in j.overrides})
    return [k for k in keys if k not in NOT_GROUPED and len({j.overrides.get(k) for j in jobs}) > 1]


def select_metrics(jobs: list[Job], patterns: list[str] | None) -> list[str]:
    names = sorted({m for j in jobs if j.status == "completed" for m in j.metrics})
    if not patterns:
        tests = [m for m in names if m.startswith("test/")]
        return tests or names
    return [m for m in names if any(fnmatch.fnmatchcase(m, p) for p in patterns)]


@dataclass
class Row:
    group: tuple[str, ...]
    jobs: list[Job]
    stats: dict[str, dict] = field(default_factory=dict)  # metric -> mean, std, lo, hi, n, best

    @property
    def label(self) -> str:
        return ",".join(self.group) or "all"


def table(jobs: list[Job], metrics: list[str], keys: list[str], resamples: int = 10_000) -> list[Row]:
    done = [j for j in jobs if j.status == "completed"]
    groups: dict[tuple, list[Job]] = {}
    for job in done:
        groups.setdefault(tuple(f"{k}={job.overrides.get(k, '-')}" for k in keys), []).append(job)
    rows = [Row(g, js) for g, js in sorted(groups.items())]
    for row in rows:
        for metric in metrics:
            values = [j.metrics[metric] for j in row.jobs if metric in j.metrics]
            if not values:
                continue
            mean, std = mean_std(values)
            lo, hi = bootstrap_ci(values, resamples=resamples)
            row.stats[metric] = {"mean": mean, "std": std, "ci_lo": lo, "ci_hi": hi, "n": len(values), "best": False}
        params = [j.params for j in row.jobs if j.params]
        if params:
            row.stats["params"] = {"mean": float(np.mean(params)), "std": float(np.std(params)), "n": len(params)}
    for metric in metrics:
        means = [r.stats[metric]["mean"] for r in rows if metric in r.stats]
        if not means:
            continue
        best = min(means) if lower_is_better(metric) else max(means)
        for r in rows:
            if metric in r.stats and math.isclose(r.stats[metric]["mean"], best, rel_tol=1e-9, abs_tol=1e-12):
                r.stats[metric]["best"] = True
    return rows


# ------------------------------------------------------------------------------------- writing


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def _cell(s: dict, bold: tuple[str, str]) -> str:
    core = f"{_fmt(s['mean'])} ± {_fmt(s['std'])}"
    if s.get("best"):
        core = f"{bold[0]}{core}{bold[1]}"
    return f"{core} [{_fmt(s['ci_lo'])}, {_fmt(s['ci_hi'])}]"


def write_markdown(path: Path, rows: list[Row], jobs: list[Job], metrics: list[str], keys: list[str], dirs: list[Path]) -> None:
    lines = [f"# mmbench report: {', '.join(str(d) for d in dirs)}", ""]
    counts = {s: sum(j.status == s for j in jobs) for s in ("completed", "failed", "unfinished", "missing")}
    lines.append(f"{len(jobs)} jobs: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + ".")
    lines.append(f"Grouped by {', '.join(keys) if keys else '(nothing varies but the seed)'}; cells are mean ± std over "
                 "seeds [95% bootstrap CI of the mean]; best per column in bold (lower is better for *loss/*ppl).")
    lines.append("")
    header = [*(keys or ["group"]), "n", "params", *metrics]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for r in rows:
        group = [g.split("=", 1)[1] for g in r.group] or ["all"]
        params = f"{r.stats['params']['mean'] / 1e6:.3g}M" if "params" in r.stats else "-"
        cells = [_cell(r.stats[m], ("**", "**")) if m in r.stats else "-" for m in metrics]
        lines.append("| " + " | ".join([*group, str(len(r.jobs)), params, *cells]) + " |")
    bad = [j for j in jobs if j.status != "completed"]
    lines += ["", "## Failed, unfinished and missing jobs", ""]
    if not bad:
        lines.append("None: every job completed.")
    for j in bad:
        lines.append(f"- **{j.status}** `{j.name}` ({j.path}): {j.error or '-'}")
    path.write_text("\n".join(lines) + "\n")


def write_csv(path: Path, rows: list[Row], metrics: list[str], keys: list[str]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        head = [*(keys or ["group"]), "n", "params"]
        for m in metrics:
            head += [f"{m}/mean", f"{m}/std", f"{m}/ci_lo", f"{m}/ci_hi", f"{m}/n", f"{m}/best"]
        w.writerow(head)
        for r in rows:
            out = [g.split("=", 1)[1] for g in r.group] or ["all"]
            out += [len(r.jobs), r.stats.get("params", {}).get("mean", "")]
            for m in metrics:
                s = r.stats.get(m)
                out += [s["mean"], s["std"], s["ci_lo"], s["ci_hi"], s["n"], int(s["best"])] if s else [""] * 6
            w.writerow(out)


def write_runs_csv(path: Path, jobs: list[Job], metrics: list[str], keys: list[str]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["job", "status", *keys, "seed", "params", *metrics, "error"])
        for j in jobs:
            w.writerow([j.name, j.status, *(j.overrides.get(k, "") for k in keys), j.overrides.get("seed", ""),
                        j.params or "", *(j.metrics.get(m, "") for m in metrics), j.error])


def _tex(s: str) -> str:
    return re.sub(r"([_%&#$])", r"\\\1", s)


def write_latex(path: Path, rows: list[Row], metrics: list[str], keys: list[str]) -> None:
    cols = [*(keys or ["group"]), "n", *metrics]
    lines = [
        "% mmbench-report: mean $\\pm$ std over seeds, 95% bootstrap CI in brackets, best per column in bold",
        "\\begin{tabular}{" + "l" * (len(keys) or 1) + "r" * (len(metrics) + 1) + "}",
        "\\toprule",
        " & ".join(_tex(c) for c in cols) + " \\\\",
        "\\midrule",
    ]
    for r in rows:
        group = [_tex(g.split("=", 1)[1]) for g in r.group] or ["all"]
        cells = []
        for m in metrics:
            s = r.stats.get(m)
            if not s:
                cells.append("--")
                continue
            core = f"{_fmt(s['mean'])} $\\pm$ {_fmt(s['std'])}"
            core = f"\\textbf{{{core}}}" if s["best"] else core
            cells.append(f"{core} {{\\scriptsize [{_fmt(s['ci_lo'])}, {_fmt(s['ci_hi'])}]}}")
        lines.append(" & ".join([*group, str(len(r.jobs)), *cells]) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    path.write_text("\n".join(lines) + "\n")


def _slug(metric: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", metric).strip("_")


def plot_bars(out: Path, rows: list[Row], metrics: list[str]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for m in metrics:
        have = [r for r in rows if m in r.stats]
        if not have:
            continue
        fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(have) + 2), 3.2))
        x = np.arange(len(have))
        means = [r.stats[m]["mean"] for r in have]
        stds = [r.stats[m]["std"] for r in have]
        colors = ["tab:orange" if r.stats[m]["best"] else "tab:blue" for r in have]
        ax.bar(x, means, yerr=stds, capsize=3, color=colors)
        ax.set_xticks(x, [r.label for r in have], rotation=45, ha="right", fontsize=7)
        ax.set_title(f"{m} (mean ± std; {'lower' if lower_is_better(m) else 'higher'} is better)", fontsize=9)
        fig.tight_layout()
        path = out / f"bar_{_slug(m)}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(path)
    return files


def _read_curves(job: Job) -> dict[str, tuple[list[float], list[float]]]:
    path = job.path / "csv" / "metrics.csv"
    curves: dict[str, tuple[list[float], list[float]]] = {}
    if not path.exists():
        return curves
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            step = row.get("step")
            if not step:
                continue
            for key, value in row.items():
                if key in ("epoch", "step") or not value or key is None:
                    continue
                try:
                    xs, ys = curves.setdefault(key, ([], []))
                    ys.append(float(value))
                    xs.append(float(step))
                except ValueError:
                    pass
    return curves


def plot_curves(out: Path, rows: list[Row], patterns: list[str]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_key: dict[str, list[tuple[int, Job, tuple]]] = {}
    for i, row in enumerate(rows):
        for job in row.jobs:
            for key, curve in _read_curves(job).items():
                if len(curve[0]) > 1 and any(fnmatch.fnmatchcase(key, p) for p in patterns):
                    per_key.setdefault(key, []).append((i, job, curve))
    files = []
    cmap = plt.get_cmap("tab10")
    for key, lines in sorted(per_key.items()):
        fig, ax = plt.subplots(figsize=(5.5, 3.4))
        labelled = set()
        for i, job, (xs, ys) in lines:
            label = rows[i].label if i not in labelled else None
            labelled.add(i)
            ax.plot(xs, ys, color=cmap(i % 10), alpha=0.8, linewidth=1.2, label=label)
        ax.set_xlabel("step")
        ax.set_title(key, fontsize=9)
        ax.legend(fontsize=6, loc="best")
        fig.tight_layout()
        path = out / f"curve_{_slug(key)}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(path)
    return files


# ------------------------------------------------------------------------------------------ CLI


def report(dirs: list[Path], out: Path | None = None, metrics: list[str] | None = None,
           curves: list[str] | None = None, plots: bool = True, resamples: int = 10_000) -> dict:
    """Write the report of the jobs under `dirs`; returns what it wrote and the job states."""
    dirs = [Path(d) for d in dirs]
    jobs = find_jobs(dirs)
    out = Path(out) if out else dirs[0] / "report"
    out.mkdir(parents=True, exist_ok=True)
    keys = group_keys(jobs)
    names = select_metrics(jobs, metrics)
    rows = table(jobs, names, keys, resamples=resamples)
    write_markdown(out / "table.md", rows, jobs, names, keys, dirs)
    write_csv(out / "table.csv", rows, names, keys)
    write_latex(out / "table.tex", rows, names, keys)
    write_runs_csv(out / "runs.csv", jobs, names, keys)
    files = []
    if plots:
        (out / "plots").mkdir(exist_ok=True)
        files += plot_bars(out / "plots", rows, names)
        files += plot_curves(out / "plots", rows, curves or ["train/loss_step", "train/loss", "val/loss"])
    return {"out": out, "jobs": jobs, "rows": rows, "metrics": names, "keys": keys, "plots": files}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mmbench-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="sweep directories (outputs/multiruns/<name>), run dirs or parents")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: <first DIR>/report)")
    parser.add_argument("--metrics", nargs="*", default=None,
                        help="glob patterns of metric names (default: every test/* metric, e.g. 'test/vqa/*' 'test/itc/acc')")
    parser.add_argument("--curves", nargs="*", default=None, help="CSV log columns to plot (default: train/loss_step val/loss)")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples (default 10000)")
    args = parser.parse_args(argv)
    missing = [d for d in args.dirs if not d.exists()]
    if missing:
        print(f"mmbench-report: no such directory: {', '.join(map(str, missing))}", file=sys.stderr)
        return 2
    res = report(args.dirs, args.out, args.metrics, args.curves, not args.no_plots, args.resamples)
    jobs = res["jobs"]
    done = sum(j.status == "completed" for j in jobs)
    print(f"mmbench-report: {done}/{len(jobs)} jobs completed; grouped by {', '.join(res['keys']) or '-'}; "
          f"{len(res['metrics'])} metrics")
    for j in jobs:
        if j.status != "completed":
            print(f"  {j.status}: {j.name}: {j.error}")
    print(f"  wrote {res['out'] / 'table.md'}, table.csv, table.tex, runs.csv and {len(res['plots'])} plots in {res['out'] / 'plots'}")
    return 0 if done else 1


if __name__ == "__main__":
    sys.exit(main())
