"""Will one training step fit in memory? Its peak, estimated from the shapes of a forward pass at a small
batch, checked once the data and the model are built and before the Trainer starts (pipeline.py).

What a step holds at its peak, the start of the backward pass:

- the tensors autograd saved for the backward pass (activations and the batch itself), measured: one
  forward pass at batch 2 and one at batch 4 of real training examples (padded as a batch of up to 256
  pads them), every saved tensor recorded through `torch.autograd.graph.saved_tensors_hooks` (parameters
  and buffers, resident anyway, left out). How a tensor grows from batch 2 to 4 says how it scales: not at
  all, with the batch, or with its square (ITC's B x B similarities: two of its dims doubled), so a batch
  of 100,000 is not read as 25,000 batches of 4;
- the gradients in flight: twice the largest saved tensor;
- the parameters' gradients and the optimizer's state (AdamW: two copies), made at the first step;
- on a GPU also the parameters and buffers, which the Trainer moves there.

The estimate is compared with what is available: on CPU /proc/meminfo's MemAvailable, or the cgroup's limit
less its working set when lower; on CUDA the device's free memory. Above it the run is refused
(`MemoryCheckError`, a ConfigError: exit code 2, one message with the largest batch that fits); above 80%
it is logged as a warning. `trainer.memory_check=false` skips the check. The probe leaves no trace: the
RNG states, the buffers and the frozen weights (ITC's queue and momentum encoders) are restored, so a run
trains the same with or without it.
"""

from __future__ import annotations

import difflib
import logging
import math
import os
import random
import warnings
from collections.abc import Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import torch

from mmbench.config import ConfigError

if TYPE_CHECKING:
    from mmbench.data.batch import Batch

log = logging.getLogger(__name__)

GIB = 1024**3
PROBE_SIZES = (2, 4)  # the batch sizes of the two forward passes
PAD_SAMPLE = 256  # examples collated together, so the probe's texts are padded as a real batch's are
WARN_FRACTION = 0.8  # above this fraction of the available memory: a warning; suggestions keep below it


class MemoryCheckError(ConfigError):
    """A training step that would not fit in the memory available: one message, exit code 2, before training."""


@dataclass(frozen=True)
class StepEstimate:
    """Bytes one training step holds at its peak, as a function of the batch size B.

    fixed: independent of B (gradients, optimizer state; on a GPU the weights too).
    terms: per saved tensor (coefficient, power): it holds coefficient * B**power bytes.
    """

    fixed: int
    terms: tuple[tuple[float, int], ...]

    def activations(self, batch: int) -> float:
        return sum(c * batch**k for c, k in self.terms)

    def peak(self, batch: int) -> float:
        largest = max((c * batch**k for c, k in self.terms), default=0.0)
        return self.fixed + self.activations(batch) + 2 * largest

    def largest_batch(self, budget: float, upper: int) -> int:
        """The largest batch in [1, upper] whose peak is within `budget` bytes; 0 if not even 1 is."""
        if self.peak(1) > budget:
            return 0
        lo, hi = 1, max(1, upper)
        while lo < hi:  # the peak grows with the batch
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if self.peak(mid) <= budget else (lo, mid - 1)
        return lo

    @property
    def quadratic(self) -> bool:
        return any(k >= 2 for _, k in self.terms)


