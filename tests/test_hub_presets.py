"""The hub presets (conf/data/*_hub.yaml), checked against their dataset cards (docs/data.md, "Hub presets").

Every preset composes. The usable ones map the columns and splits their card states, and convert data shaped
as the card describes (a tiny local copy: nothing is downloaded). The others (a hub copy that is a dataset
loading script, NLVR2's image pairs, a card that states no columns) are refused by config validation from
the config alone, through the CLI with exit code 2 and before any data is touched, with a message naming
the release reader that reads the benchmark instead; `build_hf` refuses them the same way when called directly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from mmbench.config import ConfigError
from mmbench.data import hf
from mmbench.data.errors import DataError
from mmbench.validation import validate
from tests.conftest import CONF, ROOT, compose_cfg

HUB_PRESETS = sorted(p.stem for p in Path(CONF, "data").glob("*_hub.yaml"))

# card-checked mappings: role -> column and canonical split -> source split, as each card states them
USABLE = {
    "flickr30k_hub": (
        {"image": "image", "text": "caption", "image_id": "img_id"},
        {"train": "train", "val": "val", "test": "test"},
    ),
    "snli_ve_hub": (
        {"image": "image", "text": "sentence", "label": "gold_label", "image_id": "Flickr30K_ID"},
        {"train": "train", "val": "validation", "test": "test"},
    ),
    "hateful_memes_hub": (
        {"image": "img", "text": "text", "label": "label"},
        {"train": "train", "val": None, "test": "validation"},
    ),
}
# refused preset -> the release reader its message names
REFUSED = {
    "coco_karpathy_hub": "data=coco_karpathy data.root=<dir>",
    "vqav2_hub": "data=vqav2 data.root=<dir>",
    "nlvr2_hub": "data=nlvr2 data.root=<dir>",
}
LOADING_SCRIPTS = ("vqav2_hub", "nlvr2_hub")


def _source(preset: str, **overrides) -> dict:
    """The `build_hf` settings of a composed preset (resolved, without `_target_` / `_partial_`)."""
    cfg = compose_cfg([f"data={preset}", "data.image_size=16", "data.offline=true"])
    settings = OmegaConf.to_container(cfg.data.source, resolve=True)
    return {k: v for k, v in settings.items() if not k.startswith("_")} | overrides


def _png(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (20, 24, 3), dtype=np.uint8))


@pytest.fixture
def no_hub(monkeypatch):
    """Any attempt to load a dataset fails the test: refusals must come from the config alone."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a dataset was loaded: {args} {kwargs}")

    monkeypatch.setattr(datasets, "load_dataset", refuse)
    monkeypatch.setattr("mmbench.data.hf.build.load_source", refuse)


# --------------------------------------------------------------------------- every preset


def test_the_hub_presets_are_the_six_checked_ones():
    assert HUB_PRESETS == sorted([*USABLE, *REFUSED])


@pytest.mark.parametrize("preset", HUB_PRESETS)
def test_every_hub_preset_composes_into_a_hub_source(preset):
    src = compose_cfg([f"data={preset}"]).data.source
    assert src._target_ == "mmbench.data.hf.build_hf"
    assert "/" in src.path and not Path(src.path).exists()  # a hub id (owner/name), not a local path
    assert (src.unsupported is None) == (preset in USABLE)


def test_plain_hf_data_is_not_refused():
    cfg = compose_cfg(["data=hf", f"data.source.path={ROOT}"])
    assert cfg.data.source.unsupported is None
    assert hf.config_problems(**_settings(cfg)) == []


def _settings(cfg) -> dict:
    return {k: v for k, v in OmegaConf.to_container(cfg.data.source, resolve=True).items() if not k.startswith("_")}


# --------------------------------------------------------------------------- usable presets


@pytest.mark.parametrize("preset", sorted(USABLE))
def test_usable_preset_maps_the_columns_and_splits_its_card_states(preset):
    columns, splits = USABLE[preset]
    src = compose_cfg([f"data={preset}"]).data.source
    assert hf.Columns.parse(src.columns).used() == columns
    assert OmegaConf.to_container(src.splits) == splits


@pytest.mark.parametrize(
    "preset,objective", [("flickr30k_hub", "itc"), ("snli_ve_hub", "classify"), ("hateful_memes_hub", "classify")]
)
def test_usable_preset_passes_config_validation(preset, objective, no_hub):
    validate(compose_cfg([f"data={preset}", f"objective=[{objective}]"]))


def test_flickr30k_hub_converts_rows_shaped_as_its_card(tmp_path):
    """umaru97/flickr30k_train_val_test's card: one row per image, `caption` a list of strings."""
    data = tmp_path / "flickr"
    data.mkdir()
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "caption": datasets.List(datasets.Value("string")),
            "sentids": datasets.List(datasets.Value("string")),
            "split": datasets.Value("string"),
            "img_id": datasets.Value("string"),
            "filename": datasets.Value("string"),
        }
    )
    files = {}
    for k, split in enumerate(("train", "val", "test")):
        n = 3 if split == "train" else 2
        rows = {
            "image": [_png(10 * k + i) for i in range(n)],
            "caption": [[f"{split} image {i} caption {c}" for c in range(5)] for i in range(n)],
            "sentids": [[str(5 * i + c) for c in range(5)] for i in range(n)],
            "split": [split] * n,
            "img_id": [str(100 * k + i) for i in range(n)],
            "filename": [f"{100 * k + i}.jpg" for i in range(n)],
        }
        datasets.Dataset.from_dict(rows, features=features).to_parquet(str(data / f"{split}.parquet"))
        files[split] = f"{split}.parquet"
    dsd, _ = hf.build_hf(**_source("flickr30k_hub", cache_dir=tmp_path / "cache", path=str(data), data_files=files))
    assert {s: len(dsd[s]) for s in ("train", "val", "test")} == {"train": 3, "val": 2, "test": 2}
    assert dsd["test"][1]["captions"] == [f"test image 1 caption {c}" for c in range(5)]


