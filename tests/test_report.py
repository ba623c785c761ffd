"""mmbench-report on known inputs: statistics (t-interval of the mean), grouping, bold best, tests against
the best (Welch, Holm), the n < 3 warning, the note on retrieval galleries of different sizes,
failed/unfinished/missing jobs, params and FLOPs beside every table, the default (headline) metrics, and
what the bar charts and learning curves draw."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib.container import BarContainer
from omegaconf import OmegaConf
from scipy import stats

from mmbench import report
from mmbench.sweep import job_dirname, swept_keys

# (model, seed) -> metrics; vilt is better on acc, clip on loss
VALUES = {
    ("vilt", 0): {"test/vqa/acc": 0.80, "test/loss": 2.0},
    ("vilt", 1): {"test/vqa/acc": 0.90, "test/loss": 1.8},
    ("vilt", 2): {"test/vqa/acc": 0.85, "test/loss": 1.9},
    ("clip", 0): {"test/vqa/acc": 0.50, "test/loss": 1.0},
    ("clip", 1): {"test/vqa/acc": 0.60, "test/loss": 1.2},
}
# (model, seed) -> metrics.json's complexity; clip's two FLOPs average to 10.5M
COMPLEXITY = {
    ("vilt", 0): {"params": 1000, "flops_per_sample": 3.8e7, "peak_memory_mb": 512.0, "peak_memory_scope": "run"},
    ("vilt", 1): {"params": 1000, "flops_per_sample": 3.8e7, "peak_memory_mb": 520.5, "peak_memory_scope": "run"},
    ("vilt", 2): {"params": 1000, "flops_per_sample": 3.8e7, "peak_memory_mb": 530.0, "peak_memory_scope": "process"},
    ("clip", 0): {"params": 1100, "flops_per_sample": 1.0e7},  # an older run: no peak memory
    ("clip", 1): {"params": 1100, "flops_per_sample": 1.1e7},
}
TASK = ["model=vilt,clip,albef", "seed=0,1,2", "trainer.max_epochs=1"]
# two-sided 95% Student-t quantiles t_{0.975, df} (statistical tables)
T975 = {1: 12.706204736174706, 2: 4.302652729749464}
FEW_SEEDS_NOTE = "intervals are wide and the test has little power"


def _t_ci_by_formula(x) -> tuple[float, float]:
    x = np.asarray(x, dtype=float)
    half = T975[len(x) - 1] * x.std(ddof=1) / np.sqrt(len(x))
    return x.mean() - half, x.mean() + half


def _sweep(root: Path) -> Path:
    """A sweep as the CLI leaves it: multirun.yaml, 5 completed jobs, 1 failed, 1 killed, 2 never started."""
    sweep = root / "sweep"
    swept = swept_keys(TASK)
    sweep.mkdir(parents=True)
    sweeper = {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper", "params": None}
    OmegaConf.save(
        OmegaConf.create({"hydra": {"overrides": {"task": TASK}, "sweeper": sweeper}}), sweep / "multirun.yaml"
    )

    for (model, seed), metrics in VALUES.items():
        _job(
            sweep,
            swept,
            model,
            seed,
            {
                "status": "completed",
                "metrics": {**metrics, "note": "text"},
                "complexity": COMPLEXITY[model, seed],
                **({"wall_s": 600.4 + seed} if model == "vilt" else {}),  # clip: an older run, no wall_s
            },
        )
    _job(sweep, swept, "clip", 2, {"status": "failed", "metrics": {}, "error": "Traceback...\nRuntimeError: boom"})
    _job(sweep, swept, "albef", 0, None)  # killed: .hydra but no metrics.json
    return sweep


def _job(sweep: Path, swept: list[str], model: str, seed: int, record: dict | None) -> None:
    """One job directory as a run leaves it: .hydra/overrides.yaml and (unless killed) metrics.json."""
    overrides = [f"model={model}", f"seed={seed}", "trainer.max_epochs=1"]
    d = sweep / job_dirname(overrides, swept)
    (d / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(overrides), d / ".hydra" / "overrides.yaml")
    if record is not None:
        (d / "metrics.json").write_text(json.dumps({"overrides": overrides, "seed": seed, **record}))


def test_report_statistics_bold_and_job_states(tmp_path):
    out = report.report([_sweep(tmp_path)], out=tmp_path / "rep", metrics=["test/*"], plots=True)
    assert out["keys"] == ["model"] and out["metrics"] == ["test/loss", "test/vqa/acc"]
    rows = {r.group: r for r in out["rows"]}
    assert set(rows) == {("model=clip",), ("model=vilt",)}

    for model in ("vilt", "clip"):
        for metric in out["metrics"]:
            x = np.array([v[metric] for (m, _), v in VALUES.items() if m == model])
            s = rows[(f"model={model}",)].stats[metric]
            assert s["mean"] == pytest.approx(x.mean()) and s["std"] == pytest.approx(x.std(ddof=1))
            lo, hi = _t_ci_by_formula(x)
            if metric.endswith("acc"):  # a fraction: the interval is clipped to [0, 1] (clip's is [-0.085, 1.185])
                lo, hi = max(lo, 0.0), min(hi, 1.0)
            assert s["n"] == len(x) and (s["ci_lo"], s["ci_hi"]) == pytest.approx((lo, hi), rel=1e-9)
            assert s["ci_lo"] < x.min() and x.max() < s["ci_hi"]  # 2-3 seeds: wider than [min, max]
    assert rows[("model=clip",)].stats["test/vqa/acc"]["ci_lo"] == 0.0
    # higher is better for acc, lower for loss
    assert (
        rows[("model=vilt",)].stats["test/vqa/acc"]["best"] and not rows[("model=clip",)].stats["test/vqa/acc"]["best"]
    )
    assert rows[("model=clip",)].stats["test/loss"]["best"] and not rows[("model=vilt",)].stats["test/loss"]["best"]

    md = (tmp_path / "rep" / "table_detail.md").read_text()
    # 3 vs 2 seeds: Welch p = 0.050 (acc) and 0.031 (loss), Holm over the 2 -> 0.062 both: not distinguishable
    assert "| vilt | 3 | 1k | 38M | <u>1.9 ± 0.1</u> [" in md and "**0.85 ± 0.05**" in md and "**1.1 ± 0.1414**" in md
    # clip's loss 1.0, 1.2: 1.1 ± 12.706 * 0.1414 / sqrt(2) = 1.1 ± 1.2706
    assert "| clip | 2 | 1.1k | 10.5M | **1.1 ± 0.1414** [-0.1706, 2.371] | <u>0.55 ± 0.07071</u> [0, 1] |" in md
    assert "| model | n | params | FLOPs/sample | test/loss | test/vqa/acc |" in md
    # vilt's acc 0.80, 0.90, 0.85: 0.85 ± 4.3027 * 0.05 / sqrt(3) = 0.85 ± 0.1242
    assert "**0.85 ± 0.05** [0.7258, 0.9742]" in md
    assert "95% CI of the mean, mean ± t(0.975, n-1)·std/√n" in md and "bootstrap" not in md
    # clip has 2 seeds: said in the caption (md, tex) and warned about by the CLI (test_cli_warns_below_3_seeds)
    assert f"n < 3 seeds in 1 of 2 rows (model=clip): {FEW_SEEDS_NOTE}." in md
    assert "**failed** `model=clip,seed=2`" in md and "RuntimeError: boom" in md
    assert "**unfinished** `model=albef,seed=0`" in md
    assert "**missing** `model=albef,seed=1`" in md and "**missing** `model=albef,seed=2`" in md
    tex = (tmp_path / "rep" / "table_detail.tex").read_text()
    assert "\\textbf{0.85 $\\pm$ 0.05} {\\scriptsize [0.7258, 0.9742]}" in tex and "test/vqa/acc" in tex.replace(
        "\\_", "_"
    )
    assert "model & n & params & FLOPs/sample & test/loss" in tex and "\\begin{tabular}{lrrrrr}" in tex
    assert "clip & 2 & 1.1k & 10.5M & \\textbf{1.1 $\\pm$" in tex and "vilt & 3 & 1k & 38M & " in tex
    assert f"$n < 3$ seeds in 1 of 2 rows (model=clip): {FEW_SEEDS_NOTE}." in tex and "bootstrap" not in tex
    with open(tmp_path / "rep" / "table.csv", newline="") as f:
        summary = list(csv.DictReader(f))
    assert list(summary[0])[:5] == ["model", "n", "params", "flops_per_sample", "test/loss/mean"] and len(summary) == 2
    assert [(float(r["params"]), float(r["flops_per_sample"])) for r in summary] == [(1100, 1.05e7), (1000, 3.8e7)]
    with open(tmp_path / "rep" / "runs.csv", newline="") as f:
        runs = {r["job"]: r for r in csv.DictReader(f)}
    assert (
        runs["model=vilt,seed=2"]["flops_per_sample"] == "38000000.0" and runs["model=vilt,seed=2"]["params"] == "1000"
    )
    assert (runs["model=vilt,seed=1"]["peak_memory_mb"], runs["model=vilt,seed=1"]["peak_memory_scope"]) == (
        "520.5",
        "run",
    )
    assert runs["model=vilt,seed=2"]["peak_memory_scope"] == "process"
    assert runs["model=clip,seed=0"]["peak_memory_mb"] == runs["model=clip,seed=0"]["peak_memory_scope"] == ""
    assert (runs["model=vilt,seed=1"]["wall_s"], runs["model=clip,seed=0"]["wall_s"]) == ("601.4", "")
    per_run = (tmp_path / "rep" / "runs.md").read_text().splitlines()
    assert "| model | seed | status | wall s | test/loss | test/vqa/acc |" in per_run
    assert "| vilt | 1 | completed | 601 | 1.800 | 0.900 |" in per_run
    assert "| clip | 0 | completed |  | 1.000 | 0.500 |" in per_run
    assert "| clip | 2 | failed |  |  |  |" in per_run and "| albef | 1 | missing |  |  |  |" in per_run
    assert runs["model=clip,seed=2"]["status"] == "failed" and runs["model=clip,seed=2"]["flops_per_sample"] == ""
    assert {p.name for p in out["plots"]} == {"bar_test_loss.png", "bar_test_vqa_acc.png"}
    # bar error bars are the t-CI, not the std: clip's 2 seeds 0.5, 0.6 give 0.55 ± 12.706 * 0.0707 / sqrt(2)
    labels, means, yerr, kinds = report.bar_data(out["rows"], "test/vqa/acc")
    assert labels == ["model=clip", "model=vilt"] and kinds == ["tied", "best"]
    # clip's error bar is its clipped interval [0, 1] around 0.55 (unclipped: 0.55 ± 0.6353)
    assert yerr[:, 0] == pytest.approx([0.55, 0.45]) and means[0] == pytest.approx(0.55)
    assert yerr[:, 1] == pytest.approx([0.1242069, 0.1242069])

    # deterministic: the same report twice
    again = report.report([tmp_path / "sweep"], out=tmp_path / "rep2", metrics=["test/*"], plots=False)
    assert (tmp_path / "rep2" / "table_detail.md").read_text().split("\n", 1)[1] == md.split("\n", 1)[1]
    assert again["rows"][0].stats == out["rows"][0].stats


def test_the_paper_table_prints_percent_with_one_decimal_and_keeps_the_marks(tmp_path):
    """table.md / table.tex: mean ± std, accuracies in percent, `--digits` decimals, no interval; the detail
    table and the CSV keep full precision (the values of test_report_statistics_bold_and_job_states)."""
    sweep = _sweep(tmp_path)
    report.report([sweep], out=tmp_path / "rep", metrics=["test/*"], plots=False)
    md = (tmp_path / "rep" / "table.md").read_text()
    # vilt: loss 2.0, 1.8, 1.9 (tied with the best), acc 0.80, 0.90, 0.85 (best); clip: loss 1.0, 1.2, acc 0.5, 0.6
    assert "| vilt | 3 | 1k | 38M | <u>1.9 ± 0.1</u> | **85.0 ± 5.0** |" in md
    assert "| clip | 2 | 1.1k | 10.5M | **1.1 ± 0.1** | <u>55.0 ± 7.1</u> |" in md
    assert "in percent" in md and "table_detail.md" in md and "[0.7258" not in md
    tex = (tmp_path / "rep" / "table.tex").read_text()
    assert "vilt & 3 & 1k & 38M & \\underline{1.9 $\\pm$ 0.1} & \\textbf{85.0 $\\pm$ 5.0} \\\\" in tex
    assert "[0.7258, 0.9742]" in (tmp_path / "rep" / "table_detail.md").read_text()

    assert (
        report.main(
            [
                str(sweep),
                "--out",
                str(tmp_path / "frac"),
                "--metrics",
                "test/*",
                "--no-plots",
                "--digits",
                "3",
                "--no-percent",
            ]
        )
        == 0
    )
    md = (tmp_path / "frac" / "table.md").read_text()
    assert "| vilt | 3 | 1k | 38M | <u>1.900 ± 0.100</u> | **0.850 ± 0.050** |" in md and "in percent" not in md
    with pytest.raises(SystemExit) as refused:  # argparse's error: exit 2
        report.main([str(sweep), "--digits", "9"])
    assert refused.value.code == 2


def test_mfu_gets_a_column_when_the_runs_recorded_it_and_survives_runs_csv(tmp_path):
    sweep = tmp_path / "sweep"
    for model, mfus in (("vilt", (0.58, 0.60)), ("albef", (0.41, 0.43))):
        for seed, mfu in enumerate(mfus):
            record = {"status": "completed", "metrics": {"test/acc": 0.5 + seed / 10}, "complexity": {"mfu": mfu}}
            _job(sweep, ["model", "seed"], model, seed, record)
    report.report([sweep], out=tmp_path / "rep", metrics=["test/*"], plots=False)
    md = (tmp_path / "rep" / "table.md").read_text()
    assert "| model | n | params | FLOPs/sample | MFU | test/acc |" in md
    assert "| vilt | 2 | - | - | 59% |" in md and "| albef | 2 | - | - | 42% |" in md
    # a report of the runs.csv alone keeps it
    report.report([tmp_path / "rep" / "runs.csv"], out=tmp_path / "again", metrics=["test/*"], plots=False)
    assert "| vilt | 2 | - | - | 59% |" in (tmp_path / "again" / "table.md").read_text()


def test_paper_cells_known_answers_losses_unscaled_csv_at_full_precision(tmp_path):
    """One row, three seeds: an accuracy of mean 0.79785, std 0.02472 is `79.8 ± 2.5` in table.md (`79.785 ±
    2.472` at --digits 3), AUROC and BLEU-4 in percent too; a loss, a perplexity and CIDEr-D (x10, not a fraction)
    unscaled; table_detail.md keeps 4 significant digits and the CI, table.csv every statistic exactly."""
    acc = (0.79785 - 0.02472, 0.79785, 0.79785 + 0.02472)  # mean 0.79785, std (ddof=1) 0.02472
    sweep = tmp_path / "sweep"
    for seed, a in enumerate(acc):
        metrics = {
            "test/vqa/acc": a,
            "test/classification/auroc": 0.70 + seed / 50,  # 0.70, 0.72, 0.74
            "test/captioning/bleu4": 0.30 + seed / 100,  # 0.30, 0.31, 0.32
            "test/captioning/cider": 1.1 + seed / 10,  # 1.1, 1.2, 1.3
            "test/loss": 2.0 + seed / 2,  # 2.0, 2.5, 3.0
            "test/lm/ppl": 12.0 + seed,  # 12, 13, 14
        }
        complexity = {"params": 1.2e6, "flops_per_sample": 3.8e7}
        _job(
            sweep,
            ["model", "seed"],
            "vilt",
            seed,
            {"status": "completed", "metrics": metrics, "complexity": complexity},
        )
    names = ["test/vqa/acc", "test/classification/auroc", "test/captioning/bleu4", "test/captioning/cider"]
    names += ["test/loss", "test/lm/ppl"]
    out = report.report([sweep], out=tmp_path / "rep", metrics=names, plots=False)
    md = (tmp_path / "rep" / "table.md").read_text()
    # one row, so every cell is the best of its column: bold in both styles
    cells = "**79.8 ± 2.5** | **72.0 ± 2.0** | **31.0 ± 1.0** | **1.2 ± 0.1** | **2.5 ± 0.5** | **13.0 ± 1.0** |"
    assert "| all | 3 | 1.2M | 38M | " + cells in md and "0.7364" not in md
    # the detail table: 4 significant digits and the t-interval 0.79785 ± 4.3027 * 0.02472 / sqrt(3)
    detail = (tmp_path / "rep" / "table_detail.md").read_text()
    assert "| all | 3 | 1.2M | 38M | **0.7978 ± 0.02472** [0.7364, 0.8593] | " in detail
    assert "**2.5 ± 0.5** [1.258, 3.742]" in detail  # a loss: no clipping, no percent

    with open(tmp_path / "rep" / "table.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    s = out["rows"][0].stats["test/vqa/acc"]
    for key in ("mean", "std", "ci_lo", "ci_hi"):  # every digit of the statistics: float(str(x)) == x
        assert float(row[f"test/vqa/acc/{key}"]) == s[key]
    assert s["mean"] == pytest.approx(0.79785, abs=1e-15) and s["std"] == pytest.approx(0.02472, abs=1e-15)
    assert row["test/loss/mean"] == "2.5" and row["test/lm/ppl/std"] == "1.0"  # unscaled

    assert (
        report.main([str(sweep), "--out", str(tmp_path / "d3"), "--metrics", *names, "--no-plots", "--digits", "3"])
        == 0
    )
    assert "| **79.785 ± 2.472** | **72.000 ± 2.000** |" in (tmp_path / "d3" / "table.md").read_text()
    with open(tmp_path / "d3" / "table.csv", newline="") as f:
        assert list(csv.DictReader(f)) == [row]  # --digits leaves the CSV alone


def test_paper_cells_of_one_seed_small_values_and_fewer_seeds():
    style = report.PaperStyle(digits=1)
    one = {"mean": 0.7, "std": 0.0, "n": 1, "ci_lo": None, "ci_hi": None, "vs_best": "untestable"}
    assert style.cell(one, "test/acc", 1, {"untestable": ("", "†")}) == "70.0†"
    few = {"mean": 0.00123, "std": 0.0004, "n": 2, "ci_lo": 0.0, "ci_hi": 0.01, "vs_best": "worse"}
    assert style.cell(few, "test/loss", 3, {}) == "0.001 ± 0.0004 (n=2)"  # below 0.1: significant digits
    assert style.number(12.345, "test/lm/ppl") == "12.3" and style.number(0.5, "test/itc/i2t_r1") == "50.0"


def test_t_ci_known_values():
    # [1, 2, 3]: mean 2, s = 1, 2 ± t_{0.975, 2} / sqrt(3) = 2 ± 4.3027 / 1.732
    assert report.t_ci([1.0, 2.0, 3.0]) == pytest.approx((-0.48413771175033, 4.48413771175033), rel=1e-12)
    assert report.t_ci([3.0, 1.0, 2.0]) == pytest.approx(
        (2 - T975[2] / np.sqrt(3), 2 + T975[2] / np.sqrt(3)), rel=1e-12
    )
    # 2 seeds: mean ± t_{0.975, 1} * |a - b| / 2, far wider than [min, max] (a bootstrap gives [min, max])
    assert report.t_ci([0.5, 0.6]) == pytest.approx((0.55 - T975[1] * 0.05, 0.55 + T975[1] * 0.05), rel=1e-9)
    assert report.t_ci([3.0]) is None  # one seed: no interval
    assert report.t_ci([2.0, 2.0, 2.0]) == (2.0, 2.0)  # no spread
    # many values: close to the normal interval, 49.5 ± 1.9842 * 29.011 / 10
    lo, hi = report.t_ci(np.arange(100.0))
    assert (lo, hi) == pytest.approx((49.5 - 5.7565, 49.5 + 5.7565), abs=1e-3)
    assert report.t_ci([1.0, 2.0, 3.0], level=0.90) == pytest.approx(
        (2 - 2.919986 / np.sqrt(3), 2 + 2.919986 / np.sqrt(3))
    )
    assert report.lower_is_better("val/loss") and report.lower_is_better("test/lm/ppl")
    assert not report.lower_is_better("test/itc/acc")


def test_cli_on_empty_and_missing_dirs(tmp_path, capsys):
    assert report.main([str(tmp_path / "nope"), str(tmp_path / "old" / "runs.csv")]) == 2
    missing = capsys.readouterr().err
    assert f"no such file or directory: {tmp_path / 'nope'}, {tmp_path / 'old' / 'runs.csv'}" in missing
    assert report.main([str(tmp_path), "--no-plots"]) == 2  # no runs at all: says where it looked, writes nothing
    captured = capsys.readouterr()
    assert f"no runs under {tmp_path}" in captured.err and not (tmp_path / "report").exists()


def test_cli_warns_below_3_seeds(tmp_path, capsys):
    assert report.main([str(_sweep(tmp_path)), "--no-plots", "--out", str(tmp_path / "rep")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"mmbench-report: warning: n < 3 seeds in 1 of 2 rows (model=clip): {FEW_SEEDS_NOTE}."]


# ------------------------------------------------------------------ a sweep in parts: runs.csv as input

ALBEF = {0: 0.70, 1: 0.75, 2: 0.72}  # test/vqa/acc of the albef jobs the first sweep never started


def _second_part(root: Path) -> Path:
    """The jobs the first sweep (_sweep) left missing, run later as a sweep of their own."""
    sweep = root / "part2"
    swept = swept_keys(["model=albef", "seed=0,1,2"])
    for seed, acc in ALBEF.items():
        _job(sweep, swept, "albef", seed, {"status": "completed", "metrics": {"test/vqa/acc": acc, "test/loss": 1.5}})
    return sweep


def test_runs_csv_stands_in_for_the_sweep_it_reports(tmp_path):
    """A sweep's runs.csv in place of its directory gives the same table, alone or beside another sweep."""
    first, second = _sweep(tmp_path), _second_part(tmp_path)
    report.report([first], out=tmp_path / "rep1", metrics=["test/*"], plots=False)
    runs_csv = tmp_path / "rep1" / "runs.csv"

    alone = report.report([runs_csv], out=tmp_path / "again", metrics=["test/*"], plots=False)
    assert (tmp_path / "again" / "table.csv").read_text() == (tmp_path / "rep1" / "table.csv").read_text()
    # completed and failed rows are read; the killed and never-started ones were a snapshot: not
    assert sorted((j.name, j.status) for j in alone["jobs"]) == [
        *(("model=clip,seed=" + s, "completed") for s in "01"),
        ("model=clip,seed=2", "failed"),
        *(("model=vilt,seed=" + s, "completed") for s in "012"),
    ]
    vilt = next(j for j in alone["jobs"] if j.name == "model=vilt,seed=1")
    assert (vilt.params, vilt.flops, vilt.peak_memory_mb, vilt.wall_s, vilt.metrics) == (
        1000,
        3.8e7,
        520.5,
        601.4,
        VALUES["vilt", 1],
    )
    # a runs.csv written before it had a wall_s column (docs/results/arch_sweep_a) reads the same metrics
    with open(runs_csv, newline="") as f:
        rows = list(csv.reader(f))
    at = rows[0].index("wall_s")
    older = tmp_path / "older" / "runs.csv"
    older.parent.mkdir()
    with open(older, "w", newline="") as f:
        csv.writer(f).writerows([r[:at] + r[at + 1 :] for r in rows])
    report.report([older], out=tmp_path / "older_rep", metrics=["test/*"], plots=False)
    assert (tmp_path / "older_rep" / "table.csv").read_text() == (tmp_path / "rep1" / "table.csv").read_text()

    from_dirs = report.report([first, second], out=tmp_path / "dirs", metrics=["test/*"], plots=False)
    mixed = report.report([runs_csv, second], out=tmp_path / "mixed", metrics=["test/*"], plots=False)
    assert mixed["keys"] == from_dirs["keys"] == ["model"]  # seed and max_epochs, unknown to runs.csv, vary nothing
    assert (tmp_path / "mixed" / "table.csv").read_text() == (tmp_path / "dirs" / "table.csv").read_text()
    albef = next(r for r in mixed["rows"] if r.group == ("model=albef",))
    assert albef.stats["test/vqa/acc"]["mean"] == pytest.approx(np.mean(list(ALBEF.values())))


