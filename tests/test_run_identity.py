"""A run directory holds one run of one config, trained by one process at a time (docs/sweeps.md,
"Run directory identity"): a rerun with another config, or with resume=false, is refused before
anything in the directory is written; a second process on a busy directory is refused; the same
config still skips a completed run and resumes an unfinished one. Tiny configs, through the CLI."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from mmbench.rundir import IDENTITY_FILE, RunDirError, claim, config_identity, holds, wandb_run_id
from tests.conftest import TINY, cli, compose_cfg, user_env

FAST = [*TINY, "test=false"]  # train + val only
KILL = ["+callbacks.kill._target_=tests.sweep_faults.KillAtEpoch", "+callbacks.kill.epoch=1"]


def _files(run_dir: Path, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    """Every file of a run directory with its content (the lock file aside: it is the process's, not the run's)."""
    return {
        str(p.relative_to(run_dir)): p.read_bytes()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and p.name != ".lock" and p.name not in skip
    }


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


# ------------------------------------------------------------------------------- what is hashed


def test_identity_ignores_how_a_run_is_executed_and_recorded_but_not_what_it_computes(cache_dir, tmp_path):
    base, _ = config_identity(compose_cfg(FAST, tmp_path / "a"))
    how = [
        "resume=false",
        "torch_threads=1",
        "sweep_name=x",
        "logger=default",
        "tags=[x]",
        "~callbacks.lr_monitor",
        "trainer.log_every_n_steps=1",
        "data.num_workers=2",
        "trainer.memory_check=false",
        "model.gradient_checkpointing=true",
        f"paths.cache_dir={tmp_path / 'elsewhere'}",
    ]
    for override in how:
        assert config_identity(compose_cfg([*FAST, override], tmp_path / "b"))[0] == base, override
    what = [
        "optimizer.lr=2e-3",
        "seed=1",
        "test=true",
        "eval.retrieval.rerank_k=8",
        "trainer.max_epochs=2",
        "callbacks.model_checkpoint.monitor=step",
        "data.source.num_train=256",
    ]
    hashes = {config_identity(compose_cfg([*FAST, override], tmp_path / "a"))[0] for override in what}
    assert base not in hashes and len(hashes) == len(what)
    # stored resolved, with the run's own paths as placeholders (the directory can move)
    _, config = config_identity(compose_cfg(FAST, tmp_path / "a"))
    assert config["optimizer"]["lr"] == 0.001 and "paths" not in config and "resume" not in config
    assert config["callbacks"]["model_checkpoint"]["dirpath"] == "${paths.output_dir}/checkpoints"


def test_a_matched_size_row_is_part_of_its_own_runs_identity_only(tmp_path):
    """arch_sweep_matched picks each preset's width from a table: editing ViLT's row changes ViLT's runs
    (the row is resolved into model.sizes.matched), editing LXMERT's row leaves them alone, so the
    completed ViLT jobs of a sweep are still skipped, not refused as another config."""
    vilt = ["experiment=arch_sweep_matched", "model=vilt", "hydra.mode=RUN"]
    base, config = config_identity(compose_cfg(vilt, tmp_path / "a"))
    assert config["model"]["sizes"]["matched"]["dim"] == 128 and "matched_sizes" not in config
    assert config_identity(compose_cfg([*vilt, "matched_sizes.lxmert.dim=64"], tmp_path / "a"))[0] == base
    changed, config = config_identity(compose_cfg([*vilt, "matched_sizes.vilt.dim=64"], tmp_path / "a"))
    assert changed != base and config["model"]["sizes"]["matched"]["dim"] == 64


def test_options_switched_off_leave_the_identity_of_a_run_from_before_they_existed():
    """`data.augment` with no crop and no flip, a part's `lora` with r=0 and `model.init_parts=null`, compute nothing: a config without
    the nodes (a run started before they existed) has the same identity, so it resumes after an upgrade;
    switched on, they change it."""
    for preset in ([], ["model=llava"]):
        today = config_identity(compose_cfg(preset))[0]
        before = ["~data.augment", *(["~language_model.lora"] if preset else [])]
        assert config_identity(compose_cfg([*preset, *before]))[0] == today
        without = compose_cfg(preset)
        with open_dict(without):  # `~model.init_parts` cannot delete it in composition (conf/train.yaml sets it)
            del without.model["init_parts"]
        assert config_identity(without)[0] == today
        assert config_identity(compose_cfg([*preset, "data.augment.crop_scale=[0.5,1.0]"]))[0] != today
    assert (
        config_identity(compose_cfg(["model=llava", "language_model.lora.r=8"]))[0]
        != config_identity(compose_cfg(["model=llava"]))[0]
    )
    assert (
        config_identity(compose_cfg(["model=llava", "model.init_parts=[language_model]"]))[0]
        != config_identity(compose_cfg(["model=llava"]))[0]
    )


def test_an_option_added_since_a_run_was_written_keeps_its_identity_at_its_default(tmp_path):
    """A run written before `encoder.vision.positions` existed (its stored config lacks the key) is the same
    config as today's default, `learned` (PatchEncoder's own default): skipped when completed, not refused. At
    `sincos` it is another config. A key missing outside a `_target_` node is still a difference."""
    run_dir = tmp_path / "run"
    cfg = compose_cfg(["model=vilt"], run_dir)
    config_hash, config = config_identity(cfg)
    assert config["encoder"]["vision"]["positions"] == "learned"
    old = copy.deepcopy(config)
    del old["encoder"]["vision"]["positions"]
    stored = {"config_hash": "0123456789abcdef", "run_id": "abc", "config": old, "overrides": ["model=vilt"]}
    run_dir.mkdir()
    (run_dir / IDENTITY_FILE).write_text(json.dumps(stored))
    (run_dir / "metrics.json").write_text(json.dumps({**stored, "status": "completed"}))
    with claim(run_dir, cfg) as claimed:
        assert claimed.state == "completed" and claimed.identity == {}  # skipped, nothing written
    assert holds(stored, config_hash, config)

    sincos = compose_cfg(["model=vilt", "encoder.vision.positions=sincos"], run_dir)
    with pytest.raises(RunDirError, match=r"encoder\.vision\.positions: \(not set\) -> sincos"):
        claim(run_dir, sincos)
    assert not holds(stored, *config_identity(sincos))
    no_epochs = copy.deepcopy(config)
    del no_epochs["trainer"]["max_epochs"]
    assert not holds({**stored, "config": no_epochs}, config_hash, config)


def test_wandb_run_id_is_stable_for_a_run_and_new_for_a_new_run_in_the_same_path(tmp_path):
    run_dir = tmp_path / "run"
    legacy = wandb_run_id(str(run_dir))  # no identity.json: from the path, as before
    run_dir.mkdir()
    (run_dir / IDENTITY_FILE).write_text(json.dumps({"config_hash": "a", "run_id": "1234"}))
    first = wandb_run_id(str(run_dir))
    assert first == wandb_run_id(str(run_dir)) != legacy  # a resumed run keeps its W&B run
    (run_dir / IDENTITY_FILE).write_text(json.dumps({"config_hash": "a", "run_id": "5678"}))
    assert wandb_run_id(str(run_dir)) != first  # the directory deleted and reused: a new W&B run


# ------------------------------------------------------------------------------- a single run


def test_another_config_or_resume_false_on_a_completed_run_is_refused_and_its_checkpoint_still_evaluates(
    cache_dir, tmp_path
):
    run_dir = tmp_path / "run"
    args = [*FAST, f"hydra.run.dir={run_dir}"]
    res = cli(args, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    record, identity = _read(run_dir / "metrics.json"), _read(run_dir / IDENTITY_FILE)
    assert record["status"] == "completed" and record["config_hash"] == identity["config_hash"]
    assert record["config"]["optimizer"]["lr"] == 0.001
    best = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert best["config_hash"] == identity["config_hash"]
    before = _files(run_dir)

    # another model width and learning rate: refused with exit 2, before anything is written
    res = cli([*args, "optimizer.lr=2e-3", "model.sizes.tiny.dim=48"], tmp_path)
    assert res.returncode == 2, res.stderr[-3000:]
    assert f"{run_dir} holds a completed run of another config" in res.stderr
    assert "optimizer.lr: 0.001 -> 0.002" in res.stderr and "model.dim: 32 -> 48" in res.stderr
    assert "another hydra.run.dir" in res.stderr and "mmbench-eval" in res.stderr and "Traceback" not in res.stderr
    assert _files(run_dir) == before

    # only evaluation settings differ: pointed to mmbench-eval
    res = cli([*args, "eval.retrieval.rerank_k=8"], tmp_path)
    assert (
        res.returncode == 2
        and "only evaluation settings differ" in res.stderr
        and "eval.retrieval.rerank_k: 4 -> 8" in res.stderr
    )
    assert _files(run_dir) == before

    # resume=false never overwrites a run, not even one of the same config
    res = cli([*args, "resume=false"], tmp_path)
    assert res.returncode == 2, res.stderr[-3000:]
    assert f"resume=false starts a new run, but {run_dir} already holds a completed run" in res.stderr
    assert _files(run_dir) == before

    # the same config: skipped, as before (its log says so; nothing else changes)
    res = cli([*args, "torch_threads=1"], tmp_path)  # how to run: the same run
    assert res.returncode == 0, res.stderr[-3000:]
    assert "skipping" in (run_dir / "train.log").read_text()
    assert _files(run_dir, skip=("train.log",)) == {k: v for k, v in before.items() if k != "train.log"}

    # the run's own checkpoint still evaluates with the run's own .hydra/config.yaml
    res = cli(
        [f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}", "logger=csv", "eval.protocols=[retrieval,vqa]"],
        tmp_path,
        module="mmbench.evaluate",
    )
    assert res.returncode == 0, res.stderr[-3000:]


def test_another_config_on_an_unfinished_run_is_refused_and_the_same_one_resumes_it(cache_dir, tmp_path):
    run_dir = tmp_path / "run"
    args = [*FAST, "trainer.max_epochs=2", *KILL, f"hydra.run.dir={run_dir}"]
    killed = cli(args, tmp_path, env={"MMBENCH_TEST_KILL": "1"})
    assert killed.returncode != 0
    assert (run_dir / "checkpoints" / "last.ckpt").exists() and not (run_dir / "metrics.json").exists()
    identity = _read(run_dir / IDENTITY_FILE)
    before = _files(run_dir)

    res = cli([*args, "optimizer.lr=2e-3", "seed=1"], tmp_path)
    assert res.returncode == 2, res.stderr[-3000:]
    assert f"{run_dir} holds an unfinished run of another config" in res.stderr
    assert "optimizer.lr: 0.001 -> 0.002" in res.stderr and "seed: 0 -> 1" in res.stderr
    assert _files(run_dir) == before

    res = cli([*args, "resume=false"], tmp_path)
    assert res.returncode == 2 and "already holds an unfinished run" in res.stderr
    assert _files(run_dir) == before

    res = cli(args, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resuming from" in (run_dir / "train.log").read_text()
    record = _read(run_dir / "metrics.json")
    assert record["status"] == "completed" and record["config_hash"] == identity["config_hash"]
    assert _read(run_dir / IDENTITY_FILE) == identity  # the same run: same identity, same W&B run id


def test_a_run_directory_from_before_identity_files_is_checked_against_its_hydra_config(cache_dir, tmp_path):
    """A directory written by an older mmbench has no identity.json: its .hydra/config.yaml (as Hydra
    saved it, unresolved) is compared instead."""
    run_dir = tmp_path / "run"
    args = [*FAST, f"hydra.run.dir={run_dir}"]
    saved = cli([*args, "--cfg", "job"], tmp_path)
    assert saved.returncode == 0, saved.stderr[-3000:]
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(saved.stdout)
    (run_dir / "metrics.json").write_text(json.dumps({"status": "completed", "metrics": {"val/loss": 1.5}}))
    before = _files(run_dir)

    res = cli([*args, "optimizer.lr=2e-3"], tmp_path)
    assert res.returncode == 2, res.stderr[-3000:]
    assert "optimizer.lr: 0.001 -> 0.002" in res.stderr and _files(run_dir) == before
    res = cli(args, tmp_path)
    assert res.returncode == 0 and "skipping" in (run_dir / "train.log").read_text()


# ------------------------------------------------------------------------------- sweeps and locks


def test_sweep_jobs_with_another_config_are_refused_and_the_sweep_goes_on(cache_dir, tmp_path):
    """The same sweep name with another learning rate finds job directories of the first sweep (named
    by the swept seed): every job is refused, none stops the sweep, and the summary lists them."""
    args = ["-m", "sweep_name=ident", "seed=7,8", *FAST]
    res = cli(args, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    sweep = tmp_path / "outputs" / "multiruns" / "ident"
    before = {job: _files(sweep / job) for job in ("seed=7", "seed=8")}

    res = cli([*args, "optimizer.lr=2e-3"], tmp_path)
    assert res.returncode == 1, res.stderr[-3000:]
    assert "0/2 completed, 0 failed, 0 unfinished, 2 refused" in res.stderr
    assert "refused: seed=7:" in res.stderr and "refused: seed=8:" in res.stderr
    assert "optimizer.lr: 0.001 -> 0.002" in res.stderr and "sweep_name=<a new name>" in res.stderr
    assert {job: _files(sweep / job) for job in before} == before
    assert not list(sweep.glob(".refused*"))

    res = cli(args, tmp_path)  # the sweep's own config: completed jobs are skipped
    assert res.returncode == 0 and "2/2 completed" in res.stderr, res.stderr[-3000:]


def _trainer_pid(message: str, parent: int) -> int:
    """The process a busy-run message names ("is being trained by process N"), checked to be a child of
    `parent`: under the sweep launchers each job runs in a process of its own (mmbench/launch.py)."""
    pid = int(re.search(r"is being trained by process (\d+)", message).group(1))  # type: ignore[union-attr]
    ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    assert ppid == parent, f"process {pid} is a child of {ppid}, not of the sweep's process {parent}"
    return pid


def test_one_process_per_run_directory(cache_dir, tmp_path):
    """Two identical sweeps started one after the other: the second finds the job directory locked by
    the first (which waits at the start of training) and skips it as busy; a single run pointed at the
    same directory exits 2 at once. The first then finishes normally."""
    wait = tmp_path / "wait"
    wait.mkdir()
    args = ["-m", "seed=7", *FAST, "+callbacks.wait._target_=tests.sweep_faults.WaitAtStart"]
    first = subprocess.Popen(
        [sys.executable, "-m", "mmbench.train", *args],
        cwd=tmp_path,
        text=True,
        env=user_env({"MMBENCH_TEST_WAIT": str(wait)}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.time() + 240
        while not (wait / "started").exists():
            assert first.poll() is None, first.communicate()[1][-3000:]
            assert time.time() < deadline, "the first run did not reach training"
            time.sleep(0.5)
        (job,) = [p for p in (tmp_path / "outputs" / "multiruns").glob("*/*") if p.is_dir()]
        before = _files(job)

        second = cli(args, tmp_path)
        assert second.returncode == 1, second.stderr[-3000:]
        trainer = _trainer_pid(second.stderr, first.pid)
        assert (
            "0/1 completed, 0 failed, 0 unfinished, 1 busy" in second.stderr and f"busy: {job.name}:" in second.stderr
        )

        single = cli([*args[1:], f"hydra.run.dir='{job}'"], tmp_path)
        assert single.returncode == 2, single.stderr[-3000:]
        assert f"run directory {job} is being trained by process {trainer}" in single.stderr
        assert _files(job) == before
    finally:
        (wait / "release").touch()
        out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    assert _read(job / "metrics.json")["status"] == "completed"
