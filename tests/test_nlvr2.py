"""NLVR2's two-image path: the `pixels_right` column -> the batch field `pixel_values_right`, the pair head
(objective nlvr2: the statement fused with each image, [left; right] classified), the pairings config
validation refuses, and a tiny run scored by the `classification` protocol.

The data is `pair_source`: rows of random left / right images (one row per image pair, as the NLVR2 release
reader writes them) with two statements each, written in memory with the canonical columns; the run tests
reach it as a data config of their own (`data=pairs`, from a config directory on the search path).
"""

from __future__ import annotations

import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

from mmbench.builder import build_datamodule, build_module
from mmbench.config import ConfigError
from mmbench.data import columns as schema
from mmbench.data import dataset as dataset_module
from mmbench.data import shapes
from mmbench.data.datamodule import DataInfo, PairDataset, VLDataModule
from mmbench.metrics.common import Inputs, Unavailable
from mmbench.metrics.suite import protocol
from mmbench.objectives.context import StepContext
from mmbench.objectives.nlvr2 import NLVR2
from mmbench.pipeline import run
from mmbench.validation import validate
from tests.conftest import ROOT, compose_cfg

PAIR_COLUMNS = ("image_id", "pixels", "pixels_right", "image_size", "captions", "caption_labels")
STATEMENTS = ("both images show a red square", "the left image is brighter than the right one")
SIZES = {"train": 16, "val": 4, "test": 6}  # image pairs per split; two statements each
UNKNOWN_TEST = (2, 1)  # (pair, statement) of the test split whose label is -1
TEST_LABELLED = 2 * SIZES["test"] - 1  # 11 labelled test statements


def pair_rows(n: int, size: int, seed: int, first_id: int, unknown: tuple[int, int] | None = None) -> dict:
    """n rows of the canonical two-image layout: random left and right images, statement k of pair i
    labelled (i + k) % 2 (the `unknown` one -1)."""
    rng = np.random.default_rng(seed)
    rows: dict[str, list] = {c: [] for c in PAIR_COLUMNS}
    for i in range(n):
        rows["image_id"].append(first_id + i)
        rows["pixels"].append(rng.integers(0, 256, (size, size, 3), dtype=np.uint8).tobytes())
        rows["pixels_right"].append(rng.integers(0, 256, (size, size, 3), dtype=np.uint8).tobytes())
        rows["image_size"].append(size)
        rows["captions"].append(list(STATEMENTS))
        rows["caption_labels"].append([-1 if (i, k) == unknown else (i + k) % 2 for k in range(len(STATEMENTS))])
    return rows


def pair_source(
    cache_dir, *, image_size: int = 48, num_train: int = 16, num_val: int = 4, num_test: int = 6, seed: int = 0
) -> tuple[datasets.DatasetDict, Path]:
    """A data source (mmbench/data/datamodule.py): tiny image pairs, built in memory."""
    features = schema.features(PAIR_COLUMNS)
    counts = {"train": num_train, "val": num_val, "test": num_test}
    dsd, first = datasets.DatasetDict(), 0
    for s, (split, n) in enumerate(counts.items()):
        unknown = UNKNOWN_TEST if split == "test" else None
        rows = pair_rows(n, image_size, seed * 10 + s, first, unknown)
        dsd[split] = datasets.Dataset.from_dict(rows, features=features)
        first += n
    out = Path(cache_dir) / f"pairs-{image_size}-{num_train}-{num_val}-{num_test}-{seed}"
    out.mkdir(parents=True, exist_ok=True)
    return dsd, out


def provided_fields(**settings) -> frozenset[str]:
    """What config validation asks a data source: the batch fields its columns make ..."""
    return schema.fields_from(PAIR_COLUMNS)


def config_problems(**settings) -> list[str]:
    """... and what is wrong with its settings: nothing."""
    return []


