"""End to end: compose-API runs, determinism, the CLI (single run, multirun, errors)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mmbench.pipeline import run
from mmbench.record import machine
from tests.conftest import ROOT, TINY, cli, compose_cfg

CLI = [sys.executable, "-m", "mmbench.train"]


def test_train_and_test_through_compose_api(tiny_cfg):
    cfg = tiny_cfg()
    record = run(cfg)
    out = Path(cfg.paths.output_dir)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["status"] == "completed" == record["status"]
    assert saved["choices"]["model"] == "vilt" and saved["choices"]["objective"] == ["itc", "itm", "mlm", "vqa"]
    for key in (
        "test/loss",
        "test/itc/acc",
        "test/itm/acc",
        "test/mlm/acc",
        "test/vqa/acc",
        "test/vqa/majority_baseline",
        "test/vqa/question_prior_baseline",
    ):
        assert key in saved["metrics"], key
    assert saved["complexity"]["params"] > 0 and saved["complexity"]["flops_per_sample"] > 0
    assert saved["versions"]["torch"] and saved["seed"] == 0 and saved["wall_s"] > 0
    timing = saved["timing"]  # where the run's seconds went, each part once: together at most the wall time
    assert list(timing) == ["setup_s", "train_s", "validation_s", "test_s", "suite_s", "finish_s"]
    assert min(timing.values()) >= 0 and timing["train_s"] > 0 and timing["validation_s"] > 0
    assert timing["suite_s"] > 0 and sum(timing.values()) <= saved["wall_s"]
    assert saved["machine"] == machine()  # where the numbers came from (same seed, same machine: same numbers)
    assert (out / "checkpoints" / "last.ckpt").exists() and (out / "checkpoints" / "best.ckpt").exists()
    assert (out / "csv" / "metrics.csv").exists()


def test_same_seed_same_metrics(cache_dir, tmp_path):
    # separate run directories: a second run in the same directory would resume, not repeat
    a = run(compose_cfg(TINY, tmp_path / "a"))["metrics"]
    b = run(compose_cfg(TINY, tmp_path / "b"))["metrics"]
    assert a == b
    c = run(compose_cfg(TINY + ["seed=1"], tmp_path / "c"))["metrics"]
    assert c["test/loss"] != a["test/loss"]


def test_training_reduces_loss_on_fixed_batches(tiny_cfg):
    """A few epochs over the same batches: the training loss must fall clearly."""
    cfg = tiny_cfg("trainer.max_epochs=6", "trainer.limit_train_batches=2", "trainer.log_every_n_steps=1")
    run(cfg)
    import csv

    rows = list(csv.DictReader(open(Path(cfg.paths.output_dir) / "csv" / "metrics.csv")))
    losses = [float(r["train/loss_epoch"]) for r in rows if r.get("train/loss_epoch")]
    assert len(losses) == 6 and losses[-1] < 0.8 * losses[0], (
        losses
    )  # one per epoch: the summary row does not repeat it
    (summary,) = [r for r in rows if r.get("test/vqa/majority_baseline")]  # the end-of-run row: test / evaluation only
    assert not any(v for k, v in summary.items() if k.startswith(("train/", "val/")))


def test_itm_hard_negative_warmup_follows_training_progress(tiny_cfg):
    """The LightningModule hands the fraction of training done to the objectives: with a warm-up over
    the whole run, ITM's hard-negative weight over 4 steps is 0, 1/4, 2/4, 3/4 (epoch mean 0.375);
    validation always uses pure hard negatives."""
    import csv

    cfg = tiny_cfg("objective.itm.hard_negative_warmup=1.0", "trainer.limit_train_batches=4")
    run(cfg)
    rows = list(csv.DictReader(open(Path(cfg.paths.output_dir) / "csv" / "metrics.csv")))
    train = [float(r["train/itm/hardness"]) for r in rows if r.get("train/itm/hardness") and r.get("epoch")]
    val = [float(r["val/itm/hardness"]) for r in rows if r.get("val/itm/hardness")]
    assert train == [pytest.approx(0.375)] and val and all(v == 1.0 for v in val)


def test_failed_run_records_status(tiny_cfg):
    from mmbench.config import ConfigError

    cfg = tiny_cfg("data.batch_size=0")
    with pytest.raises(ConfigError, match="batch_size"):
        run(cfg)
    saved = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert saved["status"] == "failed" and "batch_size" in saved["error"]


def _cli(args, cwd, timeout=600):
    return cli(args, cwd, timeout=timeout)


@pytest.mark.parametrize(
    "override, message",
    [
        ("model=nope", "Available options in 'model'"),
        ("fusion=nope", "Available options in 'fusion'"),
        (
            "objective=[itc,nope]",
            "available options in 'objective': classify, itc, itm, lm, lm_text, mlm, mrm, nlvr2, t2i_ar, t2i_diffusion, t2i_vqvae, vqa",
        ),
        ("model.sizes.tiny.patch_size=7", "not divisible by patch size 7"),
        ("objective.mlm.weight=-1", "objective.mlm.weight=-1"),
        ("objective=[]", "objective list is empty"),
        ("fusion=none", "objective 'vqa' needs a fusion with joint_pooled"),
    ],
)
def test_bad_config_is_one_clear_message(override, message, cache_dir, tmp_path):
    res = _cli([override, "logger=csv"], tmp_path)
    assert res.returncode != 0
    assert message in res.stderr, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "outputs" / "runs").exists() or not list(
        (tmp_path / "outputs" / "runs").glob("*/checkpoints")
    )


def test_multirun_one_dir_metrics_and_wandb_run_per_job(cache_dir, tmp_path):
    overrides = [o for o in TINY if not o.startswith("logger")]  # default loggers: CSV + W&B offline
    res = _cli(["-m", "seed=0,1", "objective=[itc,itm],[itc,itm,mlm]", *overrides], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    for noise in ("litlogger", "LeafSpec"):  # advice a user cannot act on (mmbench/noise.py)
        assert noise not in res.stderr + res.stdout
    sweeps = list((tmp_path / "outputs" / "multiruns").iterdir())
    assert len(sweeps) == 1
    jobs = sorted(p for p in sweeps[0].iterdir() if p.is_dir() and (p / "metrics.json").exists())
    assert len(jobs) == 4
    seen = set()
    for job in jobs:
        rec = json.loads((job / "metrics.json").read_text())
        assert rec["status"] == "completed"
        seen.add((rec["seed"], tuple(rec["choices"]["objective"])))
        runs = list((job / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, job
    assert seen == {(s, o) for s in (0, 1) for o in (("itc", "itm"), ("itc", "itm", "mlm"))}


def test_help_lists_groups_without_importing_torch_or_lightning(tmp_path):
    """--help stays fast because it imports none of the heavy libraries (its time: docs/performance.md);
    python's -X importtime lists every module the process imported, on stderr."""
    res = subprocess.run(
        [sys.executable, "-X", "importtime", *CLI[1:], "--help"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0 and "model:" in res.stdout and "objective:" in res.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in res.stderr.splitlines() if line.startswith("import time:")}
    assert "omegaconf" in imported  # the listing is read right
    heavy = {"torch", "pytorch_lightning", "lightning", "wandb", "datasets", "transformers"}
    assert not heavy & imported, sorted(heavy & imported)


def test_the_resolved_config_prints_before_any_run_directory_exists(tmp_path):
    """`--cfg job --resolve` (inspect what a run would use) resolves every interpolation: the run
    directory and the W&B id it names do not exist yet, so both print as null; nothing is written."""
    res = _cli(["experiment=arch_sweep", "model=lxmert", "--cfg", "job", "--resolve"], tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    cfg = yaml.safe_load(res.stdout)
    assert cfg["paths"]["output_dir"] is None and cfg["logger"]["wandb"]["id"] is None
    assert cfg["objective"]["itm"]["text_negatives"] is True and "${" not in res.stdout  # resolved
    assert list(tmp_path.iterdir()) == []


def test_progress_lines_without_a_terminal(cache_dir, tmp_path):
    """stdout is a pipe here, as in a SLURM log or under nohup: a line every N steps, with loss,
    throughput and ETA, where a live progress bar prints nothing."""
    res = _cli(
        [*TINY, "trainer.limit_train_batches=4", "callbacks.progress_log.every_n_steps=2", "eval.protocols=[vqa]"],
        tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [line for line in (res.stdout + res.stderr).splitlines() if "samples/s" in line]
    assert len(lines) == 2 and "step 2/4" in lines[0] and "step 4/4" in lines[1], lines
    assert "loss " in lines[0] and "ETA" in lines[0]


def test_shapes_without_questions_trains_caption_objectives(cache_dir, tmp_path):
    """questions_per_image=0 leaves an `answers` column of empty lists: no VQA data, not a crash."""
    record = run(
        compose_cfg(
            [*TINY, "data.source.questions_per_image=0", "objective=[itc,itm]", "eval.protocols=[retrieval]"],
            tmp_path / "run",
        )
    )
    assert record["status"] == "completed" and "test/vqa/majority_baseline" not in record["metrics"]


def test_precision_per_device():
    """trainer=gpu trains in bf16 autocast with TF32 matmuls; a CPU run keeps exact fp32 matmuls."""
    from types import SimpleNamespace

    import torch
    from hydra.utils import instantiate

    from mmbench.callbacks import MatmulPrecision

    gpu = compose_cfg(["trainer=gpu"])
    assert gpu.trainer.precision == "bf16-mixed" and compose_cfg([]).trainer.precision == 32
    callback = instantiate(gpu.callbacks.matmul_precision)
    before = torch.get_float32_matmul_precision()
    try:
        for device, expected in (("cuda", "high"), ("cpu", "highest"), ("cuda", "high")):
            callback.setup(SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device))), None, "fit")
            assert torch.get_float32_matmul_precision() == expected
    finally:
        torch.set_float32_matmul_precision(before)
    assert isinstance(callback, MatmulPrecision)


def test_loaders_pin_memory_only_for_a_cuda_trainer(tiny_cfg):
    """Batches are page-locked (pin_memory) when the attached Trainer runs on CUDA, never on CPU."""
    from types import SimpleNamespace

    import torch

    from mmbench.builder import build_datamodule

    dm = build_datamodule(tiny_cfg())
    assert not dm.train_dataloader().pin_memory  # no Trainer attached
    for device, pinned in (("cpu", False), ("cuda", True)):
        dm.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)))
        assert dm.train_dataloader().pin_memory == pinned and dm.test_dataloader().pin_memory == pinned
