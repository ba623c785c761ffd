"""The text-to-image oracle and scores (mmbench/t2i/), with known answers.

* the oracle reads held-out renders and the Shapes test split (>= 0.99 of cells), is cached, deterministic;
* the real images of test captions meet every criterion; shuffled images meet them exactly as often as
  the true scenes of the shuffled images do, and state their caption exactly as often as the data's own
  `image_facts` say;
* hand-built scenes, rendered and read back: one colour swapped fails `color` alone, an object of an
  unnamed shape fails `extra` alone, a reversed relation fails `relation` alone, a blank image fails
  `present`;
* the Frechet distance is 0 for equal sets, FID's formula by hand (scipy), small for two halves of a split
  and large against noise; the agreement score of a tiny untrained CLIP is each pair's cosine.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
from conftest import TINY as TINY_RUN
from conftest import compose_cfg

from mmbench.builder import build_datamodule, build_module
from mmbench.data.counterfactual import scene_of_row
from mmbench.data.shapes import (
    ShapeObject,
    attribute_text,
    claim_of,
    count_text,
    decode_pixels,
    generate_split,
    inventory_text,
    relation_text,
    render,
    shape_count_text,
)
from mmbench.t2i import (
    CAPTION_TYPES,
    OracleSettings,
    agreement,
    compositional_scores,
    frechet_distance,
    inventory_counts,
    judge,
)
from mmbench.t2i import oracle as oracle_module
from mmbench.t2i.oracle import accuracy, cache_key, cache_path, load_or_train

S, GRID = 48, 3  # conf/data/shapes.yaml: image_size 48, source.grid 3
TINY = {"renders": 12, "steps": 3, "held_out_renders": 4}  # a few steps: cache and determinism only


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    """The default oracle of 48 px / 3x3 Shapes, trained once (a few seconds) into a fresh cache."""
    return load_or_train(OracleSettings(image_size=S, grid=GRID), tmp_path_factory.mktemp("oracle-cache"))


@pytest.fixture(scope="module")
def test_split():
    """200 scenes of Shapes' test split at 48 px: images (N, S, S, 3), true scenes, captions' claims, facts."""
    cols = generate_split("test", 200, id_offset=0, image_size=S, grid=GRID)
    images = np.stack([decode_pixels(p, S) for p in cols["pixels"]])
    keys = ("obj_shape", "obj_color", "obj_size", "boxes")
    scenes = [scene_of_row({k: cols[k][i] for k in keys}, S, GRID) for i in range(len(images))]
    return images, scenes, cols["caption_claims"], cols["image_facts"]


def read_one(oracle, scene):
    """The oracle's reading of one hand-built scene, rendered by Shapes."""
    return oracle.read(render(scene, S, GRID)[0][None])[0]


# --------------------------------------------------------------------------- the oracle


def test_oracle_reads_held_out_renders_and_the_test_split(oracle, test_split):
    assert oracle.accuracy["cell"] >= 0.99, oracle.accuracy  # renders of another random stream, 0..9 objects
    assert oracle.accuracy["scene"] >= 0.95, oracle.accuracy
    images, scenes, _, _ = test_split
    split = accuracy(oracle, images, scenes)  # Shapes' own generator: 1..3 objects, jittered
    assert split["cell"] >= 0.99 and split["scene"] >= 0.97, split


def test_oracle_reads_shape_colour_size_and_cell(oracle):
    scene = (ShapeObject(0, 2, "triangle", "cyan", "small"), ShapeObject(2, 0, "cross", "purple", "large"))
    assert read_one(oracle, scene) == scene  # centres are not read: x = y = None, as here
    assert oracle.read(np.full((2, S, S, 3), 230, dtype=np.uint8)) == [(), ()]  # the background alone
    assert oracle.features(render(scene, S, GRID)[0][None]).shape == (1, GRID * GRID * 32)