PAIRS_YAML = """\
defaults:
  - tokenizer: trained
  - _self_
_target_: mmbench.data.datamodule.VLDataModule
image_size: 48
max_text_len: 16
vocab_size: 100
batch_size: 8
eval_batch_size: 16
num_workers: 0
seed: ${seed}
num_region_labels: null
max_answers: null
offline: false
source:
  _target_: tests.test_nlvr2.pair_source
  _partial_: true
  cache_dir: ${paths.cache_dir}
  image_size: ${..image_size}
  num_train: 16
  num_val: 4
  num_test: 6
"""

TINY_MODEL = ["model.sizes.tiny.dim=32", "model.sizes.tiny.heads=2", "model.sizes.tiny.fusion_depth=1"]
TINY_RUN = [
    "logger=csv",
    "~callbacks.progress_bar",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
]


@pytest.fixture
def conf_dir(tmp_path) -> Path:
    """A config directory with `data=pairs` (pair_source), for the search path."""
    (tmp_path / "conf" / "data").mkdir(parents=True)
    (tmp_path / "conf" / "data" / "pairs.yaml").write_text(PAIRS_YAML)
    return tmp_path / "conf"


def pairs_cfg(conf_dir: Path, *overrides: str):
    return compose_cfg(
        [f"hydra.searchpath=[file://{conf_dir}]", "data=pairs", "objective=[nlvr2]", *overrides],
        conf_dir.parent / "run",
    )


def normalised(image: np.ndarray) -> torch.Tensor:
    """(3, H, W) of an (H, W, 3) uint8 image, by the formula: x / 127.5 - 1."""
    return torch.from_numpy(image.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)


# --------------------------------------------------------------------------- (a) the schema


@pytest.mark.parametrize("eager", [True, False])
def test_a_batch_of_pairs_has_the_right_image_normalised_like_the_left(tmp_path, eager, monkeypatch):
    if not eager:  # a large split: rows read from the memory-mapped table on access
        monkeypatch.setattr(dataset_module, "EAGER_PIXEL_BYTES", 0)
    dm = VLDataModule(partial(pair_source, tmp_path, image_size=16), image_size=16, vocab_size=50)
    dm.setup()
    train = dm.datasets["train"]
    assert isinstance(train.images_right, np.ndarray) == eager
    assert "pixels_right" not in train._columns  # pixels are never held as Python lists of bytes
    items = [train[i] for i in (0, 3, 4, 31)]  # (pair, statement) = (0, 0), (1, 1), (2, 0), (15, 1)
    batch = dm.collate(items)
    assert (
        set(batch)
        == schema.fields_from(PAIR_COLUMNS)
        == {
            "input_ids",
            "attention_mask",
            "pixel_values",
            "pixel_values_right",
            "image_id",
            "labels",
        }
    )
    rows = train.split
    for i, pair in enumerate((0, 1, 2, 15)):
        left = np.frombuffer(rows[pair]["pixels"], dtype=np.uint8).reshape(16, 16, 3)
        right = np.frombuffer(rows[pair]["pixels_right"], dtype=np.uint8).reshape(16, 16, 3)
        assert torch.equal(batch["pixel_values"][i], normalised(left))
        assert torch.equal(batch["pixel_values_right"][i], normalised(right))
    assert not torch.equal(batch["pixel_values"], batch["pixel_values_right"])
    assert batch["pixel_values_right"].dtype == schema.FIELDS["pixel_values_right"].dtype
    assert batch["labels"].tolist() == [0, 0, 0, 0]  # (i + k) % 2 of the four (pair, statement)s
    assert batch["image_id"].tolist() == [0, 1, 2, 15]


def test_a_shapes_batch_has_no_right_image_and_is_unchanged(tmp_path):
    source = partial(shapes.build_shapes, tmp_path, image_size=48, num_train=24, num_val=8, num_test=8)
    dm = VLDataModule(source, image_size=48, vocab_size=200)
    dm.setup()
    ds = dm.datasets["train"]
    assert ds.images_right is None
    items = [ds[i] for i in range(8)]
    assert not any("image_right" in it for it in items)
    batch = dm.collate(items)
    assert "pixel_values_right" not in batch and "pixel_values_right" not in shapes.provided_fields()
    # the pixels exactly as the collator made them before pixels_right existed
    before = torch.from_numpy(np.stack([it["image"] for it in items])).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    assert torch.equal(batch["pixel_values"], before)


