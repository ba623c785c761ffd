"""`data=hf`: local imagefolder / parquet / jsonl data built on disk, presets, regions, bad data, offline.

Nothing here touches the network: fixtures are written into tmp_path, and the hub tests use ids
that do not exist with a timeout.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import open_dict
from PIL import Image

from mmbench import hub
from mmbench.config import ConfigError
from mmbench.data import hf
from mmbench.data.datamodule import DataError
from mmbench.data.hf import build as hf_build
from mmbench.data.image_codec import decode_pixels
from mmbench.pipeline import run
from mmbench.validation import validate
from tests.conftest import cli, compose_cfg

COLORS = {"red": (220, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 220), "yellow": (240, 200, 20)}
SHAPE_WORDS = ("square", "stripe")

# a tiny model and a short run on 32x32 images (two 16-px patches a side)
TINY_HF = [
    "data.image_size=32",
    "data.vocab_size=120",
    "data.batch_size=16",
    "data.eval_batch_size=32",
    "data.max_answers=8",
    "model.sizes.tiny.dim=32",
    "model.sizes.tiny.heads=2",
    "model.sizes.tiny.fusion_depth=1",
    "objective.itc.embed_dim=16",
    "logger=csv",
    "~callbacks.progress_bar",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
]
COLUMNS = [
    "data.source.columns.text=captions",
    "data.source.columns.question=question",
    "data.source.columns.answers=answers",
]


def picture(i: int, color: str, size=(40, 30)) -> Image.Image:
    """A non-square picture: colour background, a darker square or stripe whose position varies."""
    w, h = size
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[:] = COLORS[color]
    x = 4 + (i * 7) % (w - 16)
    if SHAPE_WORDS[i % 2] == "square":
        arr[8:20, x : x + 12] //= 3
    else:
        arr[:, x : x + 4] //= 3
    return Image.fromarray(arr)


def example(i: int) -> dict:
    color = list(COLORS)[i % len(COLORS)]
    shape = SHAPE_WORDS[i % 2]
    other = list(COLORS)[(i + 1) % len(COLORS)]
    return {
        "captions": [f"a {color} picture with a {shape}", f"a dark {shape} on {color}"],
        "question": "what color is the picture?",
        # three annotators, one of whom disagrees: soft scores 2/3 and 1/3
        "answers": [color, color, other],
        "label": i % 2,
        "color": color,
    }


def make_imagefolder(root: Path, n_train: int = 24, n_test: int = 8, with_val: bool = False) -> Path:
    """root/{train,test[,validation]}/NNN.png + metadata.jsonl (captions, question, annotator answers, label)."""
    splits = {"train": n_train, "test": n_test, **({"validation": n_test} if with_val else {})}
    offset = 0
    for split, n in splits.items():
        d = root / split
        d.mkdir(parents=True)
        with open(d / "metadata.jsonl", "w") as f:
            for i in range(offset, offset + n):
                ex = example(i)
                picture(i, ex.pop("color")).save(d / f"{i:03d}.png")
                f.write(json.dumps({"file_name": f"{i:03d}.png", **ex}) + "\n")
        offset += n
    return root


def make_parquet(root: Path, n_train: int = 20, n_test: int = 8) -> Path:
    """root/{train,test}.parquet with embedded PNG bytes, one row per question (images repeat)."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir(parents=True)
    offset = 0
    for split, n in (("train", n_train), ("test", n_test)):
        rows = []
        for i in range(offset, offset + n):
            ex = example(i)
            buf = io.BytesIO()
            picture(i, ex["color"], size=(32, 32)).save(buf, format="PNG")
            for q, (question, answer) in enumerate(
                [(ex["question"], ex["answers"]), ("is there a stripe?", ["yes" if i % 2 else "no"] * 3)]
            ):
                rows.append(
                    {
                        "img": {"bytes": buf.getvalue(), "path": None},
                        "iid": f"img-{i}",
                        "caption": ex["captions"][q],
                        "question": question,
                        "answers": answer,
                        "label": ex["label"],
                    }
                )
        table = pa.Table.from_pylist(rows)
        pq.write_table(table, root / f"{split}.parquet")
        offset += n
    return root


def hf_cfg(tmp_path: Path, *extra: str):
    return compose_cfg(["data=hf", *TINY_HF, *extra], tmp_path / "run")


