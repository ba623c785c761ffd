"""Sweeps on a real scheduler, and GPUs under the parallel launcher.

SLURM: a single-node cluster (munged, slurmctld, slurmd from Debian's packages; scripts/slurm_cluster.sh) started
once per test session (shared by its pytest-xdist workers) in a temporary directory, with a node of twice the
host's cores (the two workers' jobs run side by side, as a sweep's do); skipped with the reason where the packages
are missing (`bash scripts/slurm_cluster.sh install` as root installs them) or the daemons cannot start. Each
test runs the real CLI, `python -m mmbench.train -m ... hydra/launcher=slurm`: submitit submits one sbatch job
per job, and the jobs run on this machine's cores (cpus_per_task=1).

- a 4-job sweep completes, its summary is printed and mmbench-report reads it;
- a job requeued mid-run (`scontrol requeue`) resumes from its last.ckpt to the metrics of an uninterrupted run;
- a job that nears its time limit gets SLURM's warning signal (submitit's SIGUSR2), is stopped, resubmitted by
  submitit (hydra.launcher.max_num_timeout=1) and resumes likewise; with max_num_timeout=0 it is recorded as
  failed with the cause, and the sweep's summary lists it.

The parallel launcher's GPU assignment (mmbench/launch.py `one_gpu_each`) needs no SLURM and no GPU: the device
count is faked with MMBENCH_GPU_COUNT, and each job writes the CUDA_VISIBLE_DEVICES it was given.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mmbench import report
from mmbench.launch import one_gpu_each, requeue_signal
from tests.conftest import ROOT, TINY

CLI = [sys.executable, "-m", "mmbench.train"]
CLUSTER = ROOT / "scripts" / "slurm_cluster.sh"
FAST = [*TINY, "test=false", "torch_threads=1"]  # one torch thread per job: two jobs share the two cores
SLURM = [
    "hydra/launcher=slurm",
    "hydra.launcher.partition=debug",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.timeout_min=10",
]
# one job that holds before its third step (HoldAtStep, with MMBENCH_TEST_HOLD) on its first attempt only, after
# the last.ckpt of step 2: the test requeues it, or lets its time limit run out, while it holds
HELD = [
    "-m",
    "seed=5",
    *FAST,
    "callbacks.last_checkpoint.every_n_train_steps=2",
    "+callbacks.hold._target_=tests.sweep_faults.HoldAtStep",
    "+callbacks.hold.step=2",
]


def _env(extra: dict | None = None) -> dict:
    return {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONPATH": str(ROOT), **(extra or {})}


class Sweep:
    """A CLI process started in `cwd`, its output in files there (a pipe nobody reads while the test waits
    could fill up and stop it)."""

    def __init__(self, args: list[str], cwd: Path, env: dict):
        cwd.mkdir(parents=True, exist_ok=True)
        self.log = cwd / "sweep.log"
        with open(cwd / "sweep.out", "w") as out, open(self.log, "w") as err:
            self.process = subprocess.Popen(CLI + args, cwd=cwd, env=env, stdout=out, stderr=err, text=True)

    def stderr(self) -> str:
        return self.log.read_text()

    def running(self) -> bool:
        return self.process.poll() is None

    def finish(self, timeout: float = 300) -> tuple[int, str]:
        """Its exit code and stderr, once it ended (killed after `timeout` s)."""
        try:
            self.process.wait(timeout=timeout)
        finally:
            self.process.kill()
            self.process.wait()
        return self.process.returncode, self.stderr()


def _the_job(cwd: Path) -> Path:
    (job,) = [p for p in (cwd / "outputs" / "multiruns").glob("*/*") if p.is_dir() and p.name != ".submitit"]
    return job


def _record(job: Path) -> dict:
    return json.loads((job / "metrics.json").read_text())


def _wait_for(path: Path, sweep: Sweep, timeout: float = 240) -> str:
    deadline = time.time() + timeout
    while not path.exists():
        assert sweep.running(), f"the sweep ended before {path} appeared: {sweep.stderr()[-3000:]}"
        assert time.time() < deadline, f"{path} did not appear within {timeout:.0f} s"
        time.sleep(0.5)
    time.sleep(0.2)  # written whole
    return path.read_text()


@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def slurm(tmp_path_factory, worker_id) -> dict:
    """The environment of a running single-node SLURM cluster (SLURM_CONF names it). One cluster for the whole
    test session, shared by its pytest-xdist workers: the first worker to need it starts it, the last to finish
    stops it (a count of users in a file, under a file lock)."""
    if not shutil.which("slurmctld", path=os.environ.get("PATH", "") + ":/usr/sbin"):
        pytest.skip("slurmctld not installed: run `bash scripts/slurm_cluster.sh install` as root")
    if os.geteuid() != 0:
        pytest.skip("a SLURM test cluster needs root (slurmd starts jobs as their user); this session is not root")
    # the session's own temporary root: shared by its workers (popen-gw0, popen-gw1, ... are its folders)
    shared = tmp_path_factory.getbasetemp() if worker_id == "master" else tmp_path_factory.getbasetemp().parent
    lock, users, current = shared / "slurm.lock", shared / "slurm.users", shared / "slurm.current"
    with _locked(lock):
        count = int(users.read_text()) if users.exists() else 0
        if count == 0:  # none running: start one (a new folder each time, the last one's logs kept)
            directory = shared / f"slurm{len(list(shared.glob('slurm[0-9]*')))}"
            started = subprocess.run(
                ["bash", str(CLUSTER), "start", str(directory)],
                env={**os.environ, "MMBENCH_SLURM_CPUS": str(2 * (os.cpu_count() or 1))},  # 2 jobs per core
                capture_output=True,
                text=True,
                timeout=120,
            )
            if started.returncode != 0:
                pytest.skip(f"the SLURM test cluster did not start: {started.stderr.strip()[-2000:]}")
            current.write_text(str(directory))
        directory = Path(current.read_text())
        users.write_text(str(count + 1))
    try:
        yield _env({"SLURM_CONF": str(directory / "slurm.conf")})
    finally:
        with _locked(lock):
            count = int(users.read_text()) - 1
            users.write_text(str(count))
            if count == 0:
                subprocess.run(["bash", str(CLUSTER), "stop", str(directory)], capture_output=True, timeout=120)


def _squeue(env: dict, *args: str) -> str:
    return subprocess.run(["squeue", "-h", *args], env=env, capture_output=True, text=True, timeout=30).stdout.strip()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache_dir):
    """The held job's metrics from a run that nothing stops (the sequential launcher, no SLURM), started at once
    and waited for when a test asks: it runs while the SLURM job holds."""
    cwd = tmp_path_factory.mktemp("uninterrupted")
    sweep = Sweep(HELD, cwd, _env())
    done: dict = {}

    def metrics() -> dict:
        if not done:
            code, stderr = sweep.finish()
            assert code == 0, stderr[-3000:]
            record = _record(_the_job(cwd))
            assert record["status"] == "completed" and any(k.startswith("val/") for k in record["metrics"])
            done.update(record["metrics"])
        return done

    yield metrics
    sweep.process.kill()  # if a test failed before it waited
    sweep.process.wait()


def test_a_four_job_sweep_runs_on_slurm_and_is_reported(slurm, cache_dir, tmp_path):
    code, stderr = Sweep(["-m", "seed=0,1,2,3", *FAST, *SLURM], tmp_path, slurm).finish()
    assert code == 0, stderr[-3000:]
    assert "4/4 completed, 0 failed, 0 unfinished" in stderr
    (sweep,) = list((tmp_path / "outputs" / "multiruns").iterdir())
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name != ".submitit")
    assert [j.name for j in jobs] == [f"seed={s}" for s in range(4)]
    assert all(_record(j)["status"] == "completed" for j in jobs)
    # each job ran as an element of one sbatch array: Hydra's job id is SLURM's <array job>_<index>
    ids = sorted(OmegaConf.load(j / ".hydra" / "hydra.yaml").hydra.job.id for j in jobs)
    assert len({i.split("_")[0] for i in ids}) == 1 and [i.split("_")[1] for i in ids] == ["0", "1", "2", "3"]

    out = report.report([sweep], metrics=["val/*"], plots=False)
    (row,) = out["rows"]  # seeds only: one group of 4
    assert len(row.jobs) == 4 and row.stats["val/loss"]["n"] == 4
    with open(out["out"] / "runs.csv", newline="") as f:
        runs = list(csv.DictReader(f))
    assert sorted((r["job"], r["status"]) for r in runs) == [(f"seed={s}", "completed") for s in range(4)]


def test_a_requeued_job_resumes_from_last_ckpt_to_the_uninterrupted_metrics(slurm, cache_dir, uninterrupted, tmp_path):
    hold = tmp_path / "hold"
    hold.mkdir()
    sweep = Sweep([*HELD, *SLURM], tmp_path / "run", {**slurm, "MMBENCH_TEST_HOLD": str(hold)})
    job_id = _wait_for(hold / "held", sweep)
    job = _the_job(tmp_path / "run")
    assert (job / "checkpoints" / "last.ckpt").exists()  # step 2's
    subprocess.run(["scontrol", "requeue", job_id], env=slurm, check=True, timeout=30)

    code, stderr = sweep.finish()
    assert code == 0 and "1/1 completed, 0 failed" in stderr, stderr[-3000:]
    # the job's stderr on SLURM (submitit's log, appended to by each attempt): SLURM's SIGTERM stopped the run
    assert "interrupted by SIGTERM at global step 3" in _submitit_log(job)
    assert f"resuming from {job / 'checkpoints' / 'last.ckpt'}" in (job / "train.log").read_text()
    record = _record(job)
    assert record["status"] == "completed"
    assert record["metrics"] == uninterrupted()  # exactly: the resumed run continued where step 2 left it


def _submitit_log(job: Path) -> str:
    return "".join(p.read_text() for p in (job.parent / ".submitit").glob("*/*_log.*"))


def _shorten_time_limit(job_id: str, env: dict) -> None:
    """Bring a running job's time limit to 2-3 min from now, its whole minutes elapsed + 3: SLURM's warning signal
    (submitit's --signal=USR2@90) then comes on time, at least 90 s before the limit, instead of ~3.5 min after
    the start. (With + 2 the warning could come late, at the next time-limit check, as little as 30 s before the
    limit; under load the job then stopped its process and was still running `scontrol requeue` when the limit's
    SIGTERM came, which killed it: not requeued.)"""
    deadline = time.time() + 30
    while not re.fullmatch(r"[\d:-]+", elapsed := _squeue(env, "-j", job_id, "-o", "%M")):  # [H:]M:SS
        assert time.time() < deadline, f"squeue lists no elapsed time for job {job_id!r}: {elapsed!r}\n" + _diagnosis(
            env
        )
        time.sleep(0.5)
    parts = [int(p) for p in re.split(r"[:-]", elapsed)]
    minutes = (parts[-3] * 60 if len(parts) >= 3 else 0) + parts[-2]
    subprocess.run(["scontrol", "update", f"JobId={job_id}", f"TimeLimit={minutes + 3}"], env=env, check=True)


def _diagnosis(env: dict) -> str:
    """What the cluster says about its jobs, and its controller's last log lines: for a failure's message."""
    queue = subprocess.run(["squeue", "-a", "-o", "%i %T %M %l %R"], env=env, capture_output=True, text=True)
    conf = Path(env["SLURM_CONF"])
    log = (conf.parent / "slurmctld.log").read_text().splitlines()[-30:]
    return f"squeue: {queue.stdout}{queue.stderr}\nslurmctld.log (last lines):\n" + "\n".join(log)


def _restore_time_limit_once_requeued(job_id: str, env: dict, sweep: Sweep, minutes: int = 5) -> None:
    """The shortened limit stays with a requeued job: give the next attempt its `minutes` back while it waits to
    start again (SLURM holds a requeued job for cred_expire = 10 s, scripts/slurm_cluster.sh)."""
    deadline = time.time() + 240
    while _squeue(env, "-j", job_id, "-o", "%T") != "PENDING":
        assert sweep.running(), f"the sweep ended before its job was requeued: {sweep.stderr()[-3000:]}"
        assert time.time() < deadline, "the job was not requeued within 240 s of shortening its time limit"
        time.sleep(0.5)
    subprocess.run(["scontrol", "update", f"JobId={job_id}", f"TimeLimit={minutes}"], env=env, check=True)


def test_a_job_past_its_time_limit_is_resubmitted_and_resumes(slurm, cache_dir, uninterrupted, tmp_path):
    """Two sweeps of the held job side by side: with max_num_timeout=1 submitit resubmits it once and it resumes
    from last.ckpt; with max_num_timeout=0 (the default) it is not resubmitted: recorded as failed with the cause,
    listed by the summary (exit code 1), and the same command again would resume it."""
    limits = ["hydra.launcher.timeout_min=5", "hydra.launcher.signal_delay_s=90"]
    sweeps, jobs, ids = {}, {}, {}
    for retries in (1, 0):
        hold = tmp_path / f"hold{retries}"
        hold.mkdir()
        args = [*HELD, *SLURM, *limits, f"hydra.launcher.max_num_timeout={retries}"]
        sweeps[retries] = Sweep(args, tmp_path / f"run{retries}", {**slurm, "MMBENCH_TEST_HOLD": str(hold)})
    for retries, sweep in sweeps.items():
        ids[retries] = _wait_for(tmp_path / f"hold{retries}" / "held", sweep)
        jobs[retries] = _the_job(tmp_path / f"run{retries}")
        assert (jobs[retries] / "checkpoints" / "last.ckpt").exists()
        _shorten_time_limit(ids[retries], slurm)
    _restore_time_limit_once_requeued(ids[1], slurm, sweeps[1])

    code, stderr = sweeps[1].finish()
    assert code == 0 and "1/1 completed, 0 failed" in stderr, stderr[-3000:]
    job, slurm_log = jobs[1], _submitit_log(jobs[1])
    assert "this job is timed-out" in slurm_log  # submitit's handler got SLURM's signal, and requeued the job
    assert "interrupted by SIGTERM at global step 3" in slurm_log  # the job's process stopped cleanly first
    log = (job / "train.log").read_text()  # the waiting process's log and the job's own, attempt after attempt
    assert f"resuming from {job / 'checkpoints' / 'last.ckpt'}" in log
    assert _record(job)["status"] == "completed" and _record(job)["metrics"] == uninterrupted()
    assert f"{requeue_signal().name} (SLURM: its time limit is near, or it is preempted) stopped its process" in log

    code, stderr = sweeps[0].finish()
    assert code == 1 and "0/1 completed, 1 failed" in stderr, stderr[-3000:]
    record = _record(jobs[0])
    assert record["status"] == "failed" and "time limit" in record["error"]
    assert "max_num_timeout" in record["error"] and (jobs[0] / "checkpoints" / "last.ckpt").exists()
    assert f"  failed: {jobs[0].name}: {record['error'].splitlines()[0]}" in stderr


def test_parallel_gives_each_running_job_its_own_gpu(cache_dir, tmp_path):
    """2 jobs at once (hydra.launcher.n_jobs=2) on a machine faked to have 2 GPUs: each job's process sees one
    device of its own. (How more jobs than GPUs share them: the next test.)"""
    meet = tmp_path / "meet"
    meet.mkdir()
    env = _env({"MMBENCH_GPU_COUNT": "2", "MMBENCH_GPU_LOCKS": str(tmp_path / "locks"), "MMBENCH_TEST_MEET": str(meet)})
    env.pop("CUDA_VISIBLE_DEVICES", None)
    args = [
        "-m",
        "seed=0,1",
        *TINY,
        "test=false",
        "trainer.accelerator=auto",  # a GPU where there is one (none here: the job runs on the CPU all the same)
        "+callbacks.meet._target_=tests.sweep_faults.MeetAtStart",
        "+callbacks.meet.parties=2",
        "hydra/launcher=parallel",
        "hydra.launcher.n_jobs=2",
    ]
    code, stderr = Sweep(args, tmp_path, env).finish()
    assert code == 0 and "2/2 completed" in stderr, stderr[-3000:]
    assert sorted(p.read_text() for p in meet.iterdir()) == ["0", "1"]
    (sweep,) = list((tmp_path / "outputs" / "multiruns").iterdir())
    logs = "".join((sweep / f"seed={s}" / "train.log").read_text() for s in (0, 1))
    assert logs.count("this job's GPU: CUDA_VISIBLE_DEVICES=") == 2


def _job(devices="1", accelerator="gpu"):
    return OmegaConf.create({"trainer": {"devices": devices, "accelerator": accelerator}})


def test_one_gpu_each_takes_the_least_used_gpu_and_leaves_a_users_choice_alone(monkeypatch, tmp_path):
    """Claims as three jobs at once would make them on 2 GPUs: 0, 1, then 0 again (shared evenly, not waiting);
    a claim ends with its block (its process). No claim where the user or the job chose the devices."""
    monkeypatch.setenv("MMBENCH_GPU_COUNT", "2")
    monkeypatch.setenv("MMBENCH_GPU_LOCKS", str(tmp_path))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with one_gpu_each(_job()) as a, one_gpu_each(_job()) as b:
        with one_gpu_each(_job()) as c:
            assert (a, b, c) == (
                {"CUDA_VISIBLE_DEVICES": "0"},
                {"CUDA_VISIBLE_DEVICES": "1"},
                {"CUDA_VISIBLE_DEVICES": "0"},
            )
        with one_gpu_each(_job()) as d:  # c's share of GPU 0 was given back; GPU 0 and 1 hold one job each
            assert d == {"CUDA_VISIBLE_DEVICES": "0"}
    with one_gpu_each(_job()) as e:  # all given back
        assert e == {"CUDA_VISIBLE_DEVICES": "0"}

    for job in (_job(devices=2), _job(devices="auto"), _job(devices=[1]), _job(accelerator="cpu")):
        with one_gpu_each(job) as env:  # several devices (DDP: all of them), chosen devices, or no GPU wanted
            assert env == {}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")  # the user chose
    with one_gpu_each(_job()) as env:
        assert env == {}
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setenv("MMBENCH_GPU_COUNT", "0")  # no GPU
    with one_gpu_each(_job()) as env:
        assert env == {}
    monkeypatch.setenv("MMBENCH_GPU_COUNT", "two")
    with pytest.raises(ValueError, match="MMBENCH_GPU_COUNT"), one_gpu_each(_job()):
        pass
