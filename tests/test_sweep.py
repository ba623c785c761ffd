"""Sweeps through the CLI: fault isolation, skip-completed reruns, joblib, kill-and-resume, SLURM
(submitit local) + optuna, and the report on a sweep's result. Tiny config, few jobs."""

from __future__ import annotations

import csv
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mmbench import report
from mmbench.sweep import job_dirname, oversubscribed, sweep_name, swept_keys, torch_threads
from tests.conftest import ROOT, TINY, cli

CLI = [sys.executable, "-m", "mmbench.train"]
FAST = [*TINY, "test=false"]  # train + val only: the evaluation suite is tested elsewhere


_cli = cli


def _jobs(cwd: Path) -> dict[str, dict]:
    (sweep,) = list((cwd / "outputs" / "multiruns").iterdir())
    return {
        p.name: json.loads((p / "metrics.json").read_text()) for p in sweep.iterdir() if (p / "metrics.json").exists()
    }


def test_sweep_and_job_names_come_from_overrides():
    assert sweep_name(["experiment=arch_sweep"]) == "arch_sweep"
    assert sweep_name(["experiment=arch_sweep", "trainer.max_epochs=5"]) == sweep_name(
        ["trainer.max_epochs=5", "experiment=arch_sweep"]
    )
    assert sweep_name(["experiment=arch_sweep", "trainer.max_epochs=5"]) != sweep_name(
        ["experiment=arch_sweep", "trainer.max_epochs=6"]
    )
    assert sweep_name(["seed=0,1"], "mine") == "mine"
    assert sweep_name(["seed=0,1", "resume=false"]) == sweep_name(["seed=0,1"])  # how to run, not what
    assert sweep_name(["seed=0,1"], resume=False) != sweep_name(["seed=0,1"])
    swept = swept_keys(["seed=0,1", "model=vilt", "objective=[itc],[itc,itm]"], {"+experiment/bow": "clip,vilt"})
    assert swept == ["experiment/bow", "objective", "seed"]
    assert job_dirname(["model=vilt", "objective=[itc,itm]", "seed=1"], swept) == "objective=itc+itm,seed=1"
    assert job_dirname(["seed=1", "objective=[itc,itm]"], swept) == job_dirname(
        ["objective=[itc,itm]", "seed=1"], swept
    )
    assert len(job_dirname([f"k{i}=v{i}" for i in range(40)])) <= 100


def test_failed_job_is_isolated_rerun_skips_completed_and_report_lists_it(cache_dir, tmp_path):
    """4 jobs: one completes; two have an invalid config (itm weight -1), one raises at run time
    (pretrained weights that are neither a directory nor in the HF cache: only the hub lookup, after
    the data is prepared, can tell). The sweep runs them all."""
    args = [
        "-m",
        "objective=[itc,itm,mlm,vqa]",
        "objective.itm.weight=1,-1",
        "model.init_from=null,nobody/uncached",
        *FAST,
        "trainer.log_every_n_steps=1",
    ]
    res = _cli(args, tmp_path)
    assert res.returncode == 1, res.stderr[-3000:]
    assert (
        "1/4 completed, 3 failed" in res.stderr and "objective.itm.weight=-1: must be a loss weight >= 0" in res.stderr
    )
    jobs = _jobs(tmp_path)
    ok = "model.init_from=null,objective.itm.weight=1"
    runtime = "model.init_from=nobody_uncached,objective.itm.weight=1"
    assert len(jobs) == 4 and jobs[ok]["status"] == "completed"
    assert (
        jobs[runtime]["status"] == "failed"
        and "nobody/uncached" in jobs[runtime]["error"]
        and jobs[runtime]["traceback"]
    )
    for name in jobs:
        if name.endswith("weight=-1"):
            assert jobs[name]["status"] == "failed" and "weight" in jobs[name]["error"]

    # the same command again: the completed job is skipped (metrics.json untouched), failed ones rerun
    (sweep,) = list((tmp_path / "outputs" / "multiruns").iterdir())
    done = sweep / ok / "metrics.json"
    before = done.stat().st_mtime_ns
    res = _cli(args, tmp_path)
    assert res.returncode == 1 and "1/4 completed, 3 failed" in res.stderr
    assert done.stat().st_mtime_ns == before
    assert "skipping" in (sweep / ok / "train.log").read_text()

    # the report: the completed group in the table, every failed job listed with its error
    out = report.report([sweep], metrics=["val/*"])
    assert out["keys"] == ["model.init_from", "objective.itm.weight"]
    assert [r.group for r in out["rows"]] == [("model.init_from=null", "objective.itm.weight=1")]
    table = (out["out"] / "table.md").read_text()
    assert (
        table.count("**failed**") == 3 and f"**failed** `{runtime}`" in table and "must be a loss weight >= 0" in table
    )
    assert (out["out"] / "table.csv").exists() and (out["out"] / "table.tex").exists()
    assert any(p.name.startswith("bar_val_loss") for p in out["plots"])
    assert any(p.name == "curve_train_loss_step.png" for p in out["plots"])