# --------------------------------------------------------------------------- conversion


def test_imagefolder_converts_to_canonical_columns_and_is_cached(tmp_path, caplog):
    data = make_imagefolder(tmp_path / "data")
    kwargs = dict(
        path=str(data),
        image_size=32,
        seed=0,
        columns={"image": "image", "text": "captions", "question": "question", "answers": "answers", "label": "label"},
        val_fraction=0.25,
    )
    caplog.set_level("INFO")
    dsd, cache = hf.build_hf(tmp_path / "cache", **kwargs)
    assert cache.name.startswith("hf-") and "carving val from train" in caplog.text
    assert {s: len(d) for s, d in dsd.items()} == {"train": 18, "val": 6, "test": 8}
    row = dsd["test"][0]
    assert row["image_size"] == 32 and row["image_format"] == "jpeg"  # the default: stored as a 32-px JPEG
    assert row["captions"] == example(24)["captions"] and row["questions"] == ["what color is the picture?"]
    assert row["answers"] == ["red"] and row["all_answers"] == [["red", "red", "green"]]
    assert row["caption_labels"] == [0, 0]
    # the picture is 40x30: short side -> 32, centre crop; its colour survives (JPEG: within a few levels of 255)
    pixels = decode_pixels(row["pixels"], "jpeg", 32)
    assert pixels.shape == (32, 32, 3) and np.abs(pixels[0, 0].astype(int) - COLORS["red"]).max() <= 6
    ids = [i for d in dsd.values() for i in d["image_id"]]
    assert len(set(ids)) == len(ids) == 32

    (train_file,) = hf_build.entry_files(cache)["train"]
    stamp = train_file.stat().st_mtime_ns
    dsd2, cache2 = hf.build_hf(tmp_path / "cache", **kwargs)
    assert cache2 == cache and train_file.stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert dsd2["val"]["image_id"] == dsd["val"]["image_id"]  # the carved val is seeded
    (data / "train" / "000.png").touch()  # changed data -> new cache key
    assert hf.build_hf(tmp_path / "cache", **kwargs)[1] != cache


def test_parquet_rows_of_one_image_are_grouped_and_trained_through_compose_api(tmp_path, cache_dir):
    data = make_parquet(tmp_path / "pq")
    cfg = hf_cfg(
        tmp_path,
        f"data.source.path={data}",
        "data.source.columns.image=img",
        "data.source.columns.text=caption",
        "data.source.columns.question=question",
        "data.source.columns.answers=answers",
        "data.source.columns.image_id=iid",
        "data.source.splits.val=null",
        "data.source.val_fraction=0.2",
    )
    record = run(cfg)
    assert record["status"] == "completed"
    assert "test/vqa/acc" in record["metrics"] and "test/itc/acc" in record["metrics"]
    from hydra.utils import instantiate

    dm = instantiate(cfg.data)  # the run's datamodule is gone; a new one loads the same cache
    dm.setup()
    test = dm.datasets["test"]
    assert len(test.captions) == 8 and all(len(c) == 2 for c in test.captions)  # 2 rows per image -> 1 image
    assert test.questions[0] == ["what color is the picture?", "is there a stripe?"]
    assert dm.info.answers == sorted(dm.info.answers) and len(dm.info.answers) <= 8


def test_soft_scores_and_capped_answer_vocabulary(tmp_path, cache_dir):
    data = make_imagefolder(tmp_path / "data")
    cfg = hf_cfg(
        tmp_path, f"data.source.path={data}", *COLUMNS, "data.max_answers=2", "data.source.columns.label=label"
    )
    from hydra.utils import instantiate

    dm = instantiate(cfg.data)
    dm.setup()
    ds = dm.datasets["train"]
    # the majority colour per train image; the top 2 by count (ties by name), sorted
    counts = {a: sum(row == [a] for row in ds.answers) for a in COLORS}
    assert dm.info.answers == sorted(sorted(counts, key=lambda a: (-counts[a], a))[:2])
    batch = dm.collate([ds[i] for i in range(len(ds))])
    scores = batch["answer_scores"]
    assert scores.shape == (len(ds), 2)
    values = scores.unique().tolist()  # min(1, count/3) with 2 of 3 annotators agreeing
    assert all(any(v == pytest.approx(t) for t in (0.0, 1 / 3, 2 / 3)) for v in values), values
    first, second = dm.info.answers
    row = [i for i in range(len(ds)) if ds.answers[ds.rows[i]] == [first] and second in ds.all_answers[ds.rows[i]][0]]
    if row:  # e.g. "blue" images whose disagreeing annotator said the next colour
        assert scores[row[0]].tolist() == pytest.approx([2 / 3, 1 / 3])
    assert batch["labels"].shape == (len(ds),) and set(batch["labels"].tolist()) == {0, 1}
    assert dm.info.num_labels == 2
    assert dm.info.majority_baseline is not None