def scaling_terms(small: list[tuple[int, tuple]], large: list[tuple[int, tuple]], sizes=PROBE_SIZES) -> list:
    """(coefficient, power) per saved tensor from its (bytes, shape) at the two probe sizes. The passes' tensors
    are matched in the order they were saved, by shape with the batch-like sizes (2, 4, 16) blanked, so that a
    tensor only one pass saved (a data-dependent branch, e.g. MLM's "nothing masked") shifts nothing. A tensor
    that grew by 2**k with k of its dims doubled scales with B**k; one that grew otherwise (a random count, e.g.
    MLM's masked tokens) is taken as linear at its larger rate, and so is a tensor only the larger pass saved."""
    b1, b2 = sizes
    blank = {b1, b2, b2 * b2}  # the same dims blanked in both passes, so a width that equals one stays comparable
    signature = lambda saved: [tuple(-1 if d in blank else d for d in shape) for _, shape in saved]
    matcher = difflib.SequenceMatcher(None, signature(small), signature(large), autojunk=False)
    pairs = {
        j: i
        for block in matcher.get_matching_blocks()
        for i, j in zip(range(block.a, block.a + block.size), range(block.b, block.b + block.size))
    }
    terms = []
    for j, (n2, s2) in enumerate(large):
        n1, s1 = small[pairs[j]] if j in pairs else (0, ())
        grown = sum(bool(d1) and d2 * b1 == d1 * b2 for d1, d2 in zip(s1, s2))
        if n1 and n2 * b1**grown == n1 * b2**grown:
            terms.append((n1 / b1**grown, grown))
        else:
            terms.append((max(n1 / b1, n2 / b2), 1))
    return terms


@contextmanager
def _no_trace(module: torch.nn.Module):
    """Run `module` in training mode and restore what a forward pass may change: the RNG states, the buffers
    and the frozen parameters (ITC's queue and momentum encoders are updated in its forward pass), the
    training flag; compiled parts run eagerly meanwhile (the hooks see inside eager code only)."""
    state = [
        (t, t.detach().clone()) for t in (*module.buffers(), *(p for p in module.parameters() if not p.requires_grad))
    ]
    compiled = [(m, m._compiled_call_impl) for m in module.modules() if getattr(m, "_compiled_call_impl", None)]
    python_rng, numpy_rng, training = random.getstate(), np.random.get_state(), module.training
    for m, _ in compiled:
        m._compiled_call_impl = None
    try:
        with torch.random.fork_rng(devices=[]):
            module.train()
            yield
    finally:
        with torch.no_grad():
            for tensor, saved in state:
                tensor.copy_(saved)
        for m, impl in compiled:
            m._compiled_call_impl = impl
        module.train(training)
        module.zero_grad(set_to_none=True)
        random.setstate(python_rng)
        np.random.set_state(numpy_rng)


def saved_tensors(module, batch: Batch, autocast_dtype: torch.dtype | None = None) -> list[tuple[int, tuple]]:
    """(bytes, shape) of every storage autograd saves in one training forward pass of `module` on `batch`, in
    order of first use; the module's own parameters and buffers are left out."""
    resident = {t.untyped_storage().data_ptr() for t in (*module.parameters(), *module.buffers())}
    seen: dict[int, tuple[int, tuple]] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        try:
            storage = t.untyped_storage()
            key, nbytes = storage.data_ptr(), storage.nbytes()
        except (RuntimeError, NotImplementedError):  # a tensor without a plain storage
            key, nbytes = id(t), t.numel() * t.element_size()
        if nbytes and key not in resident and key not in seen:
            seen[key] = (nbytes, tuple(t.shape))
        return t

    autocast = torch.autocast("cpu", dtype=autocast_dtype) if autocast_dtype else nullcontext()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a Trainer
        loss = module.shared_step(batch, "train")
    del loss  # frees the graph
    return list(seen.values())


def probe_batches(dataset, collate, batch_size: int, sizes=PROBE_SIZES) -> list[Batch] | None:
    """Batches of `sizes` examples spread over the split, padded alike: rows of one collated sample of up to
    PAD_SAMPLE examples (as many as a real batch, at most), so the texts are as long as a real batch pads them."""
    n = min(len(dataset), max(batch_size, max(sizes)), PAD_SAMPLE)
    if n < max(sizes):
        return None
    batch = collate([dataset[int(i)] for i in np.linspace(0, len(dataset) - 1, n).round().astype(int)])
    # copies, not views: a saved input must own a storage of its batch's size
    rows = lambda b: {
        k: v[:b].clone() if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == n else v for k, v in batch.items()
    }
    return [cast("Batch", rows(b)) for b in sizes]


