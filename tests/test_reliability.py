"""A run that goes wrong says so: divergence, Ctrl-C / SIGTERM, strict-JSON metrics.json, and checkpoints
that are only ever loaded as weights (a planted file cannot run code). Tiny configs."""

from __future__ import annotations

import json
import math
import pathlib
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from mmbench import report
from mmbench.pipeline import run
from mmbench.record import Diverged, write_metrics
from mmbench.sweep import summarize
from tests.conftest import TINY, cli, compose_cfg

FAST = [*TINY, "test=false"]  # train + val only
TWO_EPOCHS = ["trainer.max_epochs=2", "trainer.limit_train_batches=2"]  # epoch 0's checkpoint is at global step 2


def _cli(module: str, args: list[str], cwd: Path, env: dict | None = None, timeout: int = 300):
    return cli(args, cwd, env, timeout, module=module)


def strict_json(path: Path) -> dict:
    """json.loads that refuses the NaN / Infinity tokens strict parsers reject."""

    def refuse(token):
        raise ValueError(f"{path} holds the non-standard JSON constant {token}")

    return json.loads(Path(path).read_text(), parse_constant=refuse)


def finite_step(ckpt: Path) -> int:
    """The global step of a checkpoint whose weights must all be finite."""
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    bad = [k for k, t in state["state_dict"].items() if t.is_floating_point() and not torch.isfinite(t).all()]
    assert not bad, f"{ckpt}: non-finite {bad[:3]}"
    return state["global_step"]


