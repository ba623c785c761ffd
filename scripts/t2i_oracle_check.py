"""Measure the text-to-image oracle (mmbench/t2i/): its training time and held-out accuracy, and the scores
of real images (the ceiling) and shuffled images (the floor) on the Shapes test split of the default config.

    python scripts/t2i_oracle_check.py                      # 48 px (conf/data/shapes.yaml) and 64 px
    python scripts/t2i_oracle_check.py --sizes 48 --itc-steps 300   # + the agreement of a briefly trained CLIP

Prints Markdown tables (docs/pending/t2i_oracle.md holds a run's output). Oracles are trained afresh (no
cache) so that the training time is measured; the test split is Shapes' own `generate_split("test", ...)`
of the default settings, which is what the cached benchmark holds (checked against the cache when present).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from mmbench.config import compose_train
from mmbench.data.counterfactual import scene_of_row
from mmbench.data.shapes import ShapesSettings, decode_pixels, generate_split, shapes_config_hash
from mmbench.t2i import CAPTION_TYPES, OracleSettings, agreement, compositional_scores, frechet_distance, random_scenes
from mmbench.t2i.criteria import CRITERIA, OVERALL, SUMMARIES
from mmbench.t2i.oracle import accuracy, train_oracle


def shapes_settings(image_size: int) -> tuple[ShapesSettings, Path]:
    """The default Shapes settings (conf/data/shapes.yaml, as `mmbench-train` composes them) at `image_size`,
    and the cache directory of that benchmark."""
    cfg = compose_train([f"data.image_size={image_size}"])
    source = OmegaConf.to_container(cfg.data.source, resolve=True)
    assert isinstance(source, dict)
    settings = ShapesSettings(**{k: v for k, v in source.items() if k not in ("_target_", "_partial_", "cache_dir")})
    return settings, Path(source["cache_dir"]) / f"shapes-{shapes_config_hash(**settings.canonical())}"


def same_as_cache(images: np.ndarray, cache: Path) -> str:
    """Whether the generated test split is the cached benchmark's, when that cache exists."""
    if not (cache / "dataset_dict.json").is_file():
        return f"(no cache at {cache} to compare with)"
    import datasets

    cached = datasets.load_from_disk(str(cache))["test"]["pixels"]
    S = images.shape[1]
    same = len(cached) == len(images) and all(np.array_equal(decode_pixels(p, S), im) for p, im in zip(cached, images))
    return f"(identical to the cached benchmark {cache.name}: {same})"


def test_split(settings: ShapesSettings, split: str = "test", n: int | None = None):
    """(images (N, S, S, 3), true scenes, caption claims per image, facts per image) of a split."""
    n = settings.num_test if n is None else n
    cols = generate_split(split, n, id_offset=0, **settings.scene())
    S = settings.image_size
    images = np.stack([decode_pixels(p, S) for p in cols["pixels"]])
    keys = ("obj_shape", "obj_color", "obj_size", "boxes")
    scenes = [scene_of_row({k: cols[k][i] for k in keys}, S, settings.grid) for i in range(n)]
    return images, scenes, cols["caption_claims"], cols["image_facts"], cols["captions"]