# --------------------------------------------------------------------------- CLI, end to end


def _cli(args, cwd, timeout=600, **env):
    return cli(args, cwd, env, timeout)


def test_cli_trains_and_tests_on_an_imagefolder(tmp_path, cache_dir):
    data = make_imagefolder(tmp_path / "data", with_val=True)
    res = _cli(["data=hf", f"data.source.path={data}", "objective=[itc,itm,mlm,vqa]", *COLUMNS, *TINY_HF], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    (metrics,) = list((tmp_path / "outputs" / "runs").glob("*/metrics.json"))
    saved = json.loads(metrics.read_text())
    assert saved["status"] == "completed" and saved["choices"]["data"] == "hf"
    for key in ("test/loss", "test/itc/acc", "test/itm/acc", "test/mlm/acc", "test/vqa/acc"):
        assert key in saved["metrics"], key


# --------------------------------------------------------------------------- bad data


def test_missing_column_names_the_existing_columns(tmp_path):
    data = make_imagefolder(tmp_path / "data", n_train=4, n_test=2)
    with pytest.raises(DataError) as err:
        hf.build_hf(tmp_path / "cache", path=str(data), image_size=32, columns={"text": "caption"})
    message = str(err.value)
    assert "'caption' (data.source.columns.text)" in message
    for column in ("image", "captions", "question", "answers", "label"):
        assert f"'{column}'" in message


def test_unreadable_image_raises_with_its_path_or_is_skipped_and_counted(tmp_path, caplog):
    data = make_imagefolder(tmp_path / "data", n_train=12, n_test=4)
    bad = data / "train" / "003.png"
    bad.write_bytes(b"not a png")
    kwargs = dict(path=str(data), image_size=32, columns={"text": "captions"}, val_fraction=0.25)
    with pytest.raises(DataError, match=f"unreadable image {bad}"):
        hf.build_hf(tmp_path / "cache", **kwargs)
    caplog.set_level("WARNING")
    dsd, cache = hf.build_hf(tmp_path / "cache", bad_images="skip", **kwargs)
    stats = json.loads((cache / "stats.json").read_text())
    assert stats["skipped_examples"] == 1 and str(bad) in json.dumps(stats["skipped_paths"])
    assert len(dsd["train"]) + len(dsd["val"]) == 11 and "skipped 1 unreadable image" in caplog.text


def test_missing_image_file_in_jsonl_is_reported_with_its_path(tmp_path):
    root = tmp_path / "j"
    root.mkdir()
    picture(0, "red").save(root / "a.png")
    rows = [{"path": "a.png", "text": "a red picture"}, {"path": "missing.png", "text": "nothing"}]
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=f"unreadable image {root / 'missing.png'}"):
        hf.build_hf(
            tmp_path / "cache",
            path=str(root / "train.jsonl"),
            image_size=16,
            columns={"image": "path", "text": "text"},
            splits={"train": "train", "val": "train", "test": "train"},
        )


def test_empty_split_is_an_error_before_training(tmp_path):
    data = make_imagefolder(tmp_path / "data", n_train=6, n_test=2)
    for p in (data / "test").glob("*.png"):
        p.write_bytes(b"broken")
    with pytest.raises(DataError, match="split 'test' is empty after skipping 2 unreadable image"):
        hf.build_hf(tmp_path / "cache", path=str(data), image_size=32, columns={"text": "captions"}, bad_images="skip")


