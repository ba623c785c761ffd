"""The tail every run shares, training (`pipeline`) or evaluation of a checkpoint (`evaluate`).

    metrics, comp, eval_s = evaluate_and_publish(module, dm, settings, out_dir, metrics=..., ...)
    close_wandb(completed=True)

One function runs the evaluation suite on the loaded weights, adds the blind VQA baselines of the
test split, measures complexity and writes report.md / the loggers' tables, so a trained run and a
re-evaluated checkpoint report the same things the same way.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)


def evaluate_and_publish(
    module,
    datamodule,
    settings: dict,
    out_dir: Path,
    *,
    metrics: dict[str, float],
    loggers,
    step: int,
    title: str,
    info: dict,
    train_seconds: float | None = None,
    samples_seen: int = 0,
    evaluate: bool = True,
    publish: bool = True,
) -> tuple[dict[str, float], dict, float | None]:
    """Suite (when `evaluate`), baselines, complexity, report (when `evaluate` and `publish`).

    `metrics` are the run's own numbers so far (e.g. trainer.test's); `settings` is the `eval` node
    as a plain dict. Returns (all metrics, sorted; complexity; seconds of the suite or None).
    """
    from mmbench.metrics.complexity import complexity

    metrics = dict(metrics)
    eval_seconds = None
    samples = None
    if evaluate:
        from mmbench.metrics.suite import evaluate_suite

        t0 = time.time()
        evaluation, samples = evaluate_suite(module, datamodule, settings)
        eval_seconds = time.time() - t0
        log.info("evaluation suite: %.1f s", eval_seconds)
        metrics.update(evaluation)
    if settings.get("split", "test") == "test":  # the baselines are those of the test split
        metrics.update(datamodule.info.baseline_metrics())
    comp = complexity(module, next(iter(datamodule.test_dataloader())), train_seconds, samples_seen)
    metrics = dict(sorted(metrics.items()))
    if publish and eval_seconds is not None:  # the suite ran (`evaluate`)
        from mmbench.metrics.presentation import publish as write_report

        write_report(
            out_dir,
            metrics,
            samples=samples,
            loggers=loggers,
            step=step,
            datamodule=datamodule,
            split=settings.get("split", "test"),
            complexity=comp,
            title=title,
            info={**info, "eval_s": round(eval_seconds, 1)},
            max_samples=int(settings.get("samples", 16)),
        )
    return metrics, comp, eval_seconds


def close_wandb(completed: bool) -> None:
    """Close this process's W&B run, if any, so the next job of a sweep gets its own."""
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish(exit_code=0 if completed else 1)
