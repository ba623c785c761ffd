"""Diagnostic sets read from their released files (Winoground, ARO VG-Relation / VG-Attribution, SugarCrepe).

Each test writes a release layout at a tiny size: the real file names and record structure, a few PNG
images. Known answers come from hand-built score matrices (the scoring rules as pure functions) and, end to
end, from an oracle model: its image encoder reads out an image's dominant colour channel, its text
encoder the caption's first word, and its pair scorer looks (word, colour) up in a table written for each
test, so every score matrix, and every outcome, is worked out by hand. An untrained tiny model checks names,
ranges and the caption / image swap symmetry of the Winoground rules.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmbench.builder import build_datamodule, build_module
from mmbench.metrics import diagnostic_sets
from mmbench.metrics.common import Inputs, Unavailable
from mmbench.metrics.diagnostic_sets import (
    SUGARCREPE_CATEGORIES,
    ImageRef,
    macro_accuracy,
    read_image,
    winoground_scores,
)
from mmbench.metrics.suite import evaluate_suite, protocol
from mmbench.models.outputs import Features
from tests.conftest import ALL_OBJECTIVES, TINY, compose_cfg

RGB = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
CHANNEL_COLOUR = ("red", "green", "blue")  # the dominant channel of a solid image -> its colour name
WINOGROUND_NAMES = {f"winoground/{k}" for k in ("text", "image", "group", "num_examples")}


# --------------------------------------------------------------------------- release layouts, tiny


def save_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path, format="PNG")  # lossless whatever the name


def solid(colour: str, w: int = 30, h: int = 20) -> np.ndarray:
    return np.broadcast_to(np.array(RGB[colour], dtype=np.uint8), (h, w, 3)).copy()


def write_winoground(root: Path, examples: list[tuple[str, str, str, str]], noise: bool = False) -> Path:
    """facebook/winoground's data/ (images.zip unzipped): examples.jsonl + images/<stem>.png. An example is
    (colour of image_0, colour of image_1, caption_0, caption_1); `noise`: random images instead."""
    rng = np.random.default_rng(0)
    lines = []
    for n, (col0, col1, cap0, cap1) in enumerate(examples):
        for i, col in enumerate((col0, col1)):
            pixels = rng.integers(0, 256, (20, 24 + 4 * n, 3)) if noise else solid(col, w=24 + 4 * n)
            save_png(root / "images" / f"ex_{n}_{i}.png", pixels)  # non-square: resized and centre-cropped
        lines.append(
            {
                "id": n,
                "image_0": f"ex_{n}_0",
                "image_1": f"ex_{n}_1",
                "caption_0": cap0,
                "caption_1": cap1,
                "tag": "Object",
                "secondary_tag": "",
                "num_main_preds": 1,
                "collapsed_tag": "Object",
            }
        )
    (root / "examples.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return root


def swap_winoground(src: Path, dst: Path) -> Path:
    """The same release with caption_0 <-> caption_1 and image_0 <-> image_1 in every line."""
    lines = [json.loads(x) for x in (src / "examples.jsonl").read_text().splitlines()]
    swapped = [
        {
            **x,
            "image_0": x["image_1"],
            "image_1": x["image_0"],
            "caption_0": x["caption_1"],
            "caption_1": x["caption_0"],
        }
        for x in lines
    ]
    dst.mkdir()
    (dst / "images").symlink_to(src / "images")
    (dst / "examples.jsonl").write_text("".join(json.dumps(x) + "\n" for x in swapped))
    return dst


def two_halves() -> np.ndarray:
    """40 x 20: left half red, right half blue."""
    return np.concatenate([solid("red", 20, 20), solid("blue", 20, 20)], axis=1)


LEFT, RIGHT = (0, 0, 20, 20), (20, 0, 20, 20)  # ARO boxes (x, y, w, h) of the halves


def aro_case(box, true: str, false: str, **group) -> dict:
    x, y, w, h = box
    return {
        "image_id": "2316740",
        "image_path": "2316740.jpg",  # ARO's paths name the GQA image file; ours is a PNG under that name
        "bbox_x": x,
        "bbox_y": y,
        "bbox_w": w,
        "bbox_h": h,
        "true_caption": true,
        "false_caption": false,
        **group,
    }


def write_aro(root: Path, relation: list[dict], attribution: list[dict]) -> Path:
    """ARO's root_dir: visual_genome_{relation,attribution}.json + images/ (vgr_vga_images.zip unzipped)."""
    root.mkdir(parents=True, exist_ok=True)
    save_png(root / "images" / "2316740.jpg", two_halves())  # PNG content: PIL reads it whatever the name
    (root / "visual_genome_relation.json").write_text(json.dumps(relation))
    (root / "visual_genome_attribution.json").write_text(json.dumps(attribution))
    return root