def test_named_experiment_on_joblib_runs_jobs_in_parallel_with_one_thread_each(cache_dir, tmp_path):
    """`mmbench-train experiment=<name>` is a sweep without -m; command-line values replace the
    experiment's swept lists (here: one objective set, two seeds)."""
    res = _cli(
        ["experiment=objective_ablation", "objective=[itc,itm]", "seed=0,1", "hydra/launcher=parallel", *FAST], tmp_path
    )
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = _jobs(tmp_path)
    assert set(jobs) == {"objective=itc+itm,seed=0", "objective=itc+itm,seed=1"}
    assert all(j["status"] == "completed" and j["choices"]["model"] == "vilt" for j in jobs.values())
    (sweep,) = list((tmp_path / "outputs" / "multiruns").iterdir())
    assert sweep.name.startswith("objective_ablation-")
    cores = os.cpu_count() or 1
    for name in jobs:
        assert f"torch threads per job: {max(1, cores // 2)}" in (sweep / name / "train.log").read_text()
    # scripts/sweep_time.py: where the sweep's time went, from the jobs' own `timing`
    times = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "sweep_time.py"), str(sweep), "--workers", "2"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert times.returncode == 0, times.stderr[-2000:]
    total = sum(j["wall_s"] for j in jobs.values())
    assert f"2 jobs; their wall times sum to {total:.0f} s: {total / 2 / 60:.1f} min over 2 workers" in times.stdout
    assert "| all | 2 |" in times.stdout  # the seed is the only swept key: one group


def test_killed_run_resumes_to_the_same_metrics(cache_dir, tmp_path):
    """Kill a job (SIGKILL) at the start of epoch 1, rerun the same command: it resumes from epoch 0's
    checkpoint and ends with the metrics of an uninterrupted run."""
    kill = ["+callbacks.kill._target_=tests.sweep_faults.KillAtEpoch", "+callbacks.kill.epoch=1"]
    args = ["-m", "seed=3", *FAST, "trainer.max_epochs=2", "trainer.limit_val_batches=2", *kill]
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    assert _cli(args, tmp_path / "a").returncode == 0  # uninterrupted

    killed = _cli(args, tmp_path / "b", env={"MMBENCH_TEST_KILL": "1"})
    assert killed.returncode != 0
    (job,) = [p for p in (tmp_path / "b" / "outputs" / "multiruns").glob("*/*") if p.is_dir()]
    assert (job / "checkpoints" / "last.ckpt").exists()
    killed_record = json.loads((job / "metrics.json").read_text())  # written by the launcher (mmbench/launch.py)
    assert killed_record["status"] == "failed" and "killed by SIGKILL" in killed_record["error"]

    resumed = _cli(args, tmp_path / "b")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in (job / "train.log").read_text()
    ((name_a, a),), ((name_b, b),) = _jobs(tmp_path / "a").items(), _jobs(tmp_path / "b").items()
    assert name_a == name_b == job.name
    assert b["status"] == "completed" and any(k.startswith("val/") for k in b["metrics"])
    assert a["metrics"] == b["metrics"]

    # the CSV log (training curves) holds the epochs before the kill too, as in the uninterrupted run
    def rows(root):
        (path,) = list((root / "outputs" / "multiruns").glob("*/*/csv/metrics.csv"))
        return [{k: v for k, v in r.items() if v} for r in csv.DictReader(open(path, newline=""))]

    assert rows(tmp_path / "a") == rows(tmp_path / "b") and {r["epoch"] for r in rows(tmp_path / "b")} >= {"0", "1"}