def test_images_of_another_layout_are_refused(oracle):
    with pytest.raises(ValueError, match=r"reads \(N, 48, 48, 3\) uint8 images.*got shape \(1, 64, 64, 3\)"):
        oracle.read(np.zeros((1, 64, 64, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="dtype float32"):
        oracle.read(np.zeros((1, S, S, 3), dtype=np.float32))


def test_training_is_deterministic_and_leaves_global_state(monkeypatch):
    rng, threads = torch.get_rng_state(), torch.get_num_threads()
    a = oracle_module.train_oracle(OracleSettings(**TINY))
    b = oracle_module.train_oracle(OracleSettings(**TINY))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    c = oracle_module.train_oracle(OracleSettings(**TINY, seed=1))
    assert not torch.equal(a.classifier.occupied.weight, c.classifier.occupied.weight)
    assert torch.equal(torch.get_rng_state(), rng) and torch.get_num_threads() == threads


def test_the_cache_is_keyed_by_renders_and_loaded_without_training(tmp_path, monkeypatch):
    settings = OracleSettings(**TINY)
    trained = load_or_train(settings, tmp_path)
    path = cache_path(settings, tmp_path)
    assert path.is_file() and [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left

    def no_training(_settings):
        raise AssertionError("trained again instead of loading the cache")

    monkeypatch.setattr(oracle_module, "train_oracle", no_training)
    loaded = load_or_train(settings, tmp_path)
    assert loaded.accuracy == trained.accuracy
    assert all(torch.equal(x, y) for x, y in zip(loaded.state_dict().values(), trained.state_dict().values()))
    # what changes renders changes the key: the layout, a renderer constant
    assert cache_path(OracleSettings(**TINY, image_size=64), tmp_path) != path
    key = cache_key(settings)
    monkeypatch.setattr(oracle_module, "BACKGROUND", 229)
    assert cache_key(settings) != key and cache_path(settings, tmp_path) != path
    monkeypatch.undo()
    # a damaged file is trained again and replaced
    path.write_bytes(path.read_bytes()[:100])
    again = load_or_train(settings, tmp_path)
    assert all(torch.equal(x, y) for x, y in zip(again.state_dict().values(), trained.state_dict().values()))
    assert load_or_train(settings, tmp_path).accuracy == trained.accuracy


# --------------------------------------------------------------------------- criteria on the data


def pairs(test_split, shift: int = 0):
    """(image row, claim) of every caption of the split; the image of row (r + shift) mod N."""
    images, scenes, claims, facts = test_split
    n = len(images)
    rows = [(r + shift) % n for r, row in enumerate(claims) for _ in row]
    flat = [c for row in claims for c in row]
    return rows, flat


def test_real_images_meet_every_criterion(oracle, test_split):
    images, _, _, _ = test_split
    rows, claims = pairs(test_split)
    read = oracle.read(images)
    scores = compositional_scores([read[r] for r in rows], claims)
    assert {k.split("/")[0] for k in scores} == {*CAPTION_TYPES.values(), "overall"}  # every type occurs
    rates = {k: v for k, v in scores.items() if not k.endswith("/images")}
    assert rates and all(v == 1.0 for v in rates.values()), {k: v for k, v in rates.items() if v < 1}
    assert scores["overall/images"] == len(claims) == 800


def test_shuffled_images_meet_them_as_often_as_the_data_says(oracle, test_split):
    images, scenes, claims_by_row, facts = test_split
    rows, claims = pairs(test_split, shift=1)  # each caption with the next scene's image: a derangement
    read = oracle.read(images)
    scores = compositional_scores([read[r] for r in rows], claims)
    # the oracle's reading scores exactly as the true scenes do ...
    assert scores == compositional_scores([scenes[r] for r in rows], claims)
    # ... and the caption is true of the other image exactly when the data lists its claim among that
    # image's facts (Shapes' `image_facts` column, not this module's code)
    for ctype in CAPTION_TYPES.values():
        mine = [(r, c) for r, c in zip(rows, claims) if CAPTION_TYPES[c.partition(":")[0]] == ctype]
        expected = sum(c in facts[r] for r, c in mine) / len(mine)
        assert scores[f"{ctype}/caption_true"] == pytest.approx(expected, abs=1e-12)
        assert scores[f"{ctype}/faithful"] < 0.5, ctype  # the floor: far from the real images' 1.0
    assert scores["relation/relation"] < 0.2 and scores["attribute/color"] < 0.2


# --------------------------------------------------------------------------- criteria on hand-built scenes

CIRCLE = ShapeObject(0, 0, "circle", "red", "small")
SQUARE = ShapeObject(1, 2, "square", "blue", "large")


def claims_of(a: ShapeObject, b: ShapeObject) -> list[str]:
    """Claims of captions Shapes writes about a scene of a and b: attributes, relations both ways, counts."""
    texts = [attribute_text(a, t) for t in range(5)] + [
        relation_text(a.desc, "left of", b.desc),
        relation_text(a.desc, "above", b.desc, 2),
        relation_text(b.desc, "right of", a.desc, 1),
        count_text(2),
        shape_count_text(a.shape, 1),
        inventory_text((a, b)),
    ]
    return [claim_of(t) for t in texts]


def verdicts(oracle, scene, claims) -> list[dict[str, bool]]:
    seen = read_one(oracle, scene)
    return [judge(seen, c) for c in claims]


def failed(verdict: dict[str, bool]) -> set[str]:
    return {k for k, ok in verdict.items() if not ok}


def test_the_scene_itself_meets_every_criterion(oracle):
    claims = claims_of(CIRCLE, SQUARE)
    assert {CAPTION_TYPES[c.partition(":")[0]] for c in claims} == set(CAPTION_TYPES.values())
    assert all(not failed(v) for v in verdicts(oracle, (CIRCLE, SQUARE), claims))


def test_one_colour_swapped_fails_colour_binding_alone(oracle):
    claims = claims_of(CIRCLE, SQUARE)
    green = ShapeObject(0, 0, "circle", "green", "small")
    for claim, verdict in zip(claims, verdicts(oracle, (green, SQUARE), claims)):
        kind = claim.partition(":")[0]
        if kind in ("object", "relation"):  # the captions that name the circle's colour
            assert failed(verdict) == {"color", "faithful", "caption_true"}, (claim, verdict)
        else:  # counts and inventories say nothing of colour
            assert not failed(verdict), (claim, verdict)


def test_an_object_of_an_unnamed_shape_fails_nothing_extra_alone(oracle):
    inventory = claim_of(inventory_text((CIRCLE, SQUARE)))  # "a circle and a square"
    count = claim_of(count_text(2))
    triangle = ShapeObject(2, 1, "triangle", "yellow", "small")
    inv, cnt = verdicts(oracle, (CIRCLE, SQUARE, triangle), [inventory, count])
    assert failed(inv) == {"extra", "faithful", "caption_true"}
    assert failed(cnt) == {"count", "extra", "faithful", "caption_true"}  # three objects: the count is wrong too
    # a second circle is extra and also a wrong number of circles
    circle = ShapeObject(2, 1, "circle", "red", "small")
    (inv,) = verdicts(oracle, (CIRCLE, SQUARE, circle), [inventory])
    assert failed(inv) == {"count", "extra", "faithful", "caption_true"}


def test_a_reversed_relation_fails_relation_alone(oracle):
    claims = [
        claim_of(relation_text(CIRCLE.desc, "left of", SQUARE.desc)),
        claim_of(relation_text(CIRCLE.desc, "above", SQUARE.desc)),
    ]
    swapped = (ShapeObject(1, 2, "circle", "red", "small"), ShapeObject(0, 0, "square", "blue", "large"))
    for claim, verdict in zip(claims, verdicts(oracle, swapped, claims)):
        assert failed(verdict) == {"relation", "faithful", "caption_true"}, (claim, verdict)
    # same row: "left of" still holds, "above" does not (Shapes' strict relations: another row)
    row = (ShapeObject(1, 0, "circle", "red", "small"), SQUARE)
    left, above = verdicts(oracle, row, claims)
    assert not failed(left) and failed(above) == {"relation", "faithful", "caption_true"}


def test_a_blank_image_fails_presence(oracle):
    claims = claims_of(CIRCLE, SQUARE)
    for claim, verdict in zip(claims, verdicts(oracle, (), claims)):
        assert not verdict["present"] and not verdict["faithful"] and not verdict["caption_true"], claim
        if "extra" in verdict:  # nothing is never too much
            assert verdict["extra"], claim


def test_counts_by_hand():
    two = claim_of(shape_count_text("circle", 2))  # "there are two circles"
    assert two == "shapes:circle=2"
    circles = [ShapeObject(r, 0, "circle", "red", "small") for r in range(3)]
    assert [
        (judge(tuple(circles[:k]), two)["present"], judge(tuple(circles[:k]), two)["count"]) for k in (1, 2, 3)
    ] == [
        (False, False),
        (True, True),
        (True, False),
    ]
    assert inventory_counts("two circles, a square and a cross") == {"circle": 2, "square": 1, "cross": 1}
    assert inventory_counts("a triangle") == {"triangle": 1}
    for bad in ("two circle", "a circle and two circles", "a square and a circle", ""):
        with pytest.raises(ValueError, match="not a Shapes inventory"):
            inventory_counts(bad)
    with pytest.raises(ValueError, match="not a Shapes caption claim"):
        judge((), "")  # a caption claim_of could not read
    with pytest.raises(ValueError, match="2 scenes for 1 claims"):
        compositional_scores([(), ()], ["count:1"])


# --------------------------------------------------------------------------- Frechet distance, agreement


def test_frechet_distance(oracle, test_split):
    images = test_split[0]
    fd = lambda a, b: frechet_distance(oracle.features, a, b, num_features=oracle.num_features, batch_size=64)
    # equal sets: 0 up to float error, which the eigenvalues of a rank-deficient S1 S2 (200 images, 288
    # features) put at ~1e-7 of the distance's scale, tr(S1) + tr(S2)
    scale = 2 * np.trace(np.cov(oracle.features(images).double().numpy(), rowvar=False))
    assert abs(fd(images, images)) < 1e-6 * scale
    # sets of 100: two halves of the split (only the finite-sample bias: 288 features from 100 images) and
    # a half against noise
    halves = fd(images[:100], images[100:])
    noise = np.random.default_rng(0).integers(0, 256, images[100:].shape, dtype=np.uint8)
    assert 0 < 10 * halves < fd(images[:100], noise), (halves, fd(images[:100], noise))
    # FID's formula by hand on the same features: ||mu1 - mu2||^2 + tr(S1 + S2 - 2 sqrtm(S1 S2))
    f1, f2 = oracle.features(images[:100]).double().numpy(), oracle.features(images[100:]).double().numpy()
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    with warnings.catch_warnings():  # S1 S2 is singular (rank < 100 of 288): scipy says so, and is still right here
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        root = scipy.linalg.sqrtm(s1 @ s2).real
    by_hand = ((f1.mean(0) - f2.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * root)
    assert halves == pytest.approx(by_hand, rel=1e-4)
    with pytest.raises(ValueError, match=">= 2 images per set"):
        fd(images[:1], images)


def test_agreement_is_each_pairs_itc_cosine(tmp_path, cache_dir):
    cfg = compose_cfg(["model=clip", "objective=[itc]", *TINY_RUN], tmp_path / "run")
    dm = build_datamodule(cfg)
    torch.manual_seed(0)
    module = build_module(cfg, dm.info)  # untrained: shape and range only
    split = dm.datasets["test"]
    images = [split.images[r] for r in range(6)]
    captions = [split.captions[r][0] for r in range(6)]
    itc = module.objectives["itc"]
    scores = agreement(module.model, itc, dm.collate, images, captions, batch_size=4)
    assert scores.shape == (6,) and bool(((scores >= -1) & (scores <= 1)).all())
    assert module.training  # its mode is left as it was
    module.eval()
    batch = dm.collate([{"image": images[2], "image_id": 0, "caption": captions[2]}])
    with torch.no_grad():
        text = module.model.encode_text(batch["input_ids"], batch["attention_mask"])
        t, i = itc.embed(text.pooled, module.model.encode_image(batch).pooled)
    assert scores[2].item() == pytest.approx(torch.nn.functional.cosine_similarity(t, i).item(), abs=1e-5)
    with pytest.raises(ValueError, match="6 images for 5 captions"):
        agreement(module.model, itc, dm.collate, images, captions[:5])
