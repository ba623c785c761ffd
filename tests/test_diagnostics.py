"""Matching diagnostics: known answers from a scorer that knows which statements are true."""

from __future__ import annotations

import pytest
import torch

from mmbench.builder import build_datamodule, build_module
from mmbench.metrics.diagnostics import matching_diagnostics


@pytest.fixture
def setup(tiny_cfg):
    cfg = tiny_cfg("objective=[itc,itm]")
    dm = build_datamodule(cfg)
    return build_module(cfg, dm.info), dm


def _oracle(dm, sign: float):
    """A pair scorer that returns +sign for true statements and -sign for negatives, in call order."""
    split = dm.datasets["test"].split
    truth = [v for pos, neg in zip(split["match_positives"], split["match_negatives"]) for v in [1.0] * len(pos) + [-1.0] * len(neg)]
    queue = iter(truth)

    def score(model, text, image):
        return sign * torch.tensor([next(queue) for _ in range(text.tokens.shape[0])])

    return score


@pytest.mark.parametrize("sign, expected", [(1.0, 1.0), (-1.0, 0.0)])
def test_known_answers(setup, monkeypatch, sign, expected):
    module, dm = setup
    monkeypatch.setattr(module.objectives["itm"], "pair_score", _oracle(dm, sign))
    out = matching_diagnostics(module, dm, "test", batch_size=7)  # batch size that splits images
    assert set(out) == {f"test/diagnostics/{k}_acc" for k in ("match", "attribute_swap", "relation_swap", "count_change")}
    assert all(v == expected for v in out.values()), out


def test_itm_outranks_itc_and_itc_alone_is_used(setup, monkeypatch):
    module, dm = setup
    called = []
    monkeypatch.setattr(module.objectives["itm"], "pair_score", lambda m, t, i: called.append("itm") or torch.zeros(t.tokens.shape[0]))
    monkeypatch.setattr(module.objectives["itc"], "pair_score", lambda m, t, i: called.append("itc") or torch.zeros(t.tokens.shape[0]))
    matching_diagnostics(module, dm)
    assert set(called) == {"itm"}
    del module.objectives["itm"]
    called.clear()
    out = matching_diagnostics(module, dm)
    assert set(called) == {"itc"} and out["test/diagnostics/match_acc"] == 0.0  # ties are not wins
