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


# ---------------------------------------------------------------- ITC with a momentum queue (tests/test_itc_queue.py)

QUEUE_STEPS, QUEUE_LR = 2, 0.5


def queue_itc(queue_size: int):
    """Real encoders (a text transformer, a patch encoder) and an ITC with a queue, the same on every rank."""
    from types import SimpleNamespace

    from mmbench.models.text import TextTransformer
    from mmbench.models.vision.patch import PatchEncoder

    torch.manual_seed(0)
    model = SimpleNamespace(
        text_encoder=TextTransformer(vocab_size=20, dim=8, depth=1, heads=2, max_len=8),
        vision_encoder=PatchEncoder(dim=8, image_size=8, patch_size=4, depth=1, heads=2),
    )
    itc = ITC(text_dim=8, image_dim=8, embed_dim=6, queue_size=queue_size, momentum=0.8, alpha=0.4, model=model)
    return model, itc


def queue_steps(model, itc, batches: list[dict], world_size: int = 1) -> list[torch.Tensor]:
    """`QUEUE_STEPS` training steps (SGD on the online parameters, gradients averaged over ranks as DDP does);
    returns the losses. `batches`: this rank's batch of each step."""
    params = [*model.text_encoder.parameters(), *model.vision_encoder.parameters(), *itc.parameters()]
    params = [p for p in params if p.requires_grad]
    losses = []
    for batch in batches:
        text = model.text_encoder(batch["input_ids"], batch["attention_mask"])
        image = model.vision_encoder(batch)
        out = itc(model, batch, text, image, StepContext(progress=1.0))
        for p in params:
            p.grad = None
        out.loss.backward()
        with torch.no_grad():
            for p in params:
                if world_size > 1:
                    dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                    p.grad /= world_size
                p -= QUEUE_LR * p.grad
        losses.append(out.loss.detach())
    return losses


def itc_queue_worker(rank: int, world_size: int, out_dir: str, batches: list[dict], queue_size: int) -> None:
    """This rank's rows of every step's batch; writes the losses, the queue and the momentum weights."""
    store = Path(out_dir) / "filestore"  # see itc_worker
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        model, itc = queue_itc(queue_size)
        mine = []
        for batch in batches:
            rows = torch.arange(batch["image_id"].shape[0]).chunk(world_size)[rank]
            mine.append({k: v[rows] for k, v in batch.items()})
        losses = queue_steps(model, itc, mine, world_size)
        state = {k: v.detach().clone() for k, v in itc.state_dict().items()}
        torch.save({"losses": torch.stack(losses), "state": state}, Path(out_dir) / f"rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()
