"""Captioning scored through coco-caption (mmbench.metrics.captioning): the ptb path reproduces the call
sequence of pycocoevalcap's `COCOEvalCap.evaluate` (PTB tokenizer, then the scorers), the fast path keeps
the values of earlier releases, and settings that cannot be scored are refused with what would work.

Tests that run coco-caption's Java tools are skipped where `java` is not on PATH (CI machines and the
mmbench dev machines have Java 17); the refusal tests fake `shutil.which` and need no Java."""

from __future__ import annotations

import contextlib
import io
import math
import shutil
from types import SimpleNamespace

import pytest
from conftest import compose_cfg

from mmbench.config import ConfigError
from mmbench.metrics.captioning import caption_scores, captioning, ptb_tokenize, tokenize
from mmbench.metrics.common import Unavailable
from mmbench.metrics.suite import with_defaults
from mmbench.validation import validate

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="coco-caption's PTB tokenizer and METEOR run Java")

# 5 images x 5 references, with capitals, commas, full stops, apostrophes and quotes: tokenisation matters
REFERENCES = [
    [
        "A man riding a horse on a beach.",
        "A person rides a brown horse, near the ocean.",
        "Man on horseback at the shore.",
        "a rider and his horse walking along the sand",
        "A man's horse trots by the WATER.",
    ],
    [
        "Two dogs play with a red frisbee.",
        "Dogs, playing in the park!",
        "A pair of dogs chasing a frisbee on grass.",
        'Two "happy" dogs run across a field.',
        "the dogs fight over a toy",
    ],
    [
        "A plate of food with broccoli and rice.",
        "Broccoli, rice and chicken on a white plate.",
        "A healthy meal: rice & vegetables.",
        "Someone's dinner on a table.",
        "a white plate topped with food",
    ],
    [
        "A red double-decker bus on a city street.",
        "A bus drives down the road (in London).",
        "Red bus; busy street.",
        "A large red bus parked by the curb.",
        "The double decker bus is red.",
    ],
    [
        "A cat sleeping on a laptop keyboard.",
        "The cat's asleep on the computer!",
        "A grey cat lies on an open laptop.",
        "Cat napping on a keyboard?",
        "a kitten resting on top of a notebook computer",
    ],
]
HYPOTHESES = [
    "A man riding a horse on the beach.",
    "Two dogs playing with a frisbee!",
    "A plate of rice, broccoli and chicken.",
    "A red double-decker bus driving down a street.",
    "A cat laying on a laptop computer.",
]


def coco_eval_cap(references, hypotheses, scorers):
    """The call sequence of pycocoevalcap's COCOEvalCap.evaluate (eval.py), written out: its input dicts
    (image id -> annotations with a 'caption'), one PTBTokenizer call for gts and one for res, then each scorer's
    compute_score(gts, res). (COCOEvalCap itself needs COCO objects and always runs SPICE.)"""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    gts = {i: [{"image_id": i, "caption": c} for c in refs] for i, refs in enumerate(references)}
    res = {i: [{"image_id": i, "caption": h}] for i, h in enumerate(hypotheses)}
    tokenizer = PTBTokenizer()
    gts, res = tokenizer.tokenize(gts), tokenizer.tokenize(res)
    out = {}
    made = {"bleu": lambda: Bleu(4), "meteor": Meteor, "rouge": Rouge, "cider": Cider}
    for name in scorers:
        with contextlib.redirect_stdout(io.StringIO()):
            score, _ = made[name]().compute_score(gts, res)
        if name == "bleu":
            out.update({f"captioning/bleu{n}": s for n, s in enumerate(score, start=1)})
        else:
            out[f"captioning/{'rouge_l' if name == 'rouge' else name}"] = score
    return out


# --------------------------------------------------------------------------- (a) the coco-caption path


@needs_java
def test_ptb_path_is_coco_eval_cap():
    scorers = ["bleu", "meteor", "rouge", "cider"]
    ours = caption_scores(REFERENCES, HYPOTHESES, tokenizer="ptb", scorers=scorers)
    expected = coco_eval_cap(REFERENCES, HYPOTHESES, scorers)
    names = [f"captioning/bleu{n}" for n in (1, 2, 3, 4)] + ["captioning/" + n for n in ("meteor", "rouge_l", "cider")]
    assert set(ours) == {*names, "captioning/exact_match"}
    for name in names:
        assert ours[name] == pytest.approx(expected[name], rel=1e-12, abs=1e-12), name
    # the scores are not degenerate: the test would notice a shifted or empty caption
    assert 0.3 < ours["captioning/bleu4"] < 0.9 and 0.2 < ours["captioning/meteor"] < 0.8
    assert ours["captioning/exact_match"] == 0.0