COCO_NAMES = {"red": "000000000139.jpg", "blue": "000000000285.jpg"}  # COCO val2017 names


def write_sugarcrepe(root: Path, images: Path, cases: dict[str, list[tuple[str, str, str]]]) -> Path:
    """The repo's data/ (<category>.json: {id: {filename, caption, negative_caption}}) and COCO-named images."""
    root.mkdir(parents=True)
    for colour, name in COCO_NAMES.items():
        save_png(images / name, solid(colour))
    for category, rows in cases.items():
        records = {
            str(k): {"filename": COCO_NAMES[col], "caption": pos, "negative_caption": neg}
            for k, (col, pos, neg) in enumerate(rows)
        }
        (root / f"{category}.json").write_text(json.dumps(records))
    return root


# --------------------------------------------------------------------------- a tiny model, an oracle


@pytest.fixture(scope="module")
def setup(tmp_path_factory, cache_dir):
    cfg = compose_cfg([ALL_OBJECTIVES, *TINY, "objective=[itc,itm]"], tmp_path_factory.mktemp("run"))
    dm = build_datamodule(cfg)
    torch.manual_seed(0)  # the untrained weights: the same in every session
    return build_module(cfg, dm.info).eval(), dm


def inputs_of(dm) -> Inputs:
    return Inputs(dm.datasets["test"], dm.tokenizer)


def oracle(monkeypatch, module, tokenizer, table: dict[tuple[str, str], float]) -> list[torch.Tensor]:
    """Make the model score s(text, image) = table[(first word of text, colour of image)] (0 if absent).
    Returns the list the patched image encoder appends every image batch's pixel_values to."""
    start = tokenizer.encode("").ids[0]
    word_of = {}
    for word, _ in table:
        ids = tokenizer.encode(word).ids
        assert ids[0] == start and len(ids) == 3, f"{word!r} is not one token of the tiny vocabulary"
        word_of[ids[1]] = word
    seen = []

    def encode_image(batch, hide=None):
        seen.append(batch["pixel_values"])
        pooled = batch["pixel_values"].mean((2, 3))  # (B, 3): a solid image's dominant channel is +1
        return Features(pooled[:, None], torch.ones(len(pooled), 1, dtype=torch.bool), pooled)

    def encode_text(input_ids, attention_mask, causal=False):
        pooled = input_ids[:, 1:2].float()  # (B, 1) the first word's id
        return Features(pooled[:, None], torch.ones(len(pooled), 1, dtype=torch.bool), pooled)

    def pair_score(model, text, image):
        words = [word_of.get(int(t)) for t in text.pooled[:, 0].tolist()]
        colours = [CHANNEL_COLOUR[c] for c in image.pooled.argmax(-1).tolist()]
        return torch.tensor([table.get((w, c), 0.0) for w, c in zip(words, colours)])

    monkeypatch.setattr(module.model, "encode_image", encode_image)
    monkeypatch.setattr(module.model, "encode_text", encode_text)
    monkeypatch.setattr(module.objectives["itm"], "pair_score", pair_score)
    return seen


# --------------------------------------------------------------------------- (a) the rules, by hand