# --------------------------------------------------------------------------- (b, c) the pair head

PRESETS = ("vilt", "albef", "concat")  # merged, text cross-attention and vector fusions


def tiny_module(preset: str, conf_dir: Path):
    cfg = pairs_cfg(conf_dir, f"model={preset}", *TINY_MODEL)
    torch.manual_seed(0)
    return build_module(cfg, DataInfo.of_vocab(64, max_text_len=16, image_size=48)).eval()


def random_inputs(B: int = 4, T: int = 7, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(7, 64, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 4:] = 0  # statements of different lengths
    mask[3, 5:] = 0
    ids = ids.masked_fill(mask == 0, 0)
    left, right = (torch.rand(B, 3, 48, 48, generator=g) * 2 - 1 for _ in range(2))
    return ids, mask, left, right


@pytest.mark.parametrize("preset", PRESETS)
def test_the_batched_pair_path_equals_two_separate_fuse_calls(preset, conf_dir):
    module = tiny_module(preset, conf_dir)
    model, head = module.model, module.objectives["nlvr2"]
    ids, mask, left, right = random_inputs()
    with torch.no_grad():
        text = model.encode_text(ids, mask)
        image = model.encode_image({"pixel_values": left})
        image_right = head.encode_right(model, {"pixel_values": left, "pixel_values_right": right})
        batched = head.class_logits(model, text, image, image_right)  # (B, 2): one fuse call on 2B
        # by hand: two encoder calls, two fuse calls, the head on [left; right]
        pooled_left = model.fuse(text, model.encode_image({"pixel_values": left})).pooled
        pooled_right = model.fuse(text, model.encode_image({"pixel_values": right})).pooled
        separate = head.head(torch.cat([pooled_left, pooled_right], dim=-1))
    assert batched.shape == (4, 2)
    assert torch.allclose(batched, separate, atol=1e-6), (batched - separate).abs().max()


@pytest.mark.parametrize("preset", PRESETS)
def test_swapping_the_images_is_swapping_the_halves_of_the_heads_input(preset, conf_dir):
    """The head sees [left; right]: the logits of (right, left) are those of (left, right) under a first layer
    whose two column halves are swapped, and they differ from the unswapped logits."""
    module = tiny_module(preset, conf_dir)
    model, head = module.model, module.objectives["nlvr2"]
    ids, mask, left, right = random_inputs(seed=1)
    with torch.no_grad():
        text = model.encode_text(ids, mask)
        L, R = (model.encode_image({"pixel_values": x}) for x in (left, right))
        straight, swapped = head.class_logits(model, text, L, R), head.class_logits(model, text, R, L)
        first = head.head[0].weight  # (2D, 2D): columns 0..D-1 read the left vector, D..2D-1 the right
        D = first.shape[1] // 2
        first.copy_(torch.cat([first[:, D:], first[:, :D]], dim=1))
        straight_swapped_head = head.class_logits(model, text, L, R)
    assert torch.allclose(swapped, straight_swapped_head, atol=1e-6)
    assert (swapped - straight).abs().max() > 1e-3  # the order of the images matters


@pytest.mark.parametrize("preset", PRESETS)
def test_padding_a_statement_never_changes_the_logits(preset, conf_dir):
    module = tiny_module(preset, conf_dir)
    model, head = module.model, module.objectives["nlvr2"]
    ids, mask, left, right = random_inputs(seed=2)
    batch = {"pixel_values": left, "pixel_values_right": right}
    longer_ids = torch.cat([ids, torch.zeros(4, 9, dtype=torch.long)], dim=1)  # padded to 16 tokens
    longer_mask = torch.cat([mask, torch.zeros(4, 9, dtype=torch.long)], dim=1)
    with torch.no_grad():
        image, image_right = model.encode_image(batch), head.encode_right(model, batch)
        short = head.class_logits(model, model.encode_text(ids, mask), image, image_right)
        longer = head.class_logits(model, model.encode_text(longer_ids, longer_mask), image, image_right)
    assert torch.allclose(short, longer, atol=1e-5), (short - longer).abs().max()


def test_the_loss_is_cross_entropy_on_the_labelled_pairs_and_acc_their_share_right(conf_dir):
    module = tiny_module("vilt", conf_dir)
    model, head = module.model, module.objectives["nlvr2"]
    ids, mask, left, right = random_inputs(seed=3)
    batch = {"input_ids": ids, "attention_mask": mask, "pixel_values": left, "pixel_values_right": right}
    with torch.no_grad():
        text, image = model.encode_text(ids, mask), model.encode_image(batch)
        logits = head.class_logits(model, text, image, head.encode_right(model, batch))
        predicted = logits.argmax(-1)
        labels = torch.stack([predicted[0], 1 - predicted[1], torch.tensor(-1), predicted[3]])  # 2 of 3 right
        out = head(model, {**batch, "labels": labels}, text, image, StepContext())
    keep = [0, 1, 3]
    by_hand = -torch.log_softmax(logits[keep], -1).gather(1, labels[keep, None]).mean()
    assert out.loss.item() == pytest.approx(by_hand.item(), abs=1e-6)
    assert out.metrics["acc"].item() == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="label 2.*0 \\(False\\) and 1 \\(True\\)"):
        head(model, {**batch, "labels": torch.tensor([0, 1, 2, 0])}, text, image, StepContext())