def noisy(images: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    """Images with Gaussian pixel noise of standard deviation `sigma` on the [-1, 1] scale (x 127.5 levels)."""
    rng = np.random.default_rng(seed)
    out = images.astype(np.float64) + rng.normal(0.0, sigma * 127.5, images.shape)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def score_table(real: dict, shuffled: dict, exact: dict) -> str:
    rows = [
        "| type | images | criterion | real (ceiling) | shuffled (floor) | shuffled, true scenes |",
        "|---|---|---|---|---|---|",
    ]
    for ctype in [*CAPTION_TYPES.values(), OVERALL]:
        for name in (*CRITERIA, *SUMMARIES):
            key = f"{ctype}/{name}"
            if key in real:
                images = int(real[f"{ctype}/images"])
                rows.append(
                    f"| {ctype} | {images} | {name} | {real[key]:.4f} | {shuffled[key]:.4f} | {exact[key]:.4f} |"
                )
    return "\n".join(rows)


def measure(image_size: int, itc_steps: int) -> None:
    settings, cache = shapes_settings(image_size)
    print(f"\n## {image_size} px, grid {settings.grid}\n")
    t0 = time.perf_counter()
    oracle = train_oracle(OracleSettings(image_size=image_size, grid=settings.grid))
    train_s = time.perf_counter() - t0
    images, scenes, claims, facts, captions = test_split(settings)
    print("| measure | value |\n|---|---|")
    print(f"| oracle training (renders, {OracleSettings().steps} steps, held-out accuracy) | {train_s:.1f} s |")
    print(f"| held-out renders (0..{settings.grid**2} objects), per cell | {oracle.accuracy['cell']:.4f} |")
    print(f"| held-out renders, per scene | {oracle.accuracy['scene']:.4f} |")
    split = accuracy(oracle, images, scenes)
    print(
        f"| Shapes test split ({len(images)} images), per cell / per scene | {split['cell']:.4f} / {split['scene']:.4f} |"
    )
    print(f"\nThe test split {same_as_cache(images, cache)}\n")
    print("| measure | value |\n|---|---|")
    held_images, held_scenes = random_scenes(1000, image_size=image_size, grid=settings.grid, seed=(0, 7))
    for sigma in (0.05, 0.1, 0.2):
        acc = accuracy(oracle, noisy(held_images, sigma), held_scenes)
        print(
            f"| held-out renders + pixel noise sigma={sigma}, per cell / per scene | {acc['cell']:.4f} / {acc['scene']:.4f} |"
        )
    t0 = time.perf_counter()
    read = oracle.read(images)
    read_s = time.perf_counter() - t0
    print(f"| reading {len(images)} images | {read_s:.2f} s |")

    rows = [r for r, row in enumerate(claims) for _ in row]
    flat = [c for row in claims for c in row]
    shifted = [(r + 1) % len(images) for r in rows]  # each caption with the next image: a derangement
    t0 = time.perf_counter()
    real = compositional_scores([read[r] for r in rows], flat)
    score_s = time.perf_counter() - t0
    shuffled = compositional_scores([read[r] for r in shifted], flat)
    exact = compositional_scores([scenes[r] for r in shifted], flat)
    from_facts = np.mean([c in facts[r] for r, c in zip(shifted, flat)])
    print(f"| scoring {len(flat)} captions | {score_s:.2f} s |")
    print(f"\nCeiling and floor, {len(flat)} test captions ({image_size} px):\n")
    print(score_table(real, shuffled, exact))
    print(f"\nshuffled overall/caption_true from the data's image_facts column: {from_facts:.4f}")

    f = lambda a, b: frechet_distance(oracle.features, a, b, num_features=oracle.num_features)
    val, *_ = test_split(settings, "val", settings.num_val)
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, images.shape, dtype=np.uint8)
    half = len(images) // 2
    print(f"\nFrechet distance on the oracle's features ({oracle.num_features} per image):\n")
    print("| real | other | distance |\n|---|---|---|")
    print(f"| test ({len(images)}) | the same images | {f(images, images):.2e} |")
    print(
        f"| test, first half ({half}) | test, second half ({len(images) - half}) | {f(images[:half], images[half:]):.2f} |"
    )
    print(f"| test ({len(images)}) | val ({len(val)}) | {f(images, val):.2f} |")
    print(f"| test ({len(images)}) | test + pixel noise sigma=0.1 | {f(images, noisy(images, 0.1)):.2f} |")
    print(f"| test ({len(images)}) | blank images | {f(images, np.full_like(images, 230)):.2f} |")
    print(f"| test ({len(images)}) | uniform noise | {f(images, noise):.2f} |")
    if itc_steps:
        itc_check(image_size, itc_steps, images, captions)


def itc_check(image_size: int, steps: int, images: np.ndarray, captions: list[list[str]]) -> None:
    """The agreement of a CLIP (tiny preset) trained `steps` ITC steps: real images with their own first
    caption, against the next image's."""
    from mmbench.builder import build_datamodule, build_module

    cfg = compose_train(["model=clip", "objective=[itc]", f"data.image_size={image_size}", "data.num_workers=0"])
    dm = build_datamodule(cfg)
    torch.manual_seed(0)
    module = build_module(cfg, dm.info)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
    module.train()
    t0 = time.perf_counter()
    done = 0
    while done < steps:
        for batch in dm.train_dataloader():
            loss = module.shared_step(batch, "train")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            done += 1
            if done == steps:
                break
    train_s = time.perf_counter() - t0
    itc = module.objectives["itc"]
    first = [row[0] for row in captions]
    own = agreement(module.model, itc, dm.collate, images, first)
    other = agreement(module.model, itc, dm.collate, images, first[1:] + first[:1])
    print(f"\nAgreement (CLIP tiny, {steps} ITC steps, {train_s:.0f} s; first caption of each test image):\n")
    print("| captions | mean cosine | images where own > other |\n|---|---|---|")
    print(f"| own | {own.mean():.4f} | {(own > other).float().mean():.4f} |")
    print(f"| the next image's | {other.mean():.4f} | |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[48, 64], help="Shapes image sizes to measure")
    parser.add_argument("--itc-steps", type=int, default=0, help="train a tiny CLIP this many steps (0: skip)")
    args = parser.parse_args()
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"# t2i oracle check, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__}")
    print(f"load at start (`uptime`): {load}")
    for i, size in enumerate(args.sizes):
        measure(size, args.itc_steps if i == 0 else 0)  # the trained CLIP at the first size only
    print(f"\nload at end (`uptime`): {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")


if __name__ == "__main__":
    main()
