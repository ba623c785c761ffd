"""The Shapes generator: determinism, disjoint splits, hold-out, truth of all text, rendering, cache."""

from __future__ import annotations

import re
from collections import Counter

import datasets
import numpy as np
import pytest
import torch

from mmbench.data import shapes
from mmbench.data.shapes import (
    BACKGROUND,
    COLOR_RGB,
    COLORS,
    NEGATIVE_TYPES,
    QUESTION_TYPES,
    SHAPES,
    SIZES,
    ShapeObject,
    build_shapes,
    generate_split,
    rendering,
)
from mmbench.data.shapes import build as shapes_build

NUMBERS = {w: i for i, w in enumerate(shapes.NUMBER_WORDS)}
SMALL = dict(num_train=300, num_val=60, num_test=60)


# --------------------------------------------------------------------------- an independent truth checker


def objects_of(row: dict, grid: int = 3) -> list[dict]:
    """Objects of a dataset row, with their grid cell recovered from the box centre."""
    objs = []
    for (x0, y0, x1, y1), shape, color, size in zip(row["boxes"], row["obj_shape"], row["obj_color"], row["obj_size"]):
        col, rowi = int((x0 + x1) / 2 * grid), int((y0 + y1) / 2 * grid)
        objs.append({"row": rowi, "col": col, "shape": shape, "color": color, "size": size})
    return objs


def key_of(row: dict, grid: int = 3) -> tuple:
    return tuple(sorted((o["row"] * grid + o["col"], o["shape"], o["color"], o["size"]) for o in objects_of(row, grid)))


def holds(a: dict, rel: str, b: dict) -> bool:
    rel = rel.replace("to the ", "")
    return {
        "left of": a["col"] < b["col"],
        "right of": a["col"] > b["col"],
        "above": a["row"] < b["row"],
        "below": a["row"] > b["row"],
    }[rel]


def singular(word: str) -> str:
    if word in SHAPES:
        return word
    return word[:-2] if word.endswith("sses") else word[:-1] if word.endswith("s") else word


def is_true(text: str, objs: list[dict]) -> bool:
    """Truth of a caption / match statement, parsed independently of the generator."""
    if m := re.fullmatch(r"(?:there is |the image shows )?a (?:(small|large) )?(\w+) (\w+)", text):
        size, color, shape = m.groups()
        assert color in COLORS and shape in SHAPES, text
        return any(o["color"] == color and o["shape"] == shape and size in (None, o["size"]) for o in objs)
    rel = r"(left of|right of|above|below|to the left of|to the right of)"
    if m := re.fullmatch(rf"(?:there is )?a (\w+) (\w+) (?:is )?{rel} a (\w+) (\w+)", text):
        c1, s1, r, c2, s2 = m.groups()
        return any(
            a is not b
            and a["color"] == c1
            and a["shape"] == s1
            and b["color"] == c2
            and b["shape"] == s2
            and holds(a, r, b)
            for a in objs
            for b in objs
        )
    if m := re.fullmatch(r"(?:there (?:is|are)|the image contains) (\w+) objects?", text):
        return NUMBERS[m.group(1)] == len(objs)
    if m := re.fullmatch(r"there (?:is|are) (\w+) (\w+)", text):
        shape = singular(m.group(2))
        assert shape in SHAPES, text
        return NUMBERS[m.group(1)] == sum(o["shape"] == shape for o in objs)
    parts = re.split(r", | and ", text)  # inventory: "two circles and a square"
    counts = {}
    for part in parts:
        n, word = part.split(" ")
        assert singular(word) in SHAPES, text
        counts[singular(word)] = 1 if n == "a" else NUMBERS[n]
    return counts == dict(Counter(o["shape"] for o in objs))


