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
`settings` is the `eval` config node as a plain dict, laid over conf/eval/default.yaml
(`with_defaults`): every setting has its one default in that file, none in code. Protocols receive
their parts as arguments and never read the global config.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import OmegaConf

from mmbench.metrics import CLEAN_PROTOCOLS, PROTOCOLS
from mmbench.metrics.captioning import captioning
from mmbench.metrics.common import Corruption, Inputs
from mmbench.metrics.diagnostics import holdout_gap, matching_diagnostics
from mmbench.metrics.retrieval import retrieval
from mmbench.metrics.robustness import robustness
from mmbench.metrics.vqa import vqa
from mmbench.metrics.zeroshot import zeroshot

log = logging.getLogger(__name__)

EVAL_DEFAULTS = Path(__file__).resolve().parents[2] / "conf" / "eval" / "default.yaml"


def with_defaults(settings: dict) -> dict:
    """`settings` laid over conf/eval/default.yaml (nested keys merged, lists replaced), as a plain dict."""
    merged = OmegaConf.merge(OmegaConf.load(EVAL_DEFAULTS), OmegaConf.create(settings or {}))
    return OmegaConf.to_container(merged, resolve=True)


@dataclass
class Samples:
    """Sample predictions for reports and W&B tables (first few of each kind)."""

    vqa: list = field(default_factory=list)  # (row, question, answer, prediction)
    captioning: list = field(default_factory=list)  # (row, references, generated)


def _grid(datamodule) -> int | None:
    """The Shapes grid of the datamodule's source (needed to render counterfactual scenes), if known."""
    keywords = getattr(datamodule.source, "keywords", None) or {}
    return int(keywords.get("grid", 3))


def run_protocols(
    module,
    datamodule,
    split: str,
    settings: dict,
    protocols,
    *,
    corruption: Corruption | None = None,
    max_images: int | None = None,
    samples: Samples | None = None,
) -> dict[str, float]:
    """Clean (or corrupted) protocols on one split; names without the split prefix."""
    dataset = datamodule.datasets[split]
    seed, bs = int(settings["seed"]), int(settings["batch_size"])
    inputs = lambda: Inputs(dataset, datamodule.tokenizer, module.device, corruption, seed)  # noqa: E731 - fresh RNG per protocol
    cap = lambda n: n if max_images is None else (max_images if n is None else min(n, max_images))  # noqa: E731
    out: dict[str, float] = {}
    timings = {}
    for name in protocols:
        s = dict(settings[name])  # with_defaults gave every protocol its node
        t0 = time.perf_counter()
        if name == "retrieval":
            out.update(
                retrieval(
                    module,
                    inputs(),
                    rerank_k=int(s["rerank_k"]),
                    batch_size=bs,
                    pair_batch_size=int(s["pair_batch_size"]),
                    max_images=cap(s["max_images"]),
                    itm_only_max_images=int(s["itm_only_max_images"]),
                )
            )
        elif name == "vqa":
            res, preds = vqa(
                module,
                inputs(),
                datamodule.info.answers,
                batch_size=bs,
                max_images=cap(s["max_images"]),
                return_predictions=True,
            )
            out.update(res)
            if samples is not None:
                samples.vqa = preds
        elif name == "diagnostics":
            out.update(
                matching_diagnostics(
                    module,
                    inputs(),
                    batch_size=bs,
                    max_images=cap(s["max_images"]),
                    grid=_grid(datamodule) if s["winoground"] else None,
                )
            )
        elif name == "captioning":
            bos_id, eos_id = inputs().caption_delimiters()
            res, preds = captioning(
                module,
                inputs(),
                bos_id=bos_id,
                eos_id=eos_id,
                max_images=cap(s["max_images"]),
                max_len=int(s["max_len"]),
                num_beams=int(s["num_beams"]),
                batch_size=bs,
                return_predictions=True,
            )
            out.update(res)
            if samples is not None:
                samples.captioning = preds
        elif name == "zeroshot":
            out.update(
                zeroshot(module, inputs(), template=str(s["template"]), batch_size=bs, max_images=cap(s["max_images"]))
            )
        else:
            raise ValueError(f"unknown protocol {name!r}; valid: {list(PROTOCOLS)}")
        timings[name] = time.perf_counter() - t0
    if corruption is None:
        log.info("eval %s: %s", split, ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    return out


@torch.no_grad()
def evaluate_suite(module, datamodule, settings: dict) -> tuple[dict[str, float], Samples]:
    """Every enabled protocol on the test split (and the hold-out split); flat dict of stable names."""
    settings = with_defaults(settings)
    split, holdout, enabled = settings["split"], settings["holdout_split"], list(settings["protocols"])
    unknown = [p for p in enabled if p not in PROTOCOLS]
    if unknown:
        raise ValueError(f"unknown evaluation protocol(s) {unknown}; valid: {list(PROTOCOLS)}")
    clean = [p for p in enabled if p in CLEAN_PROTOCOLS]
    samples = Samples()
    metrics = {
        f"{split}/{k}": v for k, v in run_protocols(module, datamodule, split, settings, clean, samples=samples).items()
    }
    if holdout and holdout in datamodule.datasets and holdout != split:
        res = run_protocols(module, datamodule, holdout, settings, clean)
        metrics.update({f"{holdout}/{k}": v for k, v in res.items()})
        metrics.update(holdout_gap(metrics, split, holdout))
    if "robustness" in enabled:
        r = settings["robustness"]
        protocols = [p for p in r["protocols"] if p in clean]
        t0 = time.perf_counter()
        corrupted = {**settings, **{k: {**settings[k], **v} for k, v in (r["settings"] or {}).items()}}
        clean: dict[str, float] = {}

        def evaluate(c: Corruption | None) -> dict[str, float]:
            # captions are generated from the image alone: a text corruption leaves them as they were
            image_only = {"captioning"} if c is not None and c.images is None else set()
            res = run_protocols(
                module,
                datamodule,
                split,
                corrupted,
                [p for p in protocols if p not in image_only],
                corruption=c,
                max_images=r["max_images"],
            )
            if c is None:
                clean.update(res)
            return {**{k: v for k, v in clean.items() if k.split("/")[0] in image_only}, **res}

        res = robustness(
            evaluate,
            metrics=list(r["metrics"]),
            levels=list(r["levels"]),
            corruptions=list(r["corruptions"]),
            missing=list(r["missing"]),
            patch_size=int(r["patch_size"]),
        )
        log.info("eval robustness: %.1fs", time.perf_counter() - t0)
        metrics.update({f"{split}/{k}": v for k, v in res.items()})
    return dict(sorted(metrics.items())), samples
