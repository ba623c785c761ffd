"""Write Shapes scenes as JPEG / PNG files in a benchmark's released layout, to try the release readers
without the real data:

    python scripts/write_release_layout.py coco_karpathy /tmp/coco --images 2000
    mmbench-train data=coco_karpathy data.root=/tmp/coco

Benchmarks: coco_karpathy, flickr30k_karpathy, vqav2, snli_ve, hateful_memes (mmbench/data/release/write.py
says what each gets from a scene)."""

from __future__ import annotations

import argparse

from mmbench.data.release.write import WRITERS, write_release_layout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("benchmark", choices=sorted(WRITERS))
    parser.add_argument("root", help="directory to write the layout into (data.root)")
    parser.add_argument("--images", type=int, default=2000, help="training images (val / test: a quarter each)")
    parser.add_argument("--image-size", type=int, default=64, help="side of the written images, in pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    root = write_release_layout(
        args.benchmark, args.root, images=args.images, image_size=args.image_size, seed=args.seed
    )
    print(f"wrote {args.benchmark} to {root}; run: mmbench-train data={args.benchmark} data.root={root}")


if __name__ == "__main__":
    main()
