"""Probe a stage-1 text-to-image run (objective t2i_vqvae): the codes its tokenizer uses over the validation set,
their perplexity, the reconstruction error, and a PNG of originals (top row) over reconstructions (bottom row).

    python scripts/vq_codebook_probe.py outputs/runs/<stage-1 run> --png recon.png

Reads the run's .hydra/config.yaml and checkpoints/last.ckpt (else best.ckpt); the per-batch `usage` the run logs
counts codes within one batch, this counts them over every validation image.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torchvision.utils import save_image

from mmbench.builder import build_datamodule
from mmbench.models.vq import VQTokenizer

PREFIX = "objectives.t2i_vqvae.tokenizer."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a stage-1 run directory")
    parser.add_argument("--png", type=Path, default=None, help="where to write originals vs reconstructions")
    parser.add_argument("--images", type=int, default=12, help="images in the PNG")
    args = parser.parse_args()
    cfg = OmegaConf.load(args.run / ".hydra" / "config.yaml")
    o = cfg.objective.t2i_vqvae
    tokenizer = VQTokenizer(list(o.channels), o.codes, o.code_dim, o.normalize).eval()  # no EMA: reads only
    ckpt = args.run / "checkpoints" / "last.ckpt"
    ckpt = ckpt if ckpt.exists() else args.run / "checkpoints" / "best.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    ours = {k[len(PREFIX) :]: v for k, v in state.items() if k.startswith(PREFIX) and "cluster_" not in k}
    tokenizer.load_state_dict(ours)
    counts = torch.zeros(o.codes)
    squared, images, shown = 0.0, 0, None
    with torch.no_grad():
        for batch in build_datamodule(cfg).val_dataloader():
            x = batch["pixel_values"].float()  # (B, 3, H, W) in [-1, 1]
            B, _, H, _ = x.shape
            codes = tokenizer.tokenize(x)  # (B, h * w)
            counts += torch.bincount(codes.flatten(), minlength=o.codes).float()
            recon = tokenizer.decode(codes.view(B, tokenizer.grid(H), -1))  # (B, 3, H, W)
            squared += ((recon - x) ** 2).mean().item() * B
            images += B
            shown = shown if shown is not None else torch.cat([x[: args.images], recon[: args.images]])
    p = counts / counts.sum()
    perplexity = (-(p * p.clamp_min(1e-12).log()).sum()).exp().item()
    print(
        f"{args.run} ({ckpt.name}): {images} validation images, {(counts > 0).sum().item()} of {o.codes} codes "
        f"used, perplexity {perplexity:.1f}, recon MSE {squared / images:.4f}"
    )
    if args.png is not None and shown is not None:
        save_image(shown * 0.5 + 0.5, args.png, nrow=min(args.images, len(shown) // 2), padding=2)
        print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
