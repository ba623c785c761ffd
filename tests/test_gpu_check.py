"""scripts/gpu_check.sh: its verdicts on hand-made records, and the whole driver rehearsed on CPU (`--cpu`:
fp32, no compile, tiny sizes), where the numbers it compares must be identical and the one documented
host sync per training step (MMBenchModule.stop_if_diverged) must be found where it is."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from scripts.gpu_check import TOLERANCES, compare_metrics, preset_verdict, sync_summary
from tests.conftest import ROOT


def test_eval_comparison_takes_suite_metrics_within_the_tolerance():
    train = {"test/vqa/acc": 0.500, "test/retrieval/rmean": 0.25, "test/loss": 3.0, "val/loss": 2.0}
    close = compare_metrics(train, {"test/vqa/acc": 0.509, "test/retrieval/rmean": 0.25, "test/loss": 9.0}, 0.01)
    # test/loss is trainer.test's, not the suite's (mmbench-eval has none): not compared
    assert close["status"] == "pass" and close["compared"] == 2 and close["identical"] == 1
    assert close["worst_key"] == "test/vqa/acc" and close["max_diff"] == pytest.approx(0.009)
    far = compare_metrics(train, {"test/vqa/acc": 0.52, "test/retrieval/rmean": 0.25}, 0.01)
    assert far["status"] == "fail" and "test/vqa/acc: 0.5 -> 0.52" in far["reason"]
    assert compare_metrics(train, {"test/vqa/acc": None}, 0.01)["status"] == "fail"  # a NaN against a number
    assert compare_metrics(train, {"test/loss": 3.0}, 0.01)["status"] == "fail"  # nothing to compare


def _runs(reference: list, test: list) -> dict:
    return {
        "objectives": ["itc"],
        "runs": {
            name: {"status": "completed", "losses": losses}
            for name, losses in (("reference", reference), ("test", test))
        },
    }


def test_preset_verdict_compares_first_and_last_loss_with_the_fp32_run():
    assert TOLERANCES["loss_first_rel"] == 1e-2 and TOLERANCES["loss_last_rel"] == 5e-2
    ok = preset_verdict(_runs([2.0, 1.5, 1.0], [2.01, 1.7, 1.04]), steps=3, finished=True)
    assert ok["verdict"] == "pass"  # step 2 is not compared
    assert ok["loss_first_rel_diff"] == pytest.approx(0.005) and ok["loss_last_rel_diff"] == pytest.approx(0.04)
    last = preset_verdict(_runs([2.0, 1.5, 1.0], [2.01, 1.5, 1.06]), steps=3, finished=True)
    assert last["verdict"] == "fail" and "step-last loss 1.06 vs fp32 1" in last["reason"]
    first = preset_verdict(_runs([2.0, 1.5, 1.0], [2.03, 1.5, 1.0]), steps=3, finished=True)
    assert first["verdict"] == "fail" and "step-first" in first["reason"]
    nan = preset_verdict(_runs([2.0, 1.5, 1.0], [2.0, None, 1.0]), steps=3, finished=True)
    assert nan["verdict"] == "fail" and "non-finite loss at step 2" in nan["reason"]
    short = preset_verdict(_runs([2.0, 1.5, 1.0], [2.0, 1.5]), steps=3, finished=True)
    assert short["verdict"] == "fail" and "recorded 2 of 3 steps" in short["reason"]
    assert preset_verdict(_runs([2.0], [2.0]), steps=1, finished=False)["verdict"] == "fail"  # stopped at its timeout


def test_sync_sites_are_grouped_by_their_innermost_frame_outside_torch():
    step = [
        "pytorch_lightning/loops/optimization/automatic.py:300 _training_step",
        "mmbench/module.py:157 training_step",
        "mmbench/module.py:121 stop_if_diverged",
        "torch/_tensor.py:40 wrapped",
    ]
    bar = [
        "pytorch_lightning/callbacks/progress/rich_progress.py:500 on_train_batch_end",
        "lightning_fabric/x.py:1 to_item",
    ]
    out = sync_summary([step, step, bar], steps=2)
    assert out["syncs"] == 3 and out["per_step"] == 1.5 and out["in_training_step"] == 2
    first, second = out["sites"]
    assert (first["where"], first["phase"], first["count"]) == (
        "mmbench/module.py:121 stop_if_diverged",
        "training_step",
        2,
    )
    assert (second["where"], second["phase"], second["count"]) == (
        "lightning_fabric/x.py:1 to_item",
        "Lightning loop / callbacks",
        1,
    )


def test_cpu_rehearsal_runs_every_check(tmp_path, cache_dir):
    out = tmp_path / "out"
    env = {**os.environ, "MMBENCH_PYTHON": sys.executable}
    cmd = [
        "bash",
        "scripts/gpu_check.sh",
        "--cpu",
        "--presets",
        "albef",
        "--steps",
        "3",
        "--warmup",
        "1",
        "--out",
        str(out),
    ]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    results = json.loads((out / "results.json").read_text())
    checks = results["checks"]
    assert results["mode"] == "cpu" and results["environment"]["torch"]
    default = checks["default_run"]
    assert default["status"] == "pass", default
    assert default["run_status"] == "completed" and default["final_train_loss"] > 0
    # the same device and kernels: mmbench-eval gives the end-of-training numbers exactly
    evaluation = checks["eval"]
    assert evaluation["status"] == "pass", evaluation
    assert evaluation["compared"] >= 10 and evaluation["identical"] == evaluation["compared"]
    albef = checks["presets"]["runs"]["albef"]
    assert checks["presets"]["status"] == "pass" and albef["status"] == "pass", albef
    assert albef["objectives"] == ["itc", "itm", "mlm", "vqa"]  # tests/test_presets.py's table
    assert albef["loss_first_rel_diff"] == 0.0 and albef["loss_last_rel_diff"] == 0.0  # one config twice
    assert albef["test"]["step_ms"] > 0 and albef["reference"]["step_ms"] > 0
    # the sync stand-in finds the documented one per step (CPU mode counts steps 2 and 3), in training_step
    sync = checks["sync"]["runs"]["default_run"]
    assert sync["status"] == "fail" and sync["steps"] == 2
    site = next(s for s in sync["sites"] if s["where"].endswith(" stop_if_diverged"))
    assert site["where"].startswith("mmbench/module.py:") and site["phase"] == "training_step" and site["count"] == 2
    assert res.returncode == 1 and results["passed"] is False, res.stdout[-2000:] + res.stderr[-2000:]
    assert "| albef | pass |" in (out / "summary.md").read_text() and "stop_if_diverged" in res.stdout
    assert not list(out.rglob("*.ckpt"))  # checkpoints deleted once evaluated
