"""The device's peak FLOP/s, the denominator of model FLOPs utilisation (MFU, `complexity.mfu`).

- A CUDA GPU: its dense bf16 tensor-core rate from the vendor's spec (`GPU_PEAK_BF16`, matched by device
  name); a GPU not in the table has no peak (MFU null) unless `MMBENCH_PEAK_FLOPS` gives one.
- The CPU: measured, the fastest of a few 1024 x 1024 fp32 matmuls at the run's torch thread count (~0.1 s),
  at every run's start, and the best rate ever measured for this CPU model, thread count and torch version
  is kept in `<cache>/peak_flops.json` and used. A measurement beside other work only underestimates the
  peak (one measured while four processes shared this 2-core machine read 84 GFLOP/s; idle, 154), and an
  underestimated peak overstates MFU, so one measurement cached for good is not enough. The CPU's vendor
  peak assumes every vector unit busy every cycle, which no fp32 GEMM reaches; the measured GEMM is the
  rate training can hope for (docs/performance.md).
- `MMBENCH_PEAK_FLOPS=<FLOP/s>` overrides both (a machine whose peak you know better).
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

# dense bf16 tensor-core FLOP/s (no sparsity), from NVIDIA's data sheets; the first name found in the device
# name wins, so the specific names come first
GPU_PEAK_BF16: dict[str, float] = {
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H100": 989e12,  # SXM ("NVIDIA H100 80GB HBM3")
    "H200": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "RTX 4090": 165e12,
}
GEMM_SIZE = 1024


def peak_flops(device: torch.device, cache_dir: str | os.PathLike) -> tuple[float | None, str]:
    """(peak FLOP/s or None, where it comes from) of `device`: see the module docstring."""
    override = os.environ.get("MMBENCH_PEAK_FLOPS")
    if override:
        return float(override), "MMBENCH_PEAK_FLOPS"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        found = next((peak for key, peak in GPU_PEAK_BF16.items() if key in name), None)
        return found, f"spec: {name} dense bf16" if found else f"unknown GPU {name} (set MMBENCH_PEAK_FLOPS)"
    if device.type != "cpu":
        return None, f"no peak known for a {device.type} device (set MMBENCH_PEAK_FLOPS)"
    threads = torch.get_num_threads()
    key = f"{cpu_model()}|threads={threads}|torch={torch.__version__}"
    path = Path(cache_dir) / "peak_flops.json"
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    now = measure_cpu_gemm()
    if now > cached.get(key, 0.0):
        cached[key] = now
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(cached, indent=1, sort_keys=True))
        tmp.replace(path)  # atomic: two jobs measuring at once both leave a whole file
    best = float(cached[key])
    source = f"measured: best {GEMM_SIZE}^3 fp32 GEMM rate seen, {threads} thread(s), {path}"
    return best, f"{source}; this run's start: {now / 1e9:.1f} GFLOP/s"


def measure_cpu_gemm(size: int = GEMM_SIZE, repeats: int = 8) -> float:
    """FLOP/s of the fastest of `repeats` (size x size) fp32 matmuls at the current thread count."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator)
    b = torch.randn(size, size, generator=generator)
    a @ b  # warm-up (oneDNN picks its kernel)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; else the platform's processor string)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        return platform.processor() or platform.machine()
