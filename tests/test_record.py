"""metrics.json: the record a training run and an evaluation write (`RunRecord`: keys and their order as
they have always been written), reading it back (`read_record`), and its provenance: the machine a run
recorded (`mmbench.record.machine`), which the report uses to say when a table mixes machines."""

from __future__ import annotations

import json
import math
import os

import torch

from mmbench.record import RunRecord, machine, machine_label, read_record


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


TRAIN_KEYS = [  # pipeline.run's record as written before RunRecord (issue 37 keeps metrics.json byte-compatible)
    *("status", "config_hash", "choices", "overrides", "seed", "metrics", "complexity", "versions", "git"),
    *("machine", "wall_s", "config"),
]
EVAL_KEYS = [  # evaluate.run_eval's
    *("status", "mode", "ckpt_path", "run_dir", "choices", "overrides", "metrics", "complexity", "versions"),
    *("git", "machine", "eval_s", "wall_s"),
]


def _training() -> RunRecord:
    return RunRecord.training(
        config_hash="abc", choices={"model": "vilt"}, overrides=["seed=1"], seed=None, config={"seed": None}
    )


def test_a_training_record_has_its_keys_in_their_order_and_its_ending_after_them():
    record = _training()
    assert list(record.as_dict()) == TRAIN_KEYS and record.as_dict()["status"] == "running"
    assert record.as_dict()["seed"] is None  # seed=null is recorded as given, not left out
    record.status, record.error = "failed", "ConfigError: no"
    assert list(record.as_dict()) == [*TRAIN_KEYS, "error"] and record.as_dict()["status"] == "failed"
    record.traceback = "Traceback ..."
    assert list(record.as_dict()) == [*TRAIN_KEYS, "error", "traceback"]
    assert {"torch", "mmbench"} <= set(record.as_dict()["versions"])  # this process's provenance
    done = _training()
    done.status, done.timing = "completed", {"setup_s": 1.0, "train_s": 9.0}
    assert list(done.as_dict()) == [*TRAIN_KEYS, "timing"]  # after the keys metrics.json always had


def test_an_evaluation_record_has_its_keys_and_the_server_file_only_when_written():
    kwargs = dict(ckpt_path="/r/checkpoints/best.ckpt", run_dir="/r", choices=None, overrides=[], metrics={})
    record = RunRecord.evaluation(**kwargs, complexity={}, eval_s=1.5, wall_s=2.0)
    assert list(record.as_dict()) == EVAL_KEYS
    assert record.as_dict()["mode"] == "eval" and record.as_dict()["choices"] is None  # null, not left out
    served = RunRecord.evaluation(**kwargs, complexity={}, eval_s=1.5, wall_s=2.0, vqa_server_file="/e/a.json")
    assert list(served.as_dict()) == [*EVAL_KEYS, "vqa_server_file"]


def test_a_record_is_written_as_strict_json_and_read_back(tmp_path):
    record = _training()
    record.metrics = {"val/loss": float("nan"), "test/acc": 0.25}
    record.write(tmp_path)
    text = (tmp_path / "metrics.json").read_text()
    assert "NaN" not in text and text.startswith('{\n  "status": "running",\n  "config_hash": "abc",')
    back = read_record(tmp_path)
    assert back is not None and list(back) == TRAIN_KEYS
    assert back["metrics"] == {"val/loss": None, "test/acc": 0.25}  # non-finite -> null
    assert math.isnan(record.as_dict()["metrics"]["val/loss"])  # the record itself keeps the value
    assert read_record(tmp_path / "nothing") is None
    (tmp_path / "metrics.json").write_text('{"status": "comp')  # a torn write of an older writer
    assert read_record(tmp_path) is None
    (tmp_path / "metrics.json").write_text(json.dumps({"status": "failed", "error": "killed"}))  # record_death's
    assert read_record(tmp_path) == {"status": "failed", "error": "killed"}
