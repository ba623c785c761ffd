"""metrics.json's provenance: the machine a run recorded (`mmbench.record.machine`), which the report
uses to say when a table mixes machines."""

from __future__ import annotations

import os

import torch

from mmbench.record import machine, machine_label


def test_machine_names_this_cpu():
    m = machine()
    assert m["isa"] == torch.backends.cpu.get_cpu_capability() and m["cpus"] == os.cpu_count()
    assert m["gpu"] is None or torch.cuda.is_available()
    if os.path.exists("/proc/cpuinfo"):  # Linux: the vendor's name and the generation's ids
        cpuinfo = open("/proc/cpuinfo").read()
        assert m["cpu"] and m["cpu"] in cpuinfo
        assert m["cpu_id"] is None or m["cpu_id"].startswith("family ")
    assert machine() == m  # a description, not a measurement: the same every time


def test_machine_label_known_answers():
    full = {
        "cpu": "AMD EPYC",
        "cpu_id": "family 25 model 17 stepping 1",
        "isa": "AVX512",
        "cpus": 2,
        "caches": "L1d 32K L1i 32K L2 1024K L3 32768K",
        "gpu": None,
    }
    assert (
        machine_label(full)
        == "AMD EPYC (family 25 model 17 stepping 1), avx512, 2 CPUs, L1d 32K L1i 32K L2 1024K L3 32768K"
    )
    assert machine_label({"cpu": None, "isa": "DEFAULT", "cpus": 4, "gpu": "T4"}) == "unknown CPU, default, 4 CPUs, T4"
    assert machine_label(None) == machine_label({}) == ""  # a run written before machines were recorded