def expected_answer(question: str, objs: list[dict]) -> str:
    """The answer to a question, computed independently; asserts the question is unambiguous."""
    if m := re.fullmatch(r"what color is the (\w+)\?", question):
        found = [o for o in objs if o["shape"] == m.group(1)]
        assert len(found) == 1, question
        return found[0]["color"]
    if m := re.fullmatch(r"what shape is the (\w+) object\?", question):
        found = [o for o in objs if o["color"] == m.group(1)]
        assert len(found) == 1, question
        return found[0]["shape"]
    if question == "how many objects are there?":
        return shapes.NUMBER_WORDS[len(objs)]
    if m := re.fullmatch(r"how many (\w+) are there\?", question):
        return shapes.NUMBER_WORDS[sum(o["shape"] == singular(m.group(1)) for o in objs)]
    if m := re.fullmatch(r"is there a (\w+) (\w+)\?", question):
        return "yes" if any(o["color"] == m.group(1) and o["shape"] == m.group(2) for o in objs) else "no"
    m = re.fullmatch(
        r"which is (further left|further right|higher|lower), the (\w+) (\w+) or the (\w+) (\w+)\?", question
    )
    assert m, question
    direction, c1, s1, c2, s2 = m.groups()
    (a,) = [o for o in objs if o["color"] == c1 and o["shape"] == s1]
    (b,) = [o for o in objs if o["color"] == c2 and o["shape"] == s2]
    axis, sign = {"further left": ("col", 1), "further right": ("col", -1), "higher": ("row", 1), "lower": ("row", -1)}[
        direction
    ]
    assert a[axis] != b[axis], f"relation not strictly defined: {question}"
    winner = a if sign * (b[axis] - a[axis]) > 0 else b
    return winner["shape"] if s1 != s2 else winner["color"]


def split(n: int, name: str = "train", seed: int = 0, **kw) -> dict:
    return generate_split(name, n, seed=seed, id_offset=0, **kw)


# --------------------------------------------------------------------------- tests


def test_determinism():
    a, b, c = split(150), split(150), split(150, seed=1)
    assert a == b  # every column, pixel bytes included
    assert a["pixels"] != c["pixels"] and a["captions"] != c["captions"]
    assert set(a) == set(shapes.FEATURES)


def test_text_is_true_and_negatives_false():
    cols = split(600, max_objects=4)
    rows = [dict(zip(cols, values)) for values in zip(*cols.values())]
    negative_types = Counter()
    for row in rows:
        objs = objects_of(row)
        assert len(set(row["captions"])) == len(row["captions"]) == 4
        for caption in row["captions"]:
            assert is_true(caption, objs), (caption, objs)
        assert is_true(row["match_text"], objs), (row["match_text"], objs)
        assert 1 <= len(row["match_negatives"]) == len(row["match_negative_types"]) == len(row["match_positives"])
        for positive, kind in zip(row["match_positives"], row["match_negative_types"]):
            assert is_true(positive, objs) and (positive == row["match_text"]) == (kind != "count_change")
        assert len(set(row["match_negatives"])) == len(row["match_negatives"])
        for negative, kind in zip(row["match_negatives"], row["match_negative_types"]):
            assert kind in NEGATIVE_TYPES
            assert not is_true(negative, objs), (negative, kind, objs)
            if len(objs) > 1 and kind != "count_change":  # same bag of words as the true statement
                assert sorted(negative.split()) == sorted(row["match_text"].split())
            negative_types[kind] += 1
        for question, answer, qtype in zip(row["questions"], row["answers"], row["question_types"]):
            assert qtype in QUESTION_TYPES
            assert expected_answer(question, objs) == answer, (question, answer, objs)
        assert row["labels"] == [
            SHAPES.index(s) * len(COLORS) + COLORS.index(c) for s, c in zip(row["obj_shape"], row["obj_color"])
        ]
    assert set(negative_types) == set(NEGATIVE_TYPES)


def test_caption_negatives_are_false_reorderings_of_relation_captions():
    cols = split(400, max_objects=4)
    rows = [dict(zip(cols, values)) for values in zip(*cols.values())]
    kinds = Counter()
    for row in rows:
        objs = objects_of(row)
        assert len(row["caption_negatives"]) == len(row["captions"])
        for caption, negative in zip(row["captions"], row["caption_negatives"]):
            is_relation = shapes.claim_of(caption).startswith("relation:")
            kinds[(is_relation, bool(negative))] += 1
            if negative:
                assert is_relation and negative != caption
                assert sorted(negative.split()) == sorted(caption.split())  # the same bag of words
                assert not is_true(negative, objs), (caption, negative, objs)  # the independent checker
    assert kinds[(False, True)] == 0  # only relation captions have a word-order negative
    assert kinds[(True, True)] > 0.9 * (kinds[(True, True)] + kinds[(True, False)])  # nearly all of them do


