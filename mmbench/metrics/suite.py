"""The evaluation suite: every protocol the trained objectives make possible, one flat dict of metrics.

    metrics, samples = evaluate_suite(module, datamodule, settings)

Protocols (one file each in this package) run when the model can serve them:

| protocol    | needs                                  | names (docs/metrics.md)                 |
|-------------|----------------------------------------|-----------------------------------------|
| retrieval   | ITC (`embed`) and/or a pair scorer      | `<split>/retrieval/...`                 |
| vqa         | a VQA head (`answer_logits`), questions | `<split>/vqa/...`                       |
| vqa_generative | an answer generator (`vqa_gen`), questions | `<split>/vqa_generative/...`       |
| diagnostics | a pair scorer, `match_*` columns (Winoground: the data's counterfactual renderer) | `<split>/diagnostics/...`               |
| captioning  | a caption generator (`generate`)        | `<split>/captioning/...`                |
| zeroshot    | ITC, the data's classes (`data.zeroshot_classes`) | `<split>/zeroshot/...`                  |
| t2i         | an ImageGenerator (t2i_diffusion, t2i_ar), the data's oracle (`data.t2i_oracle`) | `<split>/t2i/...`  |
| t2i_unguided | as t2i (the same protocol at guidance 1: no classifier-free guidance) | `<split>/t2i_unguided/...` |
| robustness  | any of the above                        | `<split>/robustness/...`                |

The in-distribution split (`split`, default test) gets every protocol; the compositional hold-out
split (`holdout_split`, when the data has one) gets the clean protocols and `holdout_gap/...`.
`settings` is the `eval` config node as a plain dict, laid over conf/eval/default.yaml
(`with_defaults`): every setting has its one default in that file, none in code. A clean protocol
is a node of it with a `_target_`: the suite instantiates the node (the function with its settings,
`_partial_`) and calls it as protocol(module, inputs, batch_size=..., max_images=...); `inputs`
(`common.Inputs`) carries the split, the tokenizer, the answer vocabulary and what the data offers
protocols (Shapes: a counterfactual renderer for Winoground pairs). Protocols never read the global config.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mmbench.metrics import EVAL_DEFAULTS, ROBUSTNESS, clean_protocols, protocol_names
from mmbench.metrics.common import Corruption, Inputs, Unavailable
from mmbench.metrics.diagnostics import holdout_gap
from mmbench.metrics.robustness import robustness

log = logging.getLogger(__name__)


@functools.cache
def _default_settings():
    return OmegaConf.load(EVAL_DEFAULTS)


def with_defaults(settings: dict) -> dict:
    """`settings` laid over conf/eval/default.yaml (nested keys merged, lists replaced), as a plain dict."""
    merged = OmegaConf.merge(_default_settings(), OmegaConf.create(settings or {}))
    return cast(dict, OmegaConf.to_container(merged, resolve=True))  # a DictConfig becomes a dict


def protocol(name: str, **settings) -> Callable[..., dict]:
    """Protocol `name` of conf/eval/default.yaml with `settings` laid over its defaults, as the function
    protocol(module, inputs, *, batch_size, max_images=<its setting>[, return_predictions])."""
    node = with_defaults({name: settings})[name]
    return instantiate(node)


@dataclass
class Samples:
    """Sample predictions for reports and W&B tables (first few of each kind), and the protocols of the
    in-distribution split that could not run, with why (report.md lists them)."""

    vqa: list = field(default_factory=list)  # (row, question, answer, prediction)
    captioning: list = field(default_factory=list)  # (row, references, generated)
    t2i: list = field(default_factory=list)  # (row, caption, generated image (H, W, 3) uint8, judged true)
    unavailable: dict[str, str] = field(default_factory=dict)  # protocol -> what it lacks


PREDICTIONS = ("vqa", "captioning", "t2i")  # protocols whose sample predictions `Samples` keeps


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
    """Clean (or corrupted) protocols on one split; names without the split prefix.

    Each protocol is its config node instantiated (`_target_` + `_partial_`: the function with its
    settings) and called as protocol(module, inputs, batch_size=..., max_images=...); protocols with
    a field in `Samples` also return their predictions.
    """
    dataset = datamodule.datasets[split]
    seed, bs = int(settings["seed"]), int(settings["batch_size"])
    answers = datamodule.info.answers
    # what the data offers protocols beyond its columns (nodes of its data config; docs/design.md)
    counterfactuals = getattr(datamodule, "counterfactuals", None)
    zeroshot_classes = getattr(datamodule, "zeroshot_classes", None)
    t2i_oracle = getattr(datamodule, "t2i_oracle", None)
    cap = lambda n: n if max_images is None else (max_images if n is None else min(n, max_images))
    out: dict[str, float] = {}
    timings = {}
    unavailable: dict[str, str] = {}
    for name in protocols:
        node = settings[name]  # with_defaults gave every protocol its node
        run = instantiate(node)
        inputs = Inputs(
            dataset,
            datamodule.tokenizer,
            module.device,
            corruption,
            seed,
            answers=answers,
            counterfactuals=counterfactuals,
            zeroshot_classes=zeroshot_classes,
            t2i_oracle=t2i_oracle,
        )
        keep = samples is not None and name in PREDICTIONS
        t0 = time.perf_counter()
        try:
            res = run(
                module,
                inputs,
                batch_size=bs,
                max_images=cap(node["max_images"]),
                **({"return_predictions": True} if keep else {}),
            )
        except Unavailable as why:
            unavailable[name] = str(why)
            continue
        if keep:
            res, predictions = res
            setattr(samples, name, predictions)
        out.update(res)
        timings[name] = time.perf_counter() - t0
    if corruption is None:
        log.info("eval %s: %s", split, ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
        for name, reason in unavailable.items():  # docs/metrics.md says what each protocol needs
            log.info("eval %s: %s not run: %s", split, name, reason)
        if samples is not None:
            samples.unavailable.update(unavailable)
    return out


@torch.no_grad()
def evaluate_suite(module, datamodule, settings: dict) -> tuple[dict[str, float], Samples]:
    """Every enabled protocol on the test split (and the hold-out split); flat dict of stable names."""
    settings = with_defaults(settings)
    split, holdout, enabled = settings["split"], settings["holdout_split"], list(settings["protocols"])
    unknown = [p for p in enabled if p not in protocol_names(settings)]
    if unknown:
        raise ValueError(f"unknown evaluation protocol(s) {unknown}; valid: {protocol_names(settings)}")
    clean = [p for p in enabled if p in clean_protocols(settings)]
    samples = Samples()
    metrics = {
        f"{split}/{k}": v for k, v in run_protocols(module, datamodule, split, settings, clean, samples=samples).items()
    }
    if holdout and holdout in datamodule.datasets and holdout != split:
        res = run_protocols(module, datamodule, holdout, settings, clean)
        metrics.update({f"{holdout}/{k}": v for k, v in res.items()})
        metrics.update(holdout_gap(metrics, split, holdout))
    if ROBUSTNESS in enabled:
        r = settings[ROBUSTNESS]
        protocols = [p for p in r["protocols"] if p in clean]
        t0 = time.perf_counter()
        corrupted = {**settings, **{k: {**settings[k], **v} for k, v in (r["settings"] or {}).items()}}
        uncorrupted: dict[str, float] = {}  # the metrics without corruption, for the image-only protocols

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
                uncorrupted.update(res)
            return {**{k: v for k, v in uncorrupted.items() if k.split("/")[0] in image_only}, **res}

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
