"""The memory check (mmbench/memory.py) and the batch-vs-split check once the data is read: known answers for
the estimate's arithmetic and for what autograd saves, a probe that leaves no trace, refusals with the
message the issue asks for (estimate, what is available, the largest batch that fits), in-process and
through the real CLI (exit code 2), and the default configuration passing."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import ROOT
from torch import nn

from mmbench import memory
from mmbench.builder import build_datamodule, build_module
from mmbench.data.errors import DataError
from mmbench.memory import (
    GIB,
    MemoryCheckError,
    StepEstimate,
    check_memory,
    estimate_step,
    saved_tensors,
    scaling_terms,
)


class Similarities(nn.Module):
    """A step whose saved tensors are known: linear saves its input x (B, 8); z @ z.T saves z (B, 16) (z.T is a
    view of it); s * s saves s (B, B), once (both operands are s)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 16)  # 8 * 16 + 16 = 144 parameters

    def shared_step(self, batch, split):
        z = self.lin(batch["x"])  # (B, 16)
        s = z @ z.T  # (B, B)
        return (s * s).sum()


def test_saved_tensors_are_the_inputs_activations_and_the_b_by_b_matrix():
    stub = Similarities()
    saved = saved_tensors(stub, {"x": torch.randn(2, 8)})
    # float32: x 2*8*4 = 64 bytes, z 2*16*4 = 128 (recorded with the transposed view's shape), s 2*2*4 = 16
    assert saved == [(64, (2, 8)), (128, (16, 2)), (16, (2, 2))]


def test_estimate_scales_each_tensor_by_how_it_grew_and_adds_gradients_and_adam_state():
    stub = Similarities()
    estimate = estimate_step(
        stub, [{"x": torch.randn(2, 8)}, {"x": torch.randn(4, 8)}], optimizer_copies=2, on_gpu=False
    )
    assert estimate.terms == ((32.0, 1), (64.0, 1), (4.0, 2))  # bytes per example, per example, per example^2
    assert estimate.fixed == 144 * 4 * 3  # gradients + AdamW's two moments of 144 float32 weights
    # B = 100: x 3,200 + z 6,400 + s 40,000 bytes saved, the largest (s) twice more in flight
    assert estimate.activations(100) == 49_600
    assert estimate.peak(100) == 1728 + 49_600 + 2 * 40_000
    on_gpu = estimate_step(stub, [{"x": torch.randn(2, 8)}, {"x": torch.randn(4, 8)}], optimizer_copies=1, on_gpu=True)
    assert on_gpu.fixed == 144 * 4 * 2 + 144 * 4  # gradients + SGD momentum, and the weights themselves


def test_scaling_terms_known_answers():
    small = [(100, (3,)), (200, (2, 5)), (16, (2, 2)), (12, (3, 10)), (0, (0, 4))]
    large = [(100, (3,)), (400, (4, 5)), (64, (4, 4)), (40, (10, 10)), (32, (2, 4))]
    assert scaling_terms(small, large) == [
        (100, 0),  # constant
        (100, 1),  # one dim doubled, bytes doubled: 100 bytes per example
        (4, 2),  # two dims doubled, bytes x4: B x B
        (10, 1),  # a random count (MLM's masked tokens): linear at the larger rate, max(12/2, 40/4)
        (8, 1),  # empty at batch 2: linear at batch 4's rate
    ]
    # a tensor only the larger pass saved: linear at its rate; one only the smaller saved shifts nothing
    assert scaling_terms([(8, (2,))], [(16, (4,)), (40, (4, 5))]) == [(4, 1), (10, 1)]
    branch = [(64, (2, 8)), (12_000, (3, 1000)), (16, (2, 2))]  # e.g. MLM's masked tokens at batch 2 only
    assert scaling_terms(branch, [(128, (4, 8)), (64, (4, 4))]) == [(32, 1), (4, 2)]


