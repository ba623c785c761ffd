"""ITC under DDP equals ITC on one process over the whole batch; a Lightning DDP run through the CLI.

ITC all-gathers the embeddings of every rank with gradient and each rank scores its local rows
against all columns. Since DDP averages gradients over ranks (all_reduce SUM / world_size), the
mean of the per-rank losses and the averaged gradients must equal those of a single process on
the concatenated batch. Two CPU processes on the gloo backend check this, with captions of one
image split across ranks so multi-positive targets that span ranks are covered.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from mmbench.objectives.context import StepContext
from tests.conftest import ROOT, TINY
from tests.ddp_worker import features, itc_worker, make_itc

WORLD = 2
TEXT_DIM, IMAGE_DIM, EMBED_DIM = 12, 10, 6


def _global_batch() -> dict:
    """8 rows, 4 per rank. Image 3 has a caption on each rank (rows 3 and 4), so has image 0
    (rows 0 and 7); image 5 has two captions on rank 1. Captions of one image share its features."""
    g = torch.Generator().manual_seed(123)
    image_id = torch.tensor([0, 1, 2, 3, 3, 5, 5, 0])  # rank 0: [0,1,2,3], rank 1: [3,5,5,0]
    image_table = torch.randn(6, IMAGE_DIM, generator=g)
    return {
        "text": torch.randn(8, TEXT_DIM, generator=g),  # (N, Dt) pooled text features
        "image": image_table[image_id],  # (N, Di) pooled image features
        "image_id": image_id,
        "embed_dim": EMBED_DIM,
    }


def _with_claims(data: dict) -> dict:
    """Claims that cross ranks: text 6 (rank 1) is also true of image 1 (rank 0), text 1 of image 0 (both
    ranks) and text 2 of image 5 (rank 1); 0 = unknown claim / padding."""
    claims = torch.tensor([10, 11, 12, 13, 13, 15, 16, 10])  # one claim per text (captions of an image agree here)
    facts = {0: [10, 11], 1: [11, 16], 2: [12], 3: [13], 5: [15, 16, 12]}
    image_facts = torch.zeros(8, 3, dtype=torch.long)
    for row, i in enumerate(data["image_id"].tolist()):
        image_facts[row, : len(facts[i])] = torch.tensor(facts[i])
    return {**data, "text_claim": claims, "image_facts": image_facts}


@pytest.mark.parametrize("claims", [False, True], ids=["image_ids", "claim_positives"])
def test_itc_ddp_matches_single_process(tmp_path, claims):
    data = _with_claims(_global_batch()) if claims else _global_batch()
    mp.spawn(itc_worker, args=(WORLD, str(tmp_path), data), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]

    # single process, whole batch (no process group: ITC's gather is the identity)
    itc = make_itc(TEXT_DIM, IMAGE_DIM, EMBED_DIM, claim_positives=claims)
    text, image = features(data["text"]), features(data["image"])
    batch = {k: data[k] for k in ("image_id", "text_claim", "image_facts") if k in data}
    ref = itc(None, batch, text, image, StepContext())
    if claims:  # the claims change the loss: the check below compares like with like
        plain = make_itc(TEXT_DIM, IMAGE_DIM, EMBED_DIM)(
            None, {"image_id": data["image_id"]}, features(data["text"]), features(data["image"]), StepContext()
        )
        assert abs(plain.loss.item() - ref.loss.item()) > 1e-3
    ref.loss.backward()

    ddp_loss = torch.stack([r["loss"] for r in ranks]).mean()
    torch.testing.assert_close(ddp_loss, ref.loss.detach(), rtol=1e-6, atol=0)
    torch.testing.assert_close(torch.stack([r["acc"] for r in ranks]).mean(), ref.metrics["acc"])

    # parameters (projections and temperature): DDP's averaged grads = single-process grads
    names = {n for n, _ in itc.named_parameters()}
    assert names == {"text_proj.weight", "text_proj.bias", "image_proj.weight", "image_proj.bias", "temperature"}
    for name, p in itc.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        # float32 sums in another order (per rank, then averaged): ~1e-6 absolute on grads of size ~5
        # here; a missing gather or a wrong average is off by O(0.1)
        torch.testing.assert_close(ranks[0]["param_grads"][name], p.grad, rtol=1e-5, atol=1e-5, msg=name)
        torch.testing.assert_close(ranks[1]["param_grads"][name], ranks[0]["param_grads"][name], rtol=0, atol=0)

    # inputs: a rank's features receive the gradient of EVERY rank's loss (all_gather's backward
    # sums over ranks); the encoder parameters behind them are then averaged by DDP, so the
    # single-process input grads are the concatenated per-rank grads / world_size
    for key, leaf in (("text_grad", text.pooled), ("image_grad", image.pooled)):
        ddp_grad = torch.cat([r[key] for r in ranks]) / WORLD  # (N, D)
        # float32 reduction order: ~3e-7 absolute on grads of size ~1 (a wrong gather: O(0.1))
        torch.testing.assert_close(ddp_grad, leaf.grad, rtol=1e-5, atol=1e-6, msg=key)

    # negative control: without the gather (local batch only) the loss is different, so the
    # checks above can fail; the cross-rank positives (images 0 and 3) are what it misses
    local_only = torch.stack([r["local_loss"] for r in ranks]).mean()
    assert abs(local_only.item() - ref.loss.item()) > 1e-2 * abs(ref.loss.item())


# ---------------------------------------------------------------- Lightning DDP through the CLI

_METRICS_LINE = re.compile(r"\[mmbench\.pipeline\]\[INFO\] - metrics: (\{.*\})")


def _logged_metrics(log: Path) -> dict:
    (line,) = _METRICS_LINE.findall(log.read_text())
    return ast.literal_eval(line)


def test_lightning_ddp_cli_on_cpu(cache_dir, tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONPATH": str(ROOT)}
    args = [*TINY, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]
    res = subprocess.run(
        [sys.executable, "-m", "mmbench.train", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-3000:]

    # Lightning re-executes the command for rank 1 with hydra.run.dir pinned to rank 0's directory
    (run_dir,) = list((tmp_path / "outputs" / "runs").iterdir())
    rec = json.loads((run_dir / "metrics.json").read_text())
    assert rec["status"] == "completed"
    assert not list(run_dir.glob("*.json.tmp"))

    # both ranks see the same, reduced, val/test metrics, and metrics.json holds them
    rank0, rank1 = _logged_metrics(run_dir / "train.log"), _logged_metrics(run_dir / "train_ddp_process_1.log")
    evaluated = [k for k in rank0 if k.startswith(("val/", "test/"))]
    assert any(k.startswith("test/itc/") for k in evaluated)
    for key in evaluated:
        assert rank0[key] == pytest.approx(rank1[key], rel=1e-6), key
        assert rec["metrics"][key] == pytest.approx(rank0[key], rel=1e-6), key


def test_lightning_ddp_jobs_of_a_local_multirun(cache_dir, tmp_path):
    """Each job of a `-m` sweep runs on 2 ranks: Lightning's extra rank re-runs that job (not the
    sweep) in the job's directory, and the next job starts its own process group."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONPATH": str(ROOT)}
    args = ["-m", "seed=0,1", *TINY, "test=false", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]
    res = subprocess.run(
        [sys.executable, "-m", "mmbench.train", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    (sweep,) = list((tmp_path / "outputs" / "multiruns").iterdir())
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["seed=0", "seed=1"]  # no extra sweep started by a rank
    for job in jobs:
        rec = json.loads((sweep / job / "metrics.json").read_text())
        assert rec["status"] == "completed"
        rank0, rank1 = (
            _logged_metrics(sweep / job / "train.log"),
            _logged_metrics(sweep / job / "train_ddp_process_1.log"),
        )
        for key in (k for k in rank0 if k.startswith("val/")):
            assert rank0[key] == pytest.approx(rank1[key], rel=1e-6), key
            assert rec["metrics"][key] == pytest.approx(rank0[key], rel=1e-6), key
