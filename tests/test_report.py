"""mmbench-report on known inputs: statistics (t-interval of the mean), grouping, bold best, tests against
the best (Welch, Holm), the n < 3 warning, failed/unfinished/missing jobs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
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
    OmegaConf.save(OmegaConf.create({"hydra": {"overrides": {"task": TASK}, "sweeper": sweeper}}), sweep / "multirun.yaml")

    for (model, seed), metrics in VALUES.items():
        _job(sweep, swept, model, seed, {"status": "completed", "metrics": {**metrics, "note": "text"}, "complexity": {"params": 1000}})
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
    out = report.report([_sweep(tmp_path)], out=tmp_path / "rep", plots=True)
    assert out["keys"] == ["model"] and out["metrics"] == ["test/loss", "test/vqa/acc"]
    rows = {r.group: r for r in out["rows"]}
    assert set(rows) == {("model=clip",), ("model=vilt",)}

    for model in ("vilt", "clip"):
        for metric in out["metrics"]:
            x = np.array([v[metric] for (m, _), v in VALUES.items() if m == model])
            s = rows[(f"model={model}",)].stats[metric]
            assert s["mean"] == pytest.approx(x.mean()) and s["std"] == pytest.approx(x.std(ddof=1))
            assert s["n"] == len(x) and (s["ci_lo"], s["ci_hi"]) == pytest.approx(_t_ci_by_formula(x), rel=1e-9)
            assert s["ci_lo"] < x.min() and x.max() < s["ci_hi"]  # 2-3 seeds: wider than [min, max]
    # higher is better for acc, lower for loss
    assert rows[("model=vilt",)].stats["test/vqa/acc"]["best"] and not rows[("model=clip",)].stats["test/vqa/acc"]["best"]
    assert rows[("model=clip",)].stats["test/loss"]["best"] and not rows[("model=vilt",)].stats["test/loss"]["best"]

    md = (tmp_path / "rep" / "table.md").read_text()
    # 3 vs 2 seeds: Welch p = 0.050 (acc) and 0.031 (loss), Holm over the 2 -> 0.062 both: not distinguishable
    assert "| vilt | 3 | 0.001M | <u>1.9 ± 0.1</u> [" in md and "**0.85 ± 0.05**" in md and "**1.1 ± 0.1414**" in md
    # clip's loss 1.0, 1.2: 1.1 ± 12.706 * 0.1414 / sqrt(2) = 1.1 ± 1.2706
    assert "| clip | 2 | 0.001M | **1.1 ± 0.1414** [-0.1706, 2.371] | <u>0.55 ± 0.07071</u> [-0.08531, 1.185] |" in md
    # vilt's acc 0.80, 0.90, 0.85: 0.85 ± 4.3027 * 0.05 / sqrt(3) = 0.85 ± 0.1242
    assert "**0.85 ± 0.05** [0.7258, 0.9742]" in md
    assert "95% CI of the mean, mean ± t(0.975, n-1)·std/√n" in md and "bootstrap" not in md
    # clip has 2 seeds: said in the caption (md, tex) and warned about by the CLI (test_cli_warns_below_3_seeds)
    assert f"n < 3 seeds in 1 of 2 rows (model=clip): {FEW_SEEDS_NOTE}." in md
    assert "**failed** `model=clip,seed=2`" in md and "RuntimeError: boom" in md
    assert "**unfinished** `model=albef,seed=0`" in md
    assert "**missing** `model=albef,seed=1`" in md and "**missing** `model=albef,seed=2`" in md
    tex = (tmp_path / "rep" / "table.tex").read_text()
    assert "\\textbf{0.85 $\\pm$ 0.05} {\\scriptsize [0.7258, 0.9742]}" in tex and "test/vqa/acc" in tex.replace("\\_", "_")
    assert f"$n < 3$ seeds in 1 of 2 rows (model=clip): {FEW_SEEDS_NOTE}." in tex and "bootstrap" not in tex
    csv = (tmp_path / "rep" / "table.csv").read_text().splitlines()
    assert csv[0].startswith("model,n,params,test/loss/mean") and len(csv) == 3
    assert {p.name for p in out["plots"]} == {"bar_test_loss.png", "bar_test_vqa_acc.png"}
    # bar error bars are the t-CI, not the std: clip's 2 seeds 0.5, 0.6 give 0.55 ± 12.706 * 0.0707 / sqrt(2)
    labels, means, yerr, kinds = report.bar_data(out["rows"], "test/vqa/acc")
    assert labels == ["model=clip", "model=vilt"] and kinds == ["tied", "best"]
    assert yerr[:, 0] == pytest.approx([0.6353102, 0.6353102]) and means[0] == pytest.approx(0.55)
    assert yerr[:, 1] == pytest.approx([0.1242069, 0.1242069])

    # deterministic: the same report twice
    again = report.report([tmp_path / "sweep"], out=tmp_path / "rep2", plots=False)
    assert (tmp_path / "rep2" / "table.md").read_text().split("\n", 1)[1] == md.split("\n", 1)[1]
    assert again["rows"][0].stats == out["rows"][0].stats


def test_t_ci_known_values():
    # [1, 2, 3]: mean 2, s = 1, 2 ± t_{0.975, 2} / sqrt(3) = 2 ± 4.3027 / 1.732
    assert report.t_ci([1.0, 2.0, 3.0]) == pytest.approx((-0.48413771175033, 4.48413771175033), rel=1e-12)
    assert report.t_ci([3.0, 1.0, 2.0]) == pytest.approx((2 - T975[2] / np.sqrt(3), 2 + T975[2] / np.sqrt(3)), rel=1e-12)
    # 2 seeds: mean ± t_{0.975, 1} * |a - b| / 2, far wider than [min, max] (a bootstrap gives [min, max])
    assert report.t_ci([0.5, 0.6]) == pytest.approx((0.55 - T975[1] * 0.05, 0.55 + T975[1] * 0.05), rel=1e-9)
    assert report.t_ci([3.0]) is None  # one seed: no interval
    assert report.t_ci([2.0, 2.0, 2.0]) == (2.0, 2.0)  # no spread
    # many values: close to the normal interval, 49.5 ± 1.9842 * 29.011 / 10
    lo, hi = report.t_ci(np.arange(100.0))
    assert (lo, hi) == pytest.approx((49.5 - 5.7565, 49.5 + 5.7565), abs=1e-3)
    assert report.t_ci([1.0, 2.0, 3.0], level=0.90) == pytest.approx((2 - 2.919986 / np.sqrt(3), 2 + 2.919986 / np.sqrt(3)))
    assert report.lower_is_better("val/loss") and report.lower_is_better("test/lm/ppl")
    assert not report.lower_is_better("test/itc/acc")


def test_cli_on_empty_and_missing_dirs(tmp_path, capsys):
    assert report.main([str(tmp_path / "nope")]) == 2
    assert report.main([str(tmp_path), "--no-plots"]) == 2  # no runs at all: says where it looked, writes nothing
    captured = capsys.readouterr()
    assert f"no runs under {tmp_path}" in captured.err and not (tmp_path / "report").exists()


def test_cli_warns_below_3_seeds(tmp_path, capsys):
    assert report.main([str(_sweep(tmp_path)), "--no-plots", "--out", str(tmp_path / "rep")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"mmbench-report: warning: n < 3 seeds in 1 of 2 rows (model=clip): {FEW_SEEDS_NOTE}."]


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
            _job(sweep, swept, model, seed, {"status": "completed", "metrics": {m: v[seed] for m, v in metrics.items()}})
    return sweep


def test_welch_p_known_values():
    # Wikipedia, "Welch's t-test", example 1 (n = 15 and 15): t = -2.46, df = 24.99, p = 0.021
    a1 = [27.5, 21.0, 19.0, 23.6, 17.0, 17.9, 16.9, 20.1, 21.9, 22.6, 23.1, 19.6, 19.0, 21.7, 21.4]
    a2 = [27.1, 22.0, 20.8, 23.4, 23.4, 23.5, 25.8, 22.0, 24.8, 20.2, 21.9, 22.1, 22.9, 20.5, 24.4]
    assert report.welch_p(a1, a2) == pytest.approx(0.021, abs=5e-4)
    assert report.welch_p(a1, a2) == pytest.approx(_welch_by_formula(a1, a2), rel=1e-9)
    # unequal sizes and variances, as seeds give them: 3 vs 2 values
    assert report.welch_p([0.80, 0.90, 0.85], [0.50, 0.60]) == pytest.approx(_welch_by_formula([0.80, 0.90, 0.85], [0.50, 0.60]))
    assert report.welch_p([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) == pytest.approx(_welch_by_formula([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))
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
    assert out["metrics"] == ["test/acc", "test/exact", "test/loss"]
    rows = {r.group[0].split("=")[1]: r for r in out["rows"]}

    # p-values by formula, Holm by its definition over the 5 testable comparisons of the table
    raw = {(m, g): _welch_by_formula(KNOWN[g][m], KNOWN[BEST[m]][m])
           for m, marks in EXPECTED.items() for g, mark in marks.items() if mark in ("tied", "worse")}
    ranked = sorted(raw.values())
    adjusted = {k: min(1.0, max((len(ranked) - j) * ranked[j] for j in range(ranked.index(p) + 1))) for k, p in raw.items()}
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

    md = (tmp_path / "rep" / "table.md").read_text()
    assert "| a | 3 | - | **0.91 ± 0.01** [" in md  # best stays bold
    assert "| b | 3 | - | <u>0.9 ± 0.02</u> [" in md and "<u>0.53 ± 0.04</u>" in md and "<u>0.8 ± 0.1</u>" in md
    assert "| c | 3 | - | 0.51 ± 0.01 [" in md and "| 1.01 ± 0.01 [" in md  # clearly worse: plain
    # one seed: the mean and "n=1, no CI", never "± 0 [x, x]"; b's exact has 3 seeds and no spread: [0.5, 0.5]
    assert "| d | 1 | - | 0.7† (n=1, no CI) | 0.2† (n=1, no CI) | 0.9† (n=1, no CI) |" in md
    assert "0.5 ± 0† [0.5, 0.5]" in md and " ± 0† [0.7" not in md
    assert md.count("<u>") == 3 and md.count("†") == 4 + 1  # 4 cells + the caption
    assert "Welch's t-test" in md and "Holm-corrected over the 5 comparisons" in md and "alpha = 0.05" in md
    assert "not tested (4 cells)" in md and "n column" in md
    assert f"n < 3 seeds in 1 of 4 rows (model=d): {FEW_SEEDS_NOTE}." in md

    tex = (tmp_path / "rep" / "table.tex").read_text()
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
    assert by_group["d"]["test/acc/ci_lo"] == by_group["d"]["test/acc/ci_hi"] == "" and by_group["d"]["test/acc/n"] == "1"
    assert (float(by_group["b"]["test/acc/ci_lo"]), float(by_group["b"]["test/acc/ci_hi"])) == pytest.approx(
        _t_ci_by_formula(KNOWN["b"]["test/acc"]))

    # bar charts: error bars are the table's 95% t-CI, bars carry the marks
    labels, means, yerr, kinds = report.bar_data(out["rows"], "test/acc")
    assert labels == ["model=a", "model=b", "model=c", "model=d"] and kinds == ["best", "tied", "worse", "untestable"]
    s = rows["b"].stats["test/acc"]
    assert yerr.shape == (2, 4) and yerr[:, 1] == pytest.approx([s["mean"] - s["ci_lo"], s["ci_hi"] - s["mean"]])
    assert np.isnan(yerr[:, 3]).all() and not np.isnan(yerr[:, :3]).any()  # one seed: no error bar (NaN)
    assert {p.name for p in out["plots"]} == {"bar_test_acc.png", "bar_test_exact.png", "bar_test_loss.png"}


def test_cli_alpha(tmp_path, capsys):
    sweep = _known_sweep(tmp_path)
    # exact/c: Welch p = 0.074, Holm x3 = 0.22: tied at alpha 0.05, worse at 0.5; acc/b (p_adj ~ 1) stays tied
    assert report.main([str(sweep), "--no-plots", "--alpha", "0.5", "--out", str(tmp_path / "rep")]) == 0
    with open(tmp_path / "rep" / "table.csv", newline="") as f:
        by_group = {r["model"]: r for r in csv.DictReader(f)}
    assert by_group["c"]["test/exact/vs_best"] == "worse" and by_group["b"]["test/acc/vs_best"] == "tied"
    assert "alpha = 0.5;" in (tmp_path / "rep" / "table.md").read_text()
    assert f"n < 3 seeds in 1 of 4 rows (model=d): {FEW_SEEDS_NOTE}." in capsys.readouterr().err
    with pytest.raises(SystemExit):
        report.main([str(sweep), "--alpha", "0"])
    assert "--alpha must be between 0 and 1" in capsys.readouterr().err


def test_no_few_seeds_note_with_3_seeds_everywhere(tmp_path, capsys):
    sweep = _known_sweep(tmp_path, models="abc")
    assert report.main([str(sweep), "--no-plots", "--out", str(tmp_path / "rep")]) == 0
    assert "warning" not in capsys.readouterr().err
    for name in ("table.md", "table.tex"):
        text = (tmp_path / "rep" / name).read_text()
        assert FEW_SEEDS_NOTE not in text and "no CI" not in text
