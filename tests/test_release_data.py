"""The release readers (`data=<benchmark> data.root=<dir>`) on format-exact fixtures: each benchmark's files
written at a tiny size with their real names and JSON structure (mmbench/data/release/write.py), read,
converted and trained on end to end through the CLI; missing, misplaced and malformed files refused with
the file named."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mmbench.data import release
from mmbench.data.errors import DataError
from mmbench.data.release.layouts import VQA_FILES
from mmbench.data.release.write import answer_type, write_release_layout
from tests.conftest import cli

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = sorted(release.LAYOUTS)


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("release")
    return {b: write_release_layout(b, base / b, images=12, image_size=48) for b in BENCHMARKS}


def _build(root: Path, benchmark: str, cache: Path, **kwargs):
    return release.build_release(cache, benchmark=benchmark, root=str(root), image_size=32, **kwargs)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------- readers: what the files say


@pytest.mark.parametrize(
    "benchmark,file", [("coco_karpathy", "dataset_coco.json"), ("flickr30k_karpathy", "dataset_flickr30k.json")]
)
def test_karpathy_splits_with_restval_in_train(layouts, benchmark, file, tmp_path):
    images = json.loads((layouts[benchmark] / file).read_text())["images"]
    dsd, _ = _build(layouts[benchmark], benchmark, tmp_path)
    canonical = {"train": "train", "restval": "train", "val": "val", "test": "test"}
    expected = Counter(canonical[i["split"]] for i in images)
    if benchmark == "coco_karpathy":
        assert {i["split"] for i in images} == {"train", "restval", "val", "test"}
    assert {s: len(dsd[s]) for s in ("train", "val", "test")} == dict(expected)
    # every image keeps its raw sentences, under its COCO id (Flickr30k: the file's number)
    for image in images:
        split = dsd[canonical[image["split"]]]
        image_id = image["cocoid"] if benchmark == "coco_karpathy" else int(Path(image["filename"]).stem)
        (row,) = [r for r in split if r["image_id"] == image_id]
        assert row["captions"] == [s["raw"] for s in image["sentences"]]


def test_karpathy_images_are_the_named_files(layouts, tmp_path):
    from PIL import Image

    from mmbench.data.hf.images import square_image
    from mmbench.data.image_codec import decode_pixels

    root = layouts["coco_karpathy"]
    first = json.loads((root / "dataset_coco.json").read_text())["images"][-1]  # a test image, in val2014/
    with Image.open(root / first["filepath"] / first["filename"]) as img:
        expected = square_image(img, 32)
    for image_format in ("png", "jpeg"):  # lossless: the same pixels; JPEG (the default): close to them
        dsd, _ = _build(root, "coco_karpathy", tmp_path, image_format=image_format)
        (row,) = [r for r in dsd["test"] if r["image_id"] == first["cocoid"]]
        stored = decode_pixels(row["pixels"], row["image_format"], 32).astype(int)
        error = np.abs(stored - expected).mean()
        assert error == 0 if image_format == "png" else 0 < error < 4


def test_vqav2_joins_questions_and_annotations(layouts, tmp_path):
    root = layouts["vqav2"]
    dsd, _ = _build(root, "vqav2", tmp_path)
    qfile, afile = VQA_FILES["val"]
    questions = json.loads((root / qfile).read_text())["questions"]
    annotations = {a["question_id"]: a for a in json.loads((root / afile).read_text())["annotations"]}
    # test = the official val, every question with its 10 answers and its answer type
    test = dsd["test"]
    assert sum(len(q) for q in test["questions"]) == len(questions)
    by_text = {
        (r["image_id"], q): (a, t, all_a)
        for r in test
        for q, a, t, all_a in zip(r["questions"], r["answers"], r["question_types"], r["all_answers"])
    }
    for q in questions:
        answer, kind, all_answers = by_text[(q["image_id"], q["question"])]
        note = annotations[q["question_id"]]
        assert answer == note["multiple_choice_answer"] and kind == note["answer_type"]
        assert all_answers == [a["answer"] for a in note["answers"]] and len(all_answers) == 10
    assert {t for ts in test["question_types"] for t in ts} <= {"yes/no", "number", "other"}
    # val is carved from the official train's images (seeded), disjoint from train
    train_images = {q["image_id"] for q in json.loads((root / VQA_FILES["train"][0]).read_text())["questions"]}
    assert set(dsd["train"]["image_id"]) | set(dsd["val"]["image_id"]) == train_images
    assert not set(dsd["train"]["image_id"]) & set(dsd["val"]["image_id"]) and len(dsd["val"]) >= 1


@pytest.mark.parametrize(
    "benchmark,files",
    [
        ("snli_ve", ("snli_ve_train.jsonl", "snli_ve_dev.jsonl", "snli_ve_test.jsonl")),
        ("hateful_memes", ("train.jsonl", "dev_seen.jsonl", "test_seen.jsonl")),
    ],
)
def test_statement_benchmarks_keep_every_statement_and_label(layouts, benchmark, files, tmp_path):
    root = layouts[benchmark]
    dsd, cache = _build(root, benchmark, tmp_path)
    stats = json.loads((cache / "stats.json").read_text())
    names = stats["label_names"]
    for split, file in zip(("train", "val", "test"), files):
        rows = _lines(root / file)
        text_key, label_key = ("sentence2", "gold_label") if benchmark == "snli_ve" else ("text", "label")
        got = Counter((t, names[label]) for r in dsd[split] for t, label in zip(r["captions"], r["caption_labels"]))
        assert got == Counter((r[text_key], str(r[label_key])) for r in rows)
    assert names == (["contradiction", "entailment", "neutral"] if benchmark == "snli_ve" else ["0", "1"])


def test_answer_types_as_vqav2_assigns_them():
    assert [answer_type(a) for a in ("yes", "No", "2", "three", "red", "circle")] == [
        "yes/no",
        "yes/no",
        "number",
        "number",
        "other",
        "other",
    ]


def test_split_sizes_are_logged_beside_the_published_ones(layouts, tmp_path, caplog):
    caplog.set_level("INFO", logger="mmbench.data.release.build")
    dsd, _ = _build(layouts["coco_karpathy"], "coco_karpathy", tmp_path)
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("coco_karpathy test:"))
    captions = sum(len(c) for c in dsd["test"]["captions"])
    assert line == (
        f"coco_karpathy test: {len(dsd['test'])} images, {captions} captions "
        f"(published 5,000 images, 25,010 captions -- DIFFERS)"
    )
    assert release.split_sizes(dsd)["test"] == (len(dsd["test"]), captions)


def test_max_images_takes_the_first_images_of_every_split(layouts, tmp_path):
    dsd, _ = _build(layouts["vqav2"], "vqav2", tmp_path, max_images=3)
    assert len(dsd["test"]) == 3 and len(dsd["train"]) + len(dsd["val"]) == 3


# --------------------------------------------------------------------------- the cache


def test_converted_once_and_again_when_an_annotation_file_changes(layouts, tmp_path, caplog):
    root = tmp_path / "hm"
    write_release_layout("hateful_memes", root, images=8, image_size=32)
    caplog.set_level("INFO", logger="mmbench.data.release.build")
    _, first = _build(root, "hateful_memes", tmp_path / "cache")
    caplog.clear()
    _, again = _build(root, "hateful_memes", tmp_path / "cache")
    assert again == first and not any("reading hateful_memes" in r.getMessage() for r in caplog.records)
    rows = _lines(root / "train.jsonl")
    rows[0]["text"] = "an edited text"
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    dsd, changed = _build(root, "hateful_memes", tmp_path / "cache")
    assert changed != first and "an edited text" in [c for cs in dsd["train"]["captions"] for c in cs]


# --------------------------------------------------------------------------- bad files


def test_missing_file_names_it_and_the_layout(layouts, tmp_path):
    root = tmp_path / "coco"
    write_release_layout("coco_karpathy", root, images=4, image_size=32)
    (root / "dataset_coco.json").unlink()
    (problem,) = release.config_problems(benchmark="coco_karpathy", root=str(root))
    assert f"{root} lacks dataset_coco.json" in problem
    assert "dataset_coco.json, train2014/, val2014/" in problem
    with pytest.raises(DataError, match="lacks dataset_coco.json"):
        _build(root, "coco_karpathy", tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_misplaced_file_says_where_it_is(tmp_path):
    root = tmp_path / "coco"
    write_release_layout("coco_karpathy", root, images=4, image_size=32)
    (root / "karpathy").mkdir()
    (root / "dataset_coco.json").rename(root / "karpathy" / "dataset_coco.json")
    (problem,) = release.config_problems(benchmark="coco_karpathy", root=str(root))
    assert f"dataset_coco.json is at {root / 'karpathy' / 'dataset_coco.json'}" in problem


def test_bad_json_line_is_named(tmp_path):
    root = tmp_path / "snli"
    write_release_layout("snli_ve", root, images=4, image_size=32)
    lines = (root / "snli_ve_dev.jsonl").read_text().splitlines()
    lines[1] = lines[1][:-5]
    (root / "snli_ve_dev.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"snli_ve_dev.jsonl, line 2: invalid JSON"):
        _build(root, "snli_ve", tmp_path / "cache")


def test_question_without_annotation_is_named(tmp_path):
    root = tmp_path / "vqa"
    write_release_layout("vqav2", root, images=4, image_size=32)
    qfile, afile = VQA_FILES["train"]
    data = json.loads((root / afile).read_text())
    lost = data["annotations"].pop(0)["question_id"]
    (root / afile).write_text(json.dumps(data))
    with pytest.raises(DataError, match=rf"questions\[0\]: question_id {lost} has no annotation in .*{afile}"):
        _build(root, "vqav2", tmp_path / "cache")


def test_missing_image_is_named(tmp_path):
    root = tmp_path / "coco"
    write_release_layout("coco_karpathy", root, images=4, image_size=32)
    victim = sorted((root / "val2014").iterdir())[0]
    victim.unlink()
    with pytest.raises(DataError, match=rf"unreadable image {victim}"):
        _build(root, "coco_karpathy", tmp_path / "cache")


def _cli(args: list[str], cwd: Path, cache: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return cli([*args, f"hydra.run.dir={cwd / 'run'}"], cwd, {"MMBENCH_CACHE": str(cache)}, timeout)


@pytest.mark.parametrize(
    "args,words", [([], "data.root is not set"), (["data.root=/nonexistent/coco"], "no such directory")]
)
def test_cli_refuses_a_missing_root_before_any_data(args, words, tmp_path):
    done = _cli(["data=coco_karpathy", "objective=[itc]", *args], tmp_path, tmp_path / "cache")
    assert done.returncode == 2 and words in done.stderr and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "dataset_coco.json, train2014/, val2014/" in done.stderr
    assert not (tmp_path / "cache").exists()


# --------------------------------------------------------------------------- end to end through the CLI

TINY = [
    "data.image_size=32",
    "data.vocab_size=120",
    "data.batch_size=16",
    "data.eval_batch_size=32",
    "model.sizes.tiny.dim=32",
    "model.sizes.tiny.heads=2",
    "model.sizes.tiny.fusion_depth=1",
    "logger=csv",
    "~callbacks.progress_bar",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "eval.robustness.max_images=8",
    "eval.robustness.levels=[0.5]",
    "eval.captioning.max_images=8",
]

RUNS = {
    "nlvr2": (["objective=[nlvr2]"], ["test/classification/acc"]),
    "coco_karpathy": (  # the paper-grade settings: coco-caption's PTB tokenizer and scorers, BLIP's re-ranking
        [
            "objective=[itc,itm,lm]",
            "objective.itc.embed_dim=16",
            "eval=full",
            "eval.protocols=[retrieval,captioning]",
            "eval.retrieval.rerank_rule=itm_itc",
        ],
        [
            "test/retrieval/i2t_r1",
            "test/retrieval/itm_itc/i2t_r1",
            "test/retrieval/itm/i2t_r1",
            *(f"test/captioning/{m}" for m in ("bleu1", "bleu4", "meteor", "rouge_l", "cider")),
        ],
    ),
    "vqav2": (
        ["objective=[vqa]", "objective.vqa.question_field=null"],
        ["test/vqa/acc", "test/vqa/acc_yes_no", "test/vqa/acc_number", "test/vqa/acc_other"],
    ),
    "snli_ve": (["objective=[classify]"], ["test/classification/acc"]),
    "hateful_memes": (["objective=[classify]"], ["test/classification/acc", "test/classification/auroc"]),
}


@pytest.mark.parametrize("benchmark", sorted(RUNS))
def test_cli_trains_and_evaluates_on_the_release_layout(benchmark, layouts, tmp_path):
    overrides, keys = RUNS[benchmark]
    done = _cli(
        # batch 8: Hateful Memes' fixture has 12 training examples, and a batch beyond the split is refused
        [f"data={benchmark}", f"data.root={layouts[benchmark]}", *overrides, *TINY, "data.batch_size=8"],
        tmp_path,
        tmp_path / "cache",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["status"] == "completed" and saved["choices"]["data"] == benchmark
    for key in keys:
        assert key in saved["metrics"], (key, sorted(saved["metrics"]))
    if benchmark == "vqav2":
        _check_server_file(layouts["vqav2"], tmp_path, saved["metrics"]["test/vqa/acc"])
    if benchmark == "coco_karpathy":
        _check_diagnostic_sets(tmp_path)
    if benchmark == "coco_karpathy":
        assert "test/captioning/spice" not in saved["metrics"]  # not asked for (eval=full leaves SPICE out)


def _eval_cli(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    """mmbench-eval on the run's best checkpoint, into tmp_path/eval."""
    env = {**os.environ, "MMBENCH_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT)}
    ckpt = tmp_path / "run" / "checkpoints" / "best.ckpt"
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mmbench.evaluate",
            f"ckpt_path={ckpt}",
            *args,
            "logger=csv",
            f"hydra.run.dir={tmp_path / 'eval'}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _check_diagnostic_sets(tmp_path: Path) -> None:
    """The released diagnostic sets through mmbench-eval: Winoground and ARO read from their layouts."""
    from tests.test_diagnostic_sets import LEFT, aro_case, write_aro, write_winoground

    wino = write_winoground(tmp_path / "winoground", [("red", "blue", "a red circle", "a blue square")] * 3)
    aro = write_aro(tmp_path / "aro", [aro_case(LEFT, "red", "blue", relation_name="on")] * 4, [])
    protocols = "eval.protocols=[winoground,aro_relation]"
    done = _eval_cli([protocols, f"eval.winoground.root={wino}", f"eval.aro_relation.root={aro}"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())["metrics"]
    for key in ("text", "image", "group"):
        assert 0 <= metrics[f"test/winoground/{key}"] <= 1
    assert metrics["test/winoground/num_examples"] == 3 and metrics["test/aro_relation/num_examples"] == 4


def _check_server_file(root: Path, tmp_path: Path, test_acc: float) -> None:
    """mmbench-eval writes the evaluation server's result file; on the official val questions (the test split
    here) its answers score exactly the accuracy the vqa protocol reported."""
    from mmbench.metrics.vqa import vqa_score

    qfile, afile = VQA_FILES["val"]
    done = _eval_cli([f"vqa_server.questions={root / qfile}"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "eval" / "vqa_OpenEnded_mscoco_val2014_mmbench_results.json").read_text())
    questions = json.loads((root / qfile).read_text())["questions"]
    assert [r["question_id"] for r in results] == [q["question_id"] for q in questions]
    truth = {
        a["question_id"]: [x["answer"] for x in a["answers"]]
        for a in json.loads((root / afile).read_text())["annotations"]
    }
    scores = [vqa_score(r["answer"], truth[r["question_id"]]) for r in results]
    assert sum(scores) / len(scores) == pytest.approx(test_acc, abs=1e-9)
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["vqa_server_file"].endswith("vqa_OpenEnded_mscoco_val2014_mmbench_results.json")


def test_server_questions_find_their_images_and_refuse_early(layouts, tmp_path):
    from mmbench.metrics.vqa_server import ServerFileError, read_questions

    root = layouts["vqav2"]
    questions, subtype, folder = read_questions(root / "v2_OpenEnded_mscoco_test-dev2015_questions.json")
    assert subtype == "test-dev2015" and folder == root / "test2015" and questions
    assert all((folder / f"COCO_test2015_{q['image_id']:012d}.jpg").is_file() for q in questions)
    with pytest.raises(ServerFileError, match="no such file"):
        read_questions(tmp_path / "v2_OpenEnded_mscoco_test-dev2015_questions.json")
    with pytest.raises(ServerFileError, match=r"no image folder .*test2015"):
        read_questions(root / "v2_OpenEnded_mscoco_test-dev2015_questions.json", images=str(tmp_path / "test2015"))
