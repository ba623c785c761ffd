"""What the objectives of one step share: a typed `StepContext`, and the order they run in.

The LightningModule fills what it knows (training progress); an objective that computes something
another can use declares the field in `provides` and sets it; an objective that reads one declares it
in `uses` (e.g. ITC provides its similarities, from which ITM mines hard negatives). `run_order`
puts providers before users and otherwise sorts by name, so the order of the config list
(`objective=[itm,itc]` or `[itc,itm]`) never changes what is computed, nor the random draws.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import torch

from mmbench.models.outputs import Features

if TYPE_CHECKING:
    from mmbench.data.batch import Batch


@dataclass
class StepContext:
    progress: float = 1.0  # fraction of training done (ITM's hard-negative warm-up); 1 outside training
    itc_sim_i2t: torch.Tensor | None = None  # (B, B) image x text ITC logits of the local batch, detached (ITC)
    # the batch's hard-negative texts (`negative_ids`) that exist, encoded once per step (`encode_negatives`)
    negative_text: tuple[Features, torch.Tensor] | None = None

    def encode_negatives(self, model, batch: Batch) -> tuple[Features, torch.Tensor]:
        """(features of the captions' hard negatives (K, ...), their rows (K,)): the rows with
        `has_negative`, through the model's text encoder once per step, whichever objective asks first
        (ITC and ITM with `text_negatives` share them)."""
        if self.negative_text is None:
            rows = batch["has_negative"].nonzero().squeeze(1)  # (K,)
            self.negative_text = (model.encode_text(batch["negative_ids"][rows], batch["negative_mask"][rows]), rows)
        return self.negative_text


CONTEXT_FIELDS = frozenset(f.name for f in fields(StepContext))


def run_order(declared: dict[str, tuple[tuple[str, ...], tuple[str, ...]]]) -> list[str]:
    """Names in the order to run them: every provider of a field before every user of it, ties by name.

    `declared` maps name -> (provides, uses). A field nobody provides is simply absent (None) for its
    users; a cycle is an error.
    """
    for name, (provides, uses) in declared.items():
        unknown = sorted((set(provides) | set(uses)) - CONTEXT_FIELDS)
        if unknown:
            raise ValueError(
                f"objective '{name}' declares unknown step-context field(s) {unknown}; "
                f"StepContext has {sorted(CONTEXT_FIELDS)}"
            )
    order: list[str] = []
    pending = dict(declared)
    while pending:
        provided_later = {f for n, (provides, _) in pending.items() for f in provides}
        ready = sorted(
            n for n, (provides, uses) in pending.items() if not (set(uses) & (provided_later - set(provides)))
        )
        if not ready:
            raise ValueError(f"objectives {sorted(pending)} depend on each other's step-context fields (a cycle)")
        order.append(ready[0])
        del pending[ready[0]]
    return order