class Planted:
    """Unpickling this creates `path`: what a malicious 'checkpoint' could do instead."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return pathlib.Path.touch, (self.path,)


def plant(ckpt: Path, marker: Path) -> None:
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": 1, "state_dict": {}, "payload": Planted(marker)}, ckpt)


# ----------------------------------------------------------------------------------- divergence


def test_divergence_stops_at_the_first_non_finite_loss_and_keeps_finite_checkpoints(cache_dir, tmp_path):
    """optimizer.lr=1e5: the training losses of steps 0 and 1 are finite, step 2's is NaN (the step
    depends on the data: with Shapes v4 it took lr=1e6, with v5 1e6 diverges at step 1). Two batches an epoch: epoch 0 ends with checkpoints at step 2; the first step of epoch 1 diverges."""
    out = tmp_path / "run"
    with pytest.raises(Diverged, match=r"at global step 2: non-finite loss \((itc|mlm|vqa) = nan"):
        run(compose_cfg([*FAST, *TWO_EPOCHS, "trainer.max_epochs=3", "optimizer.lr=1e5"], out))
    saved = strict_json(out / "metrics.json")
    assert saved["status"] == "diverged" and saved["error"].startswith("training diverged at global step 2")
    assert finite_step(out / "checkpoints" / "last.ckpt") == 2
    assert finite_step(out / "checkpoints" / "best.ckpt") == 2


def test_non_finite_weights_are_never_checkpointed(cache_dir, tmp_path):
    """Weights that turn NaN after a finite loss (here: poisoned before epoch 1's validation) stop the
    run when the epoch's checkpoint would be written; epoch 0's checkpoints stay. The checkpoint
    callback monitors the step, so that it saves every epoch: with val/loss it would not save epoch 1
    (a NaN loss is no improvement), but a metric such as an accuracy can 'improve' on NaN weights."""
    out = tmp_path / "run"
    poison = [
        "+callbacks.poison._target_=tests.sweep_faults.PoisonWeights",
        "+callbacks.poison.epoch=1",
        "callbacks.model_checkpoint.monitor=step",
        "callbacks.model_checkpoint.mode=max",
    ]
    with pytest.raises(Diverged, match="global step 4: non-finite weights in"):
        run(compose_cfg([*FAST, *TWO_EPOCHS, *poison], out))
    assert strict_json(out / "metrics.json")["status"] == "diverged"
    assert finite_step(out / "checkpoints" / "last.ckpt") == 2
    assert finite_step(out / "checkpoints" / "best.ckpt") == 2


def test_metrics_json_is_strict_json_with_null_for_non_finite_numbers(tmp_path):
    record = {
        "status": "completed",
        "metrics": {"val/loss": math.nan, "a": math.inf, "b": -math.inf, "c": 0.5},
        "nested": [{"x": np.float32("nan")}, torch.tensor(float("inf")), np.float64(2.0)],
        "wall_s": None,
    }
    write_metrics(tmp_path / "metrics.json", record)
    saved = strict_json(tmp_path / "metrics.json")
    assert saved["metrics"] == {"val/loss": None, "a": None, "b": None, "c": 0.5}
    assert saved["nested"] == [{"x": None}, None, 2.0]


def test_diverged_run_exits_1_with_one_message_and_a_sweep_counts_it_as_failed(cache_dir, tmp_path):
    one = tmp_path / "one"
    res = _cli("mmbench.train", [*FAST, "optimizer.lr=1e5", f"hydra.run.dir={one}"], tmp_path)
    assert res.returncode == 1, res.stderr[-3000:]
    assert "mmbench: training diverged at global step 2: non-finite loss" in res.stderr
    assert "Traceback" not in res.stderr
    assert strict_json(one / "metrics.json")["status"] == "diverged"
    # rerunning it says that it diverged before (and diverges again)
    res = _cli("mmbench.train", [*FAST, "optimizer.lr=1e5", f"hydra.run.dir={one}"], tmp_path)
    assert res.returncode == 1 and "diverged in its previous run" in (one / "train.log").read_text()

    res = _cli("mmbench.train", ["-m", "optimizer.lr=1e-3,1e5", *FAST], tmp_path)
    assert res.returncode == 1, res.stderr[-3000:]
    assert "1/2 completed, 1 failed, 0 unfinished" in res.stderr
    assert "failed: optimizer.lr=100000.0: training diverged at global step 2" in res.stderr  # Hydra's spelling
    (sweep,) = list((tmp_path / "outputs" / "multiruns").iterdir())
    assert strict_json(sweep / "optimizer.lr=100000.0" / "metrics.json")["status"] == "diverged"


def test_sweep_summary_and_report_count_diverged_as_failed_and_interrupted_as_unfinished(tmp_path):
    statuses = {"a": "completed", "b": "failed", "c": "diverged", "d": "interrupted", "e": "running"}
    for name, status in statuses.items():
        write_metrics(tmp_path / name / "metrics.json", {"status": status, "error": f"{status} here", "metrics": {}})
    (tmp_path / "f" / ".hydra").mkdir(parents=True)  # killed before writing metrics.json
    state = summarize(tmp_path)
    assert state["completed"] == [("a", "completed here")]
    assert state["failed"] == [("b", "failed here"), ("c", "diverged here")]
    assert [name for name, _ in state["unfinished"]] == ["d", "e", "f"]
    assert state["unfinished"][0][1] == "interrupted here"
    jobs = {name: report.read_job(tmp_path / name) for name in statuses}
    assert {name: job.status for name, job in jobs.items()} == {
        "a": "completed",
        "b": "failed",
        "c": "failed",
        "d": "unfinished",
        "e": "unfinished",
    }
    assert jobs["c"].error == "diverged here"


# ------------------------------------------------------------------------------------ interrupts


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_interrupted_run_is_marked_and_a_rerun_resumes_it(signum, cache_dir, tmp_path, monkeypatch, caplog):
    """Ctrl-C (SIGINT) or SIGTERM at the first step of epoch 1: status 'interrupted', KeyboardInterrupt
    raised (not Lightning's sys.exit(1)), Ctrl-C works again afterwards; rerun: resumes from step 2.
    (Lightning stops at once on Ctrl-C, after the current batch on SIGTERM.)"""
    out = tmp_path / "run"
    fault = [
        "+callbacks.signal._target_=tests.sweep_faults.SignalAtStep",
        "+callbacks.signal.step=2",
        f"+callbacks.signal.signum={signum}",
    ]
    monkeypatch.setenv("MMBENCH_TEST_SIGNAL", "1")
    handler = signal.getsignal(signal.SIGINT)
    step = 2 if signum == "SIGINT" else 3
    with pytest.raises(KeyboardInterrupt, match=rf"interrupted by {signum}.* at global step {step}$"):
        run(compose_cfg([*FAST, *TWO_EPOCHS, *fault], out))
    assert signal.getsignal(signal.SIGINT) is handler  # Lightning left SIGINT ignored
    saved = strict_json(out / "metrics.json")
    assert saved["status"] == "interrupted" and saved["error"].startswith(f"interrupted by {signum}")
    assert finite_step(out / "checkpoints" / "last.ckpt") == 2

    monkeypatch.delenv("MMBENCH_TEST_SIGNAL")
    with caplog.at_level("INFO", logger="mmbench.pipeline"):
        record = run(compose_cfg([*FAST, *TWO_EPOCHS, *fault], out))
    assert record["status"] == "completed" == strict_json(out / "metrics.json")["status"]
    assert "resuming from" in caplog.text and finite_step(out / "checkpoints" / "last.ckpt") == 4


def test_ctrl_c_stops_a_sweep_with_exit_130_and_the_rerun_resumes_it(cache_dir, tmp_path):
    args = [
        "-m",
        "seed=0",
        *FAST,
        *TWO_EPOCHS,
        "+callbacks.signal._target_=tests.sweep_faults.SignalAtStep",
        "+callbacks.signal.step=2",
    ]
    res = _cli("mmbench.train", args, tmp_path, env={"MMBENCH_TEST_SIGNAL": "1"})
    assert res.returncode == 130, res.stderr[-3000:]
    assert "interrupted by SIGINT (Ctrl-C) at global step 2; rerun the same command" in res.stderr
    assert "Traceback" not in res.stderr
    (job,) = [p for p in (tmp_path / "outputs" / "multiruns").glob("*/*") if p.is_dir()]
    assert strict_json(job / "metrics.json")["status"] == "interrupted"

    res = _cli("mmbench.train", args, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resuming from" in (job / "train.log").read_text()
    assert strict_json(job / "metrics.json")["status"] == "completed"


# ---------------------------------------------------------------------------- unsafe checkpoints


def test_planted_last_ckpt_is_refused_on_resume_without_running_it(cache_dir, tmp_path):
    """A rerun resumes from checkpoints/last.ckpt (and reads its step for the CSV history): a file
    whose unpickling would run code is refused with one message naming it."""
    run_dir, marker = tmp_path / "run", tmp_path / "pwned"
    plant(run_dir / "checkpoints" / "last.ckpt", marker)
    (run_dir / "csv").mkdir(parents=True)
    (run_dir / "csv" / "metrics.csv").write_text("epoch,step,train/loss_step\n0,0,1.0\n")  # as a killed run leaves it
    res = _cli("mmbench.train", [*FAST, f"hydra.run.dir={run_dir}"], tmp_path)
    assert not marker.exists()
    assert res.returncode == 2, res.stderr[-3000:]
    assert f"{run_dir / 'checkpoints' / 'last.ckpt'} is not a checkpoint that loads as weights only" in res.stderr
    assert "Traceback" not in res.stderr
    saved = strict_json(run_dir / "metrics.json")
    assert saved["status"] == "failed" and "last.ckpt" in saved["error"]


def test_planted_checkpoint_is_refused_by_mmbench_eval_without_running_it(cache_dir, tmp_path):
    run_dir, marker = tmp_path / "run", tmp_path / "pwned"
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(compose_cfg(FAST, run_dir), run_dir / ".hydra" / "config.yaml")
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    plant(ckpt, marker)
    res = _cli("mmbench.evaluate", [f"ckpt_path={ckpt}", "logger=csv"], tmp_path)
    assert not marker.exists()
    assert res.returncode == 2, res.stderr[-3000:]
    assert f"{ckpt} is not a checkpoint that loads as weights only" in res.stderr and "Traceback" not in res.stderr
