"""The files of `mmbench-report`'s table: `table.md` / `table.tex` (the paper table: `79.8 ± 2.5`),
`table_detail.md` / `table_detail.tex` (mean ± std with the CI), `table.csv` (full precision) and `runs.csv`,
and how a cell is written (params and FLOPs with an SI prefix)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from mmbench.report.jobs import RUNS_CSV_COMPLEXITY, RUNS_CSV_HEAD, Job
from mmbench.report.stats import unit_range
from mmbench.report.tables import COMPLEXITY, Row, _tex, significance_caption


def _fmt(x: float) -> str:
    return f"{x:.4g}"


SI_PREFIXES = ("", "k", "M", "G", "T", "P")


def _si(x: float) -> str:
    """3 significant digits with an SI prefix (params, FLOPs): 1000 -> 1k, 1.05e6 -> 1.05M, 3.8e7 -> 38M."""
    exponent = int(f"{abs(x):.2e}".split("e")[1]) if x else 0  # of x rounded to 3 digits: 999960 -> 6
    k = min(max(exponent // 3, 0), len(SI_PREFIXES) - 1)
    return f"{x / 10 ** (3 * k):.3g}{SI_PREFIXES[k]}"


def complexity_columns(rows: list[Row]) -> dict[str, tuple[str, str]]:
    """The complexity columns of a table: params and FLOPs/sample always, MFU when a row's runs recorded it."""
    return {k: v for k, v in COMPLEXITY.items() if k != "mfu" or any("mfu" in r.stats for r in rows)}


def _complexity_cells(row: Row, missing: str, columns: dict[str, tuple[str, str]]) -> list[str]:
    """params and FLOPs with an SI prefix, MFU in percent."""
    return [
        missing
        if k not in row.stats
        else f"{100 * row.stats[k]['mean']:.0f}%"
        if k == "mfu"
        else _si(row.stats[k]["mean"])
        for k in columns
    ]


# vs_best -> (before, after) the "mean ± std" of a cell; worse cells are left plain
MD_MARKS = {"best": ("**", "**"), "tied": ("<u>", "</u>"), "untestable": ("", "†"), "other_gallery": ("", "‡")}
TEX_MARKS = {
    "best": ("\\textbf{", "}"),
    "tied": ("\\underline{", "}"),
    "untestable": ("", "$^\\dagger$"),
    "other_gallery": ("", "$^\\ddagger$"),
}


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


@dataclass(frozen=True)
class PaperStyle:
    """The paper table's cells: mean ± std with `digits` decimals, fractions (`stats.unit_range`: accuracies,
    recalls, scores) in percent when `percent`; no interval (the detail table has it)."""

    digits: int = 1
    percent: bool = True

    def number(self, x: float, metric: str) -> str:
        if self.percent and unit_range(metric):
            return f"{100 * x:.{self.digits}f}"
        if x != 0 and abs(x) < 10**-self.digits:  # too small for the decimals: significant digits instead
            return f"{x:.{max(self.digits, 1)}g}"
        return f"{x:.{self.digits}f}"

    def cell(self, s: dict, metric: str, row_n: int, marks: dict[str, tuple[str, str]], pm: str = "±") -> str:
        """`mean ± std` with its mark and `(n=k)` when this metric has fewer seeds than the row; one seed: the mean."""
        before, after = marks.get(s["vs_best"], ("", ""))
        if s["ci_lo"] is None:
            return f"{before}{self.number(s['mean'], metric)}{after}"
        n = f" (n={s['n']})" if s["n"] != row_n else ""
        return f"{before}{self.number(s['mean'], metric)} {pm} {self.number(s['std'], metric)}{after}{n}"

    def caption(self, metrics: list[str], tex: bool = False) -> str:
        fractions = [m for m in metrics if unit_range(m)]
        pm = "$\\pm$" if tex else "±"
        unit = " (accuracies, recalls, scores and other fractions in percent)" if self.percent and fractions else ""
        return (
            f"cells are mean {pm} std over seeds{unit}, {self.digits} decimal(s); one seed: the mean alone. 95% "
            f"confidence intervals: table_detail"
        )


