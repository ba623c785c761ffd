"""Speed levers measured on their own, before anything is changed in the models (issues 15 and 36):

    .venv/bin/python scripts/bench_levers.py [--threads 2] [--repeats 7] [--steps 10]

* fused QKV: mmbench's `Attention` (three `nn.Linear` for q, k, v) against the same layer with one
  `nn.Linear(D, 3D)` whose weight is the three stacked (what HF's import would map into it), forward
  + backward + AdamW step over (B, T, D) self-attention, no mask; at issue 15's dims (B=32, T=49:
  32 text tokens + 16 patches + [CLS], D=256, 8 heads) and at base width (B=8, D=768, 12 heads);
* channels-last: the region/grid CNN (`ConvBackbone`, width 32, 3 stages: the default run's) on a
  Shapes-sized batch (B=64, 3 x 48 x 48), NCHW against `torch.channels_last` weights and inputs.
* seeds in one step: the seeds of one sweep setting (3 copies of a part with their own weights and inputs)
  trained one after the other, against one step over their stacked weights with `torch.func.vmap`
  (`stack_module_state` + `functional_call`), for the CNN above and for 4 transformer blocks at the tiny
  presets' width (D=128, 25 tokens, B=64).

Both sides of a lever start from the same weights (the max |difference| of their first outputs is
printed, the check that they compute one function), alternate within each repeat, and are timed
over `--steps` steps after warm-up; the table gives the median ms/step and old / new (> 1: the
lever pays). Speed is not asserted anywhere; the figures are in docs/performance.md.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass


@dataclass
class Lever:
    name: str
    setting: str
    old_ms: float
    new_ms: float
    max_diff: float


def _time(step, steps: int) -> float:
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t) / steps * 1e3  # ms per step


def _compare(name: str, setting: str, old, new, first_diff: float, steps: int, repeats: int) -> Lever:
    """old / new: zero-argument train steps; alternated `repeats` times after two warm-up steps each."""
    for step in (old, new):
        step(), step()
    times: dict[str, list[float]] = {"old": [], "new": []}
    for _ in range(repeats):
        times["old"].append(_time(old, steps))
        times["new"].append(_time(new, steps))
    return Lever(name, setting, statistics.median(times["old"]), statistics.median(times["new"]), first_diff)


def fused_qkv(batch: int, tokens: int, dim: int, heads: int, steps: int, repeats: int) -> Lever:
    import torch
    import torch.nn.functional as F
    from torch import nn

    from mmbench.models.layers import Attention

    class FusedAttention(nn.Module):
        """Self-attention with one (D -> 3D) projection: the lever under test, not a model part."""

        def __init__(self, separate: Attention):
            super().__init__()
            self.heads = separate.heads
            self.qkv = nn.Linear(dim, 3 * dim)
            self.proj = nn.Linear(dim, dim)
            with torch.no_grad():
                self.qkv.weight.copy_(torch.cat([separate.q.weight, separate.k.weight, separate.v.weight]))
                self.qkv.bias.copy_(torch.cat([separate.q.bias, separate.k.bias, separate.v.bias]))
                self.proj.load_state_dict(separate.proj.state_dict())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            B, T, D = x.shape
            qkv = self.qkv(x).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # (3, B, nh, T, hs)
            y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, nh, T, hs)
            return self.proj(y.transpose(1, 2).reshape(B, T, D))  # (B, T, D)

    torch.manual_seed(0)
    separate = Attention(dim, heads)
    fused = FusedAttention(separate)
    x = torch.randn(batch, tokens, dim)
    with torch.no_grad():
        diff = (separate(x) - fused(x)).abs().max().item()

    def trainer(module):
        opt = torch.optim.AdamW(module.parameters(), lr=1e-4)

        def step():
            opt.zero_grad(set_to_none=True)
            module(x).pow(2).mean().backward()
            opt.step()

        return step

    setting = f"B={batch}, T={tokens}, D={dim}, {heads} heads"
    return _compare("fused QKV (1 GEMM for q, k, v)", setting, trainer(separate), trainer(fused), diff, steps, repeats)


def channels_last(batch: int, image_size: int, width: int, steps: int, repeats: int) -> Lever:
    import copy

    import torch

    from mmbench.models.vision.conv import ConvBackbone

    torch.manual_seed(0)
    nchw = ConvBackbone(width=width, stages=3)
    nhwc = copy.deepcopy(nchw).to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, image_size, image_size)
    x_last = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        diff = (nchw(x) - nhwc(x_last)).abs().max().item()

    def trainer(module, pixels):
        opt = torch.optim.AdamW(module.parameters(), lr=1e-4)

        def step():
            opt.zero_grad(set_to_none=True)
            module(pixels).pow(2).mean().backward()
            opt.step()

        return step

    setting = f"ConvBackbone width {width}, B={batch}, 3x{image_size}x{image_size}"
    return _compare("channels-last CNN", setting, trainer(nchw, x), trainer(nhwc, x_last), diff, steps, repeats)


def seeds_vmap(kind: str, batch: int, seeds: int, steps: int, repeats: int, width: int = 32, dim: int = 128) -> Lever:
    """`seeds` copies of one part (different weights and inputs, as the seeds of one setting) trained one after
    the other, against one step over their stacked weights (`torch.func.stack_module_state` + `vmap`; AdamW is
    elementwise, so one optimizer over the stacked weights is the seeds' optimizers side by side)."""
    import copy

    import torch
    from torch.func import functional_call, stack_module_state, vmap

    torch.manual_seed(0)
    if kind == "cnn":
        from mmbench.models.vision.conv import ConvBackbone

        models = [ConvBackbone(width=width, stages=3) for _ in range(seeds)]
        inputs = torch.randn(seeds, batch, 3, 48, 48)
        setting = f"{seeds} x ConvBackbone width {width}, B={batch}, 3x48x48"
    else:
        from torch import nn

        from mmbench.models.layers import Block

        def stack() -> nn.Module:
            return nn.Sequential(*[Block(dim, heads=4) for _ in range(4)])

        models = [stack() for _ in range(seeds)]
        inputs = torch.randn(seeds, batch, 25, dim)
        setting = f"{seeds} x 4 Blocks D={dim}, B={batch}, T=25"

    def sequential():
        opts = [torch.optim.AdamW(m.parameters(), lr=1e-4) for m in models]

        def step():
            for m, opt, x in zip(models, opts, inputs):
                opt.zero_grad(set_to_none=True)
                m(x).pow(2).mean().backward()
                opt.step()

        return step

    params, buffers = stack_module_state(models)  # name -> (seeds, ...) leaves
    base = copy.deepcopy(models[0]).to("meta")

    def loss(p, b, x):
        return functional_call(base, (p, b), (x,)).pow(2).mean()

    batched = vmap(loss)

    def stacked():
        opt = torch.optim.AdamW(list(params.values()), lr=1e-4)

        def step():
            opt.zero_grad(set_to_none=True)
            batched(params, buffers, inputs).sum().backward()
            opt.step()

        return step

    with torch.no_grad():
        first = torch.stack([models[i](inputs[i]).pow(2).mean() for i in range(seeds)])
        diff = (first - batched(params, buffers, inputs)).abs().max().item()
    name = f"seeds in one step (vmap), {'CNN' if kind == 'cnn' else 'transformer'}"
    return _compare(name, setting, sequential(), stacked(), diff, steps, repeats)


def print_table(rows: list[Lever], threads: int) -> None:
    import torch

    print(f"torch {torch.__version__}, {threads} threads, fp32; median ms/step (forward + backward + AdamW)")
    print("| lever | setting | ms/step before | ms/step with | before / with | max \\|Δ\\| first output |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r.name} | {r.setting} | {r.old_ms:.2f} | {r.new_ms:.2f} | {r.old_ms / r.new_ms:.2f} | {r.max_diff:.1e} |"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per repeat and side")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: checks the script runs, times nothing useful")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    if args.tiny:
        rows = [fused_qkv(2, 5, 16, 2, args.steps, args.repeats), channels_last(2, 16, 8, args.steps, args.repeats)]
        rows += [seeds_vmap(k, 2, 2, args.steps, args.repeats, width=8, dim=16) for k in ("cnn", "transformer")]
    else:
        rows = [
            fused_qkv(32, 49, 256, 8, args.steps, args.repeats),
            fused_qkv(8, 49, 768, 12, args.steps, args.repeats),
            channels_last(64, 48, 32, args.steps, args.repeats),
            seeds_vmap("cnn", 64, 3, args.steps, args.repeats),
            seeds_vmap("transformer", 64, 3, args.steps, args.repeats),
        ]
    print_table(rows, args.threads)


if __name__ == "__main__":
    main()