# --------------------------------------------------------------------------- (d) config validation

SUPPORTED = {
    "albef",
    "bilinear",
    "blip2",
    "blip2_lm",
    "concat",
    "flamingo",
    "frozen",
    "gated",
    "late",
    "llava",
    "lmf",
    "tfn",
    "vilt",
}


def test_every_preset_with_a_joint_vector_and_pixel_inputs_supports_nlvr2(conf_dir):
    """The presets docs/pending/nlvr2.md lists: every one whose fusion has a pooled joint vector and whose
    vision encoder reads pixels; clip (no fusion) and the region-encoder presets are refused, saying why."""
    presets = sorted(p.stem for p in (ROOT / "conf" / "model").glob("*.yaml"))
    refused = {}
    for preset in presets:
        try:
            validate(pairs_cfg(conf_dir, f"model={preset}"))
        except ConfigError as err:
            refused[preset] = str(err)
    assert set(presets) - set(refused) == SUPPORTED
    assert set(refused) == {"clip", "lxmert", "vilbert", "visualbert"}
    assert (
        "objective 'nlvr2' needs a fusion with joint_pooled, which fusion 'NoFusion' does not provide"
        in refused["clip"]
    )
    for preset in ("lxmert", "vilbert", "visualbert"):
        assert "reads object regions, which the right image does not have" in refused[preset], refused[preset]


def test_nlvr2_on_data_without_a_right_image_is_refused(tiny_cfg):
    with pytest.raises(ConfigError) as err:
        validate(tiny_cfg("objective=[itc,nlvr2]"))  # Shapes: one image per example
    assert "objective 'nlvr2' reads pixel_values_right, labels, which data 'shapes' does not provide" in str(err.value)
    assert "pixel_values_right" in NLVR2.fields_read() and "labels" in NLVR2.fields_read()


@pytest.fixture(scope="module")
def release_root(tmp_path_factory) -> Path:
    """NLVR2's release layout (mmbench/data/release/write.py): 12 training pairs, 3 per evaluation split."""
    from mmbench.data.release.write import write_release_layout

    return write_release_layout("nlvr2", tmp_path_factory.mktemp("nlvr2"), images=12, image_size=48)