def estimate_step(module, batches: list[Batch], *, optimizer_copies: int, on_gpu: bool, autocast_dtype=None):
    """The `StepEstimate` of `module` from forward passes on `batches` (of PROBE_SIZES examples)."""
    saved = []
    with _no_trace(module):
        for batch in batches:  # each pass draws the same masks and negatives, whatever the run's RNG state
            torch.default_generator.manual_seed(0)  # the CPU stream only (the probe runs on CPU); restored after
            saved.append(saved_tensors(module, batch, autocast_dtype))
    small, large = saved
    trainable = sum(p.numel() * p.element_size() for p in module.parameters() if p.requires_grad)
    fixed = trainable * (1 + optimizer_copies)
    if on_gpu:
        fixed += sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))
    return StepEstimate(fixed=fixed, terms=tuple(scaling_terms(small, large)))


def optimizer_copies(target: str) -> int:
    """Copies of the trainable weights an optimizer keeps (its state): Adam-style two, SGD / RMSprop one."""
    name = target.rsplit(".", 1)[-1].lower()
    return 1 if name in ("sgd", "rmsprop", "adagrad") else 2


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def _stat(text: str | None, key: str) -> int:
    for line in (text or "").splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    return 0


CGROUP_V2 = ("memory.max", "memory.current", "inactive_file")
CGROUP_V1 = ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")


def _cgroup_dirs() -> list[tuple[str, tuple[str, str, str]]]:
    """The memory cgroup directories of this process (its own, from /proc/self/cgroup, and the mount's root),
    each with its (limit, usage, inactive cache) file names."""
    dirs = []
    for line in (_read("/proc/self/cgroup") or "").splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2
            dirs.append((f"/sys/fs/cgroup{path.rstrip('/')}", CGROUP_V2))
        elif "memory" in controllers.split(","):
            dirs.append((f"/sys/fs/cgroup/memory{path.rstrip('/')}", CGROUP_V1))
    return [*dirs, ("/sys/fs/cgroup", CGROUP_V2), ("/sys/fs/cgroup/memory", CGROUP_V1)]


def cpu_available() -> tuple[int, str] | None:
    """(bytes, where that was read) of the memory a new allocation can take on this host: MemAvailable, or the
    cgroup's limit less its working set (usage less inactive file cache) when lower; None where neither is known."""
    found: list[tuple[int, str]] = []
    meminfo = _read("/proc/meminfo")
    for line in (meminfo or "").splitlines():
        if line.startswith("MemAvailable:"):
            found.append((int(line.split()[1]) * 1024, "MemAvailable in /proc/meminfo"))
    for directory, (limit_file, usage_file, inactive) in _cgroup_dirs():
        limit, usage = _read(f"{directory}/{limit_file}"), _read(f"{directory}/{usage_file}")
        if limit and usage and limit.strip().isdigit() and int(limit) < 1 << 60:
            working = int(usage) - _stat(_read(f"{directory}/memory.stat"), inactive)
            found.append((max(0, int(limit) - working), f"the cgroup limit of {int(limit) / GIB:.1f} GiB"))
    if not found and hasattr(os, "sysconf"):
        try:
            found.append((os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "free physical pages"))
        except (ValueError, OSError):
            pass
    return min(found) if found else None


def cuda_available(device: int) -> tuple[int, str]:
    free, _total = torch.cuda.mem_get_info(device)
    return free, f"free on cuda:{device}"


