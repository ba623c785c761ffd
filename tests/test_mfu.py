"""Model FLOPs utilisation (`complexity.mfu`): the FLOPs of a whole training step counted by StepFlops equal a
hand count, MFU is achieved FLOP/s over the device's peak, the CPU's peak is the best GEMM rate measured on the machine, a GPU's
comes from its spec, and counting a step changes nothing the run computes."""

from __future__ import annotations

import json
import time

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from mmbench.callbacks import StepFlops, ValidationTime
from mmbench.metrics import peak
from mmbench.metrics.complexity import utilisation
from mmbench.pipeline import run
from tests.conftest import TINY, compose_cfg

B, IN, HIDDEN, OUT = 16, 64, 128, 32


class _MLP(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(IN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, OUT))
        self.step_cost: dict[str, float] = {}

    def training_step(self, batch, batch_idx):
        return self.net(batch["input_ids"]).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        data = [{"input_ids": x} for x in torch.randn(5 * B, IN)]
        return torch.utils.data.DataLoader(data, batch_size=B)


def test_a_training_step_counts_forward_and_backward_flops_by_hand(monkeypatch, tmp_path):
    monkeypatch.setenv("MMBENCH_PEAK_FLOPS", "1e10")
    module = _MLP()
    trainer = pl.Trainer(
        max_steps=4,
        callbacks=[StepFlops(str(tmp_path))],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
    )
    trainer.fit(module)
    # per sample, 2 FLOPs per multiply-add: forward 2(IN*H + H*OUT); backward: the second layer's weight and
    # input gradients 2 * 2 H*OUT, the first layer's weight gradient 2 IN*H (its input needs no gradient)
    forward = 2 * (IN * HIDDEN + HIDDEN * OUT)
    assert module.step_cost["flops_per_sample"] == forward + 4 * HIDDEN * OUT + 2 * IN * HIDDEN == 57344
    assert module.step_cost["steps"] == 3 and module.step_cost["samples"] == 3 * B  # the counted step not timed
    assert module.step_cost["seconds"] > 0
    assert (module.step_cost["peak_flops"], module.step_cost["peak_flops_source"]) == (1e10, "MMBENCH_PEAK_FLOPS")


class _SlowValidation(_MLP):
    """Each validation batch sleeps 0.1 s: the validation time of a fit is known in advance."""

    def validation_step(self, batch, batch_idx):
        time.sleep(0.1)

    def val_dataloader(self):
        return torch.utils.data.DataLoader([{"input_ids": x} for x in torch.randn(3 * B, IN)], batch_size=B)


def test_validation_time_sums_every_validation_of_a_fit():
    """2 epochs' validations of 3 batches plus a 2-batch sanity check: 8 sleeps of 0.1 s, nothing of training."""
    timer = ValidationTime()
    trainer = pl.Trainer(
        max_epochs=2,
        num_sanity_val_steps=2,
        callbacks=[timer],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
    )
    trainer.fit(_SlowValidation())
    assert 0.8 <= timer.seconds < 1.6  # >= the sleeps; the 10 training steps of the tiny MLP are not counted


def test_mfu_is_achieved_flops_over_the_peak():
    cost = {"flops_per_sample": 1e9, "seconds": 2.0, "samples": 10, "peak_flops": 1e10, "peak_flops_source": "spec"}
    out = utilisation(cost)
    assert out["train_flops_per_s"] == 5e9 and out["mfu"] == 0.5 and out["peak_flops_source"] == "spec"
    assert utilisation({**cost, "peak_flops": None})["mfu"] is None  # a device with no known peak
    assert utilisation({}) == {}  # nothing trained here (mmbench-eval)


def test_the_cpu_peak_is_the_best_rate_measured_on_the_machine(monkeypatch, tmp_path):
    """A run measured beside other work (a lower rate) keeps the best one seen: its MFU is not overstated."""
    monkeypatch.delenv("MMBENCH_PEAK_FLOPS", raising=False)
    rates = iter([7e10, 4e10, 9e10])  # idle, loaded, idle again
    monkeypatch.setattr(peak, "measure_cpu_gemm", lambda: next(rates))
    first = peak.peak_flops(torch.device("cpu"), tmp_path)
    assert first[0] == 7e10 and "measured" in first[1]
    loaded = peak.peak_flops(torch.device("cpu"), tmp_path)
    assert loaded[0] == 7e10 and "40.0 GFLOP/s" in loaded[1]  # the cached best, the run's own rate said
    assert peak.peak_flops(torch.device("cpu"), tmp_path)[0] == 9e10  # a better measurement raises it
    other_threads = json.loads((tmp_path / "peak_flops.json").read_text())
    assert list(other_threads) == [f"{peak.cpu_model()}|threads={torch.get_num_threads()}|torch={torch.__version__}"]


def test_the_real_cpu_gemm_rate_is_plausible():
    rate = peak.measure_cpu_gemm(size=256, repeats=3)
    assert 1e8 < rate < 1e13  # between 0.1 GFLOP/s and 10 TFLOP/s on any CPU


@pytest.mark.parametrize(
    "name, expected",
    [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA A100-SXM4-80GB", 312e12), ("X", None)],
)
def test_a_gpu_peak_comes_from_its_spec(name, expected, monkeypatch):
    monkeypatch.delenv("MMBENCH_PEAK_FLOPS", raising=False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    value, source = peak.peak_flops(torch.device("cuda"), "unused")
    assert value == expected and (name in source)


def test_a_run_records_its_step_flops_and_mfu_and_counting_changes_nothing(cache_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MMBENCH_PEAK_FLOPS", "1e11")
    args = ["model=clip", "objective=[itc]", *[o for o in TINY if not o.startswith("objective.")]]
    counted = run(compose_cfg(args, tmp_path / "counted"))
    plain = run(compose_cfg([*args, "~callbacks.step_flops"], tmp_path / "plain"))
    assert counted["metrics"] == plain["metrics"]  # ==: the counted step computes what it would have
    comp = counted["complexity"]
    # ITC trains the three calls once: forward + backward ~ 3x the forward (less: the first layers' inputs need
    # no gradient, and the loss head's own matmuls are few)
    assert 2.0 < comp["train_flops_per_sample"] / comp["flops_per_sample"] <= 3.0
    assert comp["mfu"] == pytest.approx(comp["train_flops_per_s"] / 1e11) and 0 < comp["mfu"] < 1
    assert "mfu" not in plain["complexity"]