def test_caption_relation_directions_two_states_every_relation_left_of_or_above():
    """caption_relation_directions=2: captions, their negatives and the matching statements say only
    "left of" / "above", every caption and statement true and every negative false (the independent
    checker); the default (4) leaves the cache key as it was. (Scenes drawn after the first caption that
    differs come out differently: captions are drawn distinct, from the same random stream as scenes.)"""
    four, two = split(400, max_objects=4), split(400, max_objects=4, caption_relation_directions=2)
    words = Counter()
    rows = [dict(zip(two, values)) for values in zip(*two.values())]
    for row in rows:
        objs = objects_of(row)
        statements = [*row["captions"], row["match_text"], *row["match_positives"]]
        negatives = [*filter(None, row["caption_negatives"]), *row["match_negatives"]]
        for text in statements + negatives:
            claim = shapes.claim_of(text)
            if claim.startswith("relation:"):
                words[claim.split("|")[1]] += 1
        assert all(is_true(t, objs) for t in statements), (statements, objs)
        assert not any(is_true(t, objs) for t in negatives), (negatives, objs)
    assert set(words) == {"left of", "above"} and min(words.values()) > 0.3 * sum(words.values()), words
    # the default states relations with all four words, as Shapes v8 did
    default_words = {
        shapes.claim_of(c).split("|")[1] for cs in four["captions"] for c in cs if "|" in shapes.claim_of(c)
    }
    assert default_words == {"left of", "right of", "above", "below"}
    assert shapes.shapes_config(caption_relation_directions=4) == shapes.shapes_config()
    hashes = {d: shapes.shapes_config_hash(**shapes.shapes_config(caption_relation_directions=d)) for d in (2, 4)}
    assert hashes[2] != hashes[4] == shapes.shapes_config_hash(**shapes.shapes_config())


def test_order_swapped_keeps_the_template():
    for t in range(len(shapes.RELATION_TEMPLATES)):
        text = shapes.relation_text(("red", "circle"), "left of", ("blue", "square"), t)
        assert shapes.order_swapped(text) == shapes.relation_text(("blue", "square"), "left of", ("red", "circle"), t)
    assert shapes.order_swapped("a small red circle") == shapes.order_swapped("there are two objects") == ""


def test_truth_functions_on_hand_built_scene():
    # red circle | blue square | red circle in the top row, green triangle below the square
    scene = (
        ShapeObject(0, 0, "circle", "red", "small"),
        ShapeObject(0, 1, "square", "blue", "large"),
        ShapeObject(0, 2, "circle", "red", "small"),
        ShapeObject(1, 1, "triangle", "green", "small"),
    )
    assert shapes.strict_relations(scene[0], scene[1]) == ["left of"]
    assert shapes.strict_relations(scene[3], scene[0]) == ["right of", "below"]
    assert shapes.relation_claim_true(scene, ("red", "circle"), "left of", ("blue", "square"))
    assert shapes.relation_claim_true(scene, ("blue", "square"), "left of", ("red", "circle"))  # the other circle
    assert not shapes.relation_claim_true(scene, ("blue", "square"), "below", ("green", "triangle"))
    assert shapes.has_object(scene, "blue", "square", "large") and not shapes.has_object(
        scene, "blue", "square", "small"
    )
    assert shapes.inventory_text(scene) == "two circles, a square and a triangle"
    assert shapes.available_question_types(scene) == ["color", "shape", "count", "exist", "relation"]
    objs = [{"row": o.row, "col": o.col, "shape": o.shape, "color": o.color, "size": o.size} for o in scene]
    rs = shapes.RandomStream(np.random.default_rng(0))
    for _ in range(50):  # the duplicated red circle makes naive swaps true; they must be filtered out
        text, negatives, _, _ = shapes.make_match(scene, rs)
        assert is_true(text, objs) and not any(is_true(n, objs) for n in negatives)