def write_markdown(
    path: Path,
    rows: list[Row],
    jobs: list[Job],
    metrics: list[str],
    keys: list[str],
    dirs: list[Path],
    alpha: float = 0.05,
    holm_over: str = "table",
    paper: PaperStyle | None = None,
) -> None:
    """table_detail.md, or the paper table (table.md) with `paper`."""
    lines = [f"# mmbench report: {', '.join(str(d) for d in dirs)}", ""]
    counts = {s: sum(j.status == s for j in jobs) for s in ("completed", "failed", "unfinished", "missing")}
    lines.append(f"{len(jobs)} jobs: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + ".")
    cells_are = (
        paper.caption(metrics) + ".md"
        if paper
        else "cells are mean ± std over seeds [95% CI of the mean, mean ± t(0.975, n-1)·std/√n, clipped to [0, 1] for "
        "accuracies, recalls and scores; none for n=1]"
    )
    lines.append(
        f"Grouped by {', '.join(keys) if keys else '(nothing varies but the seed)'}; {cells_are}; best per column "
        "in bold (lower is better for *loss/*ppl/*frechet). params and FLOPs/sample: mean `complexity.params` and "
        "`complexity.flops_per_sample` (one forward pass) over the row's runs."
    )
    lines.append(significance_caption(rows, metrics, alpha, holm_over=holm_over))
    lines.append("")
    columns = complexity_columns(rows)
    header = [*(keys or ["group"]), "n", *(title for title, _ in columns.values()), *metrics]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for r in rows:
        group = [g.split("=", 1)[1] for g in r.group] or ["all"]
        cells = [
            "-"
            if m not in r.stats
            else paper.cell(r.stats[m], m, len(r.jobs), MD_MARKS)
            if paper
            else _cell(r.stats[m], len(r.jobs), MD_MARKS)
            for m in metrics
        ]
        lines.append("| " + " | ".join([*group, str(len(r.jobs)), *_complexity_cells(r, "-", columns), *cells]) + " |")
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
        columns = complexity_columns(rows)
        head = [*(keys or ["group"]), "n", *(column for _, column in columns.values())]
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
            out: list[object] = [g.split("=", 1)[1] for g in r.group] or ["all"]
            out += [len(r.jobs), *(r.stats.get(k, {}).get("mean", "") for k in columns)]
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
        w.writerow([*RUNS_CSV_HEAD, *keys, *RUNS_CSV_COMPLEXITY, *metrics, "error"])  # what read_runs_csv reads
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
                    _blank(j.wall_s),
                    j.machine,
                    _blank(j.mfu),
                    *(j.metrics.get(m, "") for m in metrics),
                    j.error,
                ]
            )


def write_runs_markdown(path: Path, jobs: list[Job], metrics: list[str], keys: list[str]) -> None:
    """One row per job (the per-seed values behind every cell of table.md), in the order of runs.csv:
    its group keys, seed, status, its own wall time and each metric to 3 decimals (4 significant
    digits below 0.01 and from 1000 on)."""
    head = [*keys, "seed", "status", "wall s", *metrics]
    lines = [
        f"# mmbench report: every run ({len(jobs)})",
        "",
        "Per-seed values of the cells in table.md; wall s = the run's own time (metrics.json `wall_s`; a "
        "resumed run: its last part). Full precision: runs.csv.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for j in jobs:
        values = [_per_run(j.metrics[m]) if m in j.metrics else "" for m in metrics]
        wall = f"{j.wall_s:,.0f}" if j.wall_s is not None else ""
        cells = [*(j.overrides.get(k, "") for k in keys), j.overrides.get("seed", ""), j.status, wall, *values]
        lines.append("| " + " | ".join(cells) + " |")
    path.write_text("\n".join(lines) + "\n")


def _per_run(x: float) -> str:
    return f"{x:.3f}" if x == 0 or 0.01 <= abs(x) < 1000 else _fmt(x)


def write_latex(
    path: Path,
    rows: list[Row],
    metrics: list[str],
    keys: list[str],
    alpha: float = 0.05,
    holm_over: str = "table",
    paper: PaperStyle | None = None,
) -> None:
    """table_detail.tex, or the paper table (table.tex) with `paper`."""
    columns = complexity_columns(rows)
    cols = [*(keys or ["group"]), "n", *(title for title, _ in columns.values()), *metrics]
    cells_are = (
        paper.caption(metrics, tex=True) + ".tex"
        if paper
        else "mean $\\pm$ std over seeds, 95% t-CI of the mean in brackets (mean $\\pm$ "
        "$t_{0.975,n-1}\\,s/\\sqrt{n}$, clipped to [0, 1] for accuracies, recalls and scores; none for n=1)"
    )
    lines = [
        f"% mmbench-report: {cells_are}, best per column in bold; params and FLOPs/sample "
        "(one forward pass): means over the row's runs.",
        "% Caption text for this table (a bare tabular: put it in your table's \\caption):",
        "% " + significance_caption(rows, metrics, alpha, tex=True, holm_over=holm_over),
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
            if paper:
                cells.append(paper.cell(s, m, len(r.jobs), TEX_MARKS, pm="$\\pm$"))
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
        lines.append(" & ".join([*group, str(len(r.jobs)), *_complexity_cells(r, "--", columns), *cells]) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    path.write_text("\n".join(lines) + "\n")
