"""Time the retrieval protocol on 1,000 images x 5,000 captions with a tiny model (CPU), and count the
ITM fusions of ITC top-k re-ranking.

    .venv/bin/python scripts/bench_retrieval.py                          # ViLT tiny [itc,itm], k = 0, 16, 128
    .venv/bin/python scripts/bench_retrieval.py model=albef --k 0 16      # any training overrides, chosen k's
    .venv/bin/python scripts/bench_retrieval.py --max-fusions 0           # count fusions only (no ITM timing)

Builds Shapes with 1,000 test images and 5 captions each (cached under $MMBENCH_CACHE like any run),
a randomly initialised model with objectives [itc, itm] unless an `objective=` override says otherwise
(timing does not depend on the weights) and runs `mmbench.metrics.retrieval.retrieval` once per
re-ranking depth k, printing wall-clock seconds. k = 0 is the ITC ranking alone (encode every image and
caption once + one matrix product); k > 0 adds the ITM fusions of the candidate pairs: nominally
(N_img + N_txt) * k, fewer because a pair in the top k of both directions is fused once (both counts
are printed, from `candidate_pairs` on the ITC similarities). A k whose fusions exceed --max-fusions is
counted, not run; its time is extrapolated from the fusion rate of the largest k that ran. The last
line extrapolates to COCO's Karpathy test split (5,000 images x 25,000 captions, k = 256) as a count of
fusions. It also times ITM on every pair for a 100-image gallery (the path of models without ITC).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

COCO_IMAGES, COCO_TEXTS, COCO_K = 5000, 25000, 256  # Karpathy test split; ALBEF / BLIP k_test on COCO


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, nargs="*", default=[0, 16, 128], help="re-ranking depths to time")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--captions", type=int, default=5)
    parser.add_argument(
        "--max-fusions", type=int, default=200_000, help="a k with more fusions is counted and extrapolated, not run"
    )
    parser.add_argument("--itm-only-images", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("overrides", nargs="*", help="training config overrides, e.g. model=albef")
    args = parser.parse_args()

    import torch

    from mmbench.builder import build_datamodule, build_module
    from mmbench.config import compose_train
    from mmbench.metrics.common import Inputs, column, encode_images, encode_texts, eval_mode
    from mmbench.metrics.retrieval import candidate_pairs, top_indices
    from mmbench.metrics.suite import protocol

    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("MMBENCH_CACHE", str(ROOT / ".cache" / "mmbench"))
    objectives = [] if any(o.startswith("objective=") for o in args.overrides) else ["objective=[itc,itm]"]
    cfg = compose_train(
        [
            f"data.source.num_test={args.images}",
            f"data.source.captions_per_image={args.captions}",
            "data.source.num_train=1000",
            "data.source.num_val=100",
            *objectives,
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
        f"{sum(p.numel() for p in module.parameters()) / 1e6:.2f}M params, torch threads {torch.get_num_threads()}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    inputs = Inputs(dm.datasets["test"], dm.tokenizer)
    if "itc" in module.objectives:
        captions = column(dm.datasets["test"], "captions")  # per image, as the protocol reads them
        rows = list(range(len(captions)))
        texts = [c for r in rows for c in captions[r]]
        with eval_mode(module):  # the ITC similarities, to count each k's candidate pairs without fusing
            image, text = encode_images(module.model, inputs, rows, 256), encode_texts(module.model, inputs, texts, 256)
            text_emb, image_emb = module.objectives["itc"].embed(text.pooled, image.pooled)
            sim = (image_emb @ text_emb.T).float()
        N_img, N_txt = sim.shape
        t_itc, rate = None, None  # ITC-only seconds; fusions per second of the largest k run
        for k in sorted(args.k):
            nominal = (N_img + N_txt) * k
            fused = len(candidate_pairs(top_indices(sim, k), top_indices(sim.T, k))[0]) if k else 0
            both = nominal - fused  # pairs in the top k of both directions
            counts = f"{nominal:,} candidates, {fused:,} fusions ({both:,} pairs are candidates both ways)"
            if k and ("itm" not in module.objectives or fused > args.max_fusions):
                guess = f", ~{t_itc + fused / rate:.0f}s extrapolated" if rate and t_itc is not None else ""
                print(f"ITC + ITM re-rank k={k}: not run (> --max-fusions {args.max_fusions:,}): {counts}{guess}")
                continue
            t0 = time.perf_counter()
            out = protocol("retrieval", rerank_k=k)(module, inputs, batch_size=256)
            dt = time.perf_counter() - t0
            if k == 0:
                t_itc = dt
                print(f"ITC only: {dt:.1f}s ({N_img} x {N_txt}, rmean {out['retrieval/rmean']:.3f})")
                continue
            rate = fused / (dt - t_itc) if t_itc is not None else fused / dt
            print(
                f"ITC + ITM re-rank k={k}: {dt:.1f}s, {counts}, {rate:.0f} fusions/s "
                f"(rmean itc {out['retrieval/itc/rmean']:.3f}, itm {out['retrieval/itm/rmean']:.3f}, "
                f"itm_itc {out['retrieval/itm_itc/rmean']:.3f})"
            )
        coco = (COCO_IMAGES + COCO_TEXTS) * COCO_K
        print(
            f"COCO 5k x 25k, k={COCO_K}: at most {coco:,} fusions, at least {COCO_TEXTS * COCO_K:,} "
            f"(if every image's candidates were also candidates the other way)"
            + (f"; at this model's {rate:.0f} fusions/s ~{coco / rate / 3600:.1f} h" if rate else "")
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
