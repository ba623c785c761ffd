"""mmbench-report on known inputs: statistics, grouping, bold best, failed/unfinished/missing jobs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

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


def _sweep(root: Path) -> Path:
    """A sweep as the CLI leaves it: multirun.yaml, 5 completed jobs, 1 failed, 1 killed, 2 never started."""
    sweep = root / "sweep"
    swept = swept_keys(TASK)
    sweep.mkdir(parents=True)
    sweeper = {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper", "params": None}
    OmegaConf.save(OmegaConf.create({"hydra": {"overrides": {"task": TASK}, "sweeper": sweeper}}), sweep / "multirun.yaml")

    def job(model, seed, record):
        overrides = [f"model={model}", f"seed={seed}", "trainer.max_epochs=1"]
        d = sweep / job_dirname(overrides, swept)
        (d / ".hydra").mkdir(parents=True)
        OmegaConf.save(OmegaConf.create(overrides), d / ".hydra" / "overrides.yaml")
        if record is not None:
            (d / "metrics.json").write_text(json.dumps({"overrides": overrides, "seed": seed, **record}))

    for (model, seed), metrics in VALUES.items():
        job(model, seed, {"status": "completed", "metrics": {**metrics, "note": "text"}, "complexity": {"params": 1000}})
    job("clip", 2, {"status": "failed", "metrics": {}, "error": "Traceback...\nRuntimeError: boom"})
    job("albef", 0, None)  # killed: .hydra but no metrics.json
    return sweep


def test_report_statistics_bold_and_job_states(tmp_path):
    out = report.report([_sweep(tmp_path)], out=tmp_path / "rep", plots=True, resamples=2000)
    assert out["keys"] == ["model"] and out["metrics"] == ["test/loss", "test/vqa/acc"]
    rows = {r.group: r for r in out["rows"]}
    assert set(rows) == {("model=clip",), ("model=vilt",)}

    for model in ("vilt", "clip"):
        for metric in out["metrics"]:
            x = np.array([v[metric] for (m, _), v in VALUES.items() if m == model])
            s = rows[(f"model={model}",)].stats[metric]
            assert s["mean"] == pytest.approx(x.mean()) and s["std"] == pytest.approx(x.std(ddof=1))
            assert s["n"] == len(x) and s["ci_lo"] <= s["mean"] <= s["ci_hi"]
            assert x.min() <= s["ci_lo"] and s["ci_hi"] <= x.max()
    # higher is better for acc, lower for loss
    assert rows[("model=vilt",)].stats["test/vqa/acc"]["best"] and not rows[("model=clip",)].stats["test/vqa/acc"]["best"]
    assert rows[("model=clip",)].stats["test/loss"]["best"] and not rows[("model=vilt",)].stats["test/loss"]["best"]

    md = (tmp_path / "rep" / "table.md").read_text()
    assert "| vilt | 3 | 0.001M | 1.9 ± 0.1 [" in md and "**0.85 ± 0.05**" in md and "**1.1 ± 0.1414**" in md
    assert "**failed** `model=clip,seed=2`" in md and "RuntimeError: boom" in md
    assert "**unfinished** `model=albef,seed=0`" in md
    assert "**missing** `model=albef,seed=1`" in md and "**missing** `model=albef,seed=2`" in md
    tex = (tmp_path / "rep" / "table.tex").read_text()
    assert "\\textbf{0.85 $\\pm$ 0.05}" in tex and "test/vqa/acc" in tex.replace("\\_", "_")
    csv = (tmp_path / "rep" / "table.csv").read_text().splitlines()
    assert csv[0].startswith("model,n,params,test/loss/mean") and len(csv) == 3
    assert {p.name for p in out["plots"]} == {"bar_test_loss.png", "bar_test_vqa_acc.png"}

    # deterministic: the same report twice
    again = report.report([tmp_path / "sweep"], out=tmp_path / "rep2", plots=False, resamples=2000)
    assert (tmp_path / "rep2" / "table.md").read_text().split("\n", 1)[1] == md.split("\n", 1)[1]
    assert again["rows"][0].stats == out["rows"][0].stats


def test_bootstrap_ci_known_values():
    assert report.bootstrap_ci([3.0]) == (3.0, 3.0)
    assert report.bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0)
    lo, hi = report.bootstrap_ci(np.arange(100.0))
    assert 43 < lo < 46 and 53 < hi < 56  # mean 49.5, standard error ~2.9
    assert report.lower_is_better("val/loss") and report.lower_is_better("test/lm/ppl")
    assert not report.lower_is_better("test/itc/acc")


def test_cli_on_empty_and_missing_dirs(tmp_path, capsys):
    assert report.main([str(tmp_path / "nope")]) == 2
    assert report.main([str(tmp_path), "--no-plots"]) == 1  # nothing completed: says so, writes an empty table
    assert "0/0 jobs completed" in capsys.readouterr().out
