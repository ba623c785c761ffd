"""The table of `mmbench-report`: which metrics (HEADLINE_METRICS, `select_metrics`), the groups
(`group_keys`: the swept overrides), a `Row` per group with its statistics, each cell compared with
the best of its column (`compare_to_best`), and the captions saying what the marks mean, when
there are few seeds and when the rows' retrieval galleries differ."""

from __future__ import annotations

import fnmatch
import math
import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from mmbench.overrides import RUN_KEYS
from mmbench.report.jobs import Job
from mmbench.report.stats import holm, lower_is_better, mean_std, t_ci, unit_range, welch_p

# Job fields averaged per row (row.stats key) and shown beside every table's metrics, as (header of
# table.md / table.tex, column of table.csv): a parameter-matched comparison is not FLOP-matched (the
# architectures' FLOPs per sample differ several-fold at equal params)
# a row's complexity columns: (title, CSV column); MFU only in tables whose runs recorded it (formats.complexity_columns)
COMPLEXITY = {
    "params": ("params", "params"),
    "flops": ("FLOPs/sample", "flops_per_sample"),
    "mfu": ("MFU", "mfu"),
}
NOT_GROUPED = ("seed", *RUN_KEYS)


def group_keys(jobs: list[Job]) -> list[str]:
    """Overrides that vary across the jobs, seed (the repetitions) and run options excluded."""
    keys = sorted({k for j in jobs for k in j.overrides})
    # a job that does not know a key (a runs.csv row: only its report's group keys) does not vary it
    return [k for k in keys if k not in NOT_GROUPED and len({j.overrides.get(k) for j in jobs if j.knows(k)}) > 1]


def repeated_jobs(jobs: list[Job], keys: list[str]) -> list[tuple[Job, Job]]:
    """Pairs of completed jobs with the same group and seed (e.g. a runs.csv and the sweep it came
    from, both given): counted twice they would fake a seed."""
    seen: dict[tuple, Job] = {}
    pairs = []
    for job in jobs:
        if job.status != "completed":
            continue
        ident = (*(job.overrides.get(k) for k in keys), job.overrides.get("seed"))
        if ident in seen:
            pairs.append((seen[ident], job))
        seen.setdefault(ident, job)
    return pairs


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
    "test/classification/acc",  # NLVR2, SNLI-VE, Hateful Memes
    "test/classification/auroc",  # Hateful Memes' challenge metric
    # text-to-image, every caption type together: each criterion, the caption true of the image, the Frechet
    # distance; with and without classifier-free guidance
    "test/t2i/overall/caption_true",
    "test/t2i/overall/present",
    "test/t2i/overall/color",
    "test/t2i/overall/count",
    "test/t2i/overall/relation",
    "test/t2i/overall/extra",
    "test/t2i/frechet",
    "test/t2i_unguided/overall/caption_true",
    "test/t2i_unguided/frechet",
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


def table(
    jobs: list[Job], metrics: list[str], keys: list[str], alpha: float = 0.05, holm_over: str = "table"
) -> list[Row]:
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
            lo, hi = t_ci(values, bounds=unit_range(metric)) or (None, None)
            row.stats[metric] = {"mean": mean, "std": std, "ci_lo": lo, "ci_hi": hi, "n": len(values), "best": False}
        for name in COMPLEXITY:
            values = [getattr(j, name) for j in row.jobs if getattr(j, name)]
            if values:
                row.stats[name] = {"mean": float(np.mean(values)), "std": float(np.std(values)), "n": len(values)}
    for metric in metrics:
        for r in other_gallery_rows(rows, metric):
            r.stats[metric]["other_gallery"] = True
        means = [
            r.stats[metric]["mean"] for r in rows if metric in r.stats and not r.stats[metric].get("other_gallery")
        ]
        if not means:
            continue
        best = min(means) if lower_is_better(metric) else max(means)
        for r in rows:
            if metric in r.stats and math.isclose(r.stats[metric]["mean"], best, rel_tol=1e-9, abs_tol=1e-12):
                r.stats[metric]["best"] = True
    compare_to_best(rows, metrics, alpha, holm_over)
    return rows


