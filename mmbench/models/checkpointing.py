"""Gradient checkpointing of every transformer stack (`model.gradient_checkpointing=true`): each layer of a
stack keeps only its inputs for the backward pass and runs its forward again there, so activation memory no
longer grows with depth, for one more forward pass of compute. The gradients are those of the plain model
(dropout draws the same masks again: torch's checkpoint restores the RNG state; tests/test_checkpointing.py).

A layer is checkpointed when it is an element of an `nn.ModuleList` (a stack) and holds an attention module;
stacks holding BatchNorm are left alone (a second forward pass would update its running statistics twice).
Hugging Face modules use their own `gradient_checkpointing_enable`. Only a forward that records gradients is
recomputed: evaluation and generation (no_grad, KV caches) run the layers as they are.
"""

from __future__ import annotations

import types

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from mmbench.models.layers import Attention


def _checkpointed_forward(self: nn.Module, *args, **kwargs):
    """A layer's forward under `torch.utils.checkpoint` whenever gradients are recorded (a frozen part in eval
    mode too: the gradient flows through it); bound to the layer as `forward`, so a deep copy of the model, such
    as ITC's momentum encoders, binds to the copy."""
    forward = type(self).forward
    if torch.is_grad_enabled():
        return checkpoint(forward, self, *args, use_reentrant=False, **kwargs)
    return forward(self, *args, **kwargs)


def _checkpointable(layer: nn.Module) -> bool:
    modules = list(layer.modules())
    attention = any(isinstance(m, (Attention, nn.MultiheadAttention)) for m in modules)
    return attention and not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in modules)


def enable_gradient_checkpointing(model: nn.Module) -> int:
    """Checkpoint every transformer layer of `model` (module docstring); returns how many were wrapped."""
    wrapped, inside_hf = 0, set[int]()
    for module in model.modules():
        enable = getattr(module, "gradient_checkpointing_enable", None)
        if getattr(module, "supports_gradient_checkpointing", False) and callable(enable):
            # a Hugging Face PreTrainedModel: its own switch, which knows its layers' signatures
            enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            inside_hf.update(id(m) for m in module.modules())
            wrapped += 1
    for module in model.modules():
        if not isinstance(module, nn.ModuleList) or id(module) in inside_hf:
            continue
        for layer in module:
            if _checkpointable(layer) and "forward" not in vars(layer):
                layer.forward = types.MethodType(_checkpointed_forward, layer)  # type: ignore[method-assign]
                wrapped += 1
    return wrapped