def test_pixels_of_hand_built_scene():
    for shape in SHAPES:
        obj = ShapeObject(1, 2, shape, "purple", "large")  # middle row, right column, no jitter
        image, (box,) = shapes.render((obj,), image_size=64, grid=3)
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        x, y = rendering._centre(obj, shapes.layout(64, 3))
        assert tuple(image[y, x]) == COLOR_RGB["purple"], shape
        assert tuple(image[0, 0]) == tuple(image[63, 63]) == (BACKGROUND,) * 3
        x0, y0, x1, y1 = box
        assert 2 / 3 <= x0 <= x / 64 < x1 <= 1 and 1 / 3 <= y0 <= y / 64 < y1 <= 2 / 3  # inside its cell
    cols = split(20)
    image = shapes.decode_pixels(cols["pixels"][0], 64)
    (x0, y0, x1, y1), color = cols["boxes"][0][0], cols["obj_color"][0][0]
    inside = image[int(y0 * 64) : int(y1 * 64), int(x0 * 64) : int(x1 * 64)].reshape(-1, 3)
    assert (inside == COLOR_RGB[color]).all(axis=1).any()


def test_splits_disjoint_and_holdout(tmp_path):
    holdout = [["red", "circle"], ["blue", "square"]]
    dsd, _ = build_shapes(tmp_path, holdout=holdout, num_holdout=50, **SMALL)
    assert list(dsd) == ["train", "val", "test", "test_holdout"]
    keys, ids = {name: set() for name in dsd}, []
    for name, ds in dsd.items():
        for row in ds:
            keys[name].add(key_of(row))
            ids.append(row["image_id"])
            combos = set(zip(row["obj_color"], row["obj_shape"]))
            held = combos & {tuple(p) for p in holdout}
            assert bool(held) == (name == "test_holdout"), (name, combos)
            if name != "test_holdout":  # held-out combinations are never named in regular splits
                text = " ".join(row["captions"] + row["questions"])
                assert "red circle" not in text and "blue square" not in text
    assert len(set(ids)) == len(ids) == sum(len(ds) for ds in dsd.values())
    names = list(keys)
    for i, a in enumerate(names):  # no scene (objects, cells, attributes) is shared by two splits
        for b in names[i + 1 :]:
            assert not keys[a] & keys[b], (a, b)


def test_object_counts_are_balanced_across_splits(tmp_path):
    dsd, _ = build_shapes(tmp_path, num_train=1500, num_val=300, num_test=300)
    for name in ("train", "val", "test"):
        counts = np.bincount([len(s) for s in dsd[name]["obj_shape"]], minlength=4)[1:] / len(dsd[name])
        assert np.all(np.abs(counts - 1 / 3) < 0.1), (name, counts)  # was 0.01 for train before


def test_evaluation_splits_do_not_depend_on_num_train(tmp_path):
    a, _ = build_shapes(tmp_path, num_train=50, num_val=40, num_test=40)
    b, _ = build_shapes(tmp_path, num_train=200, num_val=40, num_test=40)
    assert a["test"][:] == b["test"][:] and a["val"][:] == b["val"][:]


def test_cache_reuse_and_atomicity(tmp_path, monkeypatch):
    first, path = build_shapes(tmp_path, **SMALL)
    assert path == tmp_path / f"shapes-{path.name.split('-')[1]}" and (path / "config.json").is_file()

    def fail(*args, **kwargs):
        raise AssertionError("regenerated although the cache is complete")

    monkeypatch.setattr(shapes_build, "generate_shapes", fail)  # where build_shapes looks it up
    second, path2 = build_shapes(tmp_path, **SMALL)
    assert path2 == path
    for name in first:
        assert first[name][:] == second[name][:]
    monkeypatch.undo()

    _, other = build_shapes(tmp_path, seed=1, **SMALL)
    assert other != path

    # a crash while saving leaves neither the target nor a temporary directory behind
    def crash(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(datasets.DatasetDict, "save_to_disk", crash)
    with pytest.raises(OSError):
        build_shapes(tmp_path, seed=2, **SMALL)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, other.name])

    # a half-written directory (no config.json) is regenerated, not loaded
    stale = tmp_path / f"shapes-{shapes.shapes_config_hash(**shapes.shapes_config(seed=3, **SMALL))}"
    (stale / "train").mkdir(parents=True)
    dsd, path3 = build_shapes(tmp_path, seed=3, **SMALL)
    assert path3 == stale and len(dsd["train"]) == SMALL["num_train"]


