"""The plots of `mmbench-report` (PNG): a bar chart per metric of the table (95% t-CI error bars, a
dot per seed, marks as in the table, the reference lines of BASELINES) and the training curves of
the CSV logs (mean over seeds, range shaded). matplotlib is imported lazily (keeps
`mmbench-report --help` fast)."""

from __future__ import annotations

import csv
import fnmatch
import re
from pathlib import Path

import numpy as np

from mmbench.report.jobs import Job
from mmbench.report.stats import lower_is_better
from mmbench.report.tables import Row, _values


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


# vs_best -> bar face colour, hatch and legend label ({alpha} filled in); edges: EDGE_COLOURS, else the face's
BAR_STYLES = {
    "best": ("tab:orange", "", "best"),
    "tied": ("navajowhite", "///", "tied with best (Welch, Holm, alpha={alpha:g})"),
    "worse": ("tab:blue", "", "worse than best"),
    "untestable": ("lightgray", "..", "not tested (<2 seeds or no spread)"),
    "other_gallery": ("white", "xx", "smaller retrieval gallery: not compared"),
}
EDGE_COLOURS = {"tied": "tab:orange", "other_gallery": "gray"}


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
    if match is None:  # no reference lines for this metric
        return []
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
        bar.set_edgecolor(EDGE_COLOURS.get(kind, bar.get_facecolor()))
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
        (Patch(facecolor=c, hatch=h, edgecolor=EDGE_COLOURS.get(k, c)), label.format(alpha=alpha))
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