@needs_java
def test_ptb_tokenizer_is_the_one_that_scores():
    """The fast path's tokenisation differs from PTB's on apostrophes ("man's" -> "man s" vs "man 's") and
    hyphens ("double-decker" is one PTB token, two fast ones): the two paths give different BLEU on the set,
    so the ptb path really scored PTB tokens."""
    gts, res = ptb_tokenize(REFERENCES, HYPOTHESES)
    assert (
        gts[0][4] == "a man 's horse trots by the water"
        and tokenize(REFERENCES[0][4]) == "a man s horse trots by the water"
    )
    assert res[1] == ["two dogs playing with a frisbee"]
    assert res[3] == ["a red double-decker bus driving down a street"]
    assert gts[3][1] == "a bus drives down the road -lrb- in london -rrb-"  # coco-caption keeps -lrb-: reproduced
    fast = caption_scores(REFERENCES, HYPOTHESES, tokenizer="fast", scorers=["bleu"])
    ptb = caption_scores(REFERENCES, HYPOTHESES, tokenizer="ptb", scorers=["bleu"])
    assert fast["captioning/bleu4"] != pytest.approx(ptb["captioning/bleu4"], rel=1e-6)


@needs_java
def test_every_line_break_keeps_captions_on_their_image():
    """Java's tokenizer ends a line at \\r, \\f, \\u2028 ...: one such caption would shift every later caption
    onto the wrong image; empty captions keep their place too."""
    refs = [["a red\rcircle"], ["a blue square"], ["two\u2028green crosses"], ["a cat"]]
    hyps = ["", "a blue\x0csquare", "two green crosses", "A cat."]
    gts, res = ptb_tokenize(refs, hyps)
    assert gts == {0: ["a red circle"], 1: ["a blue square"], 2: ["two green crosses"], 3: ["a cat"]}
    assert res == {0: [""], 1: ["a blue square"], 2: ["two green crosses"], 3: ["a cat"]}


# --------------------------------------------------------------------------- (b) known answers


@needs_java
def test_hypothesis_equal_to_every_reference():
    """coco-caption's corpus BLEU-n is (prod_k (m_k + 1e-15) / (m_k + 1e-9))^(1/n), m_k matched = all k-grams,
    times its brevity penalty exp(1 - 1/r), which the same smoothing sets off: r = (L + 1e-15) / (L + 1e-9) < 1
    for L hypothesis tokens = reference tokens. So 1 up to the smoothing, just below 1 (1 - 4e-10 here).
    ROUGE-L is exactly 1 (LCS = both lengths); exact match is 1."""
    refs = [["A man, riding a horse."] * 5, ["Two dogs play."] * 5]
    scores = caption_scores(refs, ["a man riding a horse", "two dogs play"], tokenizer="ptb", scorers=["bleu", "rouge"])
    kgrams = [max(5 - k + 1, 0) + max(3 - k + 1, 0) for k in (1, 2, 3, 4)]  # 5 + 3 tokens after PTB tokenisation
    p = [(m + 1e-15) / (m + 1e-9) for m in kgrams]
    r = (8 + 1e-15) / (8 + 1e-9)
    bleu4 = math.prod(p) ** (1 / 4) * math.exp(1 - 1 / r)
    assert scores["captioning/bleu4"] == pytest.approx(bleu4, rel=1e-14) and scores["captioning/bleu4"] < 1.0
    assert scores["captioning/bleu4"] == pytest.approx(1.0, abs=1e-9)
    assert scores["captioning/bleu1"] == pytest.approx(p[0] * math.exp(1 - 1 / r), rel=1e-14)
    assert scores["captioning/rouge_l"] == pytest.approx(1.0, abs=1e-12)
    assert scores["captioning/exact_match"] == 1.0


# --------------------------------------------------------------------------- (c) tokenisation matters


@needs_java
def test_punctuation_and_capitals_vanish_under_ptb():
    gts, res = ptb_tokenize([["a man riding a horse"]], ["A man, riding a horse."])
    assert res[0] == gts[0] == ["a man riding a horse"]
    scores = caption_scores(
        [["a man riding a horse"]] * 2, ["A man, riding a horse."] * 2, tokenizer="ptb", scorers=["bleu"]
    )
    assert scores["captioning/exact_match"] == 1.0 and scores["captioning/bleu4"] == pytest.approx(1.0, abs=1e-9)


# --------------------------------------------------------------------------- (d) the fast path is unchanged

FAST_REFS = [
    ["A red circle, left of a blue square.", "there is a red circle"],
    ["Two squares!", "a small green square"],
    ["There are three objects.", "a cyan cross above a red circle"],
]
FAST_HYPS = ["a red circle left of a green square", "A small green square.", "there are two objects"]


def test_fast_path_values_are_those_of_earlier_releases():
    """Values computed with the implementation before the ptb path existed (whitespace tokenisation, Bleu(4)
    and Cider of pycocoevalcap 1.2), hard-coded."""
    scores = caption_scores(FAST_REFS, FAST_HYPS, tokenizer="fast", scorers=["bleu", "cider"])
    assert scores == {
        "captioning/bleu4": pytest.approx(0.6750797842059668, rel=1e-12),
        "captioning/cider": pytest.approx(3.236601536277264, rel=1e-12),
        "captioning/exact_match": pytest.approx(1 / 3),
    }
    assert caption_scores(FAST_REFS, FAST_HYPS) == scores  # the function's defaults are the fast path
    assert set(caption_scores(FAST_REFS, FAST_HYPS, tokenizer="fast", scorers=["cider"])) == {
        "captioning/cider",
        "captioning/exact_match",
    }