def test_winoground_rules_one_case_per_outcome():
    # s[n, c, i] = s(caption c, image i)
    s = torch.tensor(
        [
            [[1.0, 0.0], [0.0, 1.0]],  # each caption on its image: text, image, group
            [[2.0, 3.0], [0.0, 4.0]],  # text only: image 0 prefers c0 (2 > 0), image 1 c1 (4 > 3); c0 prefers i1
            [[1.0, 0.0], [2.0, 3.0]],  # image only: c0 prefers i0, c1 prefers i1; image 0 prefers c1 (2 > 1)
            [[0.0, 1.0], [1.0, 0.0]],  # crossed: nothing
            [[1.0, 1.0], [1.0, 1.0]],  # all tied: nothing (ties are not wins)
            [[1.0, 1.0 - 1e-6], [1.0 - 1e-6, 1.0]],  # a hair above a tie everywhere: all three
        ]
    )
    assert winoground_scores(s[:1]) == {"text": 1.0, "image": 1.0, "group": 1.0}
    assert winoground_scores(s[1:2]) == {"text": 1.0, "image": 0.0, "group": 0.0}
    assert winoground_scores(s[2:3]) == {"text": 0.0, "image": 1.0, "group": 0.0}
    assert winoground_scores(s[3:5]) == {"text": 0.0, "image": 0.0, "group": 0.0}
    assert winoground_scores(s) == pytest.approx({"text": 3 / 6, "image": 3 / 6, "group": 2 / 6})
    # the rules are symmetric under swapping both captions and both images, not under one swap
    both = s.flip(1).flip(2)
    assert winoground_scores(both) == winoground_scores(s)
    assert winoground_scores(s.flip(1)[:2]) == {"text": 0.0, "image": 0.0, "group": 0.0}


def test_macro_accuracy_groups_min_count_and_exclusions():
    right = [True, True, False, True, False, False]
    groups = ["on", "on", "on", "has", "has", "near"]  # on 2/3, has 1/2, near 0/1
    assert macro_accuracy(right, groups) == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    assert macro_accuracy(right, groups, excluded=frozenset({"near"})) == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert macro_accuracy(right, groups, min_count=2) == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert macro_accuracy(right, groups, min_count=3) == pytest.approx(2 / 3)
    assert macro_accuracy(right, groups, min_count=4) is None


# --------------------------------------------------------------------------- (b) end to end


# (image_0, image_1, caption_0, caption_1) and the oracle's table: worked out per example in the comments
WINOGROUND_EXAMPLES = [
    ("red", "blue", "red circle", "blue circle"),  # s = [[1, 0], [0, 1]]: text, image, group
    ("red", "blue", "circle left", "square left"),  # s = [[2, 3], [0, 4]]: text only
    ("green", "blue", "triangle above", "cross above"),  # s = [[1, 0], [2, 3]]: image only
    ("red", "green", "small circle", "large circle"),  # no entries: all tied, nothing
    ("green", "red", "left circle", "right circle"),  # s = [[2, 3], [0, 4]]: text only
]
WINOGROUND_TABLE = {
    ("red", "red"): 1.0,
    ("blue", "blue"): 1.0,
    ("circle", "red"): 2.0,
    ("circle", "blue"): 3.0,
    ("square", "red"): 0.0,
    ("square", "blue"): 4.0,
    ("triangle", "green"): 1.0,
    ("triangle", "blue"): 0.0,
    ("cross", "green"): 2.0,
    ("cross", "blue"): 3.0,
    ("left", "green"): 2.0,
    ("left", "red"): 3.0,
    ("right", "green"): 0.0,
    ("right", "red"): 4.0,
}


def test_winoground_known_answers_each_image_encoded_once(setup, tmp_path, monkeypatch):
    module, dm = setup
    root = write_winoground(tmp_path / "winoground", WINOGROUND_EXAMPLES)
    seen = oracle(monkeypatch, module, dm.tokenizer, WINOGROUND_TABLE)
    out = protocol("winoground", root=str(root))(module, inputs_of(dm), batch_size=3)
    # text: examples 0, 1, 4; image: 0, 2; group: 0 (a transposed score matrix would swap text and image)
    assert out == pytest.approx(
        {"winoground/text": 3 / 5, "winoground/image": 2 / 5, "winoground/group": 1 / 5, "winoground/num_examples": 5}
    )
    assert [len(b) for b in seen] == [3, 3, 3, 1]  # 10 distinct images, each encoded once, 3 per batch
    pixels = torch.cat(seen)
    assert pixels.shape[1:] == (3, 48, 48)  # the model's image size (the run's data)
    assert pixels[0, 0].eq(1.0).all() and pixels[0, 1:].eq(-1.0).all()  # red, normalised as the datamodule does
    # max_images: the first two examples only (text, text)
    seen.clear()
    out = protocol("winoground", root=str(root), max_images=2)(module, inputs_of(dm), batch_size=8)
    assert out["winoground/text"] == 1.0 and out["winoground/image"] == 0.5 and out["winoground/num_examples"] == 2
    assert [len(b) for b in seen] == [4]


