"""Worker process for tests/test_ddp.py: ITC on one rank of a 2-process gloo group.

Lives in its own importable module so `torch.multiprocessing.spawn` can pickle the function by
name (the spawned interpreter imports `tests.ddp_worker`, not the pytest test module).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from mmbench.models.outputs import Features
from mmbench.objectives.context import StepContext
from mmbench.objectives.itc import ITC, multi_positive_contrastive_loss


def make_itc(text_dim: int, image_dim: int, embed_dim: int, seed: int = 0, claim_positives: bool = False) -> ITC:
    """The same ITC head on every rank (and in the single-process reference): fixed seed."""
    torch.manual_seed(seed)
    return ITC(
        text_dim=text_dim,
        image_dim=image_dim,
        embed_dim=embed_dim,
        temperature_init=0.07,
        claim_positives=claim_positives,
    )


def features(pooled: torch.Tensor) -> Features:
    """Features whose pooled vector (B, D) is a leaf with gradient; tokens are unused by ITC."""
    B, D = pooled.shape
    return Features(torch.zeros(B, 1, D), torch.ones(B, 1, dtype=torch.bool), pooled.clone().requires_grad_(True))


def itc_worker(rank: int, world_size: int, out_dir: str, data: dict) -> None:
    """Run ITC on this rank's slice of the global batch, backward, DDP-average the parameter grads.

    Writes `rank{rank}.pt` with the local loss and acc, the rank-averaged parameter grads (what
    DDP's all_reduce SUM / world_size produces), the raw grads of this rank's input features and
    the loss computed WITHOUT gathering (local batch only: the negative control).
    """
    # A FileStore, not a TCPStore: rank 0 would host the TCP store server, and when it exited while
    # rank 1 was still tearing down, rank 1's gloo threads aborted ("terminate called without an
    # active exception", SIGABRT; seen once in CI under load). The barrier below keeps both ranks
    # alive until each has finished its collectives.
    store = Path(out_dir) / "filestore"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        itc = make_itc(
            data["text"].shape[1], data["image"].shape[1], data["embed_dim"], claim_positives="text_claim" in data
        )
        rows = torch.arange(data["text"].shape[0]).chunk(world_size)[rank]  # this rank's slice
        text, image = features(data["text"][rows]), features(data["image"][rows])
        batch = {k: data[k][rows] for k in ("image_id", "text_claim", "image_facts") if k in data}

        out = itc(None, batch, text, image, StepContext())
        out.loss.backward()
        grads = {}
        for name, p in itc.named_parameters():
            g = p.grad.detach().clone()
            dist.all_reduce(g, op=dist.ReduceOp.SUM)  # exactly DDP's gradient averaging
            grads[name] = g / world_size

        with torch.no_grad():  # negative control: the same loss on the local batch only
            text_emb, image_emb = itc.embed(text.pooled, image.pooled)
            temp = itc.temperature.clamp(*itc.bounds)
            local_loss, _ = multi_positive_contrastive_loss(image_emb, text_emb, batch["image_id"], temp)

        torch.save(
            {
                "loss": out.loss.detach(),
                "acc": out.metrics["acc"].detach(),
                "param_grads": grads,
                "text_grad": text.pooled.grad.detach(),
                "image_grad": image.pooled.grad.detach(),
                "local_loss": local_loss,
            },
            Path(out_dir) / f"rank{rank}.pt",
        )
        dist.barrier()
    finally:
        dist.destroy_process_group()
