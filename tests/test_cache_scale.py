"""The converted-source cache at scale: images stored encoded (JPEG / PNG) and decoded by `PairDataset`,
converted by several threads into the same bytes as one, in shards that an interrupted conversion
(a real SIGKILL) continues from, and refused settings named from the config alone."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from mmbench.data import dataset as dataset_module
from mmbench.data import release
from mmbench.data.dataset import PairDataset
from mmbench.data.hf import build as hf_build
from mmbench.data.hf import convert
from mmbench.data.image_codec import decode_pixels, encode_image
from mmbench.data.release.write import write_release_layout
from tests.conftest import ROOT, compose_cfg

IMAGES = 40  # training images of the fixture (coco_karpathy: 50 images in all, 5 captions each)


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> Path:
    return write_release_layout("coco_karpathy", tmp_path_factory.mktemp("coco"), images=IMAGES, image_size=48)


def _build(root: Path, cache: Path, **kwargs):
    return release.build_release(cache, benchmark="coco_karpathy", root=str(root), image_size=32, **kwargs)


def _rows(dsd) -> dict:
    return {s: d[:] for s, d in dsd.items()}


def test_codec_round_trip():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    for image_format in ("raw", "png"):  # lossless
        assert np.array_equal(decode_pixels(encode_image(pixels, image_format), image_format, 24), pixels)
    smooth = np.repeat(np.linspace(0, 255, 24, dtype=np.uint8)[None, :, None], 24, 0).repeat(3, 2)
    decoded = decode_pixels(encode_image(smooth, "jpeg", 95), "jpeg", 24)
    assert decoded.shape == (24, 24, 3) and np.abs(decoded.astype(int) - smooth).max() <= 4
    with pytest.raises(ValueError, match="valid formats"):
        encode_image(pixels, "webp")


def test_threads_and_shards_write_the_bytes_of_one_thread(coco, tmp_path, monkeypatch):
    one, _ = _build(coco, tmp_path / "one", num_proc=1)
    monkeypatch.setattr(convert, "SHARD_ROWS", 7)  # 50 images -> shards of 7 source rows
    two, target = _build(coco, tmp_path / "two", num_proc=2)
    assert _rows(two) == _rows(one)
    files = hf_build.entry_files(target)
    assert len(files["train"]) > 1 and all(p.is_file() for ps in files.values() for p in ps)
    assert two["train"][0]["image_format"] == "jpeg" and len(two["train"][0]["pixels"]) < 32 * 32 * 3


def test_png_cache_decodes_to_the_raw_cache(coco, tmp_path):
    raw, _ = _build(coco, tmp_path / "raw", image_format="raw")
    png, _ = _build(coco, tmp_path / "png", image_format="png")
    for split in raw:
        a, b = PairDataset(raw[split], {}), PairDataset(png[split], {})
        assert len(a.images) == len(b.images) > 0
        assert all(np.array_equal(a.images[r], b.images[r]) for r in range(len(a.images)))


def test_large_split_decodes_each_row_on_access(coco, tmp_path, monkeypatch):
    dsd, _ = _build(coco, tmp_path / "c")
    eager = PairDataset(dsd["train"], {})
    assert isinstance(eager.images, np.ndarray)  # small: decoded once, into memory
    monkeypatch.setattr(dataset_module, "EAGER_PIXEL_BYTES", 0)
    lazy = PairDataset(dsd["train"], {})
    assert not isinstance(lazy.images, np.ndarray)
    assert all(np.array_equal(lazy.images[r], eager.images[r]) for r in range(len(eager.images)))
    assert np.array_equal(lazy[3]["image"], eager[3]["image"])


KILLED_CONVERSION = """
import sys, time
from mmbench.data import release
from mmbench.data.hf import convert
from mmbench.data.hf import images

convert.SHARD_ROWS = 5
read = images.read_image
def slow(*args, **kwargs):
    time.sleep(0.05)
    return read(*args, **kwargs)