@pytest.mark.parametrize("scorer", ["itm", "itc"])
def test_winoground_untrained_model_names_ranges_and_swap_symmetry(setup, tmp_path, monkeypatch, scorer):
    module, dm = setup
    if scorer == "itc":  # ITC's cosine, as for a model without ITM
        monkeypatch.setattr(module.objectives["itm"], "pair_score_rank", 0)
    matrices = []  # the (N, 2, 2) score matrix of each call
    monkeypatch.setattr(diagnostic_sets, "winoground_scores", lambda s: matrices.append(s) or winoground_scores(s))
    words = ["red", "blue", "green", "circle", "square", "triangle", "left", "right", "above", "below"]
    rng = np.random.default_rng(0)
    examples = [
        (*rng.choice(list(RGB), 2, replace=False), " ".join(pair), " ".join(pair[::-1]))
        for pair in (rng.choice(words, 2, replace=False).tolist() for _ in range(24))
    ]
    root = write_winoground(tmp_path / "a", examples, noise=True)
    out = protocol("winoground", root=str(root))(module, inputs_of(dm), batch_size=1)
    assert set(out) == WINOGROUND_NAMES and out["winoground/num_examples"] == 24
    assert all(0.0 <= out[f"winoground/{k}"] <= 1.0 for k in ("text", "image", "group"))
    assert out["winoground/group"] <= min(out["winoground/text"], out["winoground/image"])
    # caption_0 <-> caption_1 and image_0 <-> image_1 in every line: s[n, c, i] -> s[n, 1 - c, 1 - i] (batch 1:
    # every forward sees the same inputs in both files, so the scores are bit-identical), which the rules
    # map to the same text, image and group outcomes
    swapped = protocol("winoground", root=str(swap_winoground(root, tmp_path / "b")))(
        module, inputs_of(dm), batch_size=1
    )
    s, s_swapped = matrices
    assert s.unique().numel() > 24  # scores that differ: the comparison below is not vacuous
    assert torch.equal(s_swapped, s.flip(1).flip(2))
    assert swapped == out


def test_aro_relation_accuracy_and_the_papers_macro_accuracy(setup, tmp_path, monkeypatch):
    module, dm = setup
    relation = [
        aro_case(RIGHT, "blue square", "red square", relation_name="above"),  # blue crop: 1 > 0, right
        aro_case(LEFT, "blue square", "red square", relation_name="holding"),  # red crop: 0 < 1, wrong
        aro_case(LEFT, "red square", "blue square", relation_name="holding"),  # right
        aro_case(RIGHT, "red square", "blue square", relation_name="next to"),  # wrong; symmetric: not in macro
        aro_case(RIGHT, "green square", "red square", relation_name="above"),  # 0 = 0: a tie is wrong
    ]
    root = write_aro(tmp_path / "aro", relation, attribution=[])
    seen = oracle(monkeypatch, module, dm.tokenizer, {("red", "red"): 1.0, ("blue", "blue"): 1.0})
    out = protocol("aro_relation", root=str(root))(module, inputs_of(dm), batch_size=8)
    # acc 2/5; macro over relations but "next to": (above 1/2 + holding 1/2) / 2 (with it: 1/3)
    assert out == pytest.approx(
        {"aro_relation/acc": 0.4, "aro_relation/macro_acc": 0.5, "aro_relation/num_examples": 5}
    )
    assert [len(b) for b in seen] == [2]  # two distinct crops of one file, each encoded once


def test_aro_attribution_macro_counts_attribute_pairs_with_25_cases(setup, tmp_path, monkeypatch):
    module, dm = setup
    right = aro_case(RIGHT, "blue square", "red square", attributes=["blue", "red"])
    wrong = aro_case(LEFT, "blue square", "red square", attributes=["blue", "red"])
    rare = aro_case(LEFT, "blue circle", "red circle", attributes=["large", "small"])  # 3 cases: below 25
    attribution = [right] * 20 + [wrong] * 5 + [rare] * 3
    root = write_aro(tmp_path / "aro", relation=[], attribution=attribution)
    oracle(monkeypatch, module, dm.tokenizer, {("red", "red"): 1.0, ("blue", "blue"): 1.0})
    out = protocol("aro_attribution", root=str(root))(module, inputs_of(dm), batch_size=8)
    assert out == pytest.approx(
        {"aro_attribution/acc": 20 / 28, "aro_attribution/macro_acc": 0.8, "aro_attribution/num_examples": 28}
    )
    # fewer than 25 cases of every pair: no macro accuracy
    out = protocol("aro_attribution", root=str(root), max_images=10)(module, inputs_of(dm), batch_size=8)
    assert out == pytest.approx({"aro_attribution/acc": 1.0, "aro_attribution/num_examples": 10})


