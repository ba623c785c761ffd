"""Data-level refusals: a malformed row names its file and line, empty captions are counted or refused,
a damaged cache entry is rebuilt (or named), orphaned temporary directories are removed.

Tiny local files only; no network.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from pathlib import Path

import pytest

from mmbench import hub
from mmbench.data import cache as data_cache
from mmbench.data import hf, shapes, tokenizer
from mmbench.data.datamodule import DataError
from mmbench.data.hf import build as hf_build
from tests.test_hf_data import TINY_HF, _cli, picture

ALL_SPLITS = {"train": "train", "val": "train", "test": "train"}
COLUMNS = {"image": "path", "text": "text"}
SMALL_SHAPES = dict(num_train=20, num_val=8, num_test=8, image_size=24)


def jsonl_data(root: Path, texts: list[str], broken_line: int | None = None) -> Path:
    """root/train.jsonl, one row and one image per text; `broken_line` (counted from 1) is not JSON."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(len(texts)):
        picture(i, "red").save(root / f"{i}.png")
    lines = [json.dumps({"path": f"{i}.png", "text": t}) for i, t in enumerate(texts)]
    if broken_line is not None:
        lines[broken_line - 1] = '{"path": "0.png", "text": a red picture}'
    (root / "train.jsonl").write_text("\n".join(lines) + "\n")
    return root / "train.jsonl"


# --------------------------------------------------------------------------- 1. malformed rows


def test_invalid_json_line_names_the_file_and_line(tmp_path):
    data = jsonl_data(tmp_path / "d", ["a red picture"] * 5, broken_line=3)
    with pytest.raises(DataError) as err:
        hf.build_hf(
            tmp_path / "cache",
            path=str(data),
            image_size=16,
            columns=COLUMNS,
            splits=ALL_SPLITS,
            hf_cache_dir=str(tmp_path / "hf"),
        )
    assert str(err.value).startswith(f"cannot read local data {data}, line 3: invalid JSON (Expecting value at column")
    assert "fix or remove that row" in str(err.value)