def test_config_hash():
    h = shapes.shapes_config_hash(**shapes.shapes_config())
    assert re.fullmatch(r"[0-9a-f]{16}", h)
    assert h != shapes.shapes_config_hash(**shapes.shapes_config(seed=1))
    a = shapes.shapes_config(holdout=[["red", "circle"], ["blue", "cross"]])
    b = shapes.shapes_config(holdout=(("blue", "cross"), ("red", "circle")))
    assert shapes.shapes_config_hash(**a) == shapes.shapes_config_hash(**b)
    assert shapes.shapes_config(holdout=[]) == shapes.shapes_config(holdout=())


def test_answer_distribution():
    cols = split(2000)
    answers = Counter(a for row in cols["answers"] for a in row)
    assert max(answers.values()) / sum(answers.values()) < 0.35, answers.most_common(3)
    exist = Counter(
        a for row_a, row_t in zip(cols["answers"], cols["question_types"]) for a, t in zip(row_a, row_t) if t == "exist"
    )
    assert set(exist) == {"yes", "no"} and 0.4 < exist["yes"] / exist.total() < 0.6, exist
    # relation: the answer names the first-named object half of the time; one direction per axis is asked
    relation = [
        (q, a)
        for row_q, row_a, row_t in zip(cols["questions"], cols["answers"], cols["question_types"])
        for q, a, t in zip(row_q, row_a, row_t)
        if t == "relation"
    ]
    first = [re.fullmatch(r"which is [\w ]+, the (\w+) (\w+) or the (\w+) (\w+)\?", q).groups() for q, _ in relation]
    named_first = [a in (c1, s1) and a not in (c2, s2) for (c1, s1, c2, s2), (_, a) in zip(first, relation)]
    assert len(relation) > 300 and 0.45 < sum(named_first) / len(relation) < 0.55
    directions = Counter(q.split(",")[0] for q, _ in relation)
    assert set(directions) == {"which is further left", "which is higher"}, directions
    assert min(directions.values()) > 0.35 * len(relation), directions


def test_relation_directions():
    """relation_directions=4 (Shapes v6's form) asks both directions of each axis, every answer true;
    the default 2 leaves the cache key as it was."""
    both = split(1000, relation_directions=4)
    relation = [
        (q, a, row)
        for row in (dict(zip(both, values)) for values in zip(*both.values()))
        for q, a, t in zip(row["questions"], row["answers"], row["question_types"])
        if t == "relation"
    ]
    directions = Counter(q.split(",")[0] for q, _, _ in relation)
    assert len(directions) == 4 and min(directions.values()) > 0.15 * len(relation), directions
    assert all(a == expected_answer(q, objects_of(row)) for q, a, row in relation)
    assert shapes.shapes_config(relation_directions=2) == shapes.shapes_config()
    four, two = (shapes.shapes_config_hash(**shapes.shapes_config(relation_directions=d)) for d in (4, 2))
    assert four != two == shapes.shapes_config_hash(**shapes.shapes_config())


