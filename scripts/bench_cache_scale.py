"""The converted cache at COCO's size: conversion time, cache bytes per image, peak memory against the
dataset's size, an interrupted conversion continued, and loader throughput per worker.

The stand-in: Karpathy's COCO layout at its real size (dataset_coco.json with 123,287 images, 616,767
captions: scripts/bench_release_read.py) and one JPEG file per image in train2014/ and val2014/, 640x480
(a quarter 480x640), quality 90. Pictures are 1/f^1.2 noise (the power spectrum of natural images) with
flat-coloured objects and a light grain on it, calibrated to COCO's mean file size (~160 KB: train2014 is 13 GB / 82,783
files); `--distinct` pictures are generated and each file is one of them with its own JPEG comment
(every file's bytes differ; decoding costs what a distinct picture of that size costs).

    .venv/bin/python scripts/bench_cache_scale.py --root /tmp/coco-scale [--distinct 3000]
        [--sizes 224 384] [--subsets 10000 40000] [--interrupt-after 30] [--stage layout]

Writes <root>/results.json and prints a Markdown table (docs/performance.md has the figures).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

SCRIPTS = Path(__file__).resolve().parent
ROOT = SCRIPTS.parent


def textures(n: int, rng: np.random.Generator, h: int = 960, w: int = 1280) -> list[np.ndarray]:
    """n RGB fields of 1/f^1.2 noise (float, zero mean, unit std)."""
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]
    f = np.sqrt(fx**2 + fy**2)
    f[0, 0] = 1.0
    out = []
    for _ in range(n):
        channels = []
        for _c in range(3):
            spectrum = (rng.normal(size=(h, w)) + 1j * rng.normal(size=(h, w))) / f**1.2
            channels.append(np.real(np.fft.ifft2(spectrum)))
        field = np.stack(channels, -1)
        out.append(((field - field.mean()) / field.std()).astype(np.float32))
    return out


def picture(fields: list[np.ndarray], rng: np.random.Generator) -> bytes:
    """One 640x480 (or 480x640) JPEG at quality 90: a crop of a noise field, graded, with 1-5 objects."""
    from PIL import Image, ImageDraw

    h, w = (480, 640) if rng.random() < 0.75 else (640, 480)
    field = fields[int(rng.integers(len(fields)))]
    y, x = int(rng.integers(field.shape[0] - h)), int(rng.integers(field.shape[1] - w))
    gain, offset = rng.uniform(55, 85, 3), rng.uniform(80, 170, 3)
    grain = rng.normal(0, 9, (h, w, 1)).astype(np.float32)  # sensor grain: brings the mean file to COCO's size
    pixels = np.clip(field[y : y + h, x : x + w] * gain + offset + grain, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 6))):
        x0, y0 = int(rng.integers(0, w - 60)), int(rng.integers(0, h - 60))
        box = (x0, y0, x0 + int(rng.integers(40, 240)), y0 + int(rng.integers(40, 240)))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def with_comment(jpeg: bytes, text: str) -> bytes:
    """The JPEG with a COM segment after its SOI marker: other bytes, the same picture."""
    payload = text.encode()
    return jpeg[:2] + b"\xff\xfe" + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[2:]


def write_layout(root: Path, distinct: int, seed: int = 0) -> dict:
    """dataset_coco.json at Karpathy's size and one JPEG per image entry; returns what was written."""
    sys.path.insert(0, str(SCRIPTS))
    from bench_release_read import write_coco  # Karpathy's structure and split sizes, synthetic captions

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    write_coco(root, rng)
    entries = json.loads((root / "dataset_coco.json").read_text())["images"]
    fields = textures(16, rng)
    pictures = [picture(fields, rng) for _ in range(distinct)]
    for folder in ("train2014", "val2014"):
        (root / folder).mkdir(exist_ok=True)

    def write(i: int) -> int:
        entry = entries[i]
        data = with_comment(pictures[i % distinct], f"cocoid {entry['cocoid']}")
        (root / entry["filepath"] / entry["filename"]).write_bytes(data)
        return len(data)

    with ThreadPoolExecutor(4) as pool:
        sizes = list(pool.map(write, range(len(entries)), chunksize=256))
    return {
        "images": len(entries),
        "distinct_pictures": distinct,
        "mean_file_kb": float(np.mean(sizes)) / 1024,
        "total_gb": float(np.sum(sizes)) / 1024**3,
        "write_s": time.perf_counter() - t0,
    }


def source(args):
    """The conversion of the stand-in under the bench's settings, as the datamodule calls a source."""
    import functools

    from mmbench.data import release

    return functools.partial(
        release.build_release,
        args.cache,
        benchmark="coco_karpathy",
        root=args.root,
        image_size=args.size,
        max_images=args.max_images,
        jpeg_quality=args.quality,
        num_proc=args.num_proc,
    )


