"""ITC with ALBEF's momentum encoder, queue and momentum distillation equals a literal reference computation
step by step (loss, momentum weights, queue contents, ring-buffer wrap-around), leaves validation to the plain
in-batch loss, and trains end to end."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from mmbench.builder import build_datamodule, build_module
from mmbench.objectives.context import StepContext
from mmbench.pipeline import run

K, MOMENTUM, ALPHA = 12, 0.9, 0.4  # K = 12 with batches of 8: the second step wraps around the ring


def _setup(tiny_cfg):
    cfg = tiny_cfg(
        "model=albef",
        "objective=[itc]",
        "data.batch_size=8",
        f"objective.itc.queue_size={K}",
        f"objective.itc.momentum={MOMENTUM}",
        f"objective.itc.alpha={ALPHA}",
        "objective.itc.alpha_ramp=0.5",
    )
    dm = build_datamodule(cfg)
    module = build_module(cfg, dm.info)
    return module, list(zip(range(3), dm.train_dataloader()))


def _reference_step(module, ref: dict, batch: dict, progress: float) -> torch.Tensor:
    """ALBEF's ITC written out: EMA of the momentum weights, momentum features, targets, loss, enqueue."""
    model, itc = module.model, module.objectives["itc"]
    online = {
        "text_encoder": model.text_encoder,
        "vision_encoder": model.vision_encoder,
        "text_proj": itc.text_proj,
        "image_proj": itc.image_proj,
    }
    with torch.no_grad():
        for part, mod in online.items():
            for name, p in mod.named_parameters():
                ref["params"][part][name] = MOMENTUM * ref["params"][part][name] + (1 - MOMENTUM) * p
        call = lambda part, *args: functional_call(online[part], ref["params"][part], args)
        text_feat_m = F.normalize(
            call("text_proj", call("text_encoder", batch["input_ids"], batch["attention_mask"]).pooled), dim=-1
        )
        image_feat_m = F.normalize(call("image_proj", call("vision_encoder", batch).pooled), dim=-1)
        text_all = torch.cat([text_feat_m, ref["text_queue"]])
        image_all = torch.cat([image_feat_m, ref["image_queue"]])
        idx_all = torch.cat([batch["image_id"], ref["id_queue"]])
        pos_idx = (batch["image_id"][:, None] == idx_all[None, :]).float()
        sim_targets = pos_idx / pos_idx.sum(1, keepdim=True)
        temp = itc.temperature.clamp(*itc.bounds)
        alpha = ALPHA * min(1.0, progress / 0.5)
        sim_i2t_targets = alpha * F.softmax(image_feat_m @ text_all.T / temp, dim=1) + (1 - alpha) * sim_targets
        sim_t2i_targets = alpha * F.softmax(text_feat_m @ image_all.T / temp, dim=1) + (1 - alpha) * sim_targets
    text = model.encode_text(batch["input_ids"], batch["attention_mask"])
    image = model.encode_image(batch)
    text_feat, image_feat = itc.embed(text.pooled, image.pooled)
    sim_i2t, sim_t2i = image_feat @ text_all.T / temp, text_feat @ image_all.T / temp
    loss_i2t = -(F.log_softmax(sim_i2t, dim=1) * sim_i2t_targets).sum(1).mean()
    loss_t2i = -(F.log_softmax(sim_t2i, dim=1) * sim_t2i_targets).sum(1).mean()
    # enqueue: the oldest entries out, in order, wrapping around
    for row in range(batch["image_id"].shape[0]):
        slot = ref["ptr"] % K
        ref["image_queue"][slot], ref["text_queue"][slot] = image_feat_m[row], text_feat_m[row]
        ref["id_queue"][slot] = batch["image_id"][row]
        ref["ptr"] += 1
    return (loss_i2t + loss_t2i) / 2