def test_csv_row_with_a_wrong_field_count_names_the_file_and_line(tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    data = root / "train.csv"
    data.write_text("path,text\na.png,a red picture\na.png,a red picture\na.png,one,too many\n")
    with pytest.raises(DataError, match=rf"cannot read local data {data}, line 4: 3 fields where the header has 2"):
        hf.build_hf(
            tmp_path / "cache",
            path=str(data),
            image_size=16,
            columns=COLUMNS,
            splits=ALL_SPLITS,
            hf_cache_dir=str(tmp_path / "hf"),
        )


def test_invalid_json_line_through_the_cli_is_one_message(tmp_path):
    data = jsonl_data(tmp_path / "d", ["a red picture"] * 5, broken_line=3)
    res = _cli(
        [
            "data=hf",
            f"data.source.path={data}",
            "data.source.columns.image=path",
            "data.source.columns.text=text",
            "objective=[itc]",
            *TINY_HF,
        ],
        tmp_path,
        timeout=300,
        HF_HOME=str(tmp_path / "hf"),
        MMBENCH_CACHE=str(tmp_path / "cache"),
    )
    assert res.returncode == 2, res.stderr[-3000:]
    assert f"mmbench: cannot read local data {data}, line 3: invalid JSON" in res.stderr
    assert "Traceback" not in res.stderr and "Failed to load JSON" not in res.stderr, res.stderr[-3000:]


# --------------------------------------------------------------------------- 2. empty captions


def test_every_caption_empty_is_refused_naming_split_column_and_file(tmp_path):
    data = jsonl_data(tmp_path / "d", ["", " ", ""])
    with pytest.raises(DataError) as err:
        hf.build_hf(tmp_path / "cache", path=str(data), image_size=16, columns=COLUMNS, splits=ALL_SPLITS)
    assert str(err.value).startswith(
        f"every caption of split 'train' of {str(data)!r} is empty (column 'text', data.source.columns.text)"
    )


def test_one_empty_caption_is_dropped_with_one_line_naming_its_row(tmp_path, caplog):
    texts = [f"a red picture number {i}" for i in range(20)]
    texts[16] = ""
    data = jsonl_data(tmp_path / "d", texts)
    caplog.set_level(logging.WARNING, logger="mmbench.data.hf")
    splits = {"train": "train", "val": None, "test": None}  # val and test carved from train
    dsd, _ = hf.build_hf(
        tmp_path / "cache",
        path=str(data),
        image_size=16,
        columns=COLUMNS,
        splits=splits,
        val_fraction=0.1,
        test_fraction=0.1,
    )
    assert sum(len(c) for s in dsd.values() for c in s["captions"]) == 19  # dropped, as before
    lines = [r.getMessage() for r in caplog.records if "empty caption" in r.getMessage()]
    assert lines == [
        f"dropped 1 pair with an empty caption (row 17 of split 'train' of {data}, counted from 1; column 'text')"
    ]


def test_datamodule_refuses_a_split_without_pairs(tmp_path):
    import datasets

    from mmbench.data.datamodule import VLDataModule

    split = datasets.Dataset.from_dict(
        {"image_id": [0], "pixels": [bytes(16 * 16 * 3)], "image_size": [16], "captions": [[]]}
    )
    dm = VLDataModule(lambda: (datasets.DatasetDict(train=split, val=split, test=split), tmp_path), image_size=16)
    with pytest.raises(DataError, match=f"every caption of split 'train' of the dataset in {tmp_path} is empty"):
        dm.prepare_data()


# --------------------------------------------------------------------------- 3. damaged cache entries


def _truncate(path: Path) -> None:
    """Half of the file, as a crash leaves it (a new inode: this process may still map the old one)."""
    data = path.read_bytes()
    path.unlink()
    path.write_bytes(data[: len(data) // 2])


def test_truncated_shapes_arrow_file_is_regenerated(tmp_path, caplog):
    dsd, target = shapes.build_shapes(tmp_path, **SMALL_SHAPES)
    first = dsd["train"][:]
    (arrow,) = (target / "train").glob("*.arrow")
    _truncate(arrow)
    caplog.set_level(logging.WARNING, logger="mmbench.data.shapes")
    again, target2 = shapes.build_shapes(tmp_path, **SMALL_SHAPES)
    assert target2 == target and again["train"][:] == first
    assert f"the cached Shapes data {target} is damaged (" in caplog.text and "regenerating it" in caplog.text


def test_truncated_hf_arrow_file_is_converted_again(tmp_path, caplog):
    data = jsonl_data(tmp_path / "d", [f"a red picture number {i}" for i in range(6)])
    kwargs = dict(path=str(data), image_size=16, columns=COLUMNS, splits=ALL_SPLITS)
    dsd, target = hf.build_hf(tmp_path / "cache", **kwargs)
    first = dsd["train"][:]
    _truncate(hf_build.entry_files(target)["train"][0])
    caplog.set_level(logging.WARNING, logger="mmbench.data.hf")
    again, target2 = hf.build_hf(tmp_path / "cache", **kwargs)
    assert target2 == target and again["train"][:] == first
    assert f"the cached dataset {target} is damaged (" in caplog.text


def test_damaged_hf_cache_that_cannot_be_rebuilt_names_the_directory(tmp_path, monkeypatch):
    data = jsonl_data(tmp_path / "d", [f"a red picture number {i}" for i in range(6)])
    kwargs = dict(path=str(data), image_size=16, columns=COLUMNS, splits=ALL_SPLITS)
    _, target = hf.build_hf(tmp_path / "cache", **kwargs)
    _truncate(hf_build.entry_files(target)["test"][0])

    def unavailable(*args, **kwargs):
        raise hf.HubUnavailableError("dataset 'x' is not in the local HF cache")

    monkeypatch.setattr(hf_build, "load_source", unavailable)  # where build_hf looks it up
    with pytest.raises(DataError) as err:
        hf.build_hf(tmp_path / "cache", **kwargs)
    assert str(err.value).startswith(f"the cached dataset {target} is damaged (")
    assert f"delete {target} and rerun" in str(err.value)


def test_damaged_tokenizer_file_is_trained_again(tmp_path, caplog):
    path = tmp_path / "tokenizer-60.json"
    texts = ["a red circle", "a blue square"] * 10
    tokenizer.load_or_train(path, texts, vocab_size=60)
    _truncate(path)
    caplog.set_level(logging.WARNING, logger="mmbench.data.tokenizer")
    tok = tokenizer.load_or_train(path, texts, vocab_size=60)
    assert tok.token_to_id("[MASK]") is not None and f"the cached tokenizer {path} does not load" in caplog.text
    tokenizer.load_or_train(path, texts, vocab_size=60)  # the file was replaced: it loads now


# --------------------------------------------------------------------------- 3b. orphaned temporary directories


def _tmp_dir(root: Path, name: str, age_s: float = 0.0) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "data.arrow").write_bytes(b"x" * 100)
    if age_s:
        old = time.time() - age_s
        os.utime(d, (old, old))
    return d


def test_orphaned_temporaries_are_removed_but_not_those_being_built(tmp_path):
    h = "0123456789abcdef"
    old_unlocked = _tmp_dir(tmp_path, f".shapes-{h}.tmp-old", age_s=2 * 3600)  # interrupted, older code
    young_unlocked = _tmp_dir(tmp_path, f".shapes-{h}.tmp-new")  # just created by mkdtemp
    dead = _tmp_dir(tmp_path, f".hf-{h}.tmp-dead")  # its owner died: a lock file nobody holds
    (tmp_path / f".hf-{h}.tmp-dead.lock").touch()
    live = _tmp_dir(tmp_path, f".shapes-{h}.tmp-live", age_s=5 * 3600)  # a long build of another process
    live_lock = open(tmp_path / f".shapes-{h}.tmp-live.lock", "w")
    fcntl.flock(live_lock, fcntl.LOCK_EX)  # a separate open file description: conflicts like another process
    other = tmp_path / "not-a-cache-entry.tmp-x"
    other.mkdir()
    try:
        removed = data_cache.remove_stale_temporaries(tmp_path)
        assert sorted(removed) == sorted([old_unlocked, dead])
        assert not old_unlocked.exists() and not dead.exists() and not (tmp_path / f".hf-{h}.tmp-dead.lock").exists()
        assert young_unlocked.exists() and live.exists() and other.exists()
    finally:
        live_lock.close()


def test_a_build_removes_an_interrupted_build_and_leaves_no_temporaries(tmp_path):
    h = "0123456789abcdef"
    orphan = _tmp_dir(tmp_path, f".shapes-{h}.tmp-crashed", age_s=2 * 3600)
    _, target = shapes.build_shapes(tmp_path, **SMALL_SHAPES)
    assert not orphan.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def test_the_build_holds_its_temporary_directory_locked(tmp_path):
    target = tmp_path / "shapes-0123456789abcdef"
    with data_cache.temporary_sibling(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(f".{target.name}.tmp-")
        assert data_cache.remove_stale_temporaries(tmp_path, stale_after_s=0.0) == []  # another process's cleanup
        assert tmp.exists()
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- 4. W&B online without network


def test_online_wandb_without_network_is_refused_at_once(tmp_path, monkeypatch):
    from mmbench import pipeline
    from mmbench.config import ConfigError
    from tests.conftest import compose_cfg

    probed = []

    def unreachable(url, timeout=hub.HUB_PROBE_TIMEOUT_S, default_host=""):
        probed.append(url)
        return False

    monkeypatch.setattr(hub, "reachable", unreachable)  # tests never use the network
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")
    cfg = compose_cfg(["logger=wandb"], tmp_path / "run")
    start = time.time()
    with pytest.raises(ConfigError) as err:
        pipeline.run(cfg)
    assert time.time() - start < 20 and probed == ["https://wandb.example.org"]
    assert str(err.value).startswith(
        "the W&B logger is online (WANDB_MODE / logger.wandb.mode) but "
        "https://wandb.example.org does not answer within 3 s (no network?): "
        "set WANDB_MODE=offline"
    )
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "failed"

    monkeypatch.setenv("WANDB_MODE", "offline")  # offline (the default) never probes
    pipeline.check_wandb_reachable(compose_cfg(["logger=wandb"], tmp_path / "run2"))
    assert probed == ["https://wandb.example.org"]