def test_default_eval_keeps_the_fast_path_and_full_uses_ptb():
    node = with_defaults({})["captioning"]
    assert node["tokenizer"] == "fast" and node["scorers"] == ["bleu", "cider"]
    full = compose_cfg(["eval=full"]).eval
    assert full.captioning.tokenizer == "ptb" and list(full.captioning.scorers) == ["bleu", "meteor", "rouge", "cider"]
    assert list(full.robustness.settings.captioning.scorers) == ["cider"]  # the curve's metric: no METEOR JVM per point


# --------------------------------------------------------------------------- (e) refusals: Java, SPICE models


@pytest.fixture
def with_java(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/java" if name == "java" else None)


def test_spice_without_its_models_is_refused_with_where_to_put_them(with_java, monkeypatch, tmp_path):
    import pycocoevalcap.spice.get_stanford_models as models

    import mmbench.metrics.captioning as cap

    monkeypatch.setattr(cap, "spice_models_dir", lambda: tmp_path / "lib")  # the real lib/ may hold them
    monkeypatch.setattr(models, "urlretrieve", lambda *a, **k: pytest.fail("SPICE's models were downloaded"))
    with pytest.raises(Unavailable) as err:
        caption_scores(FAST_REFS, FAST_HYPS, tokenizer="ptb", scorers=["bleu", "spice"])
    message = str(err.value)
    for words in (
        "SPICE",
        "stanford-corenlp-3.6.0.jar",
        "stanford-corenlp-3.6.0-models.jar",
        str(tmp_path / "lib"),
        "stanford-corenlp-full-2015-12-09.zip",
        "leave spice out of eval.captioning.scorers",
    ):
        assert words in message, f"{words!r} not in {message!r}"


def test_spice_models_are_looked_for_where_the_spice_jar_looks():
    import pycocoevalcap.spice.spice as spice

    import mmbench.metrics.captioning as cap

    assert cap.spice_models_dir() == (__import__("pathlib").Path(spice.__file__).resolve().parent / "lib")


def test_ptb_without_java_is_refused(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(Unavailable, match=r"no `java` is on PATH.*tokenizer=fast") as err:
        caption_scores(FAST_REFS, FAST_HYPS, tokenizer="ptb", scorers=["bleu", "meteor"])
    assert "METEOR" in str(err.value)
    assert caption_scores(FAST_REFS, FAST_HYPS, tokenizer="fast")["captioning/exact_match"] == pytest.approx(1 / 3)


def test_protocol_refuses_before_generating(monkeypatch):
    """No Java: the protocol is refused before a single caption is generated (generation is the slow part)."""
    monkeypatch.setattr(shutil, "which", lambda name: None)
    lm = SimpleNamespace(captions=True, generate=lambda *a, **k: pytest.fail("generated before refusing"))
    module = SimpleNamespace(objectives={"lm": lm})
    inputs = SimpleNamespace(dataset=None, images=lambda rows: pytest.fail("read images before refusing"))
    with pytest.raises(Unavailable, match="java"):
        captioning(
            module, inputs, batch_size=2, max_images=4, max_len=5, num_beams=1, tokenizer="ptb", scorers=["bleu"]
        )


# --------------------------------------------------------------------------- (f) invalid settings


@pytest.mark.parametrize(
    "tokenizer,scorers,words",
    [
        ("ptb", ["bleu", "bluo"], ("unknown scorer(s) ['bluo']", "bleu, meteor, rouge, cider, spice")),
        ("moses", ["bleu"], ("tokenizer=moses", "fast, ptb")),
        ("fast", ["bleu", "meteor"], ("meteor", "eval.captioning.tokenizer=ptb")),
        ("ptb", "bleu", ("must be a list",)),
    ],
)
def test_invalid_settings_name_the_valid_choices(tokenizer, scorers, words):
    with pytest.raises(ValueError) as err:
        caption_scores(FAST_REFS, FAST_HYPS, tokenizer=tokenizer, scorers=scorers)
    for word in words:
        assert word in str(err.value), f"{word!r} not in {err.value!r}"


@pytest.mark.parametrize(
    "override,words",
    [
        ("eval.captioning.scorers=[bleu,cidr]", ("eval.captioning.scorers", "['cidr']", "spice")),
        ("eval.captioning.tokenizer=coco", ("eval.captioning.tokenizer=coco", "fast, ptb")),
        ("eval.captioning.scorers=[rouge]", ("rouge", "tokenizer=ptb")),
    ],
)
def test_config_validation_refuses_invalid_settings(override, words):
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg([override]))
    for word in words:
        assert word in str(err.value), f"{word!r} not in {err.value!r}"


def test_config_validation_accepts_the_shipped_settings():
    validate(compose_cfg([]))
    validate(compose_cfg(["eval=full", "eval.captioning.scorers=[bleu,meteor,rouge,cider,spice]"]))
