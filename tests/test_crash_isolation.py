"""A job killed by a signal stops that job, not the sweep, under every launcher mmbench ships (mmbench/launch.py):
it is recorded as failed with its cause, the other job completes, the summary lists it, and the same command
again resumes it to the metrics of an uninterrupted run. Tiny Shapes runs: 2 epochs of 2 batches."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmbench.launch import death_cause, record_death
from mmbench.record import write_metrics
from mmbench.rundir import config_identity
from tests.conftest import TINY, cli, compose_cfg, user_env

CLI = [sys.executable, "-m", "mmbench.train"]
# two jobs that differ only in when KillAtEpoch fires (with MMBENCH_TEST_KILL=1): at the start of epoch 1,
# after epoch 0's checkpoint, or never (epoch 9 of 2); the same seed, so their metrics agree once both finish
ARGS = [
    "-m",
    "+callbacks.kill._target_=tests.sweep_faults.KillAtEpoch",
    "+callbacks.kill.epoch=1,9",
    *TINY,
    "test=false",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=2",
]
KILLED, OTHER = "+callbacks.kill.epoch=1", "+callbacks.kill.epoch=9"


def _record(job: Path) -> dict:
    return json.loads((job / "metrics.json").read_text())


@pytest.mark.parametrize("launcher", ["sequential", "parallel", "local"])
def test_a_sigkilled_job_fails_alone_and_the_same_command_resumes_it(launcher, cache_dir, tmp_path):
    args = [*ARGS, f"hydra/launcher={launcher}"]
    res = cli(args, tmp_path, env={"MMBENCH_TEST_KILL": "1"})
    assert res.returncode == 1, res.stderr[-3000:]  # as for a job that raises: the sweep ran, a job failed
    (sweep,) = list((tmp_path / "outputs" / "multiruns").iterdir())
    killed, other = sweep / KILLED, sweep / OTHER
    assert _record(other)["status"] == "completed"
    record = _record(killed)
    assert record["status"] == "failed" and record["error"].startswith("killed by SIGKILL (signal 9), process ")
    assert "OOM killer" in record["error"] and "dmesg" in record["error"]
    assert (killed / "checkpoints" / "last.ckpt").exists()
    assert "1/2 completed, 1 failed, 0 unfinished" in res.stderr
    assert f"  failed: {KILLED}: killed by SIGKILL (signal 9)" in res.stderr

    if launcher == "local":  # resuming does not depend on the launcher: checked under the other two
        return
    res = cli(args, tmp_path)  # the same command, nothing killed
    assert res.returncode == 0 and "2/2 completed, 0 failed" in res.stderr, res.stderr[-3000:]
    assert "resuming from" in (killed / "train.log").read_text()
    assert "skipping" in (other / "train.log").read_text()
    resumed, uninterrupted = _record(killed), _record(other)
    assert resumed["status"] == "completed" and any(k.startswith("val/") for k in resumed["metrics"])
    assert resumed["metrics"] == uninterrupted["metrics"]


def test_sigterm_to_the_sweep_reaches_the_job_and_stops_the_sweep(cache_dir, tmp_path):
    """SIGTERM to the sweep's process (what `kill`, SLURM and submitit send) is forwarded to the job's process,
    whose run records `interrupted`; the sweep stops with 143, as it does when the job runs in-process."""
    wait = tmp_path / "wait"
    wait.mkdir()
    args = ["-m", "seed=0,1", *TINY, "test=false", "+callbacks.wait._target_=tests.sweep_faults.WaitAtStart"]
    sweep = subprocess.Popen(
        CLI + [*args, "hydra/launcher=sequential"],
        cwd=tmp_path,
        env=user_env({"MMBENCH_TEST_WAIT": str(wait)}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 240
        while not (wait / "started").exists():  # the first job is inside trainer.fit
            assert sweep.poll() is None, sweep.communicate()[1][-3000:]
            assert time.time() < deadline, "the first job did not reach training"
            time.sleep(0.5)
        sweep.send_signal(signal.SIGTERM)
        time.sleep(1.0)  # delivered and forwarded before the job goes on
        (wait / "release").touch()
        _, stderr = sweep.communicate(timeout=240)
    finally:
        sweep.kill()
    assert sweep.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    (job,) = [p for p in (tmp_path / "outputs" / "multiruns").glob("*/*") if p.is_dir()]  # the second never started
    assert job.name == "seed=0"
    record = _record(job)  # written by the job's own handler (mmbench/pipeline.py), which the signal reached
    assert record["status"] == "interrupted" and record["error"].startswith("interrupted by SIGTERM at global step")
    assert "rerun the same command to resume" in stderr


def test_death_cause_names_the_signal_and_how_to_tell_what_sent_it():
    oom = death_cause(-9, 4321)
    assert oom.startswith("killed by SIGKILL (signal 9), process 4321: the kernel's OOM killer (out of memory)")
    assert "'Out of memory: Killed process 4321'" in oom and "dmesg" in oom and "\n" not in oom
    assert death_cause(-11, 7).startswith("killed by SIGSEGV (signal 11), process 7: a crash in native code")
    assert death_cause(-6, 7).startswith("killed by SIGABRT (signal 6)")
    assert death_cause(-15, 7) == "killed by SIGTERM (signal 15), process 7: interrupted before it could record it"
    assert death_cause(-10, 7) == "killed by SIGUSR1 (signal 10), process 7: sent by another process"
    assert death_cause(3, 7).startswith("its process (7) exited with code 3 before the job returned")


def test_a_death_is_recorded_over_this_configs_unfinished_run_only(tmp_path):
    cfg = compose_cfg(TINY, tmp_path / "job")
    job, cause, start = tmp_path / "job", death_cause(-9, 1234), time.time()
    job.mkdir()
    assert record_death(job, cfg, cause, since=start)  # an empty directory: the job died before it wrote anything
    record = _record(job)
    assert record["status"] == "failed" and record["error"] == cause and record["metrics"] == {}
    assert record["config_hash"] == config_identity(cfg)[0]  # so the rerun's claim resumes it (mmbench/rundir.py)

    def earlier(status: str) -> None:  # a metrics.json written by an earlier attempt
        write_metrics(job / "metrics.json", {**record, "status": status, "error": "before"})
        os.utime(job / "metrics.json", (start - 60, start - 60))

    earlier("interrupted")
    assert record_death(job, cfg, cause, since=start, status="interrupted") and _record(job)["error"] == cause
    earlier("completed")  # a completed run, whose process was killed while it was being skipped
    assert not record_death(job, cfg, cause, since=start) and _record(job)["error"] == "before"
    write_metrics(job / "metrics.json", {**record, "status": "failed", "error": "its own"})  # during this attempt
    assert not record_death(job, cfg, cause, since=start) and _record(job)["error"] == "its own"

    other = tmp_path / "other"  # a run of another config, which the job's own process refused
    write_metrics(other / "identity.json", {"config_hash": "another"})
    assert not record_death(other, cfg, cause, since=start) and not (other / "metrics.json").exists()