convert.read_image = slow
release.build_release(sys.argv[2], benchmark="coco_karpathy", root=sys.argv[1], image_size=32, num_proc=1)
"""


def test_a_killed_conversion_continues_from_its_finished_shards(coco, tmp_path, monkeypatch):
    """SIGKILL mid-conversion, then the same build: the finished shards are kept (their images not read
    again) and the result equals an uninterrupted conversion."""
    cache = tmp_path / "cache"
    script = tmp_path / "convert.py"
    script.write_text(textwrap.dedent(KILLED_CONVERSION))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(script), str(coco), str(cache)], env=env)
    deadline = time.monotonic() + 120
    done: list[Path] = []
    while time.monotonic() < deadline and len(done) < 3 and proc.poll() is None:
        done = list(cache.glob(".coco_karpathy-*.partial/shards/*/done.json"))
        time.sleep(0.05)
    assert proc.poll() is None, "the conversion finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = {p.parent.name for p in cache.glob(".coco_karpathy-*.partial/shards/*/done.json")}
    assert len(finished) >= 3 and not list(cache.glob("coco_karpathy-*"))  # nothing published yet

    monkeypatch.setattr(convert, "SHARD_ROWS", 5)
    reads = []
    read = convert.read_image
    monkeypatch.setattr(convert, "read_image", lambda *a, **k: reads.append(1) or read(*a, **k))
    resumed, target = _build(coco, cache, num_proc=1)
    total = sum(len(d) for d in resumed.values())
    assert 0 < len(reads) <= total - 5 * len(finished)  # the finished shards were not converted again
    assert not list(cache.glob(".coco_karpathy-*.partial"))  # published: the partial build became the entry

    monkeypatch.setattr(convert, "read_image", read)
    uninterrupted, _ = _build(coco, tmp_path / "fresh", num_proc=1)
    assert _rows(resumed) == _rows(uninterrupted)


@pytest.mark.parametrize(
    "override,message",
    [
        ("data.source.image_format=webp", "data.source.image_format=webp; valid formats: ['jpeg', 'png', 'raw']"),
        ("data.source.jpeg_quality=0", "data.source.jpeg_quality=0: must be an integer in [1, 100]"),
        ("data.num_proc=0", "data.num_proc=0: must be a thread count >= 1 (null: every core)"),
    ],
)
def test_storage_settings_are_refused_from_the_config(coco, tmp_path, override, message):
    from mmbench.config import ConfigError
    from mmbench.validation import validate

    cfg = compose_cfg(["data=coco_karpathy", f"data.root={coco}", "objective=[itc]", override], tmp_path)
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert message in str(err.value)
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())


def test_a_second_process_waits_and_reads_the_entry_the_first_published(coco, tmp_path, monkeypatch):
    """While another process holds the build lock, a build waits; when it finds the entry published by
    then, it reads it and converts nothing."""
    elsewhere, published = _build(coco, tmp_path / "elsewhere")  # the same entry, built in another cache
    cache = tmp_path / "cache"
    cache.mkdir()
    lock = os.open(cache / f".{published.name}.partial.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)  # "the first process", converting right now
    reads = []
    read = convert.read_image
    monkeypatch.setattr(convert, "read_image", lambda *a, **k: reads.append(1) or read(*a, **k))
    result = {}
    waiting = threading.Thread(target=lambda: result.update(built=_build(coco, cache)))
    waiting.start()
    time.sleep(1.0)
    assert waiting.is_alive()  # blocked on the lock
    shutil.copytree(published, cache / published.name)  # the first process publishes its entry ...
    fcntl.flock(lock, fcntl.LOCK_UN)  # ... and releases the lock
    os.close(lock)
    waiting.join(60)
    dsd, target = result["built"]
    assert target == cache / published.name and reads == [] and _rows(dsd) == _rows(elsewhere)
