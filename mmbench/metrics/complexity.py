"""Complexity: parameters (total, trainable, per component), FLOPs per sample, throughput, memory.

* FLOPs: torch's `FlopCounterMode` over one forward through the three calls (encode text, encode
  image, fuse) on a real batch, divided by the batch size (matmul FLOPs, 2 per multiply-add).
* Training samples/s: samples seen by the optimiser / wall time of `trainer.fit` (validation and
  checkpointing included), measured by the caller.
* Inference samples/s: the same three calls in eval mode without gradient, timed over a few batches.
* Peak memory: `torch.cuda.max_memory_allocated` on a GPU; on CPU the process' peak resident set
  size (`ru_maxrss`), which covers everything the process ever held (data included).
"""

from __future__ import annotations

import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode


def _count(params) -> int:
    return sum(p.numel() for p in params)


def parameter_counts(module) -> dict:
    model = module.model
    return {
        "params": _count(module.parameters()),
        "trainable_params": _count(p for p in module.parameters() if p.requires_grad),
        "params_per_component": {
            "text_encoder": _count(model.text_encoder.parameters()),
            "vision_encoder": _count(model.vision_encoder.parameters()),
            "fusion": _count(model.fusion.parameters()),
            **{f"objective/{n}": _count(o.parameters()) for n, o in module.objectives.items()},
        },
    }


def _forward(model, batch: dict) -> None:
    model.fuse(model.encode_text(batch["input_ids"], batch["attention_mask"]), model.encode_image(batch))


@torch.no_grad()
def flops_per_sample(model, batch: dict) -> float:
    with FlopCounterMode(display=False) as counter:
        _forward(model, batch)
    return counter.get_total_flops() / batch["input_ids"].shape[0]


@torch.no_grad()
def inference_samples_per_s(model, batch: dict, repeats: int = 3) -> float:
    _forward(model, batch)  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        _forward(model, batch)
    return repeats * batch["input_ids"].shape[0] / (time.perf_counter() - t0)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource
    except ImportError:  # Windows
        return float("nan")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


def complexity(module, batch: dict, train_seconds: float | None, train_samples: int,
               measure_inference: bool = True) -> dict:
    """The `complexity` block of metrics.json; `batch` is a batch of the test loader."""
    out = parameter_counts(module)
    batch = {k: v.to(module.device) for k, v in batch.items()}
    model = module.model
    was_training = model.training
    model.eval()
    try:
        out["flops_per_sample"] = flops_per_sample(model, batch)
        out["inference_samples_per_s"] = inference_samples_per_s(model, batch) if measure_inference else None
    finally:
        model.train(was_training)
    out["train_samples_per_s"] = (train_samples / train_seconds) if train_seconds else None
    out["peak_memory_mb"] = peak_memory_mb(module.device)
    return out
