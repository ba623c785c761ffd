"""The LightningModule: one `MultimodalModel`, a dict of objectives, optimiser and schedule.

Each step encodes text and image once and hands the features to every objective; the training
loss is the weighted sum of the objectives' losses. Logged names: `<split>/loss`,
`<split>/<objective>/loss` and `<split>/<objective>/<metric>` (e.g. `test/vqa/acc`).
Training stops with `Diverged` at the first non-finite loss, and no checkpoint is written with
non-finite weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import pytorch_lightning as pl
import torch
from torch import nn

from mmbench.checks import number_problem, problems_of
from mmbench.models.model import MultimodalModel
from mmbench.objectives.base import Objective
from mmbench.objectives.context import StepContext, run_order
from mmbench.record import Diverged

if TYPE_CHECKING:
    from pytorch_lightning.utilities.types import OptimizerLRScheduler

    from mmbench.data.batch import Batch

_DIVERGED_HINT = "A lower optimizer.lr or a longer warm-up (scheduler.warmup_ratio) usually helps."


def warmup_cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float = 0.05, min_lr_ratio: float = 0.0
):
    """Linear warm-up over `warmup_ratio` of the steps, then cosine decay to `min_lr_ratio` x lr. Settings
    outside [0, 1] are refused (ValueError; config validation builds it on a stand-in optimizer to ask): a
    warm-up longer than the run would never decay, a negative one would be read as one step."""
    problems = problems_of(
        number_problem("warmup_ratio", warmup_ratio, "a fraction of the steps in [0, 1], e.g. 0.05", low=0, high=1),
        number_problem("min_lr_ratio", min_lr_ratio, "a fraction of the learning rate in [0, 1]", low=0, high=1),
    )
    if problems:
        raise ValueError("; ".join(problems))
    warmup = max(1, int(total_steps * warmup_ratio))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class MMBenchModule(pl.LightningModule):
    def __init__(
        self,
        model: MultimodalModel,
        objectives: dict[str, Objective],
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        weight_decay: float = 0.01,
    ):
        super().__init__()
        if not objectives:
            raise ValueError("at least one objective is required")
        self.model = model
        self.objectives = nn.ModuleDict(objectives)
        run_order(self._declared())  # an unknown context field or a cycle fails here, not at step 1
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.weight_decay = weight_decay
        # a training step's FLOPs per sample and the training steps' time and samples in this process, written
        # by mmbench.callbacks.StepFlops; `complexity` turns them into MFU
        self.step_cost: dict[str, Any] = {}

    def compile_parts(self) -> None:
        """`torch.compile` the encoders, the fusion and the objectives, in place (`nn.Module.compile`), so
        the state_dict keys stay those of the eager module and checkpoints load either way. Shapes that
        vary between batches (text length, regions) recompile once, then run dynamic.
        Measured per preset in docs/performance.md (compile time included). A language model part is compiled
        inside the parts that run it (its `run` is not a `forward`)."""
        for part in (self.model.text_encoder, self.model.vision_encoder, self.model.fusion, *self.objectives.values()):
            part.compile()

    def shared_step(self, batch: Batch, split: str) -> torch.Tensor:
        text = self.model.encode_text(batch["input_ids"], batch["attention_mask"])  # once per step
        image = self.model.encode_image(batch)  # once per step
        # objectives read the fraction of training done (e.g. ITM's hard-negative warm-up); 1 outside training
        context = StepContext(progress=self.progress if split == "train" else 1.0)
        sync = split != "train"  # val/test epoch metrics are reduced over DDP ranks (a no-op on one process)
        total = torch.zeros((), device=self.device)
        losses: dict[str, torch.Tensor] = {}
        B = batch["input_ids"].shape[0]
        # providers of step-context fields before their users, else by name: the list's order is not science
        for name in run_order(self._declared()):
            objective = self.objectives[name]
            out = objective(self.model, batch, text, image, context)
            losses[name] = out.loss
            total = total + objective.weight * out.loss
            self.log(f"{split}/{name}/loss", out.loss, batch_size=B, on_step=False, on_epoch=True, sync_dist=sync)
            for key, value in out.metrics.items():
                self.log(f"{split}/{name}/{key}", value, batch_size=B, on_step=False, on_epoch=True, sync_dist=sync)
        self.log(
            f"{split}/loss", total, batch_size=B, on_step=split == "train", on_epoch=True, prog_bar=True, sync_dist=sync
        )
        if split == "train":
            self.stop_if_diverged(total, losses)
        return total

    def _declared(self) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
        objectives = cast(dict[str, Objective], self.objectives)  # the nn.ModuleDict of `__init__`
        return {name: (o.provides, o.uses) for name, o in objectives.items()}

    def stop_if_diverged(self, total: torch.Tensor, losses: dict[str, torch.Tensor]) -> None:
        """Raise `Diverged` at the first non-finite training loss, naming the step and the objective.

        Checked here, in the training step, because Lightning calls it inside the optimizer's closure:
        raising stops the fit before the backward pass and the optimizer step that a NaN would feed, so
        the weights (and the checkpoints) stay those of the last finite step. `EarlyStopping(check_finite=
        True)` only looks at the monitored metric after validation, when the weights are already
        non-finite and the epoch's checkpoint is being written with them. One host sync per step.
        """
        finite = bool(torch.isfinite(total))
        if self._trainer is not None:  # under DDP every rank stops together (a rank alone would hang the others)
            finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if finite:
            return
        named = [f"{name} = {loss.item():g}" for name, loss in losses.items() if not torch.isfinite(loss)]
        if not named:  # finite losses: a weight made the sum non-finite, or another rank's loss is
            named = [f"weighted sum = {total.item():g}" if not torch.isfinite(total) else "on another rank"]
        raise Diverged(
            f"training diverged at global step {self.global_step}: non-finite loss ({', '.join(named)}); "
            f"stopped before the optimizer step, so checkpoints/ keeps the last finite weights. {_DIVERGED_HINT}"
        )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Refuse to write non-finite weights: a finite loss can still give non-finite gradients and
        weights, and an epoch's checkpoint is written before the next training step would notice.
        Raising here, before Lightning writes the file, keeps the previous checkpoint."""
        state = checkpoint["state_dict"]
        bad = [name for name, t in state.items() if t.is_floating_point() and not torch.isfinite(t).all()]
        if bad:
            raise Diverged(
                f"training diverged by global step {self.global_step}: non-finite weights in {bad[0]} "
                f"({len(bad)} tensors); that checkpoint was not written, checkpoints/ keeps the last finite "
                f"weights. {_DIVERGED_HINT}"
            )

    @property
    def progress(self) -> float:
        """Fraction of the optimizer steps of this fit done so far (0 without a trainer)."""
        trainer = self._trainer
        if trainer is None:
            return 0.0
        total = trainer.estimated_stepping_batches
        return min(1.0, trainer.global_step / total) if total and math.isfinite(total) else 0.0

    def training_step(self, batch, batch_idx):
        return self.shared_step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self.shared_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self.shared_step(batch, "test")

    def configure_optimizers(self) -> OptimizerLRScheduler:
        # nanoGPT's rule: decay matrices and embeddings (dim >= 2), not biases, norms or temperatures.
        # Parts of the model with an lr multiplier (encoder `lr_mult`) get their own groups; frozen
        # parameters (requires_grad False) are left out.
        prefixes = {f"model.{part}.": mult for part, mult in self.model.lr_mult.items()}
        buckets: dict[tuple[bool, float], list[nn.Parameter]] = {}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            mult = next((m for prefix, m in prefixes.items() if name.startswith(prefix)), 1.0)
            buckets.setdefault((p.dim() >= 2, mult), []).append(p)
        keys = sorted(buckets, key=lambda k: (k[1] != 1.0, k[1], not k[0]))  # (decay, no decay) at x1 first
        groups = [
            {"params": buckets[k], "weight_decay": self.weight_decay if k[0] else 0.0, "lr_mult": k[1]} for k in keys
        ]
        optimizer = self.optimizer_factory(params=groups)
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] * group["lr_mult"]  # before the scheduler records base_lrs
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer, total_steps=self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
