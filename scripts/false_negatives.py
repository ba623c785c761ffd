"""How often would ITC-mined ITM negatives be true of their image? Measured on a trained checkpoint.

    .venv/bin/python scripts/false_negatives.py outputs/multiruns/<sweep>/<job>/checkpoints/last.ckpt [--batches 10]

Rebuilds the run's data and module from the checkpoint's run directory (as `mmbench-eval` does),
encodes `--batches` training batches, and prints the mass that the ITM hard-negative distribution
(softmax of the ITC similarities over the texts of other images, word-for-word copies of the image's
own captions excluded) puts on texts whose claim the data says is true of the image (Shapes
`caption_claims` / `image_facts`), next to the same for uniform sampling. ITM excludes these pairs
(`mmbench.objectives.itm.known_true`); this script shows how much that exclusion removes.
"""

from __future__ import annotations

import argparse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt", help="a run's checkpoint (<run>/checkpoints/<name>.ckpt); the run needs objective itc")
    parser.add_argument("--batches", type=int, default=10)
    args = parser.parse_args()

    import torch
    from omegaconf import OmegaConf

    from mmbench.builder import build_datamodule, build_module
    from mmbench.evaluate import load_weights, training_config
    from mmbench.objectives.claims import claims_true
    from mmbench.objectives.context import StepContext
    from mmbench.objectives.itm import negative_distribution, true_pairs

    cfg, _ = training_config(args.ckpt)
    OmegaConf.set_struct(cfg, False)
    dm = build_datamodule(cfg)
    module = build_module(cfg, dm.info)
    load_weights(module, args.ckpt)
    module.eval()
    if "itc" not in module.objectives:
        raise SystemExit(f"{args.ckpt}: the run has no itc objective; objectives: {sorted(module.objectives)}")
    hard = uniform = 0.0
    n = 0
    with torch.no_grad():
        for batch in dm.train_dataloader():
            if n == args.batches:
                break
            if "text_claim" not in batch:
                raise SystemExit("the data states no claims (caption_claims / image_facts): nothing to measure")
            text = module.model.encode_text(batch["input_ids"], batch["attention_mask"])
            image = module.model.encode_image(batch)
            context = StepContext()
            module.objectives["itc"](module.model, batch, text, image, context)
            ids, without_claims = batch["image_id"], true_pairs(batch["image_id"], batch["input_ids"])  # (B, B)
            true = claims_true(batch["image_facts"], batch["text_claim"]).float()  # (B, B)
            p_hard, _ = negative_distribution(ids, context.itc_sim_i2t, hardness=1.0, true=without_claims)
            p_uniform, _ = negative_distribution(ids, None, true=without_claims)
            hard += (p_hard * true).sum(1).mean().item()
            uniform += (p_uniform * true).sum(1).mean().item()
            n += 1
    print(
        f"{n} batches of {dm.batch_size}: mass on texts true of the image: "
        f"ITC hard negatives {hard / n:.3f}, uniform negatives {uniform / n:.3f}"
    )


if __name__ == "__main__":
    main()