def test_aro_untrained_model_gives_fractions(setup, tmp_path):
    module, dm = setup
    cases = [aro_case(b, "the red square", "the square red", relation_name="on") for b in (LEFT, RIGHT)]
    root = write_aro(tmp_path / "aro", cases, [aro_case(LEFT, "red", "blue", attributes=["red", "blue"])])
    out = protocol("aro_relation", root=str(root))(module, inputs_of(dm), batch_size=8)
    assert set(out) == {"aro_relation/acc", "aro_relation/macro_acc", "aro_relation/num_examples"}
    assert out["aro_relation/acc"] in (0.0, 0.5, 1.0) and out["aro_relation/macro_acc"] == out["aro_relation/acc"]
    out = protocol("aro_attribution", root=str(root))(module, inputs_of(dm), batch_size=8)
    assert set(out) == {"aro_attribution/acc", "aro_attribution/num_examples"}  # 1 case: no pair reaches 25


def test_sugarcrepe_per_category_known_answers(setup, tmp_path, monkeypatch):
    module, dm = setup
    ok, bad = ("red", "red circle", "blue circle"), ("blue", "red circle", "blue circle")  # right, wrong
    tie = ("red", "green circle", "blue circle")  # 0 = 0: wrong
    cases = {c: [ok, bad] for c in SUGARCREPE_CATEGORIES}
    cases["add_obj"], cases["swap_att"] = [ok, ok], [bad, tie]
    root = write_sugarcrepe(tmp_path / "data", tmp_path / "val2017", cases)
    seen = oracle(monkeypatch, module, dm.tokenizer, {("red", "red"): 1.0, ("blue", "blue"): 1.0})
    out = protocol("sugarcrepe", root=str(root), image_root=str(tmp_path / "val2017"))(
        module, inputs_of(dm), batch_size=8
    )
    expected = {f"sugarcrepe/{c}_acc": 0.5 for c in SUGARCREPE_CATEGORIES}
    expected.update({"sugarcrepe/add_obj_acc": 1.0, "sugarcrepe/swap_att_acc": 0.0})
    expected.update({"sugarcrepe/mean_acc": 0.5, "sugarcrepe/num_examples": 14})
    assert out == pytest.approx(expected)
    assert [len(b) for b in seen] == [2]  # two COCO images shared by every category, each encoded once


# --------------------------------------------------------------------------- (c) the ARO crop


def test_aro_box_crops_the_region_before_resizing(tmp_path):
    pixels = np.zeros((40, 60, 3), dtype=np.uint8)  # 60 wide, 40 high, black
    pixels[10:20, 30:40] = RGB["green"]  # a 10 x 10 green patch at x 30..39, y 10..19
    pixels[:, :5] = RGB["red"]  # a red band on the left edge
    save_png(tmp_path / "img.png", pixels)
    # exactly the patch: every pixel green (10 x 10 is already the size: no resize)
    patch = read_image(ImageRef(tmp_path / "img.png", (30, 10, 10, 10)), 10)
    assert patch.shape == (10, 10, 3) and (patch == RGB["green"]).all()
    # a 20 x 20 box around it: the patch at rows / columns 5..14, black elsewhere
    around = read_image(ImageRef(tmp_path / "img.png", (25, 5, 20, 20)), 20)
    assert (around[5:15, 5:15] == RGB["green"]).all()
    mask = np.ones((20, 20), dtype=bool)
    mask[5:15, 5:15] = False
    assert (around[mask] == 0).all()
    # no box: the whole image, short side (40) to 20 and centre-cropped: columns 10..49 of 60 kept, so the
    # red band (x < 5) is cut off and the patch lands at x (30 - 10) / 2 = 10.., y 10 / 2 = 5..
    whole = read_image(ImageRef(tmp_path / "img.png"), 20)
    assert whole.shape == (20, 20, 3) and whole[:, :, 0].max() < 64  # no red left
    assert (whole[6:9, 11:14] == RGB["green"]).all()  # the patch's interior, away from resampled edges