def test_question_mix():
    """Weights shift the share of question types; the uniform mix reproduces the default data exactly
    (and its cache key), a zero weight removes a type, and every answer stays true."""
    default = split(600)
    assert generate_split("train", 600, seed=0, question_mix={"relation": 1}, id_offset=0) == default
    assert shapes.shapes_config(question_mix={t: 1 for t in QUESTION_TYPES}) == shapes.shapes_config()
    share = lambda cols, t: Counter(x for row in cols["question_types"] for x in row)[t] / (4 * len(cols["image_id"]))
    heavy = generate_split("train", 600, seed=0, question_mix={"relation": 4}, id_offset=0)
    assert share(heavy, "relation") > 2 * share(default, "relation")
    no_count = generate_split("train", 600, seed=0, question_mix={"count": 0}, id_offset=0)
    assert share(no_count, "count") == 0 and share(default, "count") > 0.15
    # one type only, and single-object scenes that cannot answer it: those scenes get the other types
    only = {t: int(t == "relation") for t in QUESTION_TYPES}
    rel = generate_split("train", 300, seed=0, question_mix=only, min_objects=1, max_objects=2, id_offset=0)
    single = [q for q, shape_names in zip(rel["question_types"], rel["obj_shape"]) if len(shape_names) == 1]
    assert single and all("relation" not in q for q in single)
    assert share(rel, "relation") > 0.3
    for row in (dict(zip(heavy, values)) for values in zip(*heavy.values())):
        for q, a in zip(row["questions"], row["answers"]):
            assert a == expected_answer(q, objects_of(row)), q


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(question_mix={"colour": 2}), "valid types: ['color', 'shape', 'count', 'exist', 'relation']"),
        (dict(question_mix={"relation": -1}), "question_mix.relation"),
        (dict(question_mix={t: 0 for t in QUESTION_TYPES}), "every weight is 0"),
        (dict(grid=2, max_objects=5), "max_objects"),
        (dict(image_size=8), "image_size"),
        (dict(image_size=32, grid=5), "image_size"),
        (dict(min_objects=0), "min_objects"),
        (dict(min_objects=3, max_objects=2), "max_objects"),
        (dict(holdout=[["pink", "circle"]]), "valid colours: ['red', 'green', 'blue', 'yellow', 'purple', 'cyan']"),
        (dict(holdout=[["red", "hexagon"]]), "valid shapes: ['circle', 'square', 'triangle', 'cross']"),
        (dict(holdout=["red"]), "holdout"),
        (dict(num_train=-1), "num_train"),
        (dict(captions_per_image=0), "captions_per_image"),
        (dict(num_holdout=10), "num_holdout"),
        (dict(grid=1, max_objects=1, num_train=100), "distinct"),
        (dict(seed=-1), "seed"),
        (dict(relation_directions=3), "relation_directions must be 2 (one direction per axis) or 4"),
        (dict(caption_relation_directions=3), "caption_relation_directions must be 2 (relations stated"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build_shapes(tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())


def test_generate_split_arguments():
    with pytest.raises(ValueError, match=re.escape(str(list(shapes.SPLITS)))):
        split(5, name="dev")
    with pytest.raises(ValueError, match="holdout"):
        split(5, name="test_holdout")
    a = generate_split("test", 30, seed=0, id_offset=100)
    assert a["image_id"] == list(range(100, 130))
    assert set(a["obj_size"][0]) <= set(SIZES)


def test_vqa_baselines_known_answers():
    """Majority answer and per-question prior (a blind model) on a hand-made train / test pair."""
    import datasets

    from mmbench.data.datamodule import VLDataModule

    train = datasets.Dataset.from_dict(
        {
            "questions": [["q1", "q2"], ["q1", "q1"]],
            "answers": [["yes", "two"], ["yes", "no"]],  # q1 -> yes (2 of 3), q2 -> two; overall top: yes
        }
    )
    test = datasets.Dataset.from_dict(
        {
            "questions": [["q1", "q2"], ["q1", "q3"]],  # q3 never asked in training -> the top answer
            "answers": [["yes", "two"], ["no", "yes"]],
        }
    )
    assert VLDataModule._majority_baseline(test, "yes") == pytest.approx(2 / 4)
    assert VLDataModule._question_prior(train, test, "yes") == (pytest.approx(3 / 4), {})
    soft = datasets.Dataset.from_dict(
        {"questions": [["q2"]], "answers": [["two"]], "all_answers": [[["two", "two", "three"]]]}
    )
    # the official VQA accuracy (leave-one-out over the 3 annotators): leaving out either "two" leaves 1 match
    # (1/3), leaving out "three" leaves 2 (2/3): (1/3 + 1/3 + 2/3) / 3 = 4/9, as the model's own vqa/acc is scored
    assert VLDataModule._question_prior(train, soft, "yes")[0] == pytest.approx(4 / 9)
    typed = test.add_column("question_types", [["exist", "count"], ["exist", "count"]])
    assert VLDataModule._question_prior(train, typed, "yes") == (
        pytest.approx(3 / 4),
        {"count": 1.0, "exist": 1 / 2},
    )  # q2, q3 right; q1 once


def test_claims_decide_truth_exactly_like_an_independent_checker():
    """A text is true of a scene iff its claim is among the scene's facts, for texts of *other* scenes too."""
    cols = split(300, max_objects=4)
    rows = [dict(zip(cols, values)) for values in zip(*cols.values())]
    texts = sorted({t for r in rows for t in [*r["captions"], *r["match_negatives"], *r["match_positives"]]})
    rng = np.random.default_rng(0)
    seen = Counter()
    for row in rows[:120]:
        objs, facts = objects_of(row), set(row["image_facts"])
        assert row["caption_claims"] == [shapes.claim_of(c) for c in row["captions"]]
        for text in [*row["captions"], *row["match_positives"], *row["match_negatives"], *rng.choice(texts, 40)]:
            claim = shapes.claim_of(text)
            assert claim, text
            assert (claim in facts) == is_true(text, objs), (text, claim, objs)
            seen[claim in facts] += 1
    assert seen[True] > 500 and seen[False] > 3000, seen  # both answers, other scenes' texts included


def test_claims_of_paraphrases_and_unknown_text():
    same = [
        "a red circle left of a blue square",
        "there is a red circle left of a blue square",
        "a red circle is to the left of a blue square",
    ]
    assert {shapes.claim_of(t) for t in same} == {"relation:red circle|left of|blue square"}
    assert (
        shapes.claim_of("there is a small red circle")
        == shapes.claim_of("the image shows a small red circle")
        == "object:small red circle"
        != shapes.claim_of("a red circle")
    )
    assert shapes.claim_of("there are two objects") == shapes.claim_of("the image contains two objects") == "count:2"
    assert shapes.claim_of("there is one cross") == "shapes:cross=1"
    assert shapes.claim_of("two circles and a square") == "inventory:two circles and a square"
    for unknown in ("a dog on a sofa", "a square and two circles", "a red dog", "there are two dogs", ""):
        assert shapes.claim_of(unknown) == "", unknown
    scene = (ShapeObject(0, 0, "circle", "red", "small"), ShapeObject(1, 1, "square", "blue", "large"))
    assert shapes.scene_facts(scene) == sorted(
        [
            "count:2",
            "inventory:a circle and a square",
            "object:red circle",
            "object:small red circle",
            "object:blue square",
            "object:large blue square",
            "shapes:circle=1",
            "shapes:square=1",
            "relation:red circle|left of|blue square",
            "relation:red circle|above|blue square",
            "relation:blue square|right of|red circle",
            "relation:blue square|below|red circle",
        ]
    )


def test_batches_mark_texts_true_of_other_images(tmp_path):
    """`claims_true(image_facts, text_claim)[i, j]`: caption j is true of image i, by the independent checker."""
    from functools import partial

    from mmbench.data.datamodule import VLDataModule
    from mmbench.objectives.claims import claims_true

    dm = VLDataModule(partial(build_shapes, tmp_path, image_size=48, **SMALL), image_size=48, batch_size=64)
    dm.setup()
    ds = dm.datasets["train"]
    items = [ds[i] for i in range(0, 4 * 64, 4)]  # one caption of each of 64 images
    batch = dm.collate(items)
    rows = ds.split.select(range(64))
    expected = torch.tensor([[is_true(it["caption"], objects_of(row)) for it in items] for row in rows])
    true = claims_true(batch["image_facts"], batch["text_claim"])
    assert torch.equal(true, expected)
    assert true.diagonal().all() and 64 < true.sum() < 64 * 64
    assert batch["image_facts"].shape[1] == max(len(f) for d in dm.datasets.values() for f in d.facts)  # fixed width
