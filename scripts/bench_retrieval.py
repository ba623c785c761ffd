"""Time the retrieval protocol on 1,000 images x 5,000 captions with a tiny model (CPU).

    .venv/bin/python scripts/bench_retrieval.py                    # default model (ViLT tiny), k = 0, 4, 16
    .venv/bin/python scripts/bench_retrieval.py model=clip --k 0    # any training overrides, chosen k's

Builds Shapes with 1,000 test images and 5 captions each (cached under $MMBENCH_CACHE like any
run), a randomly initialised model (timing does not depend on the weights) and runs
`mmbench.metrics.retrieval.retrieval` once per re-ranking depth k, printing wall-clock seconds.
k = 0 is the ITC ranking alone (encode every image and caption once + one matrix product);
k > 0 adds (1,000 + 5,000) * k ITM fusions. It also times ITM on every pair for a 100-image
gallery (the path of models without ITC) and reports pairs per second.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, nargs="*", default=[0, 4, 16], help="re-ranking depths to time")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--captions", type=int, default=5)
    parser.add_argument("--itm-only-images", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("overrides", nargs="*", help="training config overrides, e.g. model=clip")
    args = parser.parse_args()

    import torch

    from mmbench.builder import build_datamodule, build_module
    from mmbench.config import compose_train
    from mmbench.metrics.common import Inputs
    from mmbench.metrics.suite import protocol

    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("MMBENCH_CACHE", str(ROOT / ".cache" / "mmbench"))
    cfg = compose_train(
        [
            f"data.source.num_test={args.images}",
            f"data.source.captions_per_image={args.captions}",
            "data.source.num_train=1000",
            "data.source.num_val=100",
            *args.overrides,
        ],
        output_dir="/tmp/mmbench-bench",
    )
    t0 = time.perf_counter()
    dm = build_datamodule(cfg)
    print(f"data ready in {time.perf_counter() - t0:.1f}s: {args.images} images x {args.captions} captions")
    torch.manual_seed(0)
    module = build_module(cfg, dm.info)
    names = list(module.objectives)
    print(
        f"model {cfg.model.name} size={cfg.model.size} dim={cfg.model.dim}, objectives {names}, "
        f"{sum(p.numel() for p in module.parameters()) / 1e6:.2f}M params, torch threads {torch.get_num_threads()}"
    )
    inputs = Inputs(dm.datasets["test"], dm.tokenizer)
    if "itc" in module.objectives:
        for k in args.k:
            t0 = time.perf_counter()
            out = protocol("retrieval", rerank_k=k)(module, inputs, batch_size=256)
            dt = time.perf_counter() - t0
            print(
                f"ITC{f' + ITM re-rank k={k}' if k else ' only'}: {dt:.1f}s "
                f"({int(out['retrieval/num_images'])} x {int(out['retrieval/num_texts'])}, rmean {out['retrieval/rmean']:.3f})"
            )
    if "itm" in module.objectives and args.itm_only_images > 0:
        itc = module.objectives.pop("itc") if "itc" in module.objectives else None
        n = args.itm_only_images
        t0 = time.perf_counter()
        out = protocol("retrieval", itm_only_max_images=n)(module, inputs, batch_size=256)
        dt = time.perf_counter() - t0
        pairs = out["retrieval/num_images"] * out["retrieval/num_texts"]
        print(f"ITM on every pair, {n} images: {dt:.1f}s for {int(pairs)} pairs ({pairs / dt:.0f} pairs/s)")
        if itc is not None:
            module.objectives["itc"] = itc


if __name__ == "__main__":
    main()
