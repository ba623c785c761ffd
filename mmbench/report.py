"""`mmbench-report DIR [DIR ...]`: sweeps -> paper table (Markdown, CSV, LaTeX) and plots (PNG).

Reads only each job's `metrics.json` (and `csv/metrics.csv` for training curves), so it works
offline, on a sweep that is still running, and on one whose jobs partly failed:

- jobs are grouped by the *swept keys*: the overrides whose value differs between jobs, seed
  excluded (seeds are the repetitions);
- the metrics shown are by default the headline ones (HEADLINE_METRICS: VQA accuracy overall and per
  question type, the matching diagnostics, Winoground group score, retrieval mean recall, zero-shot
  top-1, CIDEr) that the runs recorded, or every `test/*` metric when they recorded none of them;
  `--metrics` picks others by glob, `--all-metrics` (= `--metrics '*'`) shows every one;
- every row shows the mean `complexity.params` and `complexity.flops_per_sample` of its runs: a
  parameter-matched comparison is not FLOP-matched;
- every metric gets n (the seeds that recorded it), mean ± std over seeds (sample std, ddof=1) and
  the 95% Student-t confidence interval of the mean, mean ± t_{0.975, n-1} * std / sqrt(n): wide, as
  it should be, with 2 or 3 seeds. One seed has no interval: the cell says "n=1, no CI" and its bar
  has no error bar;
- the best group per column is bold: higher is better, except for names ending in `loss`, `ppl`
  or `perplexity` (lower is better); ties are all bold;
- every other cell is compared with the best of its column (the first bold one if several tie) by a
  two-sided Welch's t-test over the per-seed values, and the p-values of all comparisons of the table
  (every metric x every non-best group) are Holm-corrected together. Adjusted p >= `--alpha`
  (default 0.05): "not distinguishable from the best", underlined; below: significantly worse,
  unmarked. A cell is *untestable* (marked †, never underlined, no difference claimed) when it or
  the best has fewer than 2 seeds, or when every seed gave the same value in both (Welch's t is 0/0
  or x/0 then); untestable cells are not counted in the Holm correction;
- when any cell has n < 3 seeds the captions say so (intervals are wide and the test has little
  power) and the CLI prints a one-line warning to stderr;
- failed jobs (with their error) and unfinished or never-started jobs are listed, never dropped.

Outputs in `--out` (default `<first DIR>/report`): `table.md`, `table.csv`, `table.tex` (with a
caption stating the test, the number of comparisons, alpha and n; the CSV adds per metric `p`,
`p_adj` and `vs_best` = best | tied | worse | untestable; `ci_lo`, `ci_hi` are empty for one seed),
`runs.csv` (one row per job, with its params, FLOPs per sample and peak memory), `plots/bar_<metric>.png`
(mean per group, error bars = the 95% t-CI of the table, a dot per seed, best orange, tied with it
hatched, and the baselines of BASELINES as dashed lines) and `plots/curve_<column>.png` (training
curves: the mean over the seeds of each group with their range shaded, one colour and line style per
group).
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import json
import math
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmbench.sweep import RUN_KEYS, SUMMARY_STATE, job_dirname, override_key, swept_keys

LOWER_IS_BETTER = ("loss", "ppl", "perplexity")
# Job fields averaged per row (row.stats key) and shown beside every table's metrics, as (header of
# table.md / table.tex, column of table.csv): a parameter-matched comparison is not FLOP-matched (the
# architectures' FLOPs per sample differ several-fold at equal params)
COMPLEXITY = {"params": ("params", "params"), "flops": ("FLOPs/sample", "flops_per_sample")}
NOT_GROUPED = ("seed", *RUN_KEYS)


@dataclass
class Job:
    name: str
    path: Path
    status: str  # completed | failed | unfinished | missing
    overrides: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    params: int | None = None  # complexity.params
    flops: float | None = None  # complexity.flops_per_sample: a forward pass, FLOPs per sample
    peak_memory_mb: float | None = None  # complexity.peak_memory_mb
    peak_memory_scope: str = ""  # complexity.peak_memory_scope: "run" (this run's own peak) or "process"
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


def _number_or_none(v) -> float | int | None:
    return v if _is_number(v) else None  # None too for keys older runs did not record


def read_job(job_dir: Path) -> Job:
    try:
        rec = json.loads((job_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        rec = None
    if rec is None:
        return Job(
            job_dir.name,
            job_dir,
            "unfinished",
            _parse_overrides(_hydra_overrides(job_dir)),
            error="no final metrics.json (killed, or still running)",
        )
    status = SUMMARY_STATE.get(rec.get("status"), "unfinished")  # as the sweep summary: diverged = failed
    error = (rec.get("error") or "").strip().splitlines()
    complexity = rec.get("complexity") or {}
    return Job(
        name=job_dir.name,
        path=job_dir,
        status=status,
        overrides=_parse_overrides(rec.get("overrides") or _hydra_overrides(job_dir)),
        metrics={k: float(v) for k, v in (rec.get("metrics") or {}).items() if _is_number(v)},
        params=_number_or_none(complexity.get("params")),
        flops=_number_or_none(complexity.get("flops_per_sample")),
        peak_memory_mb=_number_or_none(complexity.get("peak_memory_mb")),
        peak_memory_scope=str(complexity.get("peak_memory_scope") or ""),
        error=error[-1].strip() if error else ("" if status != "unfinished" else "metrics.json says running"),
    )


def find_jobs(dirs: list[Path]) -> list[Job]:
    """Every job under the given directories (a job dir has a .hydra/ or a metrics.json), plus the
    jobs a multirun.yaml promised that have no directory yet (status 'missing')."""
    found: dict[Path, Job] = {}
    for root in dirs:
        root = Path(root)
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


def t_ci(values, level: float = 0.95) -> tuple[float, float] | None:
    """Student-t confidence interval of the mean: mean ± t_{(1+level)/2, n-1} * s / sqrt(n), s the
    sample std (ddof=1). None for a single value: there is no spread to build an interval from.

    Unlike a bootstrap over 2-3 seeds (which can never leave [min, max]), its width grows as n
    shrinks (t_{0.975, 1} = 12.7, t_{0.975, 2} = 4.30)."""
    x = np.asarray(values, dtype=float)
    n = len(x)
    if n < 2:
        return None
    from scipy import stats  # lazy: keeps `mmbench-report --help` fast

    half = float(stats.t.ppf(0.5 + level / 2.0, n - 1)) * float(x.std(ddof=1)) / math.sqrt(n)
    mean = float(x.mean())
    return mean - half, mean + half


def welch_p(a, b) -> float | None:
    """Two-sided p-value of Welch's t-test (unequal variances) of mean(a) == mean(b).

    None when the test is undefined: fewer than 2 values on either side (no variance estimate), or
    every value equal within each side (the standard error is 0; t is 0/0 or x/0)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or len(b) < 2 or (np.ptp(a) == 0 and np.ptp(b) == 0):
        return None
    from scipy import stats  # lazy: keeps `mmbench-report --help` fast

    with warnings.catch_warnings():
        if np.ptp(a) == 0 or np.ptp(b) == 0:  # a constant side: scipy's "precision loss" warning is moot
            warnings.filterwarnings("ignore", "Precision loss", RuntimeWarning)
        return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def holm(pvalues) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values, in the input order: the i-th smallest p (1-based) times
    (m - i + 1), made non-decreasing in that order and capped at 1."""
    p = np.asarray(pvalues, dtype=float)
    m = len(p)
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate(p[order] * (m - np.arange(m)))  # (m,) in ascending-p order
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted


def group_keys(jobs: list[Job]) -> list[str]:
    """Overrides that vary across the jobs, seed (the repetitions) and run options excluded."""
    keys = sorted({k for j in jobs for k in j.overrides})
    return [k for k in keys if k not in NOT_GROUPED and len({j.overrides.get(k) for j in jobs}) > 1]


# The default columns and bar charts, in this order (globs; docs/metrics.md names them): the numbers a
# paper reports. Only those the runs recorded are shown; `--metrics '*'` shows every metric.
HEADLINE_METRICS = (
    "test/vqa/acc",
    "test/vqa/acc_*",  # per question type
    "test/diagnostics/match_acc",
    "test/diagnostics/*_swap_acc",
    "test/diagnostics/count_change_acc",
    "test/diagnostics/group_score",
    "test/retrieval/rmean",
    "test/zeroshot/top1",
    "test/captioning/cider",
)


def _matching(names: list[str], patterns) -> list[str]:
    """The names that match any glob, ordered by the first pattern they match, then by name."""
    first = {n: next((i for i, p in enumerate(patterns) if fnmatch.fnmatchcase(n, p)), None) for n in names}
    return sorted((n for n in names if first[n] is not None), key=lambda n: (first[n], n))


def select_metrics(jobs: list[Job], patterns: list[str] | None) -> list[str]:
    """The metrics of the completed jobs that match `patterns` (globs); without patterns the headline
    metrics (HEADLINE_METRICS) the jobs recorded, or every test/* metric when they recorded none of
    them (a run without the evaluation suite), or every metric when there is no test/* either."""
    names = sorted({m for j in jobs if j.status == "completed" for m in j.metrics})
    if patterns:
        return _matching(names, patterns)
    return _matching(names, HEADLINE_METRICS) or _matching(names, ["test/*"]) or names


@dataclass
class Row:
    group: tuple[str, ...]
    jobs: list[Job]
    # metric -> mean, std, ci_lo, ci_hi (None for n=1), n, best, p, p_adj, vs_best (see compare_to_best);
    # "params", "flops" (COMPLEXITY) -> mean, std, n over the jobs that recorded it
    stats: dict[str, dict] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return ",".join(self.group) or "all"


def _values(row: Row, metric: str) -> list[float]:
    return [j.metrics[metric] for j in row.jobs if metric in j.metrics]


def table(jobs: list[Job], metrics: list[str], keys: list[str], alpha: float = 0.05) -> list[Row]:
    done = [j for j in jobs if j.status == "completed"]
    groups: dict[tuple, list[Job]] = {}
    for job in done:
        groups.setdefault(tuple(f"{k}={job.overrides.get(k, '-')}" for k in keys), []).append(job)
    rows = [Row(g, js) for g, js in sorted(groups.items())]
    for row in rows:
        for metric in metrics:
            values = _values(row, metric)
            if not values:
                continue
            mean, std = mean_std(values)
            lo, hi = t_ci(values) or (None, None)
            row.stats[metric] = {"mean": mean, "std": std, "ci_lo": lo, "ci_hi": hi, "n": len(values), "best": False}
        for name in COMPLEXITY:
            values = [getattr(j, name) for j in row.jobs if getattr(j, name)]
            if values:
                row.stats[name] = {"mean": float(np.mean(values)), "std": float(np.std(values)), "n": len(values)}
    for metric in metrics:
        means = [r.stats[metric]["mean"] for r in rows if metric in r.stats]
        if not means:
            continue
        best = min(means) if lower_is_better(metric) else max(means)
        for r in rows:
            if metric in r.stats and math.isclose(r.stats[metric]["mean"], best, rel_tol=1e-9, abs_tol=1e-12):
                r.stats[metric]["best"] = True
    compare_to_best(rows, metrics, alpha)
    return rows


def compare_to_best(rows: list[Row], metrics: list[str], alpha: float = 0.05) -> None:
    """Set `p`, `p_adj` and `vs_best` (best | tied | worse | untestable) on every metric cell.

    Each non-best cell is tested against the best of its column (the first bold row if several tie)
    with `welch_p`; the p-values of the whole table are Holm-corrected together; adjusted p >= alpha
    is `tied`, below is `worse`. Untestable cells keep p = p_adj = None."""
    tested: list[dict] = []
    for metric in metrics:
        cells = [(r, r.stats[metric]) for r in rows if metric in r.stats]
        best = next((r for r, s in cells if s["best"]), None)
        for r, s in cells:
            s.update(p=None, p_adj=None, vs_best="best" if s["best"] else "untestable")
            if s["best"]:
                continue
            s["p"] = welch_p(_values(r, metric), _values(best, metric))
            if s["p"] is not None:
                tested.append(s)
    for s, p_adj in zip(tested, holm([s["p"] for s in tested])):
        s["p_adj"] = float(p_adj)
        s["vs_best"] = "tied" if p_adj >= alpha else "worse"


# ------------------------------------------------------------------------------------- writing


def _fmt(x: float) -> str:
    return f"{x:.4g}"


SI_PREFIXES = ("", "k", "M", "G", "T", "P")


def _si(x: float) -> str:
    """3 significant digits with an SI prefix (params, FLOPs): 1000 -> 1k, 1.05e6 -> 1.05M, 3.8e7 -> 38M."""
    exponent = int(f"{abs(x):.2e}".split("e")[1]) if x else 0  # of x rounded to 3 digits: 999960 -> 6
    k = min(max(exponent // 3, 0), len(SI_PREFIXES) - 1)
    return f"{x / 10 ** (3 * k):.3g}{SI_PREFIXES[k]}"


def _complexity_cells(row: Row, missing: str) -> list[str]:
    return [_si(row.stats[k]["mean"]) if k in row.stats else missing for k in COMPLEXITY]


# vs_best -> (before, after) the "mean ± std" of a cell; worse cells are left plain
MD_MARKS = {"best": ("**", "**"), "tied": ("<u>", "</u>"), "untestable": ("", "†")}
TEX_MARKS = {"best": ("\\textbf{", "}"), "tied": ("\\underline{", "}"), "untestable": ("", "$^\\dagger$")}


def _cell(
    s: dict,
    row_n: int,
    marks: dict[str, tuple[str, str]],
    pm: str = "±",
    ci: str = "[{}, {}]",
    no_ci: str = "(n=1, no CI)",
) -> str:
    """`mean ± std` with its mark, `(n=k)` if this metric has fewer seeds than the row, then the CI;
    for a single seed only the mean with its mark, then `no_ci` (no std, no interval)."""
    before, after = marks.get(s["vs_best"], ("", ""))
    if s["ci_lo"] is None:
        return f"{before}{_fmt(s['mean'])}{after} {no_ci}"
    n = f" (n={s['n']})" if s["n"] != row_n else ""
    return f"{before}{_fmt(s['mean'])} {pm} {_fmt(s['std'])}{after}{n} " + ci.format(_fmt(s["ci_lo"]), _fmt(s["ci_hi"]))


FEW_SEEDS = 3  # below this many seeds a t-interval is wide and Welch's test has little power


def few_seeds(rows: list[Row], metrics: list[str]) -> list[Row]:
    """The rows that have a metric cell with fewer than FEW_SEEDS seeds."""
    return [r for r in rows if any(m in r.stats and r.stats[m]["n"] < FEW_SEEDS for m in metrics)]


def few_seeds_note(rows: list[Row], metrics: list[str], tex: bool = False) -> str:
    """'n < 3 seeds in k of N rows (...): intervals are wide and the test has little power.', or ''
    when every cell has at least 3 seeds (for the captions and the CLI warning)."""
    few = few_seeds(rows, metrics)
    if not few:
        return ""
    labels = ", ".join(_tex(r.label) if tex else r.label for r in few)
    n = f"$n < {FEW_SEEDS}$" if tex else f"n < {FEW_SEEDS}"
    return f"{n} seeds in {len(few)} of {len(rows)} rows ({labels}): intervals are wide and the test has little power."


def significance_caption(rows: list[Row], metrics: list[str], alpha: float, tex: bool = False) -> str:
    """What the marks mean: the test, how many comparisons, alpha and n (for table.md / table.tex)."""
    cells = [(len(r.jobs), r.stats[m]) for r in rows for m in metrics if m in r.stats]
    tested = sum(s["vs_best"] in ("tied", "worse") for _, s in cells)
    untestable = sum(s["vs_best"] == "untestable" for _, s in cells)
    t, a, dagger = ("$t$", "$\\alpha$", "$^\\dagger$") if tex else ("t", "alpha", "†")
    n = "n = seeds per row as given in the n column"
    if any(s["n"] != row_n for row_n, s in cells):
        n += ", or (n=k) in a cell when only k of them recorded that metric"
    text = (
        f"Underlined: not distinguishable from the best of its column; unmarked: significantly worse "
        f"(two-sided Welch's {t}-test of the per-seed values against the best, Holm-corrected over the "
        f"{tested} comparison{'' if tested == 1 else 's'} of this table, {a} = {alpha:g}; {n})."
    )
    if untestable:
        text += (
            f" {dagger}: not tested ({untestable} cells): fewer than 2 seeds in the cell or in the best, "
            f"or no spread over seeds in either (Welch's {t} is undefined); no difference is claimed."
        )
    note = few_seeds_note(rows, metrics, tex)
    return f"{text} {note}" if note else text


def write_markdown(
    path: Path,
    rows: list[Row],
    jobs: list[Job],
    metrics: list[str],
    keys: list[str],
    dirs: list[Path],
    alpha: float = 0.05,
) -> None:
    lines = [f"# mmbench report: {', '.join(str(d) for d in dirs)}", ""]
    counts = {s: sum(j.status == s for j in jobs) for s in ("completed", "failed", "unfinished", "missing")}
    lines.append(f"{len(jobs)} jobs: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + ".")
    lines.append(
        f"Grouped by {', '.join(keys) if keys else '(nothing varies but the seed)'}; cells are mean ± std over "
        "seeds [95% CI of the mean, mean ± t(0.975, n-1)·std/√n; none for n=1]; best per column in bold "
        "(lower is better for *loss/*ppl). params and FLOPs/sample: mean `complexity.params` and "
        "`complexity.flops_per_sample` (one forward pass) over the row's runs."
    )
    lines.append(significance_caption(rows, metrics, alpha))
    lines.append("")
    header = [*(keys or ["group"]), "n", *(title for title, _ in COMPLEXITY.values()), *metrics]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for r in rows:
        group = [g.split("=", 1)[1] for g in r.group] or ["all"]
        cells = [_cell(r.stats[m], len(r.jobs), MD_MARKS) if m in r.stats else "-" for m in metrics]
        lines.append("| " + " | ".join([*group, str(len(r.jobs)), *_complexity_cells(r, "-"), *cells]) + " |")
    bad = [j for j in jobs if j.status != "completed"]
    lines += ["", "## Failed, unfinished and missing jobs", ""]
    if not bad:
        lines.append("None: every job completed.")
    for j in bad:
        lines.append(f"- **{j.status}** `{j.name}` ({j.path}): {j.error or '-'}")
    path.write_text("\n".join(lines) + "\n")


def _blank(x):
    return "" if x is None else x


def write_csv(path: Path, rows: list[Row], metrics: list[str], keys: list[str]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        head = [*(keys or ["group"]), "n", *(column for _, column in COMPLEXITY.values())]
        for m in metrics:
            head += [
                f"{m}/mean",
                f"{m}/std",
                f"{m}/ci_lo",
                f"{m}/ci_hi",
                f"{m}/n",
                f"{m}/best",
                f"{m}/p",
                f"{m}/p_adj",
                f"{m}/vs_best",
            ]
        w.writerow(head)
        for r in rows:
            out = [g.split("=", 1)[1] for g in r.group] or ["all"]
            out += [len(r.jobs), *(r.stats.get(k, {}).get("mean", "") for k in COMPLEXITY)]
            for m in metrics:
                s = r.stats.get(m)
                if not s:
                    out += [""] * 9
                    continue
                out += [s["mean"], s["std"], _blank(s["ci_lo"]), _blank(s["ci_hi"]), s["n"], int(s["best"])]
                out += [_blank(s["p"]), _blank(s["p_adj"]), s["vs_best"]]
            w.writerow(out)


def write_runs_csv(path: Path, jobs: list[Job], metrics: list[str], keys: list[str]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "job",
                "status",
                *keys,
                "seed",
                "params",
                "flops_per_sample",
                "peak_memory_mb",
                "peak_memory_scope",
                *metrics,
                "error",
            ]
        )
        for j in jobs:
            w.writerow(
                [
                    j.name,
                    j.status,
                    *(j.overrides.get(k, "") for k in keys),
                    j.overrides.get("seed", ""),
                    _blank(j.params),
                    _blank(j.flops),
                    _blank(j.peak_memory_mb),
                    j.peak_memory_scope,
                    *(j.metrics.get(m, "") for m in metrics),
                    j.error,
                ]
            )


def _tex(s: str) -> str:
    return re.sub(r"([_%&#$])", r"\\\1", s)


def write_latex(path: Path, rows: list[Row], metrics: list[str], keys: list[str], alpha: float = 0.05) -> None:
    cols = [*(keys or ["group"]), "n", *(title for title, _ in COMPLEXITY.values()), *metrics]
    lines = [
        "% mmbench-report: mean $\\pm$ std over seeds, 95% t-CI of the mean in brackets (mean $\\pm$ "
        "$t_{0.975,n-1}\\,s/\\sqrt{n}$; none for n=1), best per column in bold; params and FLOPs/sample "
        "(one forward pass): means over the row's runs.",
        "% Caption text for this table (a bare tabular: put it in your table's \\caption):",
        "% " + significance_caption(rows, metrics, alpha, tex=True),
        "\\begin{tabular}{" + "l" * (len(keys) or 1) + "r" * (len(cols) - (len(keys) or 1)) + "}",
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
            cells.append(
                _cell(
                    s,
                    len(r.jobs),
                    TEX_MARKS,
                    pm="$\\pm$",
                    ci="{{\\scriptsize [{}, {}]}}",
                    no_ci="{\\scriptsize (n=1, no CI)}",
                )
            )
        lines.append(" & ".join([*group, str(len(r.jobs)), *_complexity_cells(r, "--"), *cells]) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    path.write_text("\n".join(lines) + "\n")


def _slug(metric: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", metric).strip("_")


def bar_data(rows: list[Row], metric: str) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    """Labels, means (N,), error bars (2, N) = distance from the mean down to ci_lo and up to ci_hi
    (the table's 95% t-CI; NaN for one seed: matplotlib draws no error bar), and vs_best of the groups
    that have `metric`."""
    have = [r for r in rows if metric in r.stats]
    means = np.array([r.stats[metric]["mean"] for r in have])
    lo = np.array([np.nan if r.stats[metric]["ci_lo"] is None else r.stats[metric]["ci_lo"] for r in have])
    hi = np.array([np.nan if r.stats[metric]["ci_hi"] is None else r.stats[metric]["ci_hi"] for r in have])
    yerr = np.clip(np.stack([means - lo, hi - means]), 0.0, None)  # (2, N); clip float round-off
    return [r.label for r in have], means, yerr, [r.stats[metric]["vs_best"] for r in have]


# vs_best -> bar face colour, hatch and legend label ({alpha} filled in)
BAR_STYLES = {
    "best": ("tab:orange", "", "best"),
    "tied": ("navajowhite", "///", "tied with best (Welch, Holm, alpha={alpha:g})"),
    "worse": ("tab:blue", "", "worse than best"),
    "untestable": ("lightgray", "..", "not tested (<2 seeds or no spread)"),
}

# Reference lines of the bar charts: (regular expression matching a whole metric name, its lines); a line
# is (label, value), the value a metric the runs record (drawn at its mean over the completed runs; not
# drawn when no run recorded it; may name the pattern's groups, \1) or a constant. The first matching pattern wins.
BASELINES: tuple[tuple[str, tuple[tuple[str, str | float], ...]], ...] = (
    # blind baselines of the test split, written with every run (mmbench/data/datamodule.py)
    (
        r"test/vqa/acc",
        (
            ("majority answer", "test/vqa/majority_baseline"),
            ("question prior (blind)", "test/vqa/question_prior_baseline"),
        ),
    ),
    (
        r"test/vqa/acc_(exist|relation)",
        (("question prior (blind)", r"test/vqa/question_prior_baseline_\1"), ("chance (2 options)", 0.5)),
    ),  # Shapes: yes/no; left/right or above/below
    (r"test/vqa/acc_(\w+)", (("question prior (blind)", r"test/vqa/question_prior_baseline_\1"),)),
    (r"[^/]+/vqa/acc_(exist|relation)", (("chance (2 options)", 0.5),)),
    # one true statement against one hard negative on the image; match_acc (every pair) has no such line
    (r"[^/]+/diagnostics/(?!match_acc)[^/]+_acc", (("chance", 0.5),)),
    # Winoground with random scores (Thrush et al., 2022): text and image 1/4, group 1/6
    (r"[^/]+/diagnostics/([^/]+_)?(text|image)_score", (("chance", 0.25),)),
    (r"[^/]+/diagnostics/([^/]+_)?group_score", (("chance", 1 / 6),)),
)
BASELINE_COLOURS = ("tab:red", "tab:green", "tab:purple")

# words of metric names -> how an axis label spells them
READABLE_WORDS = {
    "acc": "accuracy",
    "vqa": "VQA",
    "itc": "ITC",
    "itm": "ITM",
    "mlm": "MLM",
    "lm": "LM",
    "rmean": "mean recall",
    "top1": "top-1 accuracy",
    "ppl": "perplexity",
    "zeroshot": "zero-shot",
    "cider": "CIDEr",
    "bleu4": "BLEU-4",
}


def readable(metric: str) -> str:
    """An axis label for a metric or CSV log column: 'test/vqa/acc_count' -> 'VQA accuracy count (test)'."""
    split, rest = metric.split("/", 1) if "/" in metric else ("", metric)
    words = " ".join(READABLE_WORDS.get(w, w) for w in re.split(r"[/_]", rest) if w)
    return f"{words} ({split})" if split else words


def baseline_lines(rows: list[Row], metric: str) -> list[tuple[str, float]]:
    """The reference lines (label, value) of `metric`'s bar chart (BASELINES), over the rows' runs."""
    match, lines = next(
        ((m, lines) for pattern, lines in BASELINES if (m := re.fullmatch(pattern, metric))), (None, ())
    )
    out = []
    for label, value in lines:
        if isinstance(value, str):  # a recorded metric (\1 = the pattern's group): its mean over the runs that have it
            value = match.expand(value)
            recorded = [j.metrics[value] for r in rows for j in r.jobs if value in j.metrics]
            if not recorded:
                continue
            value = float(np.mean(recorded))
        out.append((label, float(value)))
    return out


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bar_chart(rows: list[Row], metric: str, alpha: float = 0.05):
    """The bar chart of one metric (a matplotlib Figure, constrained layout): the mean per group with
    the table's 95% t-CI as error bars (none for one seed), each seed's value as a dot on its bar, the
    bars marked as in the table (best, tied, worse, untestable) and `baseline_lines` as dashed lines;
    the legend is below the axes."""
    plt = _pyplot()
    from matplotlib.patches import Patch

    labels, means, yerr, kinds = bar_data(rows, metric)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * len(labels) + 1.5), 4.4), layout="constrained")
    x = np.arange(len(labels))
    bars = ax.bar(
        x,
        means,
        yerr=yerr,
        capsize=3,
        color=[BAR_STYLES[k][0] for k in kinds],
        zorder=2,
        error_kw={"ecolor": "black", "elinewidth": 1.0, "zorder": 3},
    )
    for bar, kind in zip(bars, kinds):
        bar.set_hatch(BAR_STYLES[kind][1])
        bar.set_edgecolor("tab:orange" if kind == "tied" else bar.get_facecolor())
    # each seed on its bar, spread sideways so that equal values stay visible
    seeds = [_values(r, metric) for r in rows if metric in r.stats]
    spread = [np.linspace(-0.15, 0.15, len(v)) if len(v) > 1 else np.zeros(1) for v in seeds]
    ax.scatter(
        np.concatenate([xi + dx for xi, dx in zip(x, spread)]),
        np.concatenate(seeds),
        s=14,
        color="black",
        edgecolors="white",
        linewidths=0.5,
        zorder=4,
        label="one seed",
    )
    for i, (label, value) in enumerate(baseline_lines(rows, metric)):
        ax.axhline(
            value,
            linestyle="--",
            linewidth=1.2,
            color=BASELINE_COLOURS[i % len(BASELINE_COLOURS)],
            zorder=5,
            label=f"{label}: {value:.3g}",
        )
    ax.set_xticks(x, labels, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel(readable(metric), fontsize=8)
    ax.set_title(f"{metric} ({'lower' if lower_is_better(metric) else 'higher'} is better)", fontsize=9)
    ax.grid(axis="y", linewidth=0.4, alpha=0.5, zorder=0)
    legend = [
        (Patch(facecolor=c, hatch=h, edgecolor="tab:orange" if k == "tied" else c), label.format(alpha=alpha))
        for k, (c, h, label) in BAR_STYLES.items()
        if k in kinds
    ]
    if np.isfinite(yerr).any():
        legend.append((bars.errorbar, "95% t-CI of the mean"))
    legend += zip(*ax.get_legend_handles_labels())  # the seed dots and the baseline lines
    fig.legend(*zip(*legend), fontsize=7, ncol=2, frameon=False, loc="outside lower center")  # never over a bar
    return fig


def plot_bars(out: Path, rows: list[Row], metrics: list[str], alpha: float = 0.05) -> list[Path]:
    plt = _pyplot()
    files = []
    for m in metrics:
        if not any(m in r.stats for r in rows):
            continue
        fig = bar_chart(rows, m, alpha)
        path = out / f"bar_{_slug(m)}.png"
        fig.savefig(path, dpi=150)
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


def seed_curves(rows: list[Row], patterns: list[str]) -> dict[str, dict[int, list[tuple[list[float], list[float]]]]]:
    """CSV log column matching `patterns` -> index of a row -> (steps, values) of each of the row's
    jobs that logged that column at more than one step."""
    out: dict[str, dict[int, list]] = {}
    for i, row in enumerate(rows):
        for job in row.jobs:
            for key, curve in _read_curves(job).items():
                if len(curve[0]) > 1 and any(fnmatch.fnmatchcase(key, p) for p in patterns):
                    out.setdefault(key, {}).setdefault(i, []).append(curve)
    return out


def mean_band(curves: list[tuple[list[float], list[float]]]) -> tuple[np.ndarray, ...]:
    """Steps (S,) = every step any seed logged, and the mean, min and max (S,) over the seeds that
    logged each step."""
    steps = np.unique(np.concatenate([xs for xs, _ in curves]))
    values = np.full((len(curves), len(steps)), np.nan)  # (seeds, S)
    for i, (xs, ys) in enumerate(curves):
        values[i, np.searchsorted(steps, xs)] = ys
    return steps, np.nanmean(values, 0), np.nanmin(values, 0), np.nanmax(values, 0)


CURVE_STYLES = ("-", "--", "-.", ":")  # with the 10 tab10 colours: 20 groups before a (colour, style) repeats


def curve_chart(rows: list[Row], key: str, per_row: dict[int, list]):
    """Training curves of one CSV log column (a matplotlib Figure, constrained layout): per group the
    mean over its seeds (one colour and line style per group) with the range of the seeds shaded, the
    legend below the axes."""
    plt = _pyplot()
    colours = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(6.0, 4.0), layout="constrained")
    for i, curves in sorted(per_row.items()):
        steps, mean, lo, hi = mean_band(curves)
        colour, style = colours(i % 10), CURVE_STYLES[i % len(CURVE_STYLES)]
        ax.plot(steps, mean, color=colour, linestyle=style, linewidth=1.4, label=f"{rows[i].label} (n={len(curves)})")
        if len(curves) > 1:
            ax.fill_between(steps, lo, hi, color=colour, alpha=0.15, linewidth=0)
    ax.set_xlabel("training step")
    ax.set_ylabel(readable(key))
    ax.set_title(f"{key}: mean over seeds, shaded: range over seeds", fontsize=9)
    ax.grid(linewidth=0.4, alpha=0.5)
    fig.legend(loc="outside lower center", ncol=min(3, len(per_row)), fontsize=7, frameon=False)
    return fig


def plot_curves(out: Path, rows: list[Row], patterns: list[str]) -> list[Path]:
    plt = _pyplot()
    files = []
    for key, per_row in sorted(seed_curves(rows, patterns).items()):
        fig = curve_chart(rows, key, per_row)
        path = out / f"curve_{_slug(key)}.png"
        fig.savefig(path, dpi=150)
        plt.close(fig)
        files.append(path)
    return files


# ------------------------------------------------------------------------------------------ CLI


def report(
    dirs: list[Path],
    out: Path | None = None,
    metrics: list[str] | None = None,
    curves: list[str] | None = None,
    plots: bool = True,
    alpha: float = 0.05,
) -> dict:
    """Write the report of the jobs under `dirs`; returns what it wrote and the job states."""
    dirs = [Path(d) for d in dirs]
    jobs = find_jobs(dirs)
    out = Path(out) if out else dirs[0] / "report"
    out.mkdir(parents=True, exist_ok=True)
    keys = group_keys(jobs)
    names = select_metrics(jobs, metrics)
    rows = table(jobs, names, keys, alpha=alpha)
    write_markdown(out / "table.md", rows, jobs, names, keys, dirs, alpha)
    write_csv(out / "table.csv", rows, names, keys)
    write_latex(out / "table.tex", rows, names, keys, alpha)
    write_runs_csv(out / "runs.csv", jobs, names, keys)
    files = []
    if plots:
        (out / "plots").mkdir(exist_ok=True)
        files += plot_bars(out / "plots", rows, names, alpha)
        files += plot_curves(out / "plots", rows, curves or ["train/loss_step", "train/loss", "val/loss"])
    return {"out": out, "jobs": jobs, "rows": rows, "metrics": names, "keys": keys, "plots": files}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mmbench-report", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "dirs", nargs="+", type=Path, help="sweep directories (outputs/multiruns/<name>), run dirs or parents"
    )
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: <first DIR>/report)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--metrics",
        nargs="*",
        default=None,
        help="glob patterns of metric names, e.g. 'test/vqa/*' 'test/itc/acc' ('*': every metric). "
        f"Default: the headline metrics the runs recorded ({' '.join(HEADLINE_METRICS)}); every "
        "test/* metric when they recorded none of them",
    )
    which.add_argument("--all-metrics", action="store_true", help="every metric the runs recorded (= --metrics '*')")
    parser.add_argument(
        "--curves",
        nargs="*",
        default=None,
        help="CSV log columns to plot (default: train/loss_step train/loss val/loss)",
    )
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument(
        "--alpha",
        type=float,
        default=0.05,
        help="level of the Holm-corrected Welch tests against the best of each column (default 0.05)",
    )
    args = parser.parse_args(argv)
    if not 0.0 < args.alpha < 1.0:
        parser.error(f"--alpha must be between 0 and 1 (e.g. 0.05 or 0.01), got {args.alpha}")
    missing = [d for d in args.dirs if not d.exists()]
    if missing:
        print(f"mmbench-report: no such directory: {', '.join(map(str, missing))}", file=sys.stderr)
        return 2
    if not find_jobs([Path(d) for d in args.dirs]):  # nothing to report: write nothing, say where it looked
        print(
            f"mmbench-report: no runs under {', '.join(map(str, args.dirs))} (a run is a directory with a "
            f"metrics.json, e.g. outputs/multiruns/<sweep>/<job>/); nothing written",
            file=sys.stderr,
        )
        return 2
    patterns = ["*"] if args.all_metrics else args.metrics
    res = report(args.dirs, args.out, patterns, args.curves, not args.no_plots, alpha=args.alpha)
    jobs = res["jobs"]
    done = sum(j.status == "completed" for j in jobs)
    shown = f"{len(res['metrics'])} metrics"
    if not patterns:
        shown += f" (default set, of {len(select_metrics(jobs, ['*']))}; --all-metrics or --metrics for others)"
    print(f"mmbench-report: {done}/{len(jobs)} jobs completed; grouped by {', '.join(res['keys']) or '-'}; {shown}")
    for j in jobs:
        if j.status != "completed":
            print(f"  {j.status}: {j.name}: {j.error}")
    print(
        f"  wrote {res['out'] / 'table.md'}, table.csv, table.tex, runs.csv and {len(res['plots'])} plots in {res['out'] / 'plots'}"
    )
    note = few_seeds_note(res["rows"], res["metrics"])
    if note:
        print(f"mmbench-report: warning: {note}", file=sys.stderr)
    return 0 if done else 1


if __name__ == "__main__":
    sys.exit(main())
