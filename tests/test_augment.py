"""Training-image augmentation (`data.augment`, mmbench/data/augment.py): the flip mirrors, the crop keeps its
area and ratio bounds and resizes the region it names, each draw is a function of (seed, epoch, index) so
worker processes and a resumed run see the same images, and validation / test images are never touched."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmbench.data.augment import Augment, AugmentedPairs
from mmbench.pipeline import run
from tests.conftest import ALL_OBJECTIVES, TINY, compose_cfg, stopped_then_resumed


def _gradient(h: int = 48, w: int = 48) -> np.ndarray:
    """(h, w, 3) uint8: red grows along x, green along y."""
    x, y = np.meshgrid(np.linspace(0, 255, w), np.linspace(0, 255, h))
    return np.stack([x, y, np.full_like(x, 128)], axis=-1).round().astype(np.uint8)


def test_flip_mirrors_the_image_and_a_full_crop_is_the_image():
    image = _gradient()
    draws = [Augment(flip=True)(image, np.random.default_rng(s)) for s in range(20)]
    flipped = [d for d in draws if not np.array_equal(d, image)]
    assert 0 < len(flipped) < 20  # about half
    assert all(np.array_equal(d, image[:, ::-1]) for d in flipped)
    full = Augment(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))
    assert np.array_equal(full(image, np.random.default_rng(0)), image)


def test_the_crop_box_keeps_its_bounds_and_the_crop_shows_that_region():
    augment = Augment(crop_scale=(0.3, 0.6), crop_ratio=(0.5, 2.0))
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = augment.crop_box(48, 64, rng)
        assert 0 <= top <= 48 - h and 0 <= left <= 64 - w
        assert 0.3 * 48 * 64 * 0.9 <= h * w <= 0.6 * 48 * 64 * 1.1  # rounding to whole pixels
        assert 0.5 * 0.9 <= w / h <= 2.0 * 1.1
    image = _gradient(48, 64)
    box = augment.crop_box(48, 64, np.random.default_rng(3))
    top, left, h, w = box
    out = augment(image, np.random.default_rng(3))  # the same draws: this box
    assert out.shape == image.shape and out.dtype == np.uint8
    # the corners of the output are the corners of the box (a smooth gradient: within a pixel's step)
    step = 256 / 48
    assert abs(int(out[0, 0, 0]) - int(image[top, left, 0])) <= 2 * step
    assert abs(int(out[-1, -1, 1]) - int(image[top + h - 1, left + w - 1, 1])) <= 2 * step
    assert abs(int(out[0, -1, 0]) - int(image[top, left + w - 1, 0])) <= 2 * step


class _Images(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict:
        return {"image": _gradient(), "image_right": _gradient()[::-1], "caption": str(i)}


def test_a_draw_depends_on_seed_epoch_and_index_only():
    pairs = AugmentedPairs(_Images(), Augment(crop_scale=(0.3, 0.9), flip=True), seed=5)
    a, again = pairs[(0, 3)], pairs[(0, 3)]
    assert np.array_equal(a["image"], again["image"]) and np.array_equal(a["image_right"], again["image_right"])
    assert not np.array_equal(a["image"], pairs[(1, 3)]["image"])  # another epoch
    assert not np.array_equal(a["image"], pairs[(0, 4)]["image"])  # another example
    assert not np.array_equal(a["image"], AugmentedPairs(_Images(), pairs.augment, seed=6)[(0, 3)]["image"])


AUGMENT = ["data.augment.crop_scale=[0.5,1.0]"]


def _batches(loader, n: int = 2) -> list[torch.Tensor]:
    it = iter(loader)
    return [next(it)["pixel_values"] for _ in range(n)]


def test_training_images_are_augmented_alike_with_workers_and_evaluation_images_never(cache_dir):
    from mmbench.builder import build_datamodule

    plain = build_datamodule(compose_cfg(TINY))
    augmented = build_datamodule(compose_cfg([*TINY, *AUGMENT]))
    with_worker = build_datamodule(compose_cfg([*TINY, *AUGMENT, "data.num_workers=1"]))
    ours, theirs = _batches(augmented.train_dataloader()), _batches(with_worker.train_dataloader())
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))  # the draws do not depend on the process
    assert not torch.equal(ours[0], _batches(plain.train_dataloader())[0])
    for loader in ("val_dataloader", "test_dataloader"):
        a, b = (_batches(getattr(dm, loader)(), 1)[0] for dm in (plain, augmented))
        assert torch.equal(a, b), loader


@pytest.mark.parametrize("workers", [0, 1])
def test_an_augmented_run_stopped_mid_epoch_resumes_to_the_uninterrupted_metrics(workers, monkeypatch, tmp_path):
    args = [
        ALL_OBJECTIVES,
        *TINY,
        *AUGMENT,
        "trainer.max_epochs=2",
        "callbacks.last_checkpoint.every_n_train_steps=3",
        f"data.num_workers={workers}",
        "test=false",
    ]
    reference = run(compose_cfg(args, tmp_path / "uninterrupted"))
    resumed = stopped_then_resumed(args, tmp_path / "stopped", 7, monkeypatch)
    assert resumed["status"] == "completed"
    assert resumed["metrics"] == reference["metrics"]  # ==: bit-identical on CPU, epoch 1's crops included