def test_peak_and_largest_batch_known_answers():
    estimate = StepEstimate(fixed=1000, terms=((10.0, 1), (1.0, 2)))
    assert estimate.peak(10) == 1000 + 100 + 100 + 2 * 100  # the two terms tie at B = 10
    assert estimate.peak(20) == 1000 + 200 + 400 + 2 * 400
    assert estimate.peak(21) == 1000 + 210 + 441 + 2 * 441  # 2533
    assert estimate.largest_batch(2400, upper=1000) == 20
    assert estimate.largest_batch(2400, upper=15) == 15
    assert estimate.largest_batch(999, upper=1000) == 0  # not even one example


def test_refusal_names_the_estimate_what_is_available_and_what_fits():
    estimate = StepEstimate(fixed=0, terms=((GIB / 100, 1),))  # 10 MiB per example, 3x in the peak
    assert memory.refusal(estimate, 100, 4 * GIB, "test") is None  # 3 GiB of 4
    message = memory.refusal(estimate, 1000, 4 * GIB, "MemAvailable in /proc/meminfo")
    # 30 GiB needed; 80% of 4 GiB = 3.2 GiB fits 3.2 / 0.03 = 106 examples, 9.4 -> 10 steps of accumulation
    for words in (
        "data.batch_size=1000 needs about 30.0 GiB",
        "4.0 GiB is available (MemAvailable in /proc/meminfo)",
        "data.batch_size=106 trainer.accumulate_grad_batches=10",
        "trainer.memory_check=false",
    ):
        assert words in message, message
    assert "not even data.batch_size=1" in memory.refusal(StepEstimate(fixed=8 * GIB, terms=()), 4, 4 * GIB, "x")


def test_available_memory_is_the_lower_of_memavailable_and_the_cgroup_limit_less_its_working_set(monkeypatch):
    files = {
        "/proc/meminfo": "MemTotal:       33554432 kB\nMemAvailable:   16777216 kB\n",  # 16 GiB
        "/proc/self/cgroup": "0::/job\n",
        "/sys/fs/cgroup/job/memory.max": f"{8 * GIB}\n",
        "/sys/fs/cgroup/job/memory.current": f"{5 * GIB}\n",
        "/sys/fs/cgroup/job/memory.stat": f"anon 1\ninactive_file {GIB}\n",  # reclaimable page cache
    }
    monkeypatch.setattr(memory, "_read", files.get)
    assert memory.cpu_available() == (4 * GIB, "the cgroup limit of 8.0 GiB")  # 8 - (5 - 1)
    files["/sys/fs/cgroup/job/memory.max"] = "max\n"  # no limit: MemAvailable
    assert memory.cpu_available() == (16 * GIB, "MemAvailable in /proc/meminfo")