def test_missing_split_names_the_available_ones(tmp_path):
    data = make_imagefolder(tmp_path / "data", n_train=4, n_test=2)
    with pytest.raises(
        DataError, match=r"splits.test='eval' is not a split of the dataset; it has \['train', 'test'\]"
    ):
        hf.build_hf(
            tmp_path / "cache",
            path=str(data),
            image_size=32,
            columns={"text": "captions"},
            splits={"train": "train", "val": None, "test": "eval"},
        )


# --------------------------------------------------------------------------- offline


@pytest.mark.parametrize("offline", [True, False])
def test_uncached_hub_id_fails_fast_offline(tmp_path, monkeypatch, offline):
    """A hub id that is not cached: one clear error within seconds (no retry loop), with or without data.offline."""
    monkeypatch.setattr(hub, "_probe_result", {})
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(
        hub, "hub_reachable", lambda timeout=hub.HUB_PROBE_TIMEOUT_S: False
    )  # tests never use the network
    start = time.time()
    with pytest.raises(hf.HubUnavailableError, match="is not in the local HF cache") as err:
        hf.build_hf(
            tmp_path / "cache",
            path="mmbench-tests/no-such-dataset",
            image_size=32,
            offline=offline,
            hf_cache_dir=str(tmp_path / "hf"),
        )
    assert time.time() - start < 20
    assert ("data.offline=true" if offline else "unreachable") in str(err.value)


def test_hub_probe_is_bounded_in_time():
    start = time.time()
    hub._probe_result.clear()
    hub.hub_reachable(timeout=1.0)
    assert time.time() - start < 3


def test_uncached_hub_id_through_the_cli_is_one_message_within_seconds(tmp_path, cache_dir):
    """Bad data through the CLI: one message, exit code 2, no traceback, no retries."""
    start = time.time()
    res = _cli(
        ["data=hf", "data.source.path=mmbench-tests/no-such-dataset", "data.offline=true", "objective=[itc]", *TINY_HF],
        tmp_path,
        timeout=120,
        HF_HOME=str(tmp_path / "hf"),
    )
    assert res.returncode == 2 and "is not in the local HF cache" in res.stderr, res.stderr[-2000:]
    assert "Retrying" not in res.stderr and "Traceback" not in res.stderr
    assert time.time() - start < 60  # interpreter + torch start-up dominate


# --------------------------------------------------------------------------- presets


PRESETS = ["coco_karpathy_hub", "flickr30k_hub", "vqav2_hub", "snli_ve_hub", "hateful_memes_hub"]


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_composes_with_a_well_formed_mapping(preset):
    cfg = compose_cfg([f"data={preset}"])
    src = cfg.data.source
    assert src._target_ == "mmbench.data.hf.build_hf" and src.path and src.path != "???"
    cols = hf.Columns.parse(src.columns)  # known roles only, single image
    assert cols.text or cols.question
    assert set(src.splits) == {"train", "val", "test"} and src.splits.train
    if cols.question:
        assert cols.answers or cols.answer


def test_nlvr2_preset_is_refused_clearly():
    """NLVR2's image pairs (and its hub copy, a loading script) are refused from the config alone, with the
    release reader named; tests/test_hub_presets.py checks the other refused presets and the CLI."""
    cfg = compose_cfg(["data=nlvr2_hub", "objective=[itc]"])
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    message = str(err.value)
    assert "pairs two images with each statement" in message and "loading script" in message
    assert "data=nlvr2 data.root=<dir>" in message


# --------------------------------------------------------------------------- region features