def test_momentum_queue_and_distillation_equal_the_reference_step_by_step(tiny_cfg):
    module, batches = _setup(tiny_cfg)
    module.train()
    itc = module.objectives["itc"]
    ref = {
        "params": {
            part: {n: p.detach().clone() for n, p in itc.momentum_parts[part].named_parameters()}
            for part in ("text_encoder", "vision_encoder", "text_proj", "image_proj")
        },
        "image_queue": itc.image_queue.clone(),
        "text_queue": itc.text_queue.clone(),
        "id_queue": itc.id_queue.clone(),
        "ptr": 0,
    }
    optimizer = torch.optim.SGD(module.parameters(), lr=0.5)
    for step, (_, batch) in enumerate(batches):
        progress = step / 4  # alpha ramps: 0, 0.2, 0.4 over the three steps
        expected = _reference_step(module, ref, batch, progress)
        text = module.model.encode_text(batch["input_ids"], batch["attention_mask"])
        image = module.model.encode_image(batch)
        out = itc(module.model, batch, text, image, StepContext(progress=progress))
        torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-6)
        assert out.metrics["alpha"].item() == pytest.approx(ALPHA * min(1.0, progress / 0.5))
        for part, params in ref["params"].items():
            for name, p in itc.momentum_parts[part].named_parameters():
                torch.testing.assert_close(p, params[name], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(itc.image_queue, ref["image_queue"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(itc.text_queue, ref["text_queue"], rtol=1e-5, atol=1e-6)
        assert torch.equal(itc.id_queue, ref["id_queue"]) and int(itc.queue_ptr) == ref["ptr"] % K
        optimizer.zero_grad()
        out.loss.backward()
        assert all(p.grad is None for p in itc.momentum_parts.parameters())  # the momentum model never learns
        optimizer.step()  # the online weights move, so the next step's moving average is not the identity
    assert ref["ptr"] > K  # the ring wrapped around


def test_validation_uses_the_in_batch_loss_and_leaves_the_queue_alone(tiny_cfg):
    module, batches = _setup(tiny_cfg)
    _, batch = batches[0]
    itc = module.objectives["itc"]
    plain = copy.deepcopy(itc)
    plain.queue_size = 0  # the same weights, in-batch only
    state = {k: v.clone() for k, v in itc.state_dict().items()}
    module.eval()
    with torch.no_grad():
        text = module.model.encode_text(batch["input_ids"], batch["attention_mask"])
        image = module.model.encode_image(batch)
        out = itc(module.model, batch, text, image, StepContext())
        expected = plain(module.model, batch, text, image, StepContext())
    assert out.loss.item() == expected.loss.item()
    assert all(torch.equal(v, state[k]) for k, v in itc.state_dict().items())


def test_a_language_model_text_encoder_is_refused(tiny_cfg):
    cfg = tiny_cfg("model=llava", "objective=[itc]", "objective.itc.queue_size=16")
    dm = build_datamodule(cfg)
    with pytest.raises(Exception, match="use queue_size=0 with a language model"):
        build_module(cfg, dm.info)


def test_albef_recipe_trains_end_to_end_and_checkpoints_the_queue(tiny_cfg):
    cfg = tiny_cfg("model=albef", "objective=[itc,itm]", "objective.itc.queue_size=64", "eval.protocols=[retrieval]")
    record = run(cfg)
    assert record["status"] == "completed" and "test/retrieval/rmean" in record["metrics"]
    from pathlib import Path

    ckpt = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=False)
    state = ckpt["state_dict"]
    assert state["objectives.itc.image_queue"].shape == (64, 16)
    assert int(state["objectives.itc.queue_ptr"]) == (4 * 32) % 64  # 4 steps of 32 enqueued
    assert (state["objectives.itc.id_queue"] >= 0).all()  # 128 >= 64 examples: no initial entry is left


def test_ddp_queue_equals_one_process_over_the_whole_batch(tmp_path):
    """Two gloo ranks with half the rows each: the mean of their losses, their queues and momentum weights
    equal one process over the whole batch, step after step (each rank enqueues the gathered rows)."""
    import torch.multiprocessing as mp

    from tests.ddp_worker import QUEUE_STEPS, itc_queue_worker, queue_itc, queue_steps

    g = torch.Generator().manual_seed(5)
    batches = [
        {
            "input_ids": torch.randint(1, 20, (8, 6), generator=g),
            "attention_mask": torch.ones(8, 6, dtype=torch.long),
            "pixel_values": torch.randn(8, 3, 8, 8, generator=g),
            "image_id": torch.tensor([0, 1, 2, 3, 3, 5, 6, 0]) + 10 * step,  # image 3 and 0 span both ranks
        }
        for step in range(QUEUE_STEPS)
    ]
    mp.spawn(itc_queue_worker, args=(2, str(tmp_path), batches, 12), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]

    model, itc = queue_itc(12)
    losses = torch.stack(queue_steps(model, itc, batches))
    torch.testing.assert_close((ranks[0]["losses"] + ranks[1]["losses"]) / 2, losses, rtol=1e-5, atol=1e-6)
    for key, value in itc.state_dict().items():
        for r in ranks:
            torch.testing.assert_close(r["state"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    assert int(itc.queue_ptr) == (QUEUE_STEPS * 8) % 12 and (itc.id_queue >= 0).sum() == 12
