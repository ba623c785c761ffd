"""Resume (docs/sweeps.md §2): `last.ckpt` is always the latest state, and a run stopped at any step
resumes to exactly the metrics of an uninterrupted run on CPU, or is refused. Tiny configs: 2 epochs of
4 batches, `last.ckpt` every 3 steps (steps 3 and 6 are within an epoch, 4 and 8 end one)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmbench.callbacks import check_resumable
from mmbench.checkpoints import CheckpointError
from mmbench.data.datamodule import EpochShuffleSampler, ResumableLoader
from mmbench.pipeline import run
from mmbench.record import read_record
from tests.conftest import ALL_OBJECTIVES, ROOT, STOP_AT, TINY, compose_cfg

RUN = [
    ALL_OBJECTIVES,
    *TINY,
    "trainer.max_epochs=2",
    "callbacks.last_checkpoint.every_n_train_steps=3",
    "trainer.log_every_n_steps=1",
]


def ckpt_step(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["global_step"]


def csv_rows(run_dir: Path) -> list[dict]:
    (path,) = list(run_dir.glob("csv/**/metrics.csv"))
    return [{k: v for k, v in r.items() if v} for r in csv.DictReader(open(path, newline=""))]


@pytest.fixture(scope="module")
def uninterrupted(cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    record = run(compose_cfg(RUN, out))
    assert record["status"] == "completed"
    return out, record


@pytest.mark.parametrize("stop, workers, resume_from", [(7, 0, 6), (3, 1, 3), (4, 1, 4)])
def test_stopped_run_resumes_to_identical_metrics(stop, workers, resume_from, uninterrupted, monkeypatch, tmp_path):
    """Ctrl-C before step 7 resumes from step 6 (epoch 1, 2 of its 4 batches done); before step 3, with a
    data worker process, from step 3 (epoch 0, 3 batches done); before step 4, with a worker, from the
    end of epoch 0. Every metric of metrics.json (training epoch averages, validation, test on
    best.ckpt, evaluation suite) and every row of the CSV log equal the uninterrupted run's."""
    ref_dir, ref = uninterrupted
    out = tmp_path / "run"
    args = [*RUN, STOP_AT, f"+callbacks.signal.step={stop}", f"data.num_workers={workers}"]
    monkeypatch.setenv("MMBENCH_TEST_SIGNAL", "1")
    with pytest.raises(KeyboardInterrupt):
        run(compose_cfg(args, out))
    assert ckpt_step(out / "checkpoints" / "last.ckpt") == resume_from
    stopped = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)

    monkeypatch.delenv("MMBENCH_TEST_SIGNAL")
    record = run(compose_cfg(args, out))
    assert record["status"] == "completed"
    assert record["metrics"] == ref["metrics"]  # ==, not approx: bit-identical on CPU
    assert len(record["metrics"]) > 40
    assert csv_rows(out) == csv_rows(ref_dir)
    assert ckpt_step(out / "checkpoints" / "last.ckpt") == 8

    if resume_from != 6:
        return
    # the same checkpoint without the train loader's position (as an older mmbench wrote it) is refused,
    # by a rerun too, which says so in its metrics.json
    del stopped["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    refused = "stopped after 2 batches of epoch 1 but holds no train-loader position"
    with pytest.raises(CheckpointError, match=refused):
        check_resumable(stopped)
    (tmp_path / "old" / "checkpoints").mkdir(parents=True)
    torch.save(stopped, tmp_path / "old" / "checkpoints" / "last.ckpt")
    with pytest.raises(CheckpointError, match=refused):
        run(compose_cfg(args, tmp_path / "old"))
    assert read_record(tmp_path / "old")["status"] == "failed"


def test_sigkill_within_an_epoch_and_the_same_command_again_give_the_uninterrupted_run(cache_dir, tmp_path):
    """SIGKILL (no cleanup, like a node failure) before step 7 of a CLI run; rerunning the command resumes
    from step 6 and ends with the metrics.json and CSV log of an uninterrupted run of the same command."""
    args = [*RUN, "test=false", STOP_AT, "+callbacks.signal.step=7", "+callbacks.signal.signum=SIGKILL"]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONPATH": str(ROOT)}

    def cli(run_dir: Path, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "mmbench.train", *args, f"hydra.run.dir={run_dir}"],
            cwd=tmp_path,
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=300,
        )

    assert cli(tmp_path / "a").returncode == 0
    assert cli(tmp_path / "b", MMBENCH_TEST_SIGNAL="1").returncode == -signal.SIGKILL
    assert ckpt_step(tmp_path / "b" / "checkpoints" / "last.ckpt") == 6
    resumed = cli(tmp_path / "b")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in (tmp_path / "b" / "train.log").read_text()
    a, b = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in "ab")
    assert b["status"] == "completed" and b["metrics"] == a["metrics"]
    assert csv_rows(tmp_path / "b") == csv_rows(tmp_path / "a")


@pytest.mark.parametrize("workers", [0, 1])
def test_train_loader_resumes_at_the_batch_it_stopped(workers):
    """The loader's state after 2 batches of epoch 1, loaded into a new loader: it yields the other 3
    batches of that epoch's order (torch's worker iterator draws indices twice while it is built), then
    whole epochs again. Other data settings are refused."""

    def loader():
        return ResumableLoader(
            list(range(20)),
            batch_size=4,
            sampler=EpochShuffleSampler(20, seed=0),
            num_workers=workers,
            persistent_workers=workers > 0,
        )

    first = loader()
    first.sampler.set_epoch(1)
    batches = iter(first)
    seen = [next(batches).tolist() for _ in range(2)]
    state = first.state_dict()
    assert state == {"batches": 2, "epoch": 1, "batch_size": 4, "num_batches": 5}
    epoch = seen + [b.tolist() for b in batches]

    resumed = loader()
    resumed.sampler.set_epoch(1)
    resumed.load_state_dict(state)
    assert [b.tolist() for b in resumed] == epoch[2:]
    assert resumed.state_dict()["batches"] == 5
    assert [b.tolist() for b in resumed] == epoch  # the next iteration is a whole epoch
    with pytest.raises(CheckpointError, match=r"other data settings.*\(4, 5\); this run: \(5, 4\)"):
        ResumableLoader(list(range(20)), batch_size=5).load_state_dict(state)


def test_last_ckpt_is_the_latest_step_when_the_monitored_metric_does_not_improve(cache_dir, tmp_path, caplog):
    """monitor.mode=max on val/loss, which falls: best.ckpt stays at epoch 0 (step 2), last.ckpt follows
    every epoch to the final step (Lightning 2.6's save_last left it at step 2); the test split is
    evaluated on best.ckpt."""
    out = tmp_path / "run"
    with caplog.at_level("INFO"):
        run(compose_cfg([*TINY, "trainer.max_epochs=3", "trainer.limit_train_batches=2", "monitor.mode=max"], out))
    assert ckpt_step(out / "checkpoints" / "best.ckpt") == 2
    assert ckpt_step(out / "checkpoints" / "last.ckpt") == 6
    assert f"Loaded model weights from the checkpoint at {out / 'checkpoints' / 'best.ckpt'}" in caplog.text
