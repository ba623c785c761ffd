"""Widths at which every preset has about the same number of parameters (for experiment=arch_sweep_matched).

    .venv/bin/python scripts/param_match.py [--reference vilt] [--size tiny] [--presets vilt,lxmert,...]

Keeps each preset's depths at `--size` and searches the width (`dim`, a multiple of 4 x heads) whose
model (encoders + fusion, objective heads excluded, as scripts/param_table.py counts) is closest to
the reference preset at that size. Built on the Shapes settings (48 px, 32 text positions, vocabulary
1000). Prints the YAML rows that conf/experiment/arch_sweep_matched.yaml holds.
"""

from __future__ import annotations

import argparse

from mmbench.builder import build_model
from mmbench.config import compose_train
from mmbench.data.datamodule import DataInfo

PRESETS = "vilt,visualbert,vilbert,lxmert,albef,flamingo,concat,late,tfn,lmf,gated,bilinear"


def params(name: str, size: str, row: dict | None) -> tuple[int, dict]:
    overrides = [f"model={name}", f"model.size={size}"]
    if row:
        overrides += [f"model.sizes.{size}.{k}={v}" for k, v in row.items()]
    cfg = compose_train(overrides)
    info = DataInfo.of_vocab(1000, max_text_len=cfg.data.max_text_len, image_size=cfg.data.image_size)
    model = build_model(cfg, info)
    return sum(p.numel() for p in model.parameters()), dict(cfg.model.sizes[size])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", default="vilt")
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--presets", default=PRESETS)
    args = parser.parse_args()
    target, _ = params(args.reference, args.size, None)
    print(f"# reference: {args.reference} {args.size} = {target / 1e6:.3f}M parameters")
    for name in args.presets.split(","):
        _, row = params(name, args.size, None)
        heads = int(row["heads"])
        best = None
        for dim in range(4 * heads, 513, 4 * heads):
            change = {"dim": dim}
            if "text_dim" in row:
                change["text_dim"] = dim
            n, _ = params(name, args.size, change)
            if best is None or abs(n - target) < abs(best[0] - target):
                best = (n, dim)
            if n > 1.5 * target:
                break
        n, dim = best
        row = {**row, "dim": dim, **({"text_dim": dim} if "text_dim" in row else {})}
        print(f"    {name}: {{{', '.join(f'{k}: {v}' for k, v in row.items())}}}  # {n / 1e6:.3f}M")


if __name__ == "__main__":
    main()
