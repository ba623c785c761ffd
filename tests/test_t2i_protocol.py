"""The t2i protocol (mmbench/metrics/t2i.py): generated images read back by the data's oracle and scored exactly.

A stand-in generator that returns the true image of each caption scores every caption true (and a Frechet distance
of ~0); one that returns the next row's image does not (at the same Frechet distance: the same set of images); a model with no generator, or data with no oracle, is
told so; and a tiny run with itc + t2i_diffusion reports every metric through the evaluation suite."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from mmbench.builder import build_datamodule
from mmbench.metrics.common import Inputs, Unavailable
from mmbench.metrics.suite import protocol
from mmbench.metrics.t2i import t2i
from mmbench.metrics.t2i_anchors import Holding, RealImages
from mmbench.pipeline import run
from tests.conftest import compose_cfg
from tests.test_t2i_diffusion import SMALL_ARGS


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    # 48 px: the oracle reads Shapes' 3x3 grid exactly there (at 24 px, 8-px cells, 94% of cells)
    args = [a for a in SMALL_ARGS if not a.startswith("data.image_size")] + ["data.image_size=48"]
    cfg = compose_cfg([*args, f"paths.cache_dir={tmp_path_factory.mktemp('cache')}"])
    return build_datamodule(cfg)


def _caption_images(dm, n: int) -> list[np.ndarray]:
    ds = dm.datasets["test"]
    return [np.asarray(ds.images[r]) for r in range(n) for _ in ds.column("captions")[r]]


def test_the_true_images_meet_every_claim_and_the_next_rows_do_not(shapes):
    inputs = Inputs(shapes.datasets["test"], shapes.tokenizer, t2i_oracle=shapes.t2i_oracle)
    truth = RealImages(_caption_images(shapes, 6))
    out = t2i(
        Holding({"gen": truth}), inputs, batch_size=5, max_images=6, guidance=None, steps=None, seed=7, name="t2i"
    )
    assert out["t2i/overall/images"] == len(truth.images) == 24  # 4 captions of each of 6 images
    assert out["t2i/overall/caption_true"] == 1.0 and out["t2i/overall/faithful"] == 1.0
    assert out["t2i/oracle/cell"] > 0.99
    assert abs(out["t2i/frechet"]) < 1e-3  # the same images on both sides
    assert truth.seeds == list(range(7, 7 + 24))  # caption k from seed + k, whatever the batch
    kwargs = dict(batch_size=5, max_images=6, guidance=None, steps=None, seed=7, name="t2i", return_predictions=True)
    again, kept = t2i(Holding({"gen": RealImages(truth.images)}), inputs, **kwargs)
    assert again == out and len(kept) == 16  # the first 16 images are kept for the run's grid
    assert [row for row, *_ in kept] == [k // 4 for k in range(16)]  # 4 captions per image row
    assert all(np.array_equal(image, truth.images[k]) and ok for k, (_, _, image, ok) in enumerate(kept))
    shifted = t2i(
        Holding({"gen": RealImages(truth.images, shift=4)}),  # caption k drawn as caption k+4's image: the next row's
        inputs,
        batch_size=5,
        max_images=6,
        guidance=None,
        steps=None,
        seed=7,
        name="t2i",
    )
    assert shifted["t2i/overall/caption_true"] < 0.5
    # ... while the Frechet distance, a distance between distributions, sees the same set of images (a permutation)
    assert abs(shifted["t2i/frechet"]) < 1e-3


def test_t2i_unguided_is_the_protocol_at_guidance_one_under_its_own_names(shapes):
    """The no-guidance arm: protocol t2i_unguided of conf/eval/default.yaml asks the generator for guidance 1 and
    names its metrics t2i_unguided/...; t2i leaves the guidance to the objective (None)."""
    inputs = Inputs(shapes.datasets["test"], shapes.tokenizer, t2i_oracle=shapes.t2i_oracle)
    images = _caption_images(shapes, 2)
    guided, unguided = RealImages(images), RealImages(images)
    out = protocol("t2i")(Holding({"gen": guided}), inputs, batch_size=4, max_images=2)
    plain = protocol("t2i_unguided")(Holding({"gen": unguided}), inputs, batch_size=4, max_images=2)
    assert guided.guidance == {None} and unguided.guidance == {1.0}
    assert plain == {k.replace("t2i/", "t2i_unguided/", 1): v for k, v in out.items()}
    assert plain["t2i_unguided/overall/caption_true"] == 1.0


def test_without_a_generator_or_an_oracle_the_protocol_says_what_it_needs(shapes):
    inputs = Inputs(shapes.datasets["test"], shapes.tokenizer, t2i_oracle=shapes.t2i_oracle)
    kwargs = dict(batch_size=4, max_images=2, guidance=None, steps=None, seed=0, name="t2i")
    with pytest.raises(Unavailable, match="needs an image generator"):
        t2i(Holding({}), inputs, **kwargs)
    with pytest.raises(Unavailable, match="no scene oracle"):
        t2i(Holding({"gen": RealImages([])}), Inputs(shapes.datasets["test"], shapes.tokenizer), **kwargs)


def test_a_tiny_run_reports_the_t2i_metrics_through_the_suite(cache_dir, tmp_path):
    args = [
        *[a for a in SMALL_ARGS if not a.startswith("objective=")],
        "objective=[itc,t2i_diffusion]",
        "objective.itc.embed_dim=16",
        "eval.protocols=[t2i]",  # (SMALL_ARGS: 2 images, 2 DDIM steps)
    ]
    record = run(compose_cfg(args, tmp_path / "run"))
    assert record["status"] == "completed", record.get("error")
    metrics = record["metrics"]
    assert metrics["test/t2i/overall/images"] == 8
    assert all(0 <= metrics[f"test/t2i/overall/{k}"] <= 1 for k in ("present", "faithful", "caption_true"))
    assert 0.5 < metrics["test/t2i/oracle/cell"] <= 1  # 24 px: an imperfect oracle, and the run reports it
    assert math.isfinite(metrics["test/t2i/frechet"]) and -1 <= metrics["test/t2i/agreement"] <= 1
    assert torch.isfinite(torch.tensor(metrics["test/t2i_diffusion/loss"]))
    # the images are saved as a grid beside the report, each caption listed with the oracle's verdict
    grid = Image.open(tmp_path / "run" / "t2i_samples.png")
    assert grid.size[0] > 4 * 48 and grid.size[1] > 2 * 48  # 8 images in 2 rows of 4, with titles
    report = (tmp_path / "run" / "report.md").read_text()
    listed = report.split("## Generated images", 1)[1].split("\n\n", 2)  # ["", the grid, the table]
    assert "t2i_samples.png" in listed[1]
    assert [line.split(" | ")[0] for line in listed[2].split("\n\n")[0].splitlines()[2:]] == [
        f"| {i}" for i in range(8)
    ]
