"""Training-image augmentation (`data.augment`): a random-resized crop and a horizontal flip of each training
image, on its uint8 pixels before collation, in the loader's workers (validation and test images are never
augmented). ALBEF and BLIP train with both (crop scale 0.5-1.0); CLIP with neither.

Each image's draw is a function of (data.seed, epoch, example index) only, so a run resumed mid-epoch sees the
crops an uninterrupted run sees, with or without worker processes: the train sampler yields (epoch, index)
keys (`EpochShuffleSampler(keys=True)`) and `AugmentedPairs` draws from a generator seeded by them.
torchvision's `RandomResizedCrop` draws from the global RNG, whose state depends on what a worker loaded
before, hence the draw here (its algorithm: 10 tries of area and log-uniform aspect ratio, then the
centre crop of the nearest ratio). The resize is torch's uint8 bilinear kernel on the channels-last crop
(0.14 ms per 224-px image on one thread, against 0.4 ms for torchvision's `resized_crop` and 0.85 ms for
PIL's; docs/performance.md).

A flip mirrors the image and not its text: a caption or question that says "left of" becomes false.
Shapes states such relations in its captions, questions and claims, so `flip` is refused there.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import cast

import numpy as np
from omegaconf import OmegaConf
from torch.utils.data import Dataset

from mmbench.checks import number_problem, problems_of, raise_problems

# decoded images are read-only arrays (PIL's buffer, Shapes' memory-mapped table) that torch only reads here
warnings.filterwarnings("ignore", message="The given NumPy array is not writable", module=__name__)

IMAGE_KEYS = ("image", "image_right")  # the example keys holding (H, W, 3) uint8 images (PairDataset)


@dataclass(frozen=True)
class Augment:
    """A random-resized crop of `crop_scale` (fractions of the image's area; None: no crop) and aspect ratios
    `crop_ratio`, resized back to the image's size, then a horizontal flip with probability 0.5 (`flip`)."""

    crop_scale: tuple[float, float] | None = None
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = False

    @classmethod
    def setting_problems(cls, crop_scale=None, crop_ratio=(3 / 4, 4 / 3), flip=False, **unknown) -> list[str]:
        if unknown:
            return [f"{key}: unknown setting; data.augment takes crop_scale, crop_ratio and flip" for key in unknown]
        problems = (
            []
            if crop_scale is None
            else _range_problems("crop_scale", crop_scale, "fractions of the image's area", 1.0)
        )
        problems += _range_problems("crop_ratio", crop_ratio, "aspect ratios (width / height)", None)
        if not isinstance(flip, bool):
            problems.append(f"flip={flip}: true (mirror half of the training images) or false")
        return problems

    @classmethod
    def from_node(cls, node) -> Augment | None:
        """The `data.augment` settings, None when they change nothing; refused as validation refuses them."""
        if OmegaConf.is_config(node):  # as Hydra's instantiate passes it
            node = OmegaConf.to_container(node, resolve=True)
        values = dict(cast(dict, node) or {})
        raise_problems("data.augment", cls.setting_problems(**values))
        scale, ratio = values.get("crop_scale"), values.get("crop_ratio", (3 / 4, 4 / 3))
        augment = cls(
            crop_scale=None if scale is None else (float(scale[0]), float(scale[1])),
            crop_ratio=(float(ratio[0]), float(ratio[1])),
            flip=bool(values.get("flip", False)),
        )
        return augment if augment.crop_scale is not None or augment.flip else None

    def crop_box(self, height: int, width: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """(top, left, height, width) of a random-resized crop: torchvision's `RandomResizedCrop.get_params`
        with draws from `rng`."""
        assert self.crop_scale is not None
        area = height * width
        log_ratio = (math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1]))
        for _ in range(10):
            target = area * rng.uniform(*self.crop_scale)
            ratio = math.exp(rng.uniform(*log_ratio))
            w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
            if 0 < w <= width and 0 < h <= height:
                return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
        ratio = width / height  # fallback: the centre crop of the ratio nearest the image's own
        if ratio < self.crop_ratio[0]:
            w, h = width, round(width / self.crop_ratio[0])
        elif ratio > self.crop_ratio[1]:
            w, h = round(height * self.crop_ratio[1]), height
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(H, W, 3) uint8 -> (H, W, 3) uint8: cropped and resized back, then flipped, as `rng` draws."""
        import torch
        import torch.nn.functional as F

        H, W, _ = image.shape
        box = self.crop_box(H, W, rng) if self.crop_scale is not None else None
        flip = self.flip and rng.random() < 0.5
        if box is None and not flip:
            return image
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]  # (1, 3, H, W) channels-last
        if box is not None:
            top, left, h, w = box
            # torch's uint8 bilinear kernel on a contiguous channels-last crop: ~3x torchvision's resized_crop
            # here. The crop never exceeds the image, so this only enlarges: antialiasing would change nothing.
            crop = x[:, :, top : top + h, left : left + w].contiguous(memory_format=torch.channels_last)
            x = F.interpolate(crop, size=(H, W), mode="bilinear", align_corners=False)  # (1, 3, H, W) uint8
        if flip:
            x = x.flip(-1)  # a channels-last copy: a mirrored numpy view would make the collator's stack ~10x slower
        return x[0].permute(1, 2, 0).numpy()  # (H, W, 3), contiguous


def _range_problems(name: str, value, what: str, high: float | None) -> list[str]:
    """What is wrong with `value` as a [low, high] range of positive numbers (at most `high`)."""
    meaning = f"a range [low, high] {what}, 0 < low <= high" + (f" <= {high:g}" if high else "") + ", e.g. [0.5, 1.0]"
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        return [f"{name}={value}: must be {meaning}"]
    problems = problems_of(*(number_problem(name, v, meaning, low=0, low_open=True, high=high) for v in value))
    if not problems and float(value[0]) > float(value[1]):
        problems.append(f"{name}={list(value)}: must be {meaning}")
    return problems[:1]


class AugmentedPairs(Dataset):
    """The training split with `augment` applied to each example's images; indexed by the (epoch, index) keys of
    `EpochShuffleSampler(keys=True)`, the draws seeded by (seed, epoch, index)."""

    def __init__(self, dataset, augment: Augment, seed: int):
        self.dataset, self.augment, self.seed = dataset, augment, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, index = key
        item = self.dataset[index]
        # Philox keyed by (seed, epoch, index): a counter-based generator, 4x cheaper to start than default_rng's
        # seed sequence, and independent streams for different keys
        rng = np.random.Generator(np.random.Philox(key=(self.seed % 2**64) << 64 | epoch << 32 | index))
        for name in IMAGE_KEYS:
            if name in item:
                item[name] = self.augment(item[name], rng)
        return item