def _regions(i: int, F: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(i)
    n = 2 + i % 3
    xy = rng.uniform(0, 0.5, (n, 2))
    return rng.normal(size=(n, F)).astype(np.float32), np.concatenate([xy, xy + 0.4], 1).astype(np.float32)


def test_region_features_from_files_train_region_feats_encoder(tmp_path, cache_dir):
    data = make_imagefolder(tmp_path / "data", n_train=16, n_test=4, with_val=True)
    regions = tmp_path / "regions"
    regions.mkdir()
    for p in data.rglob("*.png"):
        feats, boxes = _regions(int(p.stem))
        np.savez(regions / f"{p.stem}.npz", feats=feats, boxes=boxes)
    cfg = hf_cfg(
        tmp_path,
        f"data.source.path={data}",
        "data.source.columns.text=captions",
        f"data.source.region_dir={regions}",
        "encoder/vision=region_feats",
        "model.region_feat_dim=8",
        "objective=[itc,itm]",
    )
    from hydra.utils import instantiate

    dm = instantiate(cfg.data)
    dm.setup()
    batch = next(iter(dm.val_dataloader()))
    B = batch["pixel_values"].shape[0]
    assert batch["region_feats"].shape[:2] == batch["region_mask"].shape and batch["region_feats"].shape[2] == 8
    assert batch["region_boxes"].shape == (B, batch["region_feats"].shape[1], 4)
    counts = batch["region_mask"].sum(1)
    assert counts.min() >= 2 and counts.max() <= 4 and "region_labels" not in batch
    with open_dict(cfg):
        cfg.test = False  # training + validation on region features (the test-time suite is covered elsewhere)
    record = run(cfg)
    assert record["status"] == "completed" and "val/itc/acc" in record["metrics"]


def test_region_features_as_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "pq"
    root.mkdir()
    for split, ids in (("train", range(6)), ("test", range(6, 8))):
        rows = []
        for i in ids:
            feats, boxes = _regions(i, F=4)
            rows.append(
                {
                    "text": f"picture {i}",
                    "feats": feats.tolist(),
                    "boxes": boxes.tolist(),
                    "objects": list(range(len(boxes))),
                }
            )
        pq.write_table(pa.Table.from_pylist(rows), root / f"{split}.parquet")
    dsd, _ = hf.build_hf(
        tmp_path / "cache",
        path=str(root),
        image_size=16,
        splits={"train": "train", "val": None, "test": "test"},
        val_fraction=0.3,
        columns={"image": None, "text": "text", "region_feats": "feats", "boxes": "boxes", "region_labels": "objects"},
    )
    row = dsd["test"].with_format("numpy")[1]
    feats, boxes = _regions(7, F=4)
    np.testing.assert_allclose(row["region_feats"], feats)
    np.testing.assert_allclose(np.stack(row["boxes"]), boxes, atol=1e-6)
    assert list(row["labels"]) == list(range(len(boxes)))

    bad = root / "train.parquet"
    rows = [{"text": "x", "feats": [[0.0] * 4], "boxes": [[0.0, 0.0, 20.0, 30.0]], "objects": [0]}] * 4
    pq.write_table(pa.Table.from_pylist(rows), bad)
    with pytest.raises(DataError, match="not normalised to"):
        hf.build_hf(
            tmp_path / "cache",
            path=str(root),
            image_size=16,
            splits={"train": "train", "val": None, "test": "test"},
            val_fraction=0.3,
            columns={"image": None, "text": "text", "region_feats": "feats", "boxes": "boxes"},
        )


def test_shapes_batches_are_unchanged_by_the_collator_extension(tiny_cfg):
    """Shapes: one-hot answer scores, region mask = real objects, claims, no labels / region_feats keys."""
    from hydra.utils import instantiate

    dm = instantiate(tiny_cfg().data)
    dm.setup()
    ds = dm.datasets["val"]
    batch = dm.collate([ds[i] for i in range(16)])
    assert set(batch) == {
        "pixel_values",
        "image_id",
        "input_ids",
        "attention_mask",
        "question_ids",
        "question_mask",
        "answer",
        "answer_scores",
        "qa_ids",
        "qa_mask",
        "answer_start",
        "region_boxes",
        "region_labels",
        "region_mask",
        "text_claim",
        "image_facts",
        "negative_ids",
        "negative_mask",
        "has_negative",
    }
    assert torch.equal(batch["answer_scores"].sum(1), (batch["answer"] >= 0).float())
    assert torch.equal(batch["region_mask"], batch["region_labels"] >= 0)


def test_streaming_converts_the_first_max_samples(tmp_path):
    data = make_imagefolder(tmp_path / "data", n_train=12, n_test=6)
    dsd, _ = hf.build_hf(
        tmp_path / "cache",
        path=str(data),
        image_size=32,
        columns={"text": "captions"},
        streaming=True,
        max_samples=8,
        val_fraction=0.25,
    )
    assert (len(dsd["train"]), len(dsd["val"]), len(dsd["test"])) == (6, 2, 6)
    with pytest.raises(DataError, match="streaming=true needs data.source.max_samples"):
        hf.build_hf(tmp_path / "cache", path=str(data), image_size=32, columns={"text": "captions"}, streaming=True)