def _state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_probe_leaves_no_trace(tiny_cfg):
    """ITC's queue and momentum encoders change in a training forward pass; the probe restores them, the RNG
    streams and the training flag, and leaves no gradient behind."""
    cfg = tiny_cfg("model=albef", "objective=[itc,itm]", "objective.itc.queue_size=16", "data.batch_size=8")
    dm = build_datamodule(cfg)
    module = build_module(cfg, dm.info).eval()
    before, rng = _state(module), (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    estimate = check_memory(module, dm, trainer_cfg=cfg.trainer, optimizer_target="torch.optim.AdamW")
    assert estimate is not None and estimate.quadratic  # ITC / ITM: B x B similarities
    after = _state(module)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(rng[0], torch.get_rng_state()) and rng[1] == random.getstate()
    assert np.array_equal(rng[2], np.random.get_state()[1])
    assert not module.training and all(p.grad is None for p in module.parameters())


def test_default_model_passes_and_a_batch_beyond_memory_is_refused(tiny_cfg, monkeypatch):
    defaults = ("objective=[itc,mlm,vqa]", "model.sizes.tiny.dim=128", "model.sizes.tiny.fusion_depth=4")
    cfg = tiny_cfg(*defaults, "data.batch_size=64")  # the default run: ViLT tiny, its objectives, batch 64
    dm = build_datamodule(cfg)
    module = build_module(cfg, dm.info)
    t0 = time.perf_counter()
    estimate = check_memory(module, dm, trainer_cfg=cfg.trainer, optimizer_target="torch.optim.AdamW")
    assert time.perf_counter() - t0 < 5  # ~0.3 s idle on 2 cores: two forward passes of 2 and 4 examples
    assert estimate is not None and estimate.peak(64) < GIB  # the default run needs ~0.1 GiB (docs)
    # the same step against 1 GiB: 64 passes, 100,000 is refused with the batch that fits
    monkeypatch.setattr(memory, "cpu_available", lambda: (GIB, "a test's 1 GiB"))
    dm.batch_size = 100_000
    with pytest.raises(MemoryCheckError) as err:
        check_memory(module, dm, trainer_cfg=cfg.trainer, optimizer_target="torch.optim.AdamW")
    fit = estimate.largest_batch(0.8 * GIB, upper=100_000)
    assert 64 < fit < 100_000 and f"data.batch_size={fit} " in str(err.value)
    assert "1.0 GiB is available (a test's 1 GiB)" in str(err.value)


def test_close_to_the_limit_is_a_warning(tiny_cfg, monkeypatch, caplog):
    cfg = tiny_cfg("data.batch_size=32")
    dm = build_datamodule(cfg)
    module = build_module(cfg, dm.info)
    estimate = check_memory(module, dm, trainer_cfg=cfg.trainer, optimizer_target="torch.optim.AdamW")
    need = estimate.peak(32)
    monkeypatch.setattr(memory, "cpu_available", lambda: (int(need / 0.9), "test"))  # 90% of it
    with caplog.at_level("WARNING", logger="mmbench.memory"):
        check_memory(module, dm, trainer_cfg=cfg.trainer, optimizer_target="torch.optim.AdamW")
    assert any("close to the limit" in r.getMessage() for r in caplog.records)


def test_a_batch_larger_than_the_read_split_is_refused_before_any_model(tiny_cfg, monkeypatch, tmp_path):
    """A source whose size is known only once read (hf, release) is refused right after the data is prepared;
    stood in for here by Shapes with config validation switched off."""
    from mmbench import pipeline

    cfg = tiny_cfg("data.source.num_train=10", "data.batch_size=64")  # 10 scenes x 4 captions = 40 examples
    monkeypatch.setattr(pipeline, "validate", lambda cfg: None)
    monkeypatch.setattr("mmbench.builder.build_module", lambda *a, **k: pytest.fail("a model was built"))
    with pytest.raises(DataError) as err:
        pipeline.run(cfg)
    message = str(err.value)
    assert "data.batch_size=64" in message and "40 (image, caption) examples" in message
    assert "data.batch_size <= 40" in message and str(cfg.paths.cache_dir) in message


def test_memory_check_false_skips_it_and_is_no_trainer_argument(tiny_cfg, monkeypatch, tmp_path):
    from mmbench import pipeline

    monkeypatch.setattr(memory, "check_memory", lambda *a, **k: pytest.fail("checked"))
    record = pipeline.run(tiny_cfg("trainer.memory_check=false", "trainer.limit_train_batches=1", "test=false"))
    assert record["status"] == "completed"


def test_cli_refuses_a_batch_beyond_memory_with_exit_2(tmp_path):
    """The issue's report: data.batch_size=100000 on Shapes. With 100,000 training examples (so the config's
    batch-vs-split check passes) it is refused once the model is built, in seconds, not by the OOM killer."""
    available = memory.cpu_available()
    if available is None or available[0] > 2048 * GIB:
        pytest.skip("a host with more than 2 TiB available may fit it")
    env = {**os.environ, "MMBENCH_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "offline"}
    args = ["data.source.num_train=1000", "data.source.captions_per_image=100", "data.source.num_val=16"]
    args += ["data.source.num_test=16", "data.batch_size=100000", "logger=csv", f"hydra.run.dir={tmp_path / 'run'}"]
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "mmbench.train", *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    message = done.stderr.strip().splitlines()[-1]
    assert message.startswith("mmbench: a training step at data.batch_size=100000 needs about"), message
    assert "GiB is available" in message and "trainer.memory_check=false" in message
    assert time.perf_counter() - t0 < 120