def test_snli_ve_hub_groups_the_hypotheses_of_an_image_and_indexes_gold_label(tmp_path):
    """Phando/snli-ve-shuffled's card: one row per (image, hypothesis), gold_label a string. The rows of one
    Flickr30K_ID are one image; the classes are the sorted train values."""
    data = tmp_path / "snli"
    data.mkdir()
    features = datasets.Features(
        {
            "Flickr30K_ID": datasets.Value("string"),
            "gold_label": datasets.Value("string"),
            "image": datasets.Image(),
            "sentence": datasets.Value("string"),
        }
    )
    rows = [("7", "neutral", "a dog runs"), ("8", "entailment", "a cat sits"), ("7", "contradiction", "no animal")]
    for split in ("train", "validation", "test"):
        datasets.Dataset.from_dict(
            {
                "Flickr30K_ID": [r[0] for r in rows],
                "gold_label": [r[1] for r in rows],
                "image": [_png(int(r[0])) for r in rows],
                "sentence": [r[2] for r in rows],
            },
            features=features,
        ).to_parquet(str(data / f"{split}.parquet"))
    files = {s: f"{s}.parquet" for s in ("train", "validation", "test")}
    dsd, target = hf.build_hf(**_source("snli_ve_hub", cache_dir=tmp_path / "cache", path=str(data), data_files=files))
    assert hf.read_stats(target)["label_names"] == ["contradiction", "entailment", "neutral"]
    first = dsd["train"][0]  # Flickr30K_ID 7: its two hypotheses, in row order
    assert len(dsd["train"]) == 2 and first["captions"] == ["a dog runs", "no animal"]
    assert first["caption_labels"] == [2, 0]  # neutral, contradiction


def test_hateful_memes_hub_reads_train_and_dev_seen_with_images_under_image_root(tmp_path):
    """neuralcatcher/hateful_memes' card: JSON Lines with text, img (a path under img/), label; test =
    dev_seen.jsonl, val carved from train; the other files are not read."""
    data = tmp_path / "memes"
    (data / "img").mkdir(parents=True)

    def write(name: str, ids: range) -> None:
        with open(data / name, "w") as f:
            for i in ids:
                _png(i).save(data / "img" / f"{i:05d}.png")
                f.write(json.dumps({"id": i, "img": f"img/{i:05d}.png", "label": i % 2, "text": f"meme {i}"}) + "\n")

    write("train.jsonl", range(1, 21))
    write("dev_seen.jsonl", range(101, 104))
    (data / "test_unseen.jsonl").write_text("not read\n")  # a file the preset must not read
    dsd, target = hf.build_hf(**_source("hateful_memes_hub", cache_dir=tmp_path / "cache", path=str(data)))
    assert sorted(c for row in dsd["test"] for c in row["captions"]) == ["meme 101", "meme 102", "meme 103"]
    assert [row["caption_labels"] for row in dsd["test"]] == [[1], [0], [1]]
    assert len(dsd["train"]) + len(dsd["val"]) == 20 and len(dsd["val"]) >= 1
    assert hf.read_stats(target)["label_names"] == ["0", "1"]


# --------------------------------------------------------------------------- refused presets


@pytest.mark.parametrize("preset", sorted(REFUSED))
def test_refused_preset_is_one_problem_naming_the_release_reader(preset, no_hub):
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg([f"data={preset}", "objective=[itc]"]))
    message = str(err.value)
    assert message.count("\n  - ") == 1, message  # the refusal alone
    assert REFUSED[preset] in message and f"data={preset}" in message
    if preset in LOADING_SCRIPTS:
        assert "dataset loading script" in message


@pytest.mark.parametrize("preset", sorted(REFUSED))
def test_build_hf_refuses_a_refused_preset_before_loading_anything(preset, tmp_path, no_hub):
    settings = _source(preset, cache_dir=tmp_path / "cache")
    with pytest.raises(DataError) as err:
        hf.build_hf(**settings)
    assert str(err.value) == hf.config_problems(**settings)[0] == settings["unsupported"]
    assert not (tmp_path / "cache").exists()


def test_coco_karpathy_hub_refusal_can_be_lifted_explicitly(no_hub):
    """Its card states no columns; whoever has checked them lifts the refusal with unsupported=null."""
    validate(compose_cfg(["data=coco_karpathy_hub", "data.source.unsupported=null", "objective=[itc]"]))


@pytest.mark.parametrize("preset", LOADING_SCRIPTS)
def test_cli_refuses_a_loading_script_preset_with_exit_2_before_any_data(preset, tmp_path):
    """As tests/test_bad_input.py runs the CLI on a bad config: exit code 2, one message, no traceback, nothing
    prepared; the hub is unreachable (offline), so the refusal comes from the config alone."""
    cache = tmp_path / "cache"
    env = {
        **os.environ,
        "MMBENCH_CACHE": str(cache),
        "WANDB_MODE": "offline",
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mmbench.train",
            f"data={preset}",
            "objective=[itc]",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout
    assert "invalid configuration" in done.stderr and REFUSED[preset] in done.stderr
    assert not cache.exists() or not any(cache.iterdir()), "data was prepared before the refusal"
    assert not (tmp_path / "hf").exists() or not any((tmp_path / "hf").rglob("*.arrow"))
