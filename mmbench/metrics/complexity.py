"""Complexity: parameters (total, trainable, per component), FLOPs per sample, throughput, memory.

* FLOPs: torch's `FlopCounterMode` over one forward through the three calls (encode text, encode
  image, fuse) on a real batch, divided by the batch size (matmul FLOPs, 2 per multiply-add).
* Training samples/s: samples seen by the optimiser / wall time of `trainer.fit` (validation and
  checkpointing included), measured by the caller.
* MFU (`utilisation`): the FLOPs of one whole training step (forward and backward of every objective) x the
  samples of the timed training steps / their time / the device's peak FLOP/s (mmbench/metrics/peak.py).
* Inference samples/s: the same three calls in eval mode without gradient, timed over a few batches.
* Peak memory: `torch.cuda.max_memory_allocated` on a GPU; on CPU the peak resident set size
  (data included). Each run starts with `reset_peak_memory`, so a run's figure is its own even when
  one process runs many jobs (Hydra's joblib launcher reuses its workers): on Linux the kernel's peak
  counter (VmHWM in /proc/self/status) is reset through /proc/self/clear_refs; elsewhere, and where
  /proc is not writable, `ru_maxrss` is the process' lifetime peak (then `peak_memory_scope` says so).
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from mmbench.data.batch import to_device

if TYPE_CHECKING:
    from mmbench.data.batch import Batch


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
            **({} if model.language_model is None else {"language_model": _count(model.language_model.parameters())}),
            **{f"objective/{n}": _count(o.parameters()) for n, o in module.objectives.items()},
        },
    }


def _forward(model, batch: Batch) -> None:
    model.fuse(model.encode_text(batch["input_ids"], batch["attention_mask"]), model.encode_image(batch))


@torch.no_grad()
def flops_per_sample(model, batch: Batch) -> float:
    with FlopCounterMode(display=False) as counter:
        _forward(model, batch)
    return counter.get_total_flops() / batch["input_ids"].shape[0]


@torch.no_grad()
def inference_samples_per_s(model, batch: Batch, repeats: int = 3) -> float:
    _forward(model, batch)  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        _forward(model, batch)
    return repeats * batch["input_ids"].shape[0] / (time.perf_counter() - t0)


_PEAK_SCOPE = {"scope": "process"}  # "run" once reset_peak_memory has reset the kernel's counter


def reset_peak_memory() -> None:
    """Start a run's peak-memory window (CUDA's allocator stats and, on Linux, the process' VmHWM)."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:  # "5" resets the peak RSS (Documentation/filesystems/proc.rst); no Python API does this
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _PEAK_SCOPE["scope"] = "run"
    except OSError:
        _PEAK_SCOPE["scope"] = "process"


def _vm_hwm_kib() -> int | None:
    try:
        with open("/proc/self/status") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("VmHWM:")), None)
    except OSError:
        return None


def peak_memory_mb(device: torch.device) -> float:
    """The peak memory of this run (since `reset_peak_memory`) in MiB; see the module docstring."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    hwm = _vm_hwm_kib() if _PEAK_SCOPE["scope"] == "run" else None
    if hwm is not None:
        return hwm / 2**10
    try:
        import resource
    except ImportError:  # Windows
        return float("nan")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


def utilisation(step_cost: dict[str, Any]) -> dict:
    """`train_flops_per_sample` (a whole training step), the training steps' FLOP/s and their model FLOPs
    utilisation `mfu` = FLOP/s / the device's peak, from what mmbench.callbacks.StepFlops recorded; empty for a
    run that trained no step here (mmbench-eval)."""
    flops = step_cost.get("flops_per_sample")
    if flops is None:
        return {}
    out: dict = {"train_flops_per_sample": flops}
    if step_cost.get("seconds"):
        achieved = flops * step_cost["samples"] / step_cost["seconds"]
        peak, source = step_cost.get("peak_flops"), step_cost.get("peak_flops_source")
        out.update(
            train_flops_per_s=achieved, peak_flops=peak, peak_flops_source=source, mfu=achieved / peak if peak else None
        )
    return out


def complexity(
    module, batch: Batch, train_seconds: float | None, train_samples: int, measure_inference: bool = True
) -> dict:
    """The `complexity` block of metrics.json; `batch` is a batch of the test loader."""
    out = parameter_counts(module)
    batch = to_device(batch, module.device)
    model = module.model
    was_training = model.training
    model.eval()
    try:
        out["flops_per_sample"] = flops_per_sample(model, batch)
        out["inference_samples_per_s"] = inference_samples_per_s(model, batch) if measure_inference else None
    finally:
        model.train(was_training)
    out["train_samples_per_s"] = (train_samples / train_seconds) if train_seconds else None
    out.update(utilisation(module.step_cost))
    out["peak_memory_mb"] = peak_memory_mb(module.device)
    out["peak_memory_scope"] = "run" if module.device.type == "cuda" else _PEAK_SCOPE["scope"]
    return out
