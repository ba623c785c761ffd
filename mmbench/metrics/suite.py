"""The evaluation suite: every protocol the trained objectives make possible, one flat dict of metrics.

    metrics, samples = evaluate_suite(module, datamodule, settings)

Protocols (one file each in this package) run when the model can serve them:

| protocol    | needs                                  | names (docs/metrics.md)                 |
|-------------|----------------------------------------|-----------------------------------------|
| retrieval   | ITC (`embed`) and/or a pair scorer      | `<split>/retrieval/...`                 |
| vqa         | a VQA head (`answer_logits`), questions | `<split>/vqa/...`                       |
| diagnostics | a pair scorer, `match_*` columns        | `<split>/diagnostics/...`               |
| captioning  | a caption generator (`generate`)        | `<split>/captioning/...`                |
| zeroshot    | ITC, `obj_*` columns                    | `<split>/zeroshot/...`                  |
| robustness  | any of the above                        | `<split>/robustness/...`                |

The in-distribution split (`split`, default test) gets every protocol; the compositional hold-out
split (`holdout_split`, when the data has one) gets the clean protocols and `holdout_gap/...`.
`settings` is the `eval` config node as a plain dict (conf/eval/default.yaml); protocols receive
their parts as arguments and never read the global config.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch

from mmbench.metrics import CLEAN_PROTOCOLS, PROTOCOLS
from mmbench.metrics.captioning import captioning
from mmbench.metrics.common import Corruption, Inputs
from mmbench.metrics.diagnostics import holdout_gap, matching_diagnostics
from mmbench.metrics.retrieval import retrieval
from mmbench.metrics.robustness import robustness
from mmbench.metrics.vqa import vqa
from mmbench.metrics.zeroshot import zeroshot

log = logging.getLogger(__name__)



@dataclass
class Samples:
    """Sample predictions for reports and W&B tables (first few of each kind)."""

    vqa: list = field(default_factory=list)  # (row, question, answer, prediction)
    captioning: list = field(default_factory=list)  # (row, references, generated)


def _grid(datamodule) -> int | None:
    """The Shapes grid of the datamodule's source (needed to render counterfactual scenes), if known."""
    keywords = getattr(datamodule.source, "keywords", None) or {}
    return int(keywords.get("grid", 3))


def run_protocols(module, datamodule, split: str, settings: dict, protocols, *, corruption: Corruption | None = None,
                  max_images: int | None = None, samples: Samples | None = None) -> dict[str, float]:
    """Clean (or corrupted) protocols on one split; names without the split prefix."""
    dataset = datamodule.datasets[split]
    seed = int(settings.get("seed", 0))
    bs = int(settings.get("batch_size", 256))
    inputs = lambda: Inputs(dataset, datamodule.tokenizer, module.device, corruption, seed)  # noqa: E731 - fresh RNG per protocol
    cap = lambda n: n if max_images is None else (max_images if n is None else min(n, max_images))  # noqa: E731
    out: dict[str, float] = {}
    timings = {}
    for name in protocols:
        s = dict(settings.get(name) or {})
        t0 = time.perf_counter()
        if name == "retrieval":
            out.update(retrieval(module, inputs(), rerank_k=int(s.get("rerank_k", 16)), batch_size=bs,
                                 pair_batch_size=int(s.get("pair_batch_size", 512)), max_images=cap(s.get("max_images")),
                                 itm_only_max_images=int(s.get("itm_only_max_images", 32))))
        elif name == "vqa":
            res, preds = vqa(module, inputs(), datamodule.info.answers, batch_size=bs, max_images=cap(s.get("max_images")),
                             return_predictions=True)
            out.update(res)
            if samples is not None:
                samples.vqa = preds
        elif name == "diagnostics":
            out.update(matching_diagnostics(module, inputs(), batch_size=bs, max_images=cap(s.get("max_images")),
                                            grid=_grid(datamodule) if s.get("winoground", True) else None))
        elif name == "captioning":
            bos_id, eos_id = inputs().caption_delimiters()
            res, preds = captioning(module, inputs(), bos_id=bos_id, eos_id=eos_id, max_images=cap(int(s.get("max_images", 100))), max_len=int(s.get("max_len", 30)),
                                    num_beams=int(s.get("num_beams", 1)), batch_size=bs, return_predictions=True)
            out.update(res)
            if samples is not None:
                samples.captioning = preds
        elif name == "zeroshot":
            out.update(zeroshot(module, inputs(), template=str(s.get("template", "a {color} {shape}")), batch_size=bs,
                                max_images=cap(s.get("max_images"))))
        else:
            raise ValueError(f"unknown protocol {name!r}; valid: {list(PROTOCOLS)}")
        timings[name] = time.perf_counter() - t0
    if corruption is None:
        log.info("eval %s: %s", split, ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    return out


@torch.no_grad()
def evaluate_suite(module, datamodule, settings: dict) -> tuple[dict[str, float], Samples]:
    """Every enabled protocol on the test split (and the hold-out split); flat dict of stable names."""
    split = settings.get("split", "test")
    holdout = settings.get("holdout_split", "test_holdout")
    enabled = list(settings.get("protocols", PROTOCOLS))
    clean = [p for p in enabled if p in CLEAN_PROTOCOLS]
    samples = Samples()
    metrics = {f"{split}/{k}": v for k, v in run_protocols(module, datamodule, split, settings, clean, samples=samples).items()}
    if holdout and holdout in datamodule.datasets and holdout != split:
        res = run_protocols(module, datamodule, holdout, settings, clean)
        metrics.update({f"{holdout}/{k}": v for k, v in res.items()})
        metrics.update(holdout_gap(metrics, split, holdout))
    if "robustness" in enabled:
        r = dict(settings.get("robustness") or {})
        protocols = [p for p in r.get("protocols", clean) if p in clean]
        t0 = time.perf_counter()
        corrupted = {**settings, **{k: {**(settings.get(k) or {}), **v} for k, v in (r.get("settings") or {}).items()}}
        clean: dict[str, float] = {}

        def evaluate(c: Corruption | None) -> dict[str, float]:
            # captions are generated from the image alone: a text corruption leaves them as they were
            image_only = {"captioning"} if c is not None and c.images is None else set()
            res = run_protocols(module, datamodule, split, corrupted, [p for p in protocols if p not in image_only],
                                corruption=c, max_images=r.get("max_images", 100))
            if c is None:
                clean.update(res)
            return {**{k: v for k, v in clean.items() if k.split("/")[0] in image_only}, **res}

        res = robustness(
            evaluate,
            metrics=list(r.get("metrics", ["retrieval/rmean", "vqa/acc", "diagnostics/match_acc", "zeroshot/top1",
                                           "captioning/cider"])),
            levels=list(r.get("levels", [0.25, 0.5])),
            corruptions=list(r.get("corruptions", ["image_noise", "patch_dropout", "text_dropout", "text_typos"])),
            missing=list(r.get("missing", ["blank_image", "empty_text"])),
            patch_size=int(r.get("patch_size", 16)),
        )
        log.info("eval robustness: %.1fs", time.perf_counter() - t0)
        metrics.update({f"{split}/{k}": v for k, v in res.items()})
    return dict(sorted(metrics.items())), samples