# the families a Holm correction can run over: every comparison of the table together, or each
# metric's column on its own (one question per metric; more power, the family-wise error per column)
HOLM_OVER = ("table", "metric")


def compare_to_best(rows: list[Row], metrics: list[str], alpha: float = 0.05, holm_over: str = "table") -> None:
    """Set `p`, `p_adj` and `vs_best` (best | tied | worse | untestable | other_gallery) on every metric cell.

    Each non-best cell is tested against the best of its column (the first bold row if several tie)
    with `welch_p`; the p-values are Holm-corrected together over the whole table (`holm_over`
    "table") or within each column ("metric"); adjusted p >= alpha is `tied`, below is `worse`.
    Untestable cells and those of another retrieval gallery (`other_gallery_rows`) keep p = p_adj = None."""
    if holm_over not in HOLM_OVER:
        raise ValueError(f"holm_over must be one of {', '.join(HOLM_OVER)}, got {holm_over!r}")
    families: dict[str, list[dict]] = {}
    for metric in metrics:
        tested = families.setdefault(metric if holm_over == "metric" else "table", [])
        cells = [(r, r.stats[metric]) for r in rows if metric in r.stats]
        best = next((r for r, s in cells if s["best"]), None)
        for r, s in cells:
            state = "best" if s["best"] else "other_gallery" if s.get("other_gallery") else "untestable"
            s.update(p=None, p_adj=None, vs_best=state)
            if state != "untestable" or best is None:  # no best: every cell is another gallery's
                continue
            s["p"] = welch_p(_values(r, metric), _values(best, metric))
            if s["p"] is not None:
                tested.append(s)
    for tested in families.values():
        for s, p_adj in zip(tested, holm([s["p"] for s in tested])):
            s["p_adj"] = float(p_adj)
            s["vs_best"] = "tied" if p_adj >= alpha else "worse"


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


# <split>/retrieval/<key>: the gallery a run searched, and what the notes call it; every other
# <split>/retrieval/* metric is a retrieval metric (recalls, rmean), comparable only on equal galleries
GALLERY_SIZES = {"num_images": "images", "num_texts": "texts"}


def _retrieval_split(metric: str) -> str | None:
    """'test' for 'test/retrieval/rmean' (any retrieval metric but the gallery sizes), else None."""
    split, sep, name = metric.partition("/retrieval/")
    return split if sep and name not in GALLERY_SIZES else None


def differing_galleries(rows: list[Row], metrics: list[str]) -> dict[str, dict[str, tuple[float, float]]]:
    """split -> "images" | "texts" -> (min, max) of `<split>/retrieval/num_images` (num_texts) over the
    runs of the rows showing a retrieval metric of that split, for the splits and sizes that differ
    (read from the runs' metrics, whether or not the size is itself a displayed metric)."""
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for split in sorted({s for m in metrics if (s := _retrieval_split(m))}):
        shown = [r for r in rows if any(_retrieval_split(m) == split for m in r.stats)]
        sizes = {
            noun: {v for r in shown for v in _values(r, f"{split}/retrieval/{key}")}
            for key, noun in GALLERY_SIZES.items()
        }
        ranges = {noun: (min(v), max(v)) for noun, v in sizes.items() if len(v) > 1}
        if ranges:
            out[split] = ranges
    return out


def other_gallery_rows(rows: list[Row], metric: str) -> list[Row]:
    """The rows whose runs searched a smaller gallery than the largest any row searched, for a
    retrieval metric (`<split>/retrieval/*`; [] for any other metric or when the galleries agree).
    Their cells are neither bold nor tested against the best: recall over 32 images is not recall over
    1,000 (an ITM-only run scores every pair, so the protocol caps its gallery). Runs that did not
    record their gallery size are compared as before."""
    split = _retrieval_split(metric)
    if split is None:
        return []
    keys = [f"{split}/retrieval/{key}" for key in GALLERY_SIZES]

    def galleries(r: Row) -> set[tuple[float, ...]]:
        return {
            tuple(j.metrics[k] for k in keys)
            for j in r.jobs
            if metric in j.metrics and all(k in j.metrics for k in keys)
        }

    shown = [r for r in rows if metric in r.stats]
    every = set().union(*(galleries(r) for r in shown)) if shown else set()
    if len(every) < 2:
        return []
    largest = max(every)
    return [r for r in shown if galleries(r) - {largest}]