def convert_child(args) -> None:
    """Child process: one conversion (timed inside, after imports); prints one JSON line."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from mmbench.data.hf.build import entry_files

    t0 = time.perf_counter()
    dsd, target = source(args)()
    seconds = time.perf_counter() - t0
    images = sum(len(d) for d in dsd.values())
    files = sum(p.stat().st_size for ps in entry_files(target).values() for p in ps)
    lengths = [len(b) for b in dsd["test"].select(range(min(2000, len(dsd["test"]))))["pixels"]]
    print(
        "RESULT "
        + json.dumps(
            {
                "seconds": seconds,
                "images": images,
                "images_per_s": images / seconds,
                "cache_gb": files / 1024**3,
                "kb_per_image": files / images / 1024,
                "image_kb": float(np.mean(lengths)) / 1024,
            }
        ),
        flush=True,
    )


def run_child(argv: list[str], kill_after: float | None = None) -> dict:
    """Run this script as a child; its RESULT line, wall seconds and peak RSS (from wait4)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, __file__, *argv],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    if kill_after is not None:
        time.sleep(kill_after)
        os.kill(proc.pid, signal.SIGKILL)
    _, status, usage = os.wait4(proc.pid, 0)
    out = proc.stdout.read() if proc.stdout else ""
    result = {"wall_s": time.perf_counter() - t0, "peak_rss_mb": usage.ru_maxrss / 1024, "status": status}
    for line in out.splitlines():
        if line.startswith("RESULT "):
            result.update(json.loads(line[len("RESULT ") :]))
    return result


def load_child(args) -> None:
    """Child process: images/s of the training loader in this one process (= one loader worker), without and
    with the training-image augmentation (`data.augment`: random-resized crop of 50-100% + flip), their batches
    drawn in turn so that both see the same machine load."""

    import torch

    from mmbench.data.datamodule import VLDataModule

    torch.set_num_threads(1)
    settings = {"plain": None, "augmented": {"crop_scale": [0.5, 1.0], "flip": True}}
    loaders = {}
    for name, augment in settings.items():
        dm = VLDataModule(
            source(args),
            image_size=args.size,
            batch_size=64,
            num_workers=0,
            max_text_len=40,
            vocab_size=8000,
            augment=augment,
        )
        dm.prepare_data()
        dm.setup("fit")
        loaders[name] = iter(dm.train_dataloader())
        next(loaders[name])  # warm-up
    seconds, images = dict.fromkeys(settings, 0.0), dict.fromkeys(settings, 0)
    for _ in range(args.batches):
        for name, loader in loaders.items():
            t0 = time.perf_counter()
            images[name] += next(loader)["pixel_values"].shape[0]
            seconds[name] += time.perf_counter() - t0
    print("RESULT " + json.dumps({"loader_images_per_s": {k: images[k] / seconds[k] for k in settings}}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="/tmp/coco-scale")
    parser.add_argument("--distinct", type=int, default=3000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 384])
    parser.add_argument("--subsets", type=int, nargs="*", default=[10_000, 40_000])
    parser.add_argument("--interrupt-after", type=float, default=None)
    parser.add_argument("--quality", type=int, default=90)
    parser.add_argument("--num-proc", type=int, default=None)
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--stage", choices=["all", "layout", "convert", "load"], default="all")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--max-images", type=int, default=None)
    parser.add_argument("--cache", default=None)
    args = parser.parse_args()
    if args.stage == "convert":
        return convert_child(args)
    if args.stage == "load":
        return load_child(args)

    root = Path(args.root)
    data, cache = root / "coco", root / "cache"
    results: dict = {"machine": os.uname().nodename, "cores": len(os.sched_getaffinity(0))}
    if not (data / "dataset_coco.json").is_file():
        results["layout"] = write_layout(data, args.distinct)
        print("layout", results["layout"], flush=True)
        (root / "layout.json").write_text(json.dumps(results["layout"], indent=2) + "\n")
    if args.stage == "layout":
        return None
    common = ["--root", str(data), "--quality", str(args.quality)]
    if args.num_proc:
        common += ["--num-proc", str(args.num_proc)]
    for n in args.subsets:  # peak memory against the dataset's size
        sub = run_child(["--stage", "convert", "--cache", str(cache / f"sub{n}"), "--max-images", str(n), *common])
        results[f"convert_224_first_{n}"] = sub
        print(n, sub, flush=True)
    if args.interrupt_after and args.subsets:  # the largest subset killed mid-way, then run again
        n = max(args.subsets)
        argv = ["--stage", "convert", "--cache", str(cache / f"resume{n}"), "--max-images", str(n), *common]
        run_child(argv, kill_after=args.interrupt_after)
        resumed = run_child(argv)
        results[f"convert_224_first_{n}_killed_then_resumed"] = {"killed_after_s": args.interrupt_after, **resumed}
        print("resumed", resumed, flush=True)
    for size in args.sizes:
        full_cache = str(cache / f"full{size}")
        results[f"convert_{size}"] = run_child(
            ["--stage", "convert", "--cache", full_cache, "--size", str(size), *common]
        )
        print(size, results[f"convert_{size}"], flush=True)
        load_argv = ["--stage", "load", "--cache", full_cache, "--size", str(size), "--batches", str(args.batches)]
        results[f"load_{size}"] = run_child([*load_argv, *common])
        print("load", size, results[f"load_{size}"], flush=True)
    (root / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
