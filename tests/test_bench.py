"""scripts/bench_throughput.py --hf and scripts/bench_levers.py at tiny sizes: each comparison runs and both sides compute one function.

Speed is not asserted (the rates of one tiny step say nothing); the numbers are in docs/performance.md.
"""

from __future__ import annotations

import importlib.util
import math
import sys

import pytest

from tests.conftest import ROOT

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def bench():
    path = ROOT / "scripts" / "bench_throughput.py"
    spec = importlib.util.spec_from_file_location("bench_throughput", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_reference_comparison_runs_at_tiny_size(bench):
    dims = bench.Dims(
        batch=2, text_len=8, image_size=32, hidden=16, layers=1, heads=2, vocab=100, regions=4, region_dim=8
    )
    rows = bench.compare_reference(list(bench.REFERENCES), dims, steps=1, repeats=1, warmup=1)
    assert [r.name for r in rows] == list(bench.REFERENCES)
    for r in rows:
        assert all(math.isfinite(v) and v > 0 for v in [*r.hf_rates, *r.mm_rates]), r
        assert r.max_diff <= 1e-5, (r.name, r.max_diff)
        assert r.hf_params > 0 and r.mm_params > 0, r  # the loss reached both models' parameters
    bench.print_reference_table(rows, dims, steps=1, repeats=1, threads=1, atol=1e-4)


def test_unknown_family_is_refused(bench):
    with pytest.raises(ValueError, match="comparison covers"):
        bench.compare_reference(["concat"], bench.Dims(), steps=1, repeats=1)


def test_levers_compare_one_function_at_tiny_size():
    # scripts/bench_levers.py: each lever's two sides start from the same weights and compute the same
    # outputs (the fused projection holds q, k, v stacked; channels-last only changes the layout)
    path = ROOT / "scripts" / "bench_levers.py"
    spec = importlib.util.spec_from_file_location("bench_levers", path)
    levers = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = levers
    try:
        spec.loader.exec_module(levers)
        rows = [levers.fused_qkv(2, 5, 16, 2, steps=1, repeats=1), levers.channels_last(2, 16, 8, steps=1, repeats=1)]
        # seeds stacked and vmapped: each seed's loss is its own model's on its own inputs
        rows += [levers.seeds_vmap(k, 2, 2, steps=1, repeats=1, width=8, dim=16) for k in ("cnn", "transformer")]
    finally:
        sys.modules.pop(spec.name, None)
    assert rows[0].max_diff <= 1e-6 and rows[1].max_diff <= 1e-4, rows
    assert rows[2].max_diff <= 1e-6 and rows[3].max_diff <= 1e-6, rows
    assert all(math.isfinite(r.old_ms) and math.isfinite(r.new_ms) and r.old_ms > 0 < r.new_ms for r in rows)
