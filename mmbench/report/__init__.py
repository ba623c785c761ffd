"""`mmbench-report DIR [DIR ...]`: sweeps -> paper table (Markdown, CSV, LaTeX) and plots (PNG).

Reads only each job's `metrics.json` (and `csv/metrics.csv` for training curves), so it works offline, on a
sweep that is still running and on one whose jobs partly failed; a DIR that is a file is read as the
`runs.csv` of an earlier report. Jobs are grouped by their swept keys (seed excluded); each cell is mean ± std
over the seeds (table.md|tex: `--digits` decimals, fractions in percent; table_detail.md|tex: with its 95%
t-interval; table.csv: full precision), the best of its column bold, every other cell compared with it by a
two-sided Welch's t-test, Holm-corrected (`--holm-over table|metric`). Failed, unfinished and missing jobs are
listed, never dropped. Writes to `--out` (default `<first DIR>/report`): `table.md|tex`, `table_detail.md|tex`,
`table.csv`, `runs.csv`, `runs.md`, `plots/bar_<metric>.png`, `plots/curve_<column>.png`.

Modules: `jobs` (Job, reading a job directory, find_jobs, missing jobs of a sweep), `stats` (mean_std,
t_ci, welch_p, holm, lower_is_better), `tables` (metric selection, groups, Row, table,
compare_to_best, captions), `formats` (table.md, table.csv, table.tex, runs.csv, runs.md and their cells),
`plots` (bar charts, baselines, training curves); this file: `report` and the CLI `main`.
What each output holds and how to read it: docs/sweeps.md §7.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmbench.report.formats import (
    MD_MARKS,
    SI_PREFIXES,
    TEX_MARKS,
    PaperStyle,
    write_csv,
    write_latex,
    write_markdown,
    write_runs_csv,
    write_runs_markdown,
)
from mmbench.report.formats import _si as _si  # private: tests/test_report.py uses it
from mmbench.report.jobs import Job, find_jobs, read_job
from mmbench.report.plots import (
    BAR_STYLES,
    BASELINE_COLOURS,
    BASELINES,
    CURVE_STYLES,
    READABLE_WORDS,
    bar_chart,
    bar_data,
    baseline_lines,
    curve_chart,
    mean_band,
    plot_bars,
    plot_curves,
    readable,
    seed_curves,
)
from mmbench.report.plots import _slug as _slug  # private: tests/test_report.py uses it
from mmbench.report.stats import LOWER_IS_BETTER, holm, lower_is_better, mean_std, t_ci, welch_p
from mmbench.report.tables import (
    COMPLEXITY,
    FEW_SEEDS,
    GALLERY_SIZES,
    HEADLINE_METRICS,
    HOLM_OVER,
    NOT_GROUPED,
    Row,
    compare_to_best,
    differing_galleries,
    few_seeds,
    few_seeds_note,
    galleries_note,
    group_keys,
    machines_note,
    other_gallery_rows,
    repeated_jobs,
    select_metrics,
    significance_caption,
    table,
    table_notes,
)

# the public names of the submodules, as `from mmbench import report; report.<name>` has always offered them
__all__ = [
    "BAR_STYLES",
    "BASELINES",
    "BASELINE_COLOURS",
    "COMPLEXITY",
    "CURVE_STYLES",
    "FEW_SEEDS",
    "GALLERY_SIZES",
    "HEADLINE_METRICS",
    "HOLM_OVER",
    "LOWER_IS_BETTER",
    "MD_MARKS",
    "NOT_GROUPED",
    "READABLE_WORDS",
    "SI_PREFIXES",
    "TEX_MARKS",
    "Job",
    "Row",
    "bar_chart",
    "bar_data",
    "baseline_lines",
    "compare_to_best",
    "curve_chart",
    "differing_galleries",
    "few_seeds",
    "few_seeds_note",
    "find_jobs",
    "galleries_note",
    "machines_note",
    "other_gallery_rows",
    "group_keys",
    "holm",
    "lower_is_better",
    "main",
    "mean_band",
    "mean_std",
    "plot_bars",
    "plot_curves",
    "read_job",
    "readable",
    "repeated_jobs",
    "report",
    "seed_curves",
    "select_metrics",
    "significance_caption",
    "table_notes",
    "t_ci",
    "table",
    "welch_p",
    "PaperStyle",
    "write_csv",
    "write_latex",
    "write_markdown",
    "write_runs_csv",
    "write_runs_markdown",
]


def report(
    dirs: list[Path],
    out: Path | None = None,
    metrics: list[str] | None = None,
    curves: list[str] | None = None,
    plots: bool = True,
    alpha: float = 0.05,
    holm_over: str = "table",
    digits: int = 1,
    percent: bool = True,
) -> dict:
    """Write the report of the jobs under `dirs`; returns what it wrote and the job states."""
    dirs = [Path(d) for d in dirs]
    jobs = find_jobs(dirs)
    if not jobs:  # nothing to report: write nothing, say where it looked
        raise ValueError(
            f"no runs under {', '.join(map(str, dirs))} (a run is a directory with a metrics.json, e.g. "
            f"outputs/multiruns/<sweep>/<job>/); nothing written"
        )
    keys = group_keys(jobs)
    repeated = repeated_jobs(jobs, keys)
    if repeated:
        first, second = repeated[0]
        raise ValueError(
            f"{len(repeated)} job(s) given twice with the same {', '.join([*keys, 'seed'])}, e.g. "
            f"{first.path} and {second.path}: pass each run once (a sweep directory or the runs.csv "
            f"of its report, not both)"
        )
    out = Path(out) if out else (dirs[0].parent if dirs[0].is_file() else dirs[0]) / "report"
    out.mkdir(parents=True, exist_ok=True)
    names = select_metrics(jobs, metrics)
    rows = table(jobs, names, keys, alpha=alpha, holm_over=holm_over)
    paper = PaperStyle(digits=digits, percent=percent)
    write_markdown(out / "table.md", rows, jobs, names, keys, dirs, alpha, holm_over, paper=paper)
    write_markdown(out / "table_detail.md", rows, jobs, names, keys, dirs, alpha, holm_over)
    write_csv(out / "table.csv", rows, names, keys)
    write_latex(out / "table.tex", rows, names, keys, alpha, holm_over, paper=paper)
    write_latex(out / "table_detail.tex", rows, names, keys, alpha, holm_over)
    write_runs_csv(out / "runs.csv", jobs, names, keys)
    write_runs_markdown(out / "runs.md", jobs, names, keys)
    files = []
    if plots:
        (out / "plots").mkdir(exist_ok=True)
        files += plot_bars(out / "plots", rows, names, alpha)
        files += plot_curves(out / "plots", rows, curves or ["train/loss_step", "train/loss", "val/loss"])
    return {"out": out, "jobs": jobs, "rows": rows, "metrics": names, "keys": keys, "plots": files}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mmbench-report",
        description=__doc__.split("\n\n")[0],
        epilog="Cells: table.md and table.tex (the paper table) `79.8 ± 2.5` (mean ± std over seeds; accuracies, "
        "recalls, AUROC and other fractions in percent; losses, perplexities, params and FLOPs unscaled); "
        "table_detail.md and table_detail.tex `0.7978 ± 0.02472 [0.7364, 0.8593]` (4 significant digits and the "
        "95% t-interval); table.csv every statistic at full precision with the p-values. The bold, underline, "
        "† and ‡ marks are the same in all of them.",
    )
    parser.add_argument(
        "dirs",
        nargs="+",
        type=Path,
        help="sweep directories (outputs/multiruns/<name>), run dirs or parents, or the runs.csv of an "
        "earlier report (its completed and failed jobs: a sweep run in parts whose outputs are gone)",
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
    parser.add_argument(
        "--holm-over",
        choices=HOLM_OVER,
        default="table",
        help="the family of the Holm correction: every comparison of the table together (default) or "
        "each metric's column on its own",
    )
    parser.add_argument(
        "--digits",
        type=int,
        default=1,
        help="decimals of the paper table (table.md, table.tex; default 1: 79.8 ± 2.5); table_detail.* keep 4 "
        "significant digits and the CI, table.csv full precision",
    )
    parser.add_argument(
        "--no-percent",
        dest="percent",
        action="store_false",
        help="the paper table's accuracies, recalls and other fractions as they are (0.798 ± 0.025 with --digits "
        "3), not in percent",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.digits <= 6:
        parser.error(f"--digits must be 0-6 decimals, got {args.digits}")
    if not 0.0 < args.alpha < 1.0:
        parser.error(f"--alpha must be between 0 and 1 (e.g. 0.05 or 0.01), got {args.alpha}")
    missing = [d for d in args.dirs if not d.exists()]
    if missing:
        print(f"mmbench-report: no such file or directory: {', '.join(map(str, missing))}", file=sys.stderr)
        return 2
    patterns = ["*"] if args.all_metrics else args.metrics
    try:
        res = report(
            args.dirs,
            args.out,
            patterns,
            args.curves,
            not args.no_plots,
            alpha=args.alpha,
            holm_over=args.holm_over,
            digits=args.digits,
            percent=args.percent,
        )
    except ValueError as err:  # no runs, a file that is not a runs.csv, the same job twice
        print(f"mmbench-report: {err}", file=sys.stderr)
        return 2
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
        f"  wrote {res['out'] / 'table.md'} (the paper table), table_detail.md (with 95% CIs), table.csv, table.tex, "
        f"table_detail.tex, runs.csv, runs.md and {len(res['plots'])} plots in {res['out'] / 'plots'}"
    )
    for note in table_notes(res["rows"], res["metrics"]):
        print(f"mmbench-report: warning: {note}", file=sys.stderr)
    return 0 if done else 1
