"""Train-step throughput of mmbench presets on Shapes batches, and side by side with HF transformers.

    .venv/bin/python scripts/bench_throughput.py [--models vilt,visualbert,...] [--objectives itc,itm,vqa]
        [--threads 1] [--steps 10] [--repeats 3] [--batch-size 64] [--size tiny] [--profile ROWS] [overrides ...]
    .venv/bin/python scripts/bench_throughput.py --hf [--models vilt,clip,visualbert,lxmert,bert]
        [--batch-size 32] [--text-len 32] [--image-size 64] [--hidden 256] [--layers 4] [--heads 8] ...

Each preset is composed like `mmbench-train model=<preset>` (trailing arguments are more Hydra
overrides), its module built on the default Shapes data, and timed on real training batches: `--steps`
optimizer steps after two warm-up steps, `--repeats` times, presets alternating so that machine noise
hits all of them; the median is printed with the spread, next to FLOPs per sample (a forward pass of the
three calls, torch's FlopCounterMode), FLOPs of a whole training step per sample (every objective's
forward and backward, as `StepFlops` counts them in a run), model FLOPs utilisation (MFU: step FLOPs x
samples/s over this CPU's measured fp32 GEMM peak at the thread count, mmbench/metrics/peak.py) and
parameters. It sizes sweeps: a job's training time is about steps x 64 / (samples/s) at its thread count.
`--profile ROWS` then prints where the time of 4 steps goes: the share spent in matmul-like operators (the
ones FLOPs are counted in) and the GEMM rate they reach there, then operator by operator (torch.profiler,
self CPU time).

`--hf` (or `--reference-only`) instead compares each family that has a Hugging Face counterpart
(`REFERENCES`) with it at identical dims and identical weights: a random HF model is built from a
config at the flags' sizes and saved with `save_pretrained`, mmbench imports it (`model.init_from`,
mmbench/models/convert/), and both sides run the same train step on the same random inputs (the
conventions of mmbench/hub_parity.py, also used by tests/test_weight_import.py): forward of
the encoder(s) and fusion, the loss `sum(pooled.float().pow(2).mean())` over the pooled outputs,
backward, AdamW step. HF and mmbench alternate within each repeat (which goes first alternates too);
the medians, their ratio and the max |difference| of the pooled outputs (eval mode, before training:
the check that both compute the same function) are printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

PRESETS = "vilt,visualbert,vilbert,lxmert,albef,flamingo,concat,late,tfn,lmf,gated,bilinear"


# --- mmbench presets on Shapes ---------------------------------------------------------------------


def build(preset: str, objectives: str, size: str, batch_size: int, overrides: list[str]):
    """(module, optimizer, batches) of one preset, composed as the CLI composes it."""
    import torch
    from omegaconf import open_dict

    from mmbench.builder import build_datamodule, build_module
    from mmbench.config import compose_train

    cfg = compose_train(
        [
            f"model={preset}",
            f"objective=[{objectives}]",
            f"model.size={size}",
            f"data.batch_size={batch_size}",
            "logger=csv",
            *overrides,
        ]
    )
    with open_dict(cfg):
        cfg.paths.output_dir = "/tmp/mmbench-bench"
    dm = build_datamodule(cfg)
    dm.setup("fit")
    module = build_module(cfg, dm.info)
    module.train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=float(cfg.optimizer.lr))  # the step's cost, no schedule
    batches = []
    for batch in dm.train_dataloader():
        batches.append(batch)
        if len(batches) == 4:
            break
    return module, optimizer, batches


def step(module, optimizer, batch) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss = module.shared_step(batch, "train")
    loss.backward()
    optimizer.step()


def preset_table(args) -> None:
    import warnings

    import torch

    from mmbench.metrics.complexity import flops_per_sample

    warnings.filterwarnings("ignore", message=".*self.log.*")  # shared_step logs; no Trainer is attached here
    torch.manual_seed(0)
    from torch.utils.flop_counter import FlopCounterMode

    from mmbench.metrics.peak import peak_flops

    peak, peak_source = peak_flops(torch.device("cpu"), args.cache_dir)
    parts, flops, step_flops, params, warmup = {}, {}, {}, {}, {}
    for preset in args.models.split(","):
        module, optimizer, batches = build(preset, args.objectives, args.size, args.batch_size, args.overrides)
        module.eval()
        flops[preset] = flops_per_sample(module.model, batches[0])  # eager: the counter does not see compiled code
        module.train()
        with FlopCounterMode(display=False) as counter:  # one whole step, as StepFlops counts it in a run
            step(module, optimizer, batches[0])
        step_flops[preset] = counter.get_total_flops() / args.batch_size
        t0 = time.perf_counter()
        if args.compile:
            for part in (
                module.model.text_encoder,
                module.model.vision_encoder,
                module.model.fusion,
                *module.objectives.values(),
            ):
                part.compile(dynamic=None)
        for b in batches[:2]:  # warm-up (and compilation)
            step(module, optimizer, b)
        warmup[preset] = time.perf_counter() - t0
        parts[preset] = (module, optimizer, batches)
        params[preset] = sum(p.numel() for p in module.parameters())
    rates: dict[str, list[float]] = {p: [] for p in parts}
    for _ in range(args.repeats):
        for preset, (module, optimizer, batches) in parts.items():
            t0 = time.perf_counter()
            for i in range(args.steps):
                step(module, optimizer, batches[i % len(batches)])
            rates[preset].append(args.steps * args.batch_size / (time.perf_counter() - t0))
    print(
        f"torch {torch.__version__}{' compiled' if args.compile else ''}, {args.threads} thread(s), objectives [{args.objectives}], batch {args.batch_size}, "
        f"size {args.size}, median of {args.repeats} x {args.steps} steps; peak {peak / 1e9:.1f} GFLOP/s ({peak_source})"
    )
    print(
        "| preset | params | FLOPs/sample (fwd) | step FLOPs/sample | samples/s | s/step | MFU | range samples/s "
        "| warm-up s (2 steps) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for preset, r in rates.items():
        med = statistics.median(r)
        print(
            f"| {preset} | {params[preset] / 1e6:.2f}M | {flops[preset]:.3g} | {step_flops[preset]:.3g} | {med:.1f} | "
            f"{args.batch_size / med:.3f} | {step_flops[preset] * med / peak:.1%} | {min(r):.1f}-{max(r):.1f} | "
            f"{warmup[preset]:.1f} |"
        )
    sys.stdout.flush()
    if args.profile:
        for preset, (module, optimizer, batches) in parts.items():
            run = functools.partial(steps, module, optimizer, batches)
            print_profile(preset, run, args.profile, step_flops[preset] * args.batch_size * len(batches), peak)


def steps(module, optimizer, batches) -> None:
    for batch in batches:
        step(module, optimizer, batch)


# operators whose FLOPs torch.utils.flop_counter counts (matmuls, convolutions, attention), as the profiler
# names them: the time outside them is what MFU loses to memory-bound work and framework overhead
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "convolution", "scaled_dot_product")


def print_profile(
    name: str, run: Callable[[], object], rows: int, flops: float | None = None, peak: float | None = None
) -> None:
    """Where a step's time goes: the matmul-like operators' share (and, given the FLOPs `run` does, the GEMM rate
    they reach against `peak`), then torch.profiler's operators by self CPU time, with their share."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ops)
    matmul = sum(e.self_cpu_time_total for e in ops if any(k in e.key for k in MATMUL_OPS))
    print(f"\n{name}: self CPU time by operator, {total / 1e6:.2f} s over the profiled steps")
    if flops and peak and matmul:
        rate = flops / (matmul / 1e6)
        print(
            f"matmul-like operators: {matmul / total:.1%} of the time, at {rate / 1e9:.1f} GFLOP/s "
            f"({rate / peak:.0%} of the peak); the rest: {1 - matmul / total:.1%}"
        )
    print("| operator | share | calls |")
    print("|---|---|---|")
    for e in ops[:rows]:
        print(f"| {e.key} | {e.self_cpu_time_total / total:.1%} | {e.count} |")
    sys.stdout.flush()