def refusal(estimate: StepEstimate, batch_size: int, available: int, where: str, processes: int = 1) -> str | None:
    """The message refusing `batch_size` (None when it fits): estimate, what is available, what would fit."""
    need = estimate.peak(batch_size) * processes
    if need <= available:
        return None
    fit = estimate.largest_batch(WARN_FRACTION * available / processes, upper=batch_size)
    grows = (
        "with the batch and its square (B x B terms, e.g. ITC's similarities)"
        if estimate.quadratic
        else "with the batch"
    )
    share = f" x {processes} processes" if processes > 1 else ""
    if fit == 0:
        advice = "not even data.batch_size=1 fits: a smaller model (e.g. model.size=tiny) or more memory"
    else:
        steps = math.ceil(batch_size / fit)
        advice = (
            f"the largest batch that fits with {1 - WARN_FRACTION:.0%} to spare: data.batch_size={fit} (the same "
            f"effective batch: data.batch_size={fit} trainer.accumulate_grad_batches={steps})"
        )
    return (
        f"a training step at data.batch_size={batch_size} needs about {need / GIB:.1f} GiB{share} ({estimate.fixed / GIB:.2f} "
        f"GiB of gradients and optimizer state, activations growing {grows}, measured at batch "
        f"{PROBE_SIZES[0]} and {PROBE_SIZES[1]}), but {available / GIB:.1f} GiB is available ({where}); {advice}. "
        f"trainer.memory_check=false skips this check"
    )


#: precisions whose autocast keeps activations in 16 bits (Lightning's names and aliases)
HALF_PRECISIONS = ("16-mixed", "bf16-mixed", "16", "bf16", "16-true", "bf16-true")


def check_memory(module, datamodule, *, trainer_cfg, optimizer_target: str) -> StepEstimate | None:
    """Refuse (MemoryCheckError) a training step that would not fit in memory, warn when it comes close; the
    estimate, or None where the check could not run (it logs why)."""
    accelerator = str(trainer_cfg.get("accelerator") or "auto")
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if on_gpu and not torch.cuda.is_available():
        return None  # the Trainer refuses it, in its words
    strategy = str(trainer_cfg.get("strategy") or "")
    if on_gpu and ("fork" in strategy or "notebook" in strategy):
        log.info("memory check skipped: asking CUDA for free memory would break a forked (%s) launch", strategy)
        return None
    batch_size = int(datamodule.batch_size)
    batches = probe_batches(datamodule.datasets["train"], datamodule.collate, batch_size)
    if batches is None:
        return None
    half = str(trainer_cfg.get("precision")) in HALF_PRECISIONS
    try:
        estimate = estimate_step(
            module,
            batches,
            optimizer_copies=optimizer_copies(optimizer_target),
            on_gpu=on_gpu,
            autocast_dtype=torch.bfloat16 if half else None,
        )
    except Exception as err:  # the first training step fails the same way, with the run's own error handling
        log.warning("memory check skipped: the probe's forward pass failed (%s: %s)", type(err).__name__, err)
        return None
    devices = trainer_cfg.get("devices")
    processes = int(devices) if not on_gpu and isinstance(devices, int) and devices > 1 else 1
    available: tuple[int, str] | None
    if on_gpu:  # this process's device: its local rank, or the rank-th of a list of device ids
        rank = int(os.environ.get("LOCAL_RANK", 0))
        ids = list(devices) if isinstance(devices, Sequence) and not isinstance(devices, str) else None
        available = cuda_available(int(ids[rank]) if ids else rank)
    else:
        available = cpu_available()
    if available is None:
        log.info("memory check skipped: the available memory of this host is not known")
        return estimate
    free, where = available
    message = refusal(estimate, batch_size, free, where, processes)
    if message:
        raise MemoryCheckError(message)
    need = estimate.peak(batch_size) * processes
    if need > WARN_FRACTION * free:
        log.warning(
            "a training step at data.batch_size=%d needs about %.1f GiB of the %.1f GiB available (%s): close to the "
            "limit; a smaller data.batch_size leaves room",
            batch_size,
            need / GIB,
            free / GIB,
            where,
        )
    else:
        log.info(
            "memory check: a training step at data.batch_size=%d needs about %.2f GiB of %.1f GiB available (%s)",
            batch_size,
            need / GIB,
            free / GIB,
            where,
        )
    return estimate
