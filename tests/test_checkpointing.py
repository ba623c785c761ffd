"""`model.gradient_checkpointing=true`: every preset's transformer layers are recomputed in the backward
pass (fewer tensors saved by the forward pass) and the loss and gradients equal the plain model's, with
dropout on (the recomputation draws the same masks)."""

from __future__ import annotations

import pytest
import torch

from mmbench.builder import build_datamodule, build_module
from mmbench.memory import saved_tensors
from tests.conftest import TINY, compose_cfg
from tests.test_presets import PRESETS, supported_objectives


def _saved_bytes(module, batch) -> tuple[torch.Tensor, int]:
    """The training loss, and the bytes of the tensors a forward pass saves for the backward pass (the memory
    check's probe, `mmbench.memory.saved_tensors`)."""
    saved = sum(nbytes for nbytes, _ in saved_tensors(module, batch))
    torch.manual_seed(1)  # the same dropout masks for both modules
    return module.shared_step(batch, "train"), saved


@pytest.mark.parametrize("model", PRESETS)
def test_checkpointed_layers_give_the_same_gradients_and_save_less(model, cache_dir, tmp_path):
    objectives = ",".join(supported_objectives(model))
    cfg = compose_cfg([f"model={model}", f"objective=[{objectives}]", *TINY, "model.dropout=0.1"], tmp_path / "run")
    dm = build_datamodule(cfg)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    torch.manual_seed(0)
    plain = build_module(cfg, dm.info)
    cfg.model.gradient_checkpointing = True
    torch.manual_seed(0)
    checkpointed = build_module(cfg, dm.info)
    assert list(checkpointed.state_dict()) == list(plain.state_dict())  # checkpoints load either way
    results = []
    for module in (plain, checkpointed):
        module.train()
        loss, saved = _saved_bytes(module, batch)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
        results.append((loss.detach(), saved, grads))
    (loss_a, saved_a, grads_a), (loss_b, saved_b, grads_b) = results
    assert saved_b < saved_a, (saved_a, saved_b)  # the layers' activations were not kept
    assert torch.allclose(loss_a, loss_b, rtol=0, atol=1e-6)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name, grad in grads_a.items():
        assert torch.allclose(grad, grads_b[name], rtol=1e-5, atol=1e-6), name


def test_a_switch_that_is_not_a_boolean_is_refused(tmp_path):
    from mmbench.config import ConfigError
    from mmbench.validation import validate

    with pytest.raises(ConfigError, match=r"model.gradient_checkpointing=maybe: true \(recompute"):
        validate(compose_cfg(["model.gradient_checkpointing=maybe"], tmp_path))