# --- side by side with Hugging Face transformers (--hf) ----------------------------------------------


@dataclasses.dataclass(frozen=True)
class Dims:
    """Sizes shared by both sides of the HF comparison (the MLP is 4 x hidden everywhere)."""

    batch: int = 32
    text_len: int = 32  # tokens per caption, the second one padded from 2/3 on
    image_size: int = 64  # pixels per side (ViLT, CLIP)
    patch_size: int = 16
    hidden: int = 256
    layers: int = 4  # per stack: LXMERT gets this many language, object and cross-modality layers
    heads: int = 8
    vocab: int = 1000
    regions: int = 16  # precomputed region features (VisualBERT, LXMERT)
    region_dim: int = 2048


def _bert_like(d: Dims) -> dict:
    """The config keywords BERT, ViLT, VisualBERT and LXMERT share (no dropout: both sides compute one function)."""
    return dict(
        vocab_size=d.vocab,
        hidden_size=d.hidden,
        num_attention_heads=d.heads,
        intermediate_size=4 * d.hidden,
        max_position_embeddings=d.text_len,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


def _bert_config(d: Dims):
    from transformers import BertConfig

    return BertConfig(num_hidden_layers=d.layers, **_bert_like(d))


def _vilt_config(d: Dims):
    from transformers import ViltConfig

    return ViltConfig(num_hidden_layers=d.layers, image_size=d.image_size, patch_size=d.patch_size, **_bert_like(d))


def _visualbert_config(d: Dims):
    from transformers import VisualBertConfig

    return VisualBertConfig(num_hidden_layers=d.layers, visual_embedding_dim=d.region_dim, **_bert_like(d))


def _lxmert_config(d: Dims):
    from transformers import LxmertConfig

    return LxmertConfig(
        l_layers=d.layers, x_layers=d.layers, r_layers=d.layers, visual_feat_dim=d.region_dim, **_bert_like(d)
    )


def _clip_config(d: Dims):
    from transformers import CLIPConfig

    tower = dict(
        hidden_size=d.hidden, intermediate_size=4 * d.hidden, num_hidden_layers=d.layers, num_attention_heads=d.heads
    )
    text = dict(
        vocab_size=d.vocab,
        max_position_embeddings=d.text_len,
        bos_token_id=d.vocab - 2,  # parity.clip_text puts them there
        eos_token_id=d.vocab - 1,
        pad_token_id=0,
        **tower,
    )
    return CLIPConfig(
        text_config=text,
        vision_config=dict(image_size=d.image_size, patch_size=d.patch_size, **tower),
        projection_dim=d.hidden,
    )


def reference_inputs(d: Dims, seed: int = 0) -> dict:
    """One batch every family reads from: CLIP-style text (BOS first, EOS last; ordinary tokens to the
    others), pixels in [-1, 1] with their mask, region features with boxes and mask."""
    import torch

    from mmbench.hub_parity import clip_text, pixel_inputs, region_inputs, text_inputs

    ids, mask = text_inputs(d.batch, d.text_len, d.vocab, seed)
    return {
        "input_ids": clip_text(ids, mask, d.vocab),
        "attention_mask": mask,
        "pixel_values": pixel_inputs(d.batch, d.image_size, seed),
        "pixel_mask": torch.ones(d.batch, d.image_size, d.image_size, dtype=torch.long),
        **region_inputs(d.batch, d.regions, d.region_dim, seed),
    }


def _vilt_hf(ref, x: dict) -> tuple:
    out = ref(
        input_ids=x["input_ids"],
        attention_mask=x["attention_mask"],
        pixel_values=x["pixel_values"],
        pixel_mask=x["pixel_mask"],
    )
    return (out.pooler_output,)


def _clip_hf(ref, x: dict) -> tuple:
    """Both towers' pooled outputs (the projections belong to mmbench's ITC, so neither side runs them);
    the pixel normalisation mmbench's encoder does inside is done here too."""
    from mmbench.hub_parity import clip_pixels

    text = ref.text_model(input_ids=x["input_ids"], attention_mask=x["attention_mask"])
    image = ref.vision_model(pixel_values=clip_pixels(x["pixel_values"]))
    return text.pooler_output, image.pooler_output


def _visualbert_hf(ref, x: dict) -> tuple:
    out = ref(
        input_ids=x["input_ids"],
        attention_mask=x["attention_mask"],
        visual_embeds=x["region_feats"],
        visual_attention_mask=x["region_mask"].long(),
    )
    return (out.pooler_output,)


def _lxmert_hf(ref, x: dict) -> tuple:
    out = ref(
        input_ids=x["input_ids"],
        attention_mask=x["attention_mask"],
        visual_feats=x["region_feats"],
        visual_pos=x["region_boxes"],
        visual_attention_mask=x["region_mask"].long(),
    )
    return (out.pooled_output,)


def _bert_hf(ref, x: dict) -> tuple:
    return (ref(input_ids=x["input_ids"], attention_mask=x["attention_mask"]).pooler_output,)


def _fused(model, x: dict) -> tuple:
    """The three calls' first two and the fusion: the joint pooled vector."""
    text = model.encode_text(x["input_ids"], x["attention_mask"])
    return (model.fuse(text, model.encode_image(x)).pooled,)


def _towers(model, x: dict) -> tuple:
    """Two towers, no fusion (CLIP): both pooled vectors."""
    return model.encode_text(x["input_ids"], x["attention_mask"]).pooled, model.encode_image(x).pooled


def _text(model, x: dict) -> tuple:
    return (model.encode_text(x["input_ids"], x["attention_mask"]).pooled,)


@dataclasses.dataclass(frozen=True)
class Reference:
    """One family of the HF comparison: how each side is built and what its forward returns."""

    hf_class: str  # transformers class, built from `config(dims)` with random weights
    config: Callable[[Dims], object]
    preset: str  # the mmbench preset importing the checkpoint: model=<preset> model.init_from=<dir>
    overrides: Callable[[Dims], list[str]]  # further overrides of the mmbench side
    hf_pooled: Callable[[object, dict], tuple]  # (HF model, inputs) -> pooled tensors, each (B, D)
    mm_pooled: Callable[[object, dict], tuple]  # (MultimodalModel, inputs) -> the same pooled tensors
    scope: str = "all of"  # what of the preset runs (printed before "model=<preset>")


def _images(d: Dims) -> list[str]:
    return [f"data.image_size={d.image_size}", f"data.max_text_len={d.text_len}"]


def _regions(d: Dims) -> list[str]:
    return ["encoder/vision=region_feats", f"data.max_text_len={d.text_len}"]


def _bert_text(d: Dims) -> list[str]:  # BERT's sizes reach only the text encoder: its width and depth are set here
    return [*_regions(d), f"model.text_dim={d.hidden}", f"model.text_depth={d.layers}"]


REFERENCES: dict[str, Reference] = {
    "vilt": Reference("ViltModel", _vilt_config, "vilt", _images, _vilt_hf, _fused),
    "clip": Reference("CLIPModel", _clip_config, "clip", _images, _clip_hf, _towers),
    "visualbert": Reference("VisualBertModel", _visualbert_config, "visualbert", _regions, _visualbert_hf, _fused),
    "lxmert": Reference("LxmertModel", _lxmert_config, "lxmert", _regions, _lxmert_hf, _fused),
    "bert": Reference("BertModel", _bert_config, "lxmert", _bert_text, _bert_hf, _text, scope="the text encoder of"),
}


@dataclasses.dataclass
class ReferenceRow:
    name: str  # key of REFERENCES
    hf_class: str
    mm_side: str  # what mmbench runs, e.g. "the text encoder of model=lxmert"
    hf_rates: list[float]  # samples/s, one per repeat
    mm_rates: list[float]
    max_diff: float  # max |HF - mmbench| over the pooled outputs, eval mode, same inputs, before any step
    hf_params: int  # parameters the loss reaches (those with a gradient after the warm-up steps)
    mm_params: int
    hf_attention: str  # the attention implementation transformers chose
    warmup_s: dict[str, float] = dataclasses.field(default_factory=dict)  # per side: the warm-up steps (compilation)

    @property
    def hf_rate(self) -> float:
        return statistics.median(self.hf_rates)

    @property
    def mm_rate(self) -> float:
        return statistics.median(self.mm_rates)


def pooled_loss(pooled: tuple):
    """The same scalar for both sides: mean square of every pooled output."""
    return sum(p.float().pow(2).mean() for p in pooled)


def timed_steps(forward: Callable[[], tuple], optimizer, steps: int, batch: int) -> float:
    """samples/s of `steps` train steps (forward, loss, backward, AdamW step)."""
    t0 = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        pooled_loss(forward()).backward()
        optimizer.step()
    return steps * batch / (time.perf_counter() - t0)


def compare_reference(
    names: list[str],
    dims: Dims,
    steps: int = 10,
    repeats: int = 3,
    warmup: int = 2,
    lr: float = 1e-4,
    compile: bool = False,
) -> list[ReferenceRow]:
    """Time each family of `names` against its HF reference at `dims` (see the module docstring)."""
    import transformers

    unknown = [n for n in names if n not in REFERENCES]
    if unknown:
        raise ValueError(f"no HF reference for {unknown}; the comparison covers {sorted(REFERENCES)}")
    x = reference_inputs(dims)
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()  # the save / load bars of every checkpoint
    try:
        return [compare_one(name, dims, x, steps, repeats, warmup, lr, compile) for name in names]
    finally:
        if bars:
            transformers.utils.logging.enable_progress_bar()


def compare_one(
    name: str, dims: Dims, x: dict, steps: int, repeats: int, warmup: int, lr: float, compile: bool = False
) -> ReferenceRow:
    """One family: build both sides from one random checkpoint, check them on `x`, time them alternately.
    With `compile`, both sides are compiled in place the same way (`nn.Module.compile` of the HF model,
    and of mmbench's encoders and fusion as `model.compile=true` does) after the check, and the warm-up
    steps, which compile, are timed."""
    import torch
    import transformers

    from mmbench.config import compose_train
    from mmbench.hub_parity import build_imported

    spec = REFERENCES[name]
    torch.manual_seed(0)
    hf = getattr(transformers, spec.hf_class)(spec.config(dims))  # HF's own initialisation
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        mm = build_imported(
            compose_train([f"model={spec.preset}", f"model.init_from={tmp}", *spec.overrides(dims)]), dims.vocab
        )
    with torch.no_grad():
        pairs = list(zip(spec.hf_pooled(hf.eval(), x), spec.mm_pooled(mm.eval(), x), strict=True))
    if any(a.shape != b.shape for a, b in pairs):
        raise RuntimeError(
            f"{name}: pooled shapes differ, HF {[a.shape for a, _ in pairs]} vs mmbench {[b.shape for _, b in pairs]}"
        )
    if compile:
        hf.compile()
        for part in (mm.text_encoder, mm.vision_encoder, mm.fusion):
            part.compile()
    sides = {
        "hf": (functools.partial(spec.hf_pooled, hf.train(), x), torch.optim.AdamW(hf.parameters(), lr=lr)),
        "mm": (functools.partial(spec.mm_pooled, mm.train(), x), torch.optim.AdamW(mm.parameters(), lr=lr)),
    }
    warmup_s = {}
    for side, (forward, optimizer) in sides.items():
        t0 = time.perf_counter()
        timed_steps(forward, optimizer, warmup, dims.batch)
        warmup_s[side] = time.perf_counter() - t0
    rates: dict[str, list[float]] = {"hf": [], "mm": []}
    for r in range(repeats):
        for side in ("hf", "mm") if r % 2 == 0 else ("mm", "hf"):  # who goes first alternates too
            rates[side].append(timed_steps(*sides[side], steps, dims.batch))
    return ReferenceRow(
        name=name,
        hf_class=spec.hf_class,
        mm_side=f"{spec.scope} model={spec.preset}",
        hf_rates=rates["hf"],
        mm_rates=rates["mm"],
        max_diff=max((a - b).abs().max().item() for a, b in pairs),
        hf_params=sum(p.numel() for p in hf.parameters() if p.grad is not None),
        mm_params=sum(p.numel() for p in mm.parameters() if p.grad is not None),
        hf_attention=str(hf.config._attn_implementation),
        warmup_s=warmup_s,
    )


def print_reference_table(
    rows: list[ReferenceRow], dims: Dims, steps: int, repeats: int, threads: int, atol: float, compile: bool = False
) -> None:
    import torch
    import transformers

    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, fp32, {threads} thread(s); batch {dims.batch}, "
        f"{dims.text_len} text tokens, {dims.image_size}px images / {dims.patch_size}px patches, "
        f"{dims.regions} regions x {dims.region_dim}, hidden {dims.hidden}, {dims.layers} layers, {dims.heads} heads, "
        f"vocab {dims.vocab}; median of {repeats} x {steps} steps, HF and mmbench alternating"
        + ("; both sides torch.compile'd" if compile else "")
    )
    print("| preset | HF class | samples/s HF | samples/s mmbench | mmbench / HF | max \\|Δ\\| pooled |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        flag = "" if r.max_diff <= atol else f" (> {atol:g}: not the same function)"
        print(
            f"| {r.name} | {r.hf_class} | {r.hf_rate:.1f} | {r.mm_rate:.1f} | {r.mm_rate / r.hf_rate:.2f} | "
            f"{r.max_diff:.1e}{flag} |"
        )
    print()
    for r in rows:
        print(
            f"- {r.name}: {r.hf_class} (attention '{r.hf_attention}') vs {r.mm_side}; parameters trained HF "
            f"{r.hf_params:,}, mmbench {r.mm_params:,}; samples/s per repeat HF "
            f"{', '.join(f'{v:.1f}' for v in r.hf_rates)}, mmbench {', '.join(f'{v:.1f}' for v in r.mm_rates)}; "
            f"warm-up HF {r.warmup_s['hf']:.1f} s, mmbench {r.warmup_s['mm']:.1f} s"
        )
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=None, help=f"default: {PRESETS}; with --hf: {','.join(REFERENCES)}")
    parser.add_argument("--objectives", default="itc,itm,vqa")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=None, help="default: 64; with --hf: 32")
    parser.add_argument("--size", default="tiny")
    parser.add_argument(
        "--cache-dir",
        default=os.environ.get("MMBENCH_CACHE", ".cache/mmbench"),
        help="where the measured CPU peak is cached (a run's paths.cache_dir)",
    )
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the encoders, fusion and objectives (time reported)"
    )
    parser.add_argument(
        "--profile", type=int, default=0, metavar="ROWS", help="then profile 4 steps per preset: top ROWS operators"
    )
    hf = parser.add_argument_group("side by side with HF transformers (--hf)")
    hf.add_argument(
        "--hf", "--reference-only", dest="hf", action="store_true", help="run only the comparison with HF transformers"
    )
    defaults = Dims()
    for field in dataclasses.fields(Dims):
        if field.name != "batch":
            flag = f"--{field.name.replace('_', '-')}"
            hf.add_argument(flag, type=int, default=getattr(defaults, field.name), help="default: %(default)s")
    hf.add_argument(
        "--atol", type=float, default=1e-4, help="largest pooled difference that counts as the same function"
    )
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    if not args.hf:
        args.models = args.models or PRESETS
        args.batch_size = args.batch_size or 64
        preset_table(args)
        return
    if args.overrides:
        parser.error("--hf builds both sides from its size flags: no Hydra overrides")
    names = (args.models or ",".join(REFERENCES)).split(",")
    unknown = [n for n in names if n not in REFERENCES]
    if unknown:
        parser.error(f"--hf: no HF reference for {unknown}; choose from {','.join(REFERENCES)}")
    sizes = {f.name: getattr(args, f.name) for f in dataclasses.fields(Dims) if f.name != "batch"}
    dims = Dims(batch=args.batch_size or defaults.batch, **sizes)
    rows = compare_reference(names, dims, steps=args.steps, repeats=args.repeats, compile=args.compile)
    print_reference_table(rows, dims, args.steps, args.repeats, args.threads, args.atol, args.compile)


if __name__ == "__main__":
    main()