def galleries_note(rows: list[Row], metrics: list[str], tex: bool = False) -> str:
    """'Retrieval galleries differ (test: 32-1000 images): retrieval metrics are not comparable across
    those rows; ‡: ...', or '' when no retrieval metric is shown or the galleries agree (for the captions and
    the CLI warning)."""
    differ = differing_galleries(rows, metrics)
    if not differ:
        return ""
    dash = "--" if tex else "-"
    where = "; ".join(
        f"{_tex(split) if tex else split}: "
        + ", ".join(f"{lo:.0f}{dash}{hi:.0f} {noun}" for noun, (lo, hi) in ranges.items())
        for split, ranges in differ.items()
    )
    mark = "$^\\ddagger$" if tex else "‡"
    return (
        f"Retrieval galleries differ ({where}): retrieval metrics are not comparable across those rows; "
        f"{mark}: a smaller gallery than the largest, neither bold nor tested against the best."
    )


def machines_note(rows: list[Row], tex: bool = False) -> str:
    """'Runs from 2 machines (A: 9 runs; B: 6 runs): ...', or '' when the rows' completed runs that
    recorded their machine all ran on one (for the captions and the CLI warning): the same seed gives
    the same numbers only on the same machine (`mmbench.record.machine`)."""
    counts = Counter(j.machine for r in rows for j in r.jobs if j.machine)
    if len(counts) < 2:
        return ""
    where = "; ".join(f"{_tex(m) if tex else m}: {n} run{'' if n == 1 else 's'}" for m, n in counts.most_common())
    return (
        f"Runs from {len(counts)} machines ({where}): the same seed can give different numbers on "
        f"different machines, so a difference between rows may include the machine."
    )


def significance_caption(
    rows: list[Row], metrics: list[str], alpha: float, tex: bool = False, holm_over: str = "table"
) -> str:
    """What the marks mean: the test, how many comparisons, alpha and n, then the few-seeds and
    galleries notes when they apply (for table.md / table.tex)."""
    cells = [(len(r.jobs), r.stats[m]) for r in rows for m in metrics if m in r.stats]
    per_column = [sum(r.stats[m]["vs_best"] in ("tied", "worse") for r in rows if m in r.stats) for m in metrics]
    tested = sum(per_column)
    untestable = sum(s["vs_best"] == "untestable" for _, s in cells)
    t, a, dagger = ("$t$", "$\\alpha$", "$^\\dagger$") if tex else ("t", "alpha", "†")
    n = "n = seeds per row as given in the n column"
    if any(s["n"] != row_n for row_n, s in cells):
        n += ", or (n=k) in a cell when only k of them recorded that metric"
    if holm_over == "metric":
        most = max(per_column, default=0)
        family = (
            f"Holm-corrected within each column (at most {most} comparison{'' if most == 1 else 's'} "
            f"per column, {tested} in the table)"
        )
    else:
        family = f"Holm-corrected over the {tested} comparison{'' if tested == 1 else 's'} of this table"
    text = (
        f"Underlined: not distinguishable from the best of its column; unmarked: significantly worse "
        f"(two-sided Welch's {t}-test of the per-seed values against the best, {family}, {a} = {alpha:g}; {n})."
    )
    if untestable:
        text += (
            f" {dagger}: not tested ({untestable} cells): fewer than 2 seeds in the cell or in the best, "
            f"or no spread over seeds in either (Welch's {t} is undefined); no difference is claimed."
        )
    return " ".join([text, *table_notes(rows, metrics, tex)])


def table_notes(rows: list[Row], metrics: list[str], tex: bool = False) -> list[str]:
    """The notes that apply to a table (few seeds, differing retrieval galleries, several machines):
    the captions end with them and the CLI prints them as warnings."""
    notes = (few_seeds_note(rows, metrics, tex), galleries_note(rows, metrics, tex), machines_note(rows, tex))
    return [note for note in notes if note]


def _tex(s: str) -> str:
    return re.sub(r"([_%&#$])", r"\\\1", s)