def test_a_job_given_twice_is_refused(tmp_path, capsys):
    first = _sweep(tmp_path)
    report.report([first], out=tmp_path / "rep1", metrics=["test/*"], plots=False)
    out = tmp_path / "both"
    assert report.main([str(first), str(tmp_path / "rep1" / "runs.csv"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "5 job(s) given twice with the same model, seed" in err and "not both" in err
    assert not out.exists()  # refused before writing anything


def test_a_file_that_is_not_a_runs_csv_is_refused(tmp_path, capsys):
    (tmp_path / "table.csv").write_text("model,n,params\nvilt,3,1000\n")
    assert report.main([str(tmp_path / "table.csv")]) == 2
    err = capsys.readouterr().err
    assert "not a runs.csv of mmbench-report" in err and "Traceback" not in err


# ------------------------------------------------------------------ significance against the best

# group -> metric -> per-seed values, chosen so that every comparison with the best has a known outcome
KNOWN = {
    "a": {"test/acc": [0.90, 0.91, 0.92], "test/loss": [1.00, 1.01, 1.02], "test/exact": [1.0, 1.0, 1.0]},
    "b": {"test/acc": [0.88, 0.90, 0.92], "test/loss": [0.49, 0.53, 0.57], "test/exact": [0.5, 0.5, 0.5]},
    "c": {"test/acc": [0.50, 0.51, 0.52], "test/loss": [0.50, 0.51, 0.52], "test/exact": [0.9, 0.8, 0.7]},
    "d": {"test/acc": [0.70], "test/loss": [0.90], "test/exact": [0.2]},
}
# metric -> group -> expected mark: acc (higher is better): a best, b within noise, c far below, d one seed;
# loss (lower is better): c best, b within noise, a far above; exact: a and b have no spread at all
# (Welch undefined), c has spread but only 3 seeds against a constant best
EXPECTED = {
    "test/acc": {"a": "best", "b": "tied", "c": "worse", "d": "untestable"},
    "test/loss": {"a": "worse", "b": "tied", "c": "best", "d": "untestable"},
    "test/exact": {"a": "best", "b": "untestable", "c": "tied", "d": "untestable"},
}
BEST = {"test/acc": "a", "test/loss": "c", "test/exact": "a"}


def _welch_by_formula(a, b) -> float:
    """Welch's t and Welch-Satterthwaite df written out, two-sided p from the t distribution."""
    a, b = np.asarray(a), np.asarray(b)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    t = (a.mean() - b.mean()) / np.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return float(2 * stats.t.sf(abs(t), df))


def _known_sweep(root: Path, models: str = "abcd") -> Path:
    sweep = root / "known"
    sweep.mkdir(parents=True)
    swept = swept_keys([f"model={','.join(models)}", "seed=0,1,2"])
    for model, metrics in ((m, KNOWN[m]) for m in models):
        for seed in range(len(metrics["test/acc"])):
            _job(
                sweep, swept, model, seed, {"status": "completed", "metrics": {m: v[seed] for m, v in metrics.items()}}
            )
    return sweep


def test_welch_p_known_values():
    # Wikipedia, "Welch's t-test", example 1 (n = 15 and 15): t = -2.46, df = 24.99, p = 0.021
    a1 = [27.5, 21.0, 19.0, 23.6, 17.0, 17.9, 16.9, 20.1, 21.9, 22.6, 23.1, 19.6, 19.0, 21.7, 21.4]
    a2 = [27.1, 22.0, 20.8, 23.4, 23.4, 23.5, 25.8, 22.0, 24.8, 20.2, 21.9, 22.1, 22.9, 20.5, 24.4]
    assert report.welch_p(a1, a2) == pytest.approx(0.021, abs=5e-4)
    assert report.welch_p(a1, a2) == pytest.approx(_welch_by_formula(a1, a2), rel=1e-9)
    # unequal sizes and variances, as seeds give them: 3 vs 2 values
    assert report.welch_p([0.80, 0.90, 0.85], [0.50, 0.60]) == pytest.approx(
        _welch_by_formula([0.80, 0.90, 0.85], [0.50, 0.60])
    )
    assert report.welch_p([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) == pytest.approx(
        _welch_by_formula([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])
    )
    # undefined: a single value on either side, or no spread on both sides
    assert report.welch_p([0.7], [0.90, 0.91, 0.92]) is None
    assert report.welch_p([0.90, 0.91], [0.7]) is None
    assert report.welch_p([0.5, 0.5, 0.5], [1.0, 1.0, 1.0]) is None


def test_holm_known_values():
    np.testing.assert_allclose(report.holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    np.testing.assert_allclose(report.holm([0.5, 0.001]), [0.5, 0.002])
    np.testing.assert_allclose(report.holm([0.6, 0.7]), [1.0, 1.0])  # capped at 1, order kept
    np.testing.assert_allclose(report.holm([0.02]), [0.02])
    assert len(report.holm([])) == 0


def test_report_marks_cells_not_distinguishable_from_the_best(tmp_path):
    out = report.report([_known_sweep(tmp_path)], out=tmp_path / "rep", plots=True)
    assert out["metrics"] == ["test/acc", "test/exact", "test/loss"]  # no headline metric recorded: every test/*
    rows = {r.group[0].split("=")[1]: r for r in out["rows"]}

    # p-values by formula, Holm by its definition over the 5 testable comparisons of the table
    raw = {
        (m, g): _welch_by_formula(KNOWN[g][m], KNOWN[BEST[m]][m])
        for m, marks in EXPECTED.items()
        for g, mark in marks.items()
        if mark in ("tied", "worse")
    }
    ranked = sorted(raw.values())
    adjusted = {
        k: min(1.0, max((len(ranked) - j) * ranked[j] for j in range(ranked.index(p) + 1))) for k, p in raw.items()
    }
    for m, marks in EXPECTED.items():
        for g, mark in marks.items():
            s = rows[g].stats[m]
            assert s["vs_best"] == mark, (m, g, s)
            assert s["best"] == (mark == "best")
            if (m, g) in raw:
                assert s["p"] == pytest.approx(raw[m, g], rel=1e-9)
                assert s["p_adj"] == pytest.approx(adjusted[m, g], rel=1e-9)
                assert (s["p_adj"] >= 0.05) == (mark == "tied")
            else:
                assert s["p"] is None and s["p_adj"] is None
    assert adjusted["test/acc", "b"] > 0.3 and adjusted["test/acc", "c"] < 1e-4  # far from the 0.05 boundary

    md = (tmp_path / "rep" / "table_detail.md").read_text()
    assert "| a | 3 | - | - | **0.91 ± 0.01** [" in md  # best stays bold; no complexity recorded: "-"
    assert "| b | 3 | - | - | <u>0.9 ± 0.02</u> [" in md and "<u>0.53 ± 0.04</u>" in md and "<u>0.8 ± 0.1</u>" in md
    assert "| c | 3 | - | - | 0.51 ± 0.01 [" in md and "| 1.01 ± 0.01 [" in md  # clearly worse: plain
    # one seed: the mean and "n=1, no CI", never "± 0 [x, x]"; b's exact has 3 seeds and no spread: [0.5, 0.5]
    assert "| d | 1 | - | - | 0.7† (n=1, no CI) | 0.2† (n=1, no CI) | 0.9† (n=1, no CI) |" in md
    assert "0.5 ± 0† [0.5, 0.5]" in md and " ± 0† [0.7" not in md
    assert md.count("<u>") == 3 and md.count("†") == 4 + 1  # 4 cells + the caption
    assert "Welch's t-test" in md and "Holm-corrected over the 5 comparisons" in md and "alpha = 0.05" in md
    assert "not tested (4 cells)" in md and "n column" in md
    assert f"n < 3 seeds in 1 of 4 rows (model=d): {FEW_SEEDS_NOTE}." in md

    tex = (tmp_path / "rep" / "table_detail.tex").read_text()
    assert "\\underline{0.9 $\\pm$ 0.02}" in tex and "\\textbf{0.91 $\\pm$ 0.01}" in tex
    assert "0.7$^\\dagger$ {\\scriptsize (n=1, no CI)}" in tex and "0.7 $\\pm$" not in tex
    assert tex.count("\\underline{") == 3 and f"$n < 3$ seeds in 1 of 4 rows (model=d): {FEW_SEEDS_NOTE}." in tex
    assert "Welch's $t$-test" in tex and "over the 5 comparisons" in tex and "$\\alpha$ = 0.05" in tex

    with open(tmp_path / "rep" / "table.csv", newline="") as f:
        by_group = {r["model"]: r for r in csv.DictReader(f)}
    for m, marks in EXPECTED.items():
        for g, mark in marks.items():
            assert by_group[g][f"{m}/vs_best"] == mark
            assert (by_group[g][f"{m}/p_adj"] == "") == ((m, g) not in raw)
    assert float(by_group["b"]["test/acc/p_adj"]) == pytest.approx(adjusted["test/acc", "b"])
    assert (
        by_group["d"]["test/acc/ci_lo"] == by_group["d"]["test/acc/ci_hi"] == "" and by_group["d"]["test/acc/n"] == "1"
    )
    assert (float(by_group["b"]["test/acc/ci_lo"]), float(by_group["b"]["test/acc/ci_hi"])) == pytest.approx(
        _t_ci_by_formula(KNOWN["b"]["test/acc"])
    )

    # bar charts: error bars are the table's 95% t-CI, bars carry the marks
    labels, means, yerr, kinds = report.bar_data(out["rows"], "test/acc")
    assert labels == ["model=a", "model=b", "model=c", "model=d"] and kinds == ["best", "tied", "worse", "untestable"]
    s = rows["b"].stats["test/acc"]
    assert yerr.shape == (2, 4) and yerr[:, 1] == pytest.approx([s["mean"] - s["ci_lo"], s["ci_hi"] - s["mean"]])
    assert np.isnan(yerr[:, 3]).all() and not np.isnan(yerr[:, :3]).any()  # one seed: no error bar (NaN)
    assert {p.name for p in out["plots"]} == {"bar_test_acc.png", "bar_test_exact.png", "bar_test_loss.png"}


def test_holm_within_each_metric(tmp_path, capsys):
    """--holm-over metric: each column's comparisons form their own Holm family (known p-values)."""
    sweep = _known_sweep(tmp_path)
    assert report.main([str(sweep), "--no-plots", "--holm-over", "metric", "--out", str(tmp_path / "rep")]) == 0
    table_wide = report.report([sweep], out=tmp_path / "wide", plots=False)
    per_metric = report.report([sweep], out=tmp_path / "rep2", plots=False, holm_over="metric")
    wide = {(m, r.group[0]): r.stats[m] for r in table_wide["rows"] for m in r.stats if m.startswith("test/")}
    for m, marks in EXPECTED.items():
        raw = {
            g: _welch_by_formula(KNOWN[g][m], KNOWN[BEST[m]][m])
            for g, mark in marks.items()
            if mark in ("tied", "worse")
        }
        ranked = sorted(raw.values())
        for r in per_metric["rows"]:
            g, s = r.group[0].split("=")[1], r.stats[m]
            if g not in raw:
                assert s["p_adj"] is None and s["vs_best"] == marks[g]
                continue
            expected = min(1.0, max((len(ranked) - j) * ranked[j] for j in range(ranked.index(raw[g]) + 1)))
            assert s["p_adj"] == pytest.approx(expected, rel=1e-9)
            assert s["p_adj"] <= wide[m, r.group[0]]["p_adj"]  # a smaller family never adjusts more
            assert s["vs_best"] == ("tied" if expected >= 0.05 else "worse")
    md = (tmp_path / "rep" / "table_detail.md").read_text()
    assert "Holm-corrected within each column (at most 2 comparisons per column, 5 in the table)" in md
    assert "within each column" in (tmp_path / "rep" / "table_detail.tex").read_text()
    assert "within each column" not in (tmp_path / "wide" / "table_detail.md").read_text()
    with pytest.raises(ValueError, match="holm_over must be one of table, metric"):
        report.report([sweep], out=tmp_path / "bad", plots=False, holm_over="column")


def test_cli_alpha(tmp_path, capsys):
    sweep = _known_sweep(tmp_path)
    # exact/c: Welch p = 0.074, Holm x3 = 0.22: tied at alpha 0.05, worse at 0.5; acc/b (p_adj ~ 1) stays tied
    assert report.main([str(sweep), "--no-plots", "--alpha", "0.5", "--out", str(tmp_path / "rep")]) == 0
    with open(tmp_path / "rep" / "table.csv", newline="") as f:
        by_group = {r["model"]: r for r in csv.DictReader(f)}
    assert by_group["c"]["test/exact/vs_best"] == "worse" and by_group["b"]["test/acc/vs_best"] == "tied"
    assert "alpha = 0.5;" in (tmp_path / "rep" / "table_detail.md").read_text()
    assert f"n < 3 seeds in 1 of 4 rows (model=d): {FEW_SEEDS_NOTE}." in capsys.readouterr().err
    with pytest.raises(SystemExit):
        report.main([str(sweep), "--alpha", "0"])
    assert "--alpha must be between 0 and 1" in capsys.readouterr().err


def test_no_few_seeds_note_with_3_seeds_everywhere(tmp_path, capsys):
    sweep = _known_sweep(tmp_path, models="abc")
    assert report.main([str(sweep), "--no-plots", "--out", str(tmp_path / "rep")]) == 0
    assert "warning" not in capsys.readouterr().err
    for name in ("table_detail.md", "table_detail.tex"):
        text = (tmp_path / "rep" / name).read_text()
        assert FEW_SEEDS_NOTE not in text and "no CI" not in text


# ------------------------------------------------------------------ retrieval galleries of different sizes

GALLERIES_NOTE = "retrieval metrics are not comparable across those rows"
OTHER_GALLERY = "a smaller gallery than the largest, neither bold nor tested against the best"


def _gallery_sweep(root: Path, test_images: dict[str, int]) -> Path:
    """3 seeds per model (no few-seeds note), test retrieval over `test_images[model]` images with 5
    captions each, val retrieval over 100 images everywhere."""
    sweep = root / "galleries"
    sweep.mkdir(parents=True)
    swept = swept_keys([f"model={','.join(test_images)}", "seed=0,1,2"])
    for i, (model, images) in enumerate(test_images.items()):
        for seed in range(3):
            metrics = {
                "test/vqa/acc": 0.5 + 0.1 * i + 0.01 * seed,
                "test/retrieval/rmean": 0.3 + 0.1 * i + 0.01 * seed,
                "test/retrieval/i2t_r1": 0.1 + 0.1 * i + 0.01 * seed,
                "test/retrieval/num_images": float(images),
                "test/retrieval/num_texts": float(5 * images),
                "val/retrieval/rmean": 0.2 + 0.1 * i + 0.01 * seed,
                "val/retrieval/num_images": 100.0,
                "val/retrieval/num_texts": 500.0,
            }
            _job(sweep, swept, model, seed, {"status": "completed", "metrics": metrics})
    return sweep


def test_note_when_retrieval_galleries_differ(tmp_path, capsys):
    # the [itm]-only run searched 32 images, the others 1000; only the test split's galleries differ
    sweep = _gallery_sweep(tmp_path, {"itc": 1000, "itm": 32, "both": 1000})
    out = report.report([sweep], out=tmp_path / "rep", plots=False)
    assert out["metrics"] == ["test/vqa/acc", "test/retrieval/rmean"]  # the sizes themselves are not shown
    assert report.differing_galleries(out["rows"], out["metrics"]) == {
        "test": {"images": (32.0, 1000.0), "texts": (160.0, 5000.0)}
    }
    note = f"Retrieval galleries differ (test: 32-1000 images, 160-5000 texts): {GALLERIES_NOTE}; ‡: {OTHER_GALLERY}."
    md = (tmp_path / "rep" / "table_detail.md").read_text()
    assert note in md and FEW_SEEDS_NOTE not in md
    tex = (tmp_path / "rep" / "table_detail.tex").read_text()
    tex_note = f"Retrieval galleries differ (test: 32--1000 images, 160--5000 texts): {GALLERIES_NOTE}; "
    assert tex_note + f"$^\\ddagger$: {OTHER_GALLERY}." in tex
    # every metric: val's galleries agree (100 images everywhere), so the note still names only test
    assert report.main([str(sweep), "--no-plots", "--all-metrics", "--out", str(tmp_path / "all")]) == 0
    assert capsys.readouterr().err.strip().splitlines() == [f"mmbench-report: warning: {note}"]
    assert note in (tmp_path / "all" / "table_detail.md").read_text()


def test_a_smaller_gallery_is_never_the_best_nor_tested(tmp_path):
    """An ITM-only run searches 32 images where the others search 1,000: its recall is far higher and
    means nothing beside theirs. Its retrieval cells are marked ‡, never bold, never tested (nor counted
    in the Holm family); the best and the tests are those of the rows that searched the largest gallery.
    Its other metrics are compared as usual."""
    # itm (i=2 in the fixture) has the highest retrieval values, on 32 images
    sweep = _gallery_sweep(tmp_path, {"itc": 1000, "both": 1000, "itm": 32})
    shown = ["test/vqa/acc", "test/retrieval/rmean", "test/retrieval/i2t_r1", "val/retrieval/rmean"]
    out = report.report([sweep], out=tmp_path / "rep", metrics=shown, plots=True)
    rows = {r.group[0].split("=")[1]: r.stats for r in out["rows"]}
    for metric in ("test/retrieval/rmean", "test/retrieval/i2t_r1"):
        assert rows["itm"][metric]["vs_best"] == "other_gallery" and not rows["itm"][metric]["best"]
        assert rows["itm"][metric]["p"] is None and rows["itm"][metric]["p_adj"] is None
        assert rows["both"][metric]["best"] and rows["itc"][metric]["vs_best"] in ("tied", "worse")
    assert rows["itm"]["test/vqa/acc"]["best"]  # not a retrieval metric: compared as before
    assert report.other_gallery_rows(out["rows"], "test/vqa/acc") == []
    assert report.other_gallery_rows(out["rows"], "val/retrieval/rmean") == []  # val: 100 images everywhere
    assert rows["itm"]["val/retrieval/rmean"]["best"]
    md = (tmp_path / "rep" / "table_detail.md").read_text()
    itm_line = next(line for line in md.splitlines() if line.startswith("| itm "))
    assert itm_line.count("‡") == 2 and itm_line.count("**") == 4  # test recalls marked; VQA, val rmean bold
    assert "over the 6 comparisons of this table" in md  # vqa, val rmean: 2 each; test rmean, i2t_r1: 1 each
    with open(tmp_path / "rep" / "table.csv", newline="") as f:
        table_csv = {r["group"] if "group" in r else r["model"]: r for r in csv.DictReader(f)}
    assert table_csv["itm"]["test/retrieval/rmean/vs_best"] == "other_gallery"
    assert (tmp_path / "rep" / "plots" / "bar_test_retrieval_rmean.png").exists()


def test_no_galleries_note_when_sizes_agree(tmp_path, capsys):
    sweep = _gallery_sweep(tmp_path, {"itc": 1000, "itm": 1000})
    assert report.main([str(sweep), "--no-plots", "--all-metrics", "--out", str(tmp_path / "rep")]) == 0
    assert "warning" not in capsys.readouterr().err
    for name in ("table_detail.md", "table_detail.tex"):
        text = (tmp_path / "rep" / name).read_text()
        assert "rmean" in text and "Retrieval galleries" not in text and GALLERIES_NOTE not in text


def test_no_galleries_note_without_a_retrieval_metric_shown(tmp_path, capsys):
    sweep = _gallery_sweep(tmp_path, {"itc": 1000, "itm": 32})
    # no retrieval metric at all, or only the gallery sizes themselves: nothing is compared on them
    for metrics in (["test/vqa/acc"], ["test/vqa/acc", "test/retrieval/num_*"]):
        out = report.report([sweep], out=tmp_path / "rep", metrics=metrics, plots=False)
        assert not any("rmean" in m or "r1" in m for m in out["metrics"])
        assert report.galleries_note(out["rows"], out["metrics"]) == ""
        for name in ("table_detail.md", "table_detail.tex"):
            assert "Retrieval galleries" not in (tmp_path / "rep" / name).read_text()
    assert report.main([str(sweep), "--no-plots", "--metrics", "test/vqa/*", "--out", str(tmp_path / "cli")]) == 0
    assert "warning" not in capsys.readouterr().err


def test_si_format_of_params_and_flops():
    assert [report._si(x) for x in (1000, 1100, 1.05e6, 3.8e7, 999960, 2.5e9, 512)] == [
        "1k",
        "1.1k",
        "1.05M",
        "38M",
        "1M",
        "2.5G",
        "512",
    ]


# ------------------------------------------------------------------ default metrics, bar charts, curves

# metric -> per-seed values of groups "a" and "b" (2 seeds each); the names are the evaluation suite's
SUITE = {
    "test/vqa/acc": ([0.60, 0.64], [0.45, 0.47]),
    "test/vqa/acc_exist": ([0.70, 0.72], [0.55, 0.57]),
    "test/vqa/acc_count": ([0.40, 0.44], [0.30, 0.32]),
    "test/vqa/majority_baseline": ([0.30, 0.32], [0.31, 0.31]),  # mean over the 4 runs: 0.31
    "test/vqa/question_prior_baseline": ([0.42, 0.42], [0.42, 0.42]),
    "test/diagnostics/match_acc": ([0.30, 0.35], [0.20, 0.25]),
    "test/diagnostics/attribute_swap_acc": ([0.60, 0.62], [0.50, 0.52]),
    "test/diagnostics/count_change_acc": ([0.55, 0.57], [0.51, 0.53]),
    "test/diagnostics/group_score": ([0.20, 0.22], [0.10, 0.12]),
    "test/diagnostics/text_score": ([0.30, 0.32], [0.20, 0.22]),
    "test/retrieval/rmean": ([0.50, 0.52], [0.40, 0.42]),
    "test/retrieval/i2t_r1": ([0.20, 0.22], [0.10, 0.12]),
    "test/itc/acc": ([0.9, 0.9], [0.8, 0.8]),
    "test/loss": ([1.0, 1.1], [1.2, 1.3]),
    "val/loss": ([1.0, 1.1], [1.2, 1.3]),
}
# the default columns, in HEADLINE_METRICS' order
HEADLINE_PRESENT = [
    "test/vqa/acc",
    "test/vqa/acc_count",
    "test/vqa/acc_exist",
    "test/diagnostics/match_acc",
    "test/diagnostics/attribute_swap_acc",
    "test/diagnostics/count_change_acc",
    "test/diagnostics/group_score",
    "test/retrieval/rmean",
]
# (group, seed) -> rows of csv/metrics.csv: (step, train/loss_step); b's seeds log different steps
CURVES = {
    ("a", 0): [(0, 3.0), (10, 2.0), (20, 1.0)],
    ("a", 1): [(0, 3.2), (10, 2.4), (20, 1.2)],
    ("b", 0): [(0, 4.0), (20, 2.0)],
    ("b", 1): [(0, 4.0), (10, 3.0), (20, 3.0)],
}


def _suite_sweep(root: Path) -> Path:
    sweep = root / "suite"
    sweep.mkdir(parents=True)
    swept = swept_keys(["model=a,b", "seed=0,1"])
    for g, model in enumerate("ab"):
        for seed in range(2):
            _job(
                sweep,
                swept,
                model,
                seed,
                {
                    "status": "completed",
                    "metrics": {m: v[g][seed] for m, v in SUITE.items()},
                    "complexity": {"params": 1e6, "flops_per_sample": 4e7 / (1 + 3 * g)},
                },
            )
            log = sweep / job_dirname([f"model={model}", f"seed={seed}"], swept) / "csv" / "metrics.csv"
            log.parent.mkdir()
            log.write_text(
                "epoch,step,train/loss_step,val/loss\n"
                + "".join(f"0,{step},{value},\n" for step, value in CURVES[model, seed])
                + "0,20,,1.5\n"
            )  # val/loss: 1 step
    return sweep


def test_default_metrics_are_the_headline_ones_present(tmp_path, capsys):
    sweep = _suite_sweep(tmp_path)
    jobs = report.find_jobs([sweep])
    assert report.select_metrics(jobs, None) == HEADLINE_PRESENT
    assert report.select_metrics(jobs, ["*"]) == sorted(SUITE)
    assert report.select_metrics(jobs, ["test/retrieval/*", "test/vqa/acc"]) == [
        "test/retrieval/i2t_r1",
        "test/retrieval/rmean",
        "test/vqa/acc",
    ]  # in the order of the patterns

    assert report.main([str(sweep), "--no-plots", "--out", str(tmp_path / "rep")]) == 0
    assert f"8 metrics (default set, of {len(SUITE)};" in capsys.readouterr().out
    md = (tmp_path / "rep" / "table_detail.md").read_text()
    assert "| model | n | params | FLOPs/sample | " + " | ".join(HEADLINE_PRESENT) + " |" in md
    assert "| a | 2 | 1M | 40M | " in md and "| b | 2 | 1M | 10M | " in md
    for flag in (["--metrics", "*"], ["--all-metrics"]):
        assert report.main([str(sweep), "--no-plots", "--out", str(tmp_path / "all"), *flag]) == 0
        with open(tmp_path / "all" / "table.csv", newline="") as f:
            head = next(csv.reader(f))
        assert [c[: -len("/mean")] for c in head if c.endswith("/mean")] == sorted(SUITE)
    with pytest.raises(SystemExit):
        report.main([str(sweep), "--all-metrics", "--metrics", "test/*"])


def test_baselines_by_metric_name(tmp_path):
    out = report.report([_suite_sweep(tmp_path)], out=tmp_path / "rep", metrics=["*"], plots=False)
    lines = {m: report.baseline_lines(out["rows"], m) for m in out["metrics"]}
    assert lines["test/vqa/acc"] == [
        ("majority answer", pytest.approx(0.31)),
        ("question prior (blind)", pytest.approx(0.42)),
    ]
    assert lines["test/vqa/acc_exist"] == [("chance (2 options)", 0.5)]
    assert (
        lines["test/diagnostics/attribute_swap_acc"] == lines["test/diagnostics/count_change_acc"] == [("chance", 0.5)]
    )
    assert lines["test/diagnostics/group_score"] == [("chance", pytest.approx(1 / 6))]
    assert lines["test/diagnostics/text_score"] == [("chance", 0.25)]
    # every pair of an image right, counts, recalls, losses: no reference line
    for m in ("test/diagnostics/match_acc", "test/vqa/acc_count", "test/retrieval/rmean", "test/loss", "val/loss"):
        assert lines[m] == [], m
    assert report.baseline_lines(out["rows"], "test/holdout_gap/diagnostics/attribute_swap_acc") == []
    # a baseline no run recorded is not drawn
    for row in out["rows"]:
        for job in row.jobs:
            del job.metrics["test/vqa/majority_baseline"]
    assert report.baseline_lines(out["rows"], "test/vqa/acc") == [("question prior (blind)", pytest.approx(0.42))]
    # a question type's own blind baseline, when the runs record it (\1 of the pattern names the type)
    for row in out["rows"]:
        for job, value in zip(row.jobs, (0.2, 0.4)):
            job.metrics.update(
                {"test/vqa/question_prior_baseline_count": value, "test/vqa/question_prior_baseline_exist": 0.5}
            )
    assert report.baseline_lines(out["rows"], "test/vqa/acc_count") == [("question prior (blind)", pytest.approx(0.3))]
    assert report.baseline_lines(out["rows"], "test/vqa/acc_exist") == [
        ("question prior (blind)", 0.5),
        ("chance (2 options)", 0.5),
    ]


def _below(fig, ax) -> bool:
    """The figure's legend lies entirely below the axes (it hides nothing drawn in them)."""
    fig.canvas.draw()
    return fig.legends[0].get_window_extent().y1 <= ax.get_window_extent().y0


def test_bar_chart_draws_seeds_ci_and_baselines(tmp_path):
    out = report.report([_suite_sweep(tmp_path)], out=tmp_path / "rep", plots=True)
    assert {p.name for p in out["plots"] if p.name.startswith("bar_")} == {
        f"bar_{report._slug(m)}.png" for m in HEADLINE_PRESENT
    }
    rows = out["rows"]
    fig = report.bar_chart(rows, "test/vqa/acc")
    ax = fig.axes[0]
    assert ax.get_ylabel() == "VQA accuracy (test)" and "higher is better" in ax.get_title()
    # the baselines: dashed horizontal lines at the mean over the runs, labelled with it
    dashed = [(line.get_label(), line.get_ydata()[0]) for line in ax.lines if line.get_linestyle() == "--"]
    assert dashed == [
        ("majority answer: 0.31", pytest.approx(0.31)),
        ("question prior (blind): 0.42", pytest.approx(0.42)),
    ]
    # a dot per seed
    (seeds,) = [c for c in ax.collections if c.get_label() == "one seed"]
    assert sorted(seeds.get_offsets()[:, 1]) == pytest.approx(
        sorted(SUITE["test/vqa/acc"][0] + SUITE["test/vqa/acc"][1])
    )
    # error bars: the table's t-CI
    (bars,) = [c for c in ax.containers if isinstance(c, BarContainer)]
    (segments,) = bars.errorbar.lines[2]
    cis = [(r.stats["test/vqa/acc"]["ci_lo"], r.stats["test/vqa/acc"]["ci_hi"]) for r in rows]
    assert np.array([(s[0][1], s[1][1]) for s in segments.get_segments()]) == pytest.approx(np.array(cis))
    assert [b.get_height() for b in bars] == pytest.approx([0.62, 0.46])
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert {"95% t-CI of the mean", "one seed", "majority answer: 0.31"} <= set(legend) and _below(fig, ax)

    for metric, expected in (
        ("test/diagnostics/attribute_swap_acc", [("chance: 0.5", 0.5)]),
        ("test/retrieval/rmean", []),
    ):
        lines = report.bar_chart(rows, metric).axes[0].lines
        assert [(line.get_label(), line.get_ydata()[0]) for line in lines if line.get_linestyle() == "--"] == expected


def test_mean_band_over_seeds_with_different_steps():
    steps, mean, lo, hi = report.mean_band([([0, 10, 20], [1.0, 2.0, 3.0]), ([0, 20], [3.0, 5.0])])
    assert steps.tolist() == [0, 10, 20]
    assert mean.tolist() == [2.0, 2.0, 4.0] and lo.tolist() == [1.0, 2.0, 3.0] and hi.tolist() == [3.0, 2.0, 5.0]


def test_learning_curves_mean_over_seeds_distinct_styles(tmp_path):
    out = report.report([_suite_sweep(tmp_path)], out=tmp_path / "rep", plots=True)
    # val/loss has one step per run: no curve
    assert {p.name for p in out["plots"] if p.name.startswith("curve_")} == {"curve_train_loss_step.png"}
    per_key = report.seed_curves(out["rows"], ["train/loss_step", "val/loss"])
    assert list(per_key) == ["train/loss_step"] and {i: len(c) for i, c in per_key["train/loss_step"].items()} == {
        0: 2,
        1: 2,
    }
    fig = report.curve_chart(out["rows"], "train/loss_step", per_key["train/loss_step"])
    ax = fig.axes[0]
    assert ax.get_xlabel() == "training step" and ax.get_ylabel() == "loss step (train)"
    lines = ax.lines
    assert [line.get_label() for line in lines] == ["model=a (n=2)", "model=b (n=2)"]
    assert len({(line.get_color(), line.get_linestyle()) for line in lines}) == 2
    assert len({line.get_linestyle() for line in lines}) == 2  # told apart in greyscale too
    # the mean over seeds at every step; b's seed 0 did not log step 10
    assert lines[0].get_xdata().tolist() == [0, 10, 20] and lines[0].get_ydata() == pytest.approx([3.1, 2.2, 1.1])
    assert lines[1].get_ydata() == pytest.approx([4.0, 3.0, 2.5])
    assert len(ax.collections) == 2  # a shaded band per group (its seeds' range)
    assert _below(fig, ax)


def test_fraction_intervals_stay_inside_0_1():
    from mmbench.report.stats import lower_is_better, t_ci, unit_range

    for name in (
        "test/vqa/acc",
        "test/vqa/acc_relation",
        "test/diagnostics/relation_swap_acc",
        "test/retrieval/rmean",
        "test/retrieval/i2t_r5",
        "test/zeroshot/top1_single",
        "test/diagnostics/group_score",
        "test/vqa/question_prior_baseline_color",
        "test/robustness/image_noise/vqa/acc/auc",
        "test/robustness/text_typos/retrieval/rmean/l25",
        "test/classification/auroc",
        "test/captioning/bleu4",
        "test/captioning/rouge_l",
        "test/captioning/exact_match",
        "test/t2i/overall/caption_true",
        "test/t2i/relation/color",
        "test/t2i_unguided/count/count",
        "t2i/oracle/cell",
    ):
        assert unit_range(name) == (0.0, 1.0), name
    for name in (
        "test/loss",
        "test/lm/ppl",
        "test/itc/temperature",
        "test/diagnostics/winoground_pairs",
        "wall_s",
        "test/captioning/cider",
        "test/t2i/overall/images",  # a count
        "test/t2i/frechet",  # a distance: lower is better
        "test/t2i/agreement",  # a cosine
        "test/vqa/count",  # not a t2i criterion
    ):
        assert unit_range(name) is None, name
    assert lower_is_better("test/t2i_unguided/frechet") and not lower_is_better("test/t2i/overall/count")
    # the report's list of t2i shares is the criteria module's, plus the oracle's two accuracies
    from mmbench.report.stats import T2I_FRACTIONS
    from mmbench.t2i.criteria import CRITERIA, SUMMARIES

    assert T2I_FRACTIONS == {*CRITERIA, *SUMMARIES, "cell", "scene"}
    # three seeds at the ceiling: the plain t-interval is [0.99652, 1.00148]; the clipped one ends at 1
    raw = t_ci([0.998, 0.999, 1.0])
    assert raw[1] > 1.0
    assert t_ci([0.998, 0.999, 1.0], bounds=(0.0, 1.0)) == pytest.approx((raw[0], 1.0))
    assert t_ci([0.0, 0.01], bounds=(0.0, 1.0))[0] == 0.0  # and at the floor
    assert t_ci([0.4, 0.5, 0.6], bounds=(0.0, 1.0)) == t_ci([0.4, 0.5, 0.6])  # inside: unchanged


MACHINE_A = {"cpu": "AMD EPYC", "cpu_id": "family 25 model 17 stepping 1", "isa": "AVX512", "cpus": 2}
MACHINE_B = {"cpu": "Intel Xeon", "cpu_id": "family 6 model 85 stepping 7", "isa": "AVX2", "cpus": 2, "gpu": "T4"}
LABEL_A = "AMD EPYC (family 25 model 17 stepping 1), avx512, 2 CPUs"
LABEL_B = "Intel Xeon (family 6 model 85 stepping 7), avx2, 2 CPUs, T4"


def _set_machine(job_dir: Path, machine: dict) -> None:
    path = job_dir / "metrics.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "machine": machine}))


def test_note_when_runs_come_from_two_machines(tmp_path, capsys):
    """The same seed gives different numbers on different CPUs (oneDNN/MKL kernels): a table whose runs
    ran on two machines says so, in table.md, table.tex and on stderr; runs.csv keeps each run's machine."""
    sweep = _sweep(tmp_path)
    for name, machine in (("model=vilt,seed=0", MACHINE_A), ("model=vilt,seed=1", MACHINE_A)):
        _set_machine(sweep / name, machine)
    # one machine (and runs that did not record theirs): no note
    assert report.main([str(sweep), "--no-plots", "--out", str(tmp_path / "one")]) == 0
    assert "machines" not in capsys.readouterr().err
    assert "machines" not in (tmp_path / "one" / "table_detail.md").read_text()

    _set_machine(sweep / "model=clip,seed=1", MACHINE_B)
    assert report.main([str(sweep), "--no-plots", "--out", str(tmp_path / "two")]) == 0
    note = (
        f"Runs from 2 machines ({LABEL_A}: 2 runs; {LABEL_B}: 1 run): the same seed can give different "
        "numbers on different machines, so a difference between rows may include the machine."
    )
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"mmbench-report: warning: {note}"
    assert note in (tmp_path / "two" / "table_detail.md").read_text()
    assert "Runs from 2 machines" in (tmp_path / "two" / "table_detail.tex").read_text()
    again = report.report([tmp_path / "two" / "runs.csv"], out=tmp_path / "again", plots=False)
    assert {j.name: j.machine for j in again["jobs"]} == {
        "model=vilt,seed=0": LABEL_A,
        "model=vilt,seed=1": LABEL_A,
        "model=vilt,seed=2": "",
        "model=clip,seed=0": "",
        "model=clip,seed=1": LABEL_B,
        "model=clip,seed=2": "",  # failed: no machine recorded in this fixture
    }
    assert report.machines_note(again["rows"]) == note
