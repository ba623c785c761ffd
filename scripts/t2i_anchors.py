"""Anchors for the t2i protocol's scores on Shapes' test split: what the true image of each caption scores (the
oracle's ceiling), and what a caption-blind generator of perfect scenes scores (each caption drawn as the real
image of another row: every image realistic, none about its caption). A generator that reads its caption beats
the second; one that draws Shapes perfectly reaches the first.

    python scripts/t2i_anchors.py [--max-images 16] [--shift 4] [overrides ...]

The same protocol as a run's (`mmbench.metrics.t2i.t2i`, the same first `max_images` rows, four captions each),
with a stand-in generator that returns real images; prints a markdown table of `overall` and per-type
`caption_true`."""

from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-images", type=int, default=16, help="the protocol's max_images (eval.t2i)")
    parser.add_argument("--shift", type=int, default=4, help="captions per image: 4 draws the next row's image")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. data.image_size=48")
    args = parser.parse_args()

    from mmbench.builder import build_datamodule
    from mmbench.config import compose_train
    from mmbench.metrics.common import Inputs
    from mmbench.metrics.t2i import t2i
    from mmbench.metrics.t2i_anchors import Holding, RealImages

    dm = build_datamodule(compose_train(["data.image_size=48", *args.overrides]))
    ds = dm.datasets["test"]
    n = min(args.max_images, len(ds.images))
    images = [np.asarray(ds.images[r]) for r in range(n) for _ in ds.column("captions")[r]]
    inputs = Inputs(ds, dm.tokenizer, t2i_oracle=dm.t2i_oracle)
    rows = {}
    settings = dict(batch_size=64, max_images=n, guidance=None, steps=None, seed=0, name="t2i")
    for row, shift in (("true image", 0), ("another row's image (caption-blind)", args.shift)):
        rows[row] = t2i(Holding({"gen": RealImages(images, shift)}), inputs, **settings)
    types = sorted({k.split("/")[1] for k in next(iter(rows.values())) if k.endswith("/caption_true")} - {"overall"})
    criteria = ["caption_true", "present", "color", "count", "relation", "extra"]
    print("| images | " + " | ".join(f"overall {c}" for c in criteria) + " | " + " | ".join(types) + " |")
    print("|---" * (1 + len(criteria) + len(types)) + "|")
    for name, out in rows.items():
        cells = [f"{100 * out[f't2i/overall/{c}']:.1f}" if f"t2i/overall/{c}" in out else "-" for c in criteria]
        cells += [f"{100 * out[f't2i/{t}/caption_true']:.1f}" for t in types]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"\n(caption_true per caption type in the last columns; {len(images)} captions of {n} test images)")


if __name__ == "__main__":
    main()
