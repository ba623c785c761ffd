"""LoRA adapters on a model part (`language_model.lora.r=16`, `encoder.text.lora.r=8`, ...) through the `peft`
library: the part's weights are frozen and each targeted linear layer W gains a trainable low-rank update,
W x + (alpha / r) B A x (Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language Models").

- `target_modules` names the layers (peft's rule: a module whose name is the target or ends in ".target").
  Left null, a Hugging Face part takes peft's default for its architecture (GPT-2 `c_attn`, Llama `q_proj`
  and `v_proj`, ...) and mmbench's own transformer stacks take the attention's `q` and `v`, as the paper.
- The adapters are injected in place (`peft.inject_adapter_in_model`), after any pretrained weights are
  loaded, so the module tree keeps its names (a targeted `q` becomes `q.base_layer` + `q.lora_A` / `q.lora_B`)
  and every part that holds a reference to the part (a connector holds the language model) runs the adapters.
- `freeze: true` on the part keeps it in eval mode (no dropout) while the adapters train; without it the part
  trains in train mode with its base weights fixed. The part's `lr_mult` applies to its adapters.
- `merge_lora` folds the adapters into the base weights (W + (alpha / r) B A): a plain model with the same
  outputs and no adapter cost, for deployment (tests/test_lora.py).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass

from torch import nn

from mmbench.checks import number_problem, problems_of, raise_problems

#: the layers of mmbench's own transformer stacks (mmbench/models/layers.py `Attention`) LoRA adapts by default
OWN_TARGETS = ("q", "v")


@dataclass(frozen=True)
class LoraSettings:
    """One part's `lora` node: rank `r` (0: no adapters), scale `alpha` (null: alpha = r, a scale of 1), dropout
    on the adapters' input, and the targeted layer names (null: the part's default, module docstring)."""

    r: int = 0
    alpha: int | None = None
    dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None

    @classmethod
    def setting_problems(cls, r=0, alpha=None, dropout=0.0, target_modules=None, **unknown) -> list[str]:
        if unknown:
            return [
                f"{key}: unknown setting; a lora node takes r, alpha, dropout and target_modules" for key in unknown
            ]
        problems = problems_of(
            number_problem("r", r, "a rank >= 0 (0: no LoRA), e.g. 8 or 16", low=0, integer=True),
            None
            if alpha is None
            else number_problem(
                "alpha", alpha, "an integer > 0 (the scale is alpha / r; null: alpha = r)", low=1, integer=True
            ),
            number_problem("dropout", dropout, "a probability in [0, 1)", low=0, high=1, high_open=True),
        )
        names = None if target_modules is None else list(target_modules)
        if names is not None and (not names or not all(isinstance(n, str) and n for n in names)):
            problems.append(
                f"target_modules={target_modules}: a list of layer names (e.g. [q, v], or [q_proj, v_proj] on a "
                f"Llama-style model), or null for the part's default"
            )
        return problems

    @classmethod
    def from_node(cls, node: Mapping | None) -> LoraSettings:
        """The settings of a part's `lora` node (absent or null: no LoRA); refused as validation refuses them."""
        values = dict(node or {})
        raise_problems("lora", cls.setting_problems(**values))
        targets = values.get("target_modules")
        return cls(
            r=int(values.get("r", 0)),
            alpha=None if values.get("alpha") is None else int(values["alpha"]),
            dropout=float(values.get("dropout", 0.0)),
            target_modules=None if targets is None else tuple(str(t) for t in targets),
        )


def adapter_root(part: nn.Module) -> nn.Module:
    """The module LoRA is injected into: the Hugging Face model a part wraps (`part.model`, whose `config`
    tells peft the architecture's default targets), else the part itself."""
    inner = getattr(part, "model", None)
    return inner if isinstance(inner, nn.Module) and hasattr(inner, "config") else part


def apply_lora(part: nn.Module, settings: LoraSettings, name: str) -> int:
    """Inject LoRA adapters into `part` (named `name` in messages); returns the adapters' parameter count."""
    from peft import LoraConfig, inject_adapter_in_model  # imports transformers: only when LoRA is asked for

    root = adapter_root(part)
    targets = settings.target_modules
    if targets is None and root is part:
        targets = OWN_TARGETS
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha if settings.alpha is not None else settings.r,
        lora_dropout=settings.dropout,
        target_modules=list(targets) if targets is not None else None,
    )
    with warnings.catch_warnings():
        # GPT-2's Conv1D stores its weight transposed; peft notices and sets fan_in_fan_out itself
        warnings.filterwarnings("ignore", message="fan_in_fan_out is set to False")
        try:
            inject_adapter_in_model(config, root)
        except ValueError as err:
            linear = sorted({n.rsplit(".", 1)[-1] for n, m in root.named_modules() if isinstance(m, nn.Linear)})
            raise ValueError(
                f"{name}.lora: {err}. Name the layers to adapt with {name}.lora.target_modules=[...]; this part's "
                f"linear layers are named {linear}"
            ) from None
    return sum(p.numel() for n, p in part.named_parameters() if "lora_" in n)


def merge_lora(model: nn.Module) -> int:
    """Fold every LoRA adapter in `model` into its base layer and put the plain layer back in its place (the
    outputs stay those of the adapted model); returns how many layers were merged."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    adapted = [(name, m) for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, layer in adapted:
        layer.merge()
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, layer.get_base_layer())
    return len(adapted)