# --------------------------------------------------------------------------- (d) missing files, no root


def test_missing_files_name_themselves_and_the_layout(setup, tmp_path):
    module, dm = setup
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(Unavailable, match=r"empty/examples\.jsonl not found; expected .*images/<image_0>\.png"):
        protocol("winoground", root=str(empty))(module, inputs_of(dm), batch_size=8)
    root = write_winoground(tmp_path / "winoground", WINOGROUND_EXAMPLES[:2])
    (root / "images" / "ex_1_0.png").unlink()
    with pytest.raises(Unavailable, match=r"1 of 4 images not found, e\.g\. .*images/ex_1_0\.png; expected"):
        protocol("winoground", root=str(root))(module, inputs_of(dm), batch_size=8)
    with pytest.raises(Unavailable, match=r"eval\.winoground\.root=.*nowhere is not a folder"):
        protocol("winoground", root=str(tmp_path / "nowhere"))(module, inputs_of(dm), batch_size=8)
    with pytest.raises(Unavailable, match=r"visual_genome_attribution\.json not found; expected .*image_path"):
        protocol("aro_attribution", root=str(empty))(module, inputs_of(dm), batch_size=8)
    aro = write_aro(tmp_path / "aro", [aro_case(LEFT, "a", "b", relation_name="on")], [])
    (aro / "images" / "2316740.jpg").unlink()
    with pytest.raises(Unavailable, match=r"images/2316740\.jpg; expected"):
        protocol("aro_relation", root=str(aro))(module, inputs_of(dm), batch_size=8)
    (aro / "visual_genome_relation.json").write_text(json.dumps([{"image_path": "x.jpg"}]))
    with pytest.raises(Unavailable, match=r"record 0 has no \['bbox_x'"):
        protocol("aro_relation", root=str(aro))(module, inputs_of(dm), batch_size=8)
    with pytest.raises(Unavailable, match=r"has no \['add_obj\.json', .*'swap_att\.json'\]"):
        protocol("sugarcrepe", root=str(empty), image_root=str(empty))(module, inputs_of(dm), batch_size=8)
    with pytest.raises(Unavailable, match=r"not configured: set eval\.sugarcrepe\.image_root"):
        protocol("sugarcrepe", root=str(empty))(module, inputs_of(dm), batch_size=8)
    crepe = write_sugarcrepe(tmp_path / "data", tmp_path / "val2017", {c: [] for c in SUGARCREPE_CATEGORIES})
    (crepe / "add_obj.json").write_text("[]")
    with pytest.raises(Unavailable, match=r"add_obj\.json holds a JSON list, not a dict; expected"):
        protocol("sugarcrepe", root=str(crepe), image_root=str(tmp_path / "val2017"))(
            module, inputs_of(dm), batch_size=8
        )


def test_null_root_is_the_default_and_reports_not_configured(setup):
    module, dm = setup
    with pytest.raises(Unavailable, match=r"not configured: set eval\.winoground\.root to a folder holding"):
        protocol("winoground")(module, inputs_of(dm), batch_size=8)
    sets = ["winoground", "aro_relation", "aro_attribution", "sugarcrepe"]
    metrics, samples = evaluate_suite(module, dm, {"protocols": sets})
    assert metrics == {}
    assert sorted(samples.unavailable) == sorted(sets)
    assert all(why.startswith("not configured: set eval.") for why in samples.unavailable.values())


def test_a_model_without_a_pair_scorer_is_refused(setup, tmp_path, monkeypatch):
    module, dm = setup
    root = write_winoground(tmp_path / "winoground", WINOGROUND_EXAMPLES[:1])
    for objective in module.objectives.values():  # as a model without ITC and ITM
        monkeypatch.setattr(objective, "pair_score_rank", 0)
    with pytest.raises(Unavailable, match="needs an objective that scores image-text pairs"):
        protocol("winoground", root=str(root))(module, inputs_of(dm), batch_size=8)