def test_the_cli_refuses_nlvr2_without_a_joint_vector_before_any_data(release_root, tmp_path):
    """`mmbench-train data=nlvr2 model=clip objective=[nlvr2]`: exit 2, one message, no data read."""
    cache = tmp_path / "cache"
    env = {**os.environ, "MMBENCH_CACHE": str(cache), "WANDB_MODE": "offline"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mmbench.train",
            "data=nlvr2",
            f"data.root={release_root}",
            "model=clip",
            "objective=[nlvr2]",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=180,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    problems = [line for line in done.stderr.splitlines() if line.strip().startswith("- ")]
    assert len(problems) == 1, done.stderr[-2000:]  # one clear message
    assert "objective 'nlvr2' needs a fusion with joint_pooled, which fusion 'NoFusion' does not provide" in problems[0]
    assert not cache.exists() or not any(cache.iterdir()), "data was prepared before the refusal"


# --------------------------------------------------------------------------- (e) evaluation, end to end


def test_the_protocol_scores_pairs_through_the_pair_head_each_image_once(conf_dir, cache_dir, monkeypatch):
    """`classification` on the pair head: the accuracy of the head's own forward on the collated test split
    (one batch), each left and right image encoded once."""
    cfg = pairs_cfg(conf_dir, "model=vilt", *TINY_MODEL)
    dm = build_datamodule(cfg)
    module = build_module(cfg, dm.info).eval()
    model, head = module.model, module.objectives["nlvr2"]
    test = dm.datasets["test"]
    batch = dm.collate([test[i] for i in range(len(test))])
    with torch.no_grad():
        text, image = model.encode_text(batch["input_ids"], batch["attention_mask"]), model.encode_image(batch)
        step = head(model, batch, text, image, StepContext())
    encoded = []
    encode_image = model.encode_image
    monkeypatch.setattr(
        model, "encode_image", lambda b, **kw: encoded.append(len(b["pixel_values"])) or encode_image(b, **kw)
    )
    out = protocol("classification")(module, Inputs(test, dm.tokenizer), batch_size=4)
    assert sum(encoded) == 2 * SIZES["test"]  # 6 left + 6 right images for 12 (pair, statement) examples
    assert out["classification/num_examples"] == TEST_LABELLED
    assert out["classification/acc"] == pytest.approx(step.metrics["acc"].item(), abs=1e-6)
    assert "classification/auroc" in out  # two classes, both present
    one_image = PairDataset(test.split.remove_columns("pixels_right"), answer_index={})
    with pytest.raises(Unavailable, match="classifies image pairs, but the data has no right image"):
        protocol("classification")(module, Inputs(one_image, dm.tokenizer), batch_size=4)


def test_a_tiny_nlvr2_run_reports_the_pair_accuracy(conf_dir, cache_dir):
    cfg = pairs_cfg(conf_dir, "model=vilt", *TINY_MODEL, *TINY_RUN, "eval.protocols=[classification,retrieval]")
    record = run(cfg)
    assert record["status"] == "completed", record.get("error")
    metrics = record["metrics"]
    assert metrics["test/classification/num_examples"] == TEST_LABELLED
    acc = metrics["test/classification/acc"]
    assert acc * TEST_LABELLED == pytest.approx(round(acc * TEST_LABELLED))  # a share of the 11 statements
    # the test loop's objective accuracy on the same weights and the same (one-batch) split: the same number
    assert acc == pytest.approx(metrics["test/nlvr2/acc"], abs=1e-6)
    assert "val/nlvr2/acc" in metrics
    assert not any("/retrieval/" in k for k in metrics)  # no ITC / ITM: not run, and no error


def test_a_tiny_run_on_the_nlvr2_release_layout(release_root, cache_dir, tmp_path):
    """The whole path from released files: the reader's `pixels_right` -> the batch -> the pair head -> the
    protocol, on the 3 test pairs of the written layout."""
    cfg = compose_cfg(
        [
            "data=nlvr2",
            f"data.root={release_root}",
            "data.image_size=48",
            "data.batch_size=8",
            "data.eval_batch_size=64",
            "data.vocab_size=200",
            "model=vilt",
            "objective=[nlvr2]",
            "eval.protocols=[classification]",
            *TINY_MODEL,
            *TINY_RUN,
        ],
        tmp_path / "run",
    )
    record = run(cfg)
    assert record["status"] == "completed", record.get("error")
    metrics = record["metrics"]
    n = metrics["test/classification/num_examples"]
    assert n >= 3 and metrics["test/classification/acc"] == pytest.approx(metrics["test/nlvr2/acc"], abs=1e-6)