def test_optuna_search_through_submitit_local_returns_the_metric(cache_dir, tmp_path):
    res = _cli(["-m", "hparams_search=optuna", "hydra.sweeper.n_trials=2", "hydra/launcher=local", *FAST], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    (sweep,) = list((tmp_path / "outputs" / "multiruns").iterdir())
    assert sweep.name.startswith("optuna")
    jobs = _jobs(tmp_path)
    assert len(jobs) == 2 and all(j["status"] == "completed" for j in jobs.values())
    import yaml

    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) == {"optimizer.lr", "weight_decay", "objective.itm.weight", "objective.mlm.weight"}
    # a target the searched weights do not scale: VQA accuracy, maximised
    assert best["best_value"] == pytest.approx(max(j["metrics"]["val/vqa/acc"] for j in jobs.values()))
    assert list(sweep.glob(".submitit/*"))  # ran through submitit


def test_launcher_configs_compose():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from mmbench.config import register_resolvers
    from tests.conftest import CONF

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        slurm = compose(
            "train",
            ["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=4"],
            return_hydra_config=True,
        ).hydra.launcher
        parallel = compose("train", ["hydra/launcher=parallel"], return_hydra_config=True).hydra.launcher
        optuna = compose("train", ["hparams_search=optuna", "monitor.mode=max"], return_hydra_config=True).hydra.sweeper
    assert slurm._target_.endswith("SlurmLauncher") and slurm.partition == "gpu" and slurm.gpus_per_node == 4
    assert {"timeout_min", "nodes", "tasks_per_node", "cpus_per_task", "mem_gb"} <= set(slurm)
    assert parallel._target_.endswith("JoblibLauncher") and parallel.n_jobs == 2
    assert optuna.direction == "maximize" and set(optuna.params) >= {"optimizer.lr", "objective.itm.weight"}


EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_value_an_experiment_sweeps_passes_config_validation(name):
    """Each job of a named experiment (every combination of its swept values, as the sweeper makes them) composes
    and passes config validation: a typo in an experiment surfaces here, not hours into a sweep."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from mmbench.config import ConfigError
    from mmbench.validation import validate
    from tests.conftest import compose_cfg

    # the sweep's parameters, as the experiment file writes them (the composed config has no hydra node)
    experiment = OmegaConf.load(ROOT / "conf" / "experiment" / f"{name}.yaml")
    params = OmegaConf.select(experiment, "hydra.sweeper.params", default=None) or {}
    parser = OverridesParser.create()
    values = [
        [f"{key}={v}" for v in parser.parse_override(f"{key}={value}").sweep_string_iterator()]
        for key, value in params.items()
    ]
    jobs = [list(job) for job in itertools.product(*values)]  # every job of the sweep
    # the experiment's own required values (a top-level ???, e.g. t2i_sweep's t2i_tokenizer) are refused unset,
    # then given a path that does not exist
    required = [str(k) for k in experiment if k not in ("defaults", "hydra") and OmegaConf.is_missing(experiment, k)]
    if required:
        with pytest.raises(ConfigError, match=f"{required[0]} has no value"):
            validate(compose_cfg([f"experiment={name}"]))
    given = [f"{key}=/nonexistent/{key}" for key in required]
    for job in jobs or [[]]:
        job_cfg = compose_cfg([f"experiment={name}", *given, *job])
        if job_cfg.model.get("init_from_required"):  # a later stage: refused until given an existing earlier run
            with pytest.raises(ConfigError, match="model.init_from="):
                validate(job_cfg)
        else:
            validate(job_cfg)


def test_auto_threads_in_a_slurm_job_are_its_task_cpus(monkeypatch):
    """torch_threads=auto inside a SLURM job: SLURM_CPUS_PER_TASK (a cluster that does not pin tasks to their
    cores would otherwise give each job torch's default, every core of the node); outside one, no setting."""
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    assert torch_threads("auto") is None and torch_threads(3) == 3
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "6")
    assert torch_threads("auto") == 6 and torch_threads(2) == 2  # an explicit number wins


def test_a_run_whose_threads_would_share_busy_cores_is_warned(monkeypatch):
    """More than one torch thread while the load average already fills every core: a warning naming the load and
    torch_threads=1; one thread, or an idle core, none."""
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    monkeypatch.setattr("os.getloadavg", lambda: (2.1, 1.0, 1.0))
    warning = oversubscribed(None)  # torch's default: a thread per core
    assert warning is not None and "load average 2.1 on 2 cores" in warning and "torch_threads=1" in warning
    assert oversubscribed(2) is not None
    assert oversubscribed(1) is None
    monkeypatch.setattr("os.getloadavg", lambda: (1.2, 1.0, 1.0))
    assert oversubscribed(None) is None
