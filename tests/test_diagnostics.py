"""Matching diagnostics: known answers from scorers that know which statements are true, Winoground
scores on rendered counterfactuals, and the scene recovery those rely on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmbench.builder import build_datamodule, build_module
from mmbench.data import shapes
from mmbench.data.counterfactual import counterfactual, scene_of_row
from mmbench.metrics.common import Inputs, column
from mmbench.metrics.diagnostics import matching_diagnostics
from mmbench.metrics.suite import protocol

TYPES = ("attribute_swap", "relation_swap", "count_change")


@pytest.fixture
def setup(tiny_cfg):
    cfg = tiny_cfg("objective=[itc,itm]")
    dm = build_datamodule(cfg)
    return build_module(cfg, dm.info), dm


def _inputs(dm):
    return Inputs(dm.datasets["test"], dm.tokenizer, counterfactuals=dm.counterfactuals)


def _truth(dm):
    split = dm.datasets["test"].split
    return [
        v
        for pos, neg in zip(split["match_positives"], split["match_negatives"])
        for v in [1.0] * len(pos) + [-1.0] * len(neg)
    ]


def _oracle(values, sign: float):
    """A pair scorer that returns sign * the next value per pair, in call order."""
    queue = iter(values)

    def score(model, text, image):
        return sign * torch.tensor([next(queue) for _ in range(text.tokens.shape[0])])

    return score


@pytest.mark.parametrize("sign, expected", [(1.0, 1.0), (-1.0, 0.0)])
def test_known_answers(setup, monkeypatch, sign, expected):
    module, dm = setup
    monkeypatch.setattr(module.objectives["itm"], "pair_score", _oracle(_truth(dm), sign))
    out = matching_diagnostics(module, _inputs(dm), batch_size=7, max_images=None, winoground=False)  # splits images
    assert set(out) == {f"diagnostics/{k}_acc" for k in ("match", *TYPES)}
    assert all(v == expected for v in out.values()), out


@pytest.mark.parametrize("sign, expected", [(1.0, 1.0), (-1.0, 0.0)])
def test_winoground_known_answers(setup, monkeypatch, sign, expected):
    """Second pass: (P, N) on each counterfactual image, where N is true and P false."""
    module, dm = setup
    monkeypatch.setattr(module.objectives["itm"], "pair_score", _oracle(_truth(dm) + [-1.0, 1.0] * 10_000, sign))
    out = matching_diagnostics(module, _inputs(dm), batch_size=7, max_images=None, winoground=True)
    assert out["diagnostics/winoground_pairs"] > 0.8 * sum(len(n) for n in dm.datasets["test"].split["match_negatives"])
    scores = {k: v for k, v in out.items() if k.endswith("_score")}
    assert set(scores) == {
        f"diagnostics/{p}{s}_score" for p in ("", *(f"{t}_" for t in TYPES)) for s in ("text", "image", "group")
    }
    assert all(v == expected for v in scores.values()), scores


def test_a_text_only_scorer_gets_zero_winoground_scores(setup, monkeypatch):
    """A bag-of-words-like model that ignores the image can never win a Winoground pair."""
    module, dm = setup
    monkeypatch.setattr(module.objectives["itm"], "pair_score", lambda m, t, i: t.pooled.sum(-1))
    out = matching_diagnostics(module, _inputs(dm), batch_size=256, max_images=None, winoground=True)
    assert out["diagnostics/text_score"] == 0.0 and out["diagnostics/image_score"] == 0.0


def test_winoground_needs_the_datas_counterfactuals(setup, monkeypatch):
    """Shapes offers its renderer through the data config (with its grid); without one (other data)
    the protocol gives the hard-negative accuracies and no Winoground scores."""
    module, dm = setup
    assert dm.counterfactuals.keywords == {"grid": 3, "max_objects": dm.source.keywords["max_objects"]}
    monkeypatch.setattr(module.objectives["itm"], "pair_score", lambda m, t, i: t.pooled.sum(-1))
    with_renderer = matching_diagnostics(module, _inputs(dm), batch_size=256, max_images=None, winoground=True)
    without = matching_diagnostics(
        module, Inputs(dm.datasets["test"], dm.tokenizer), batch_size=256, max_images=None, winoground=True
    )
    assert "diagnostics/group_score" in with_renderer and "diagnostics/group_score" not in without
    assert without == {k: v for k, v in with_renderer.items() if k.endswith("_acc")}


def test_scene_recovered_from_columns_renders_the_stored_image(setup):
    _, dm = setup
    ds = dm.datasets["test"]
    size = ds.images.shape[1]
    cols = {c: column(ds, c) for c in ("obj_shape", "obj_color", "obj_size", "boxes")}
    for r in range(len(ds.images)):
        scene = scene_of_row({c: v[r] for c, v in cols.items()}, size, 3)
        image, _ = shapes.render(scene, size, 3)
        assert np.array_equal(image, ds.images[r]), r


def test_counterfactuals_make_the_negative_true_and_the_positive_false():
    s = shapes.ShapeObject
    scene = (s(0, 0, "circle", "red", "large"), s(0, 2, "square", "blue", "small"))
    image, boxes = shapes.render(scene, 48, 3)
    cols = {
        "obj_shape": [o.shape for o in scene],
        "obj_color": [o.color for o in scene],
        "obj_size": [o.size for o in scene],
        "boxes": boxes,
    }
    pos = "a red circle left of a blue square"
    for kind, neg in (
        ("attribute_swap", "a blue circle left of a red square"),
        ("relation_swap", "a blue square left of a red circle"),
        ("count_change", "there are three objects"),
    ):
        p = pos if kind != "count_change" else "there are two objects"
        cf = counterfactual(cols, p, neg, kind, 48, 3)
        assert cf is not None and not np.array_equal(cf[0], image), kind
    # statements about objects the scene does not have, or that cannot be parsed, get no counterfactual
    assert (
        counterfactual(
            cols,
            "a green circle left of a blue square",
            "a blue circle left of a green square",
            "attribute_swap",
            48,
            3,
        )
        is None
    )
    assert counterfactual(cols, "two circles", "three circles", "count_change", 48, 3) is None
    # a count the data never shows gets none either: with at most 2 objects, "three objects" is out
    two, three = "there are two objects", "there are three objects"
    assert counterfactual(cols, two, three, "count_change", 48, 3, max_objects=3) is not None
    assert counterfactual(cols, two, three, "count_change", 48, 3, max_objects=2) is None
    assert counterfactual(cols, two, "there is one object", "count_change", 48, 3, max_objects=2) is not None


def test_itm_outranks_itc_and_itc_alone_is_used(setup, monkeypatch):
    module, dm = setup
    called = []
    monkeypatch.setattr(
        module.objectives["itm"], "pair_score", lambda m, t, i: called.append("itm") or torch.zeros(t.tokens.shape[0])
    )
    monkeypatch.setattr(
        module.objectives["itc"], "pair_score", lambda m, t, i: called.append("itc") or torch.zeros(t.tokens.shape[0])
    )
    protocol("diagnostics")(module, _inputs(dm), batch_size=256)
    assert set(called) == {"itm"}
    del module.objectives["itm"]
    called.clear()
    out = protocol("diagnostics")(module, _inputs(dm), batch_size=256)
    assert set(called) == {"itc"} and out["diagnostics/match_acc"] == 0.0  # ties are not wins
    assert out["diagnostics/group_score"] == 0.0
