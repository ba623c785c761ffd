"""Where evaluation results go: report.md + robustness.png in the run directory, the run's loggers
(CSV log, W&B summary, plot and a table of sample predictions with their images)."""

from __future__ import annotations

import logging
from pathlib import Path

from mmbench.metrics.robustness import plot_robustness
from mmbench.metrics.suite import Samples

log = logging.getLogger(__name__)

PLOT = "robustness.png"
T2I_GRID = "t2i_samples.png"  # the images the t2i protocol generated, with their captions


HEADLINE = (
    "retrieval/i2t_r1",
    "retrieval/i2t_r5",
    "retrieval/i2t_r10",
    "retrieval/t2i_r1",
    "retrieval/t2i_r5",
    "retrieval/t2i_r10",
    "retrieval/rmean",
    "vqa/acc",
    "vqa/majority_baseline",
    "vqa/question_prior_baseline",
    "diagnostics/match_acc",
    "diagnostics/text_score",
    "diagnostics/image_score",
    "diagnostics/group_score",
    "captioning/bleu4",
    "captioning/meteor",
    "captioning/rouge_l",
    "captioning/cider",
    "captioning/spice",
    "captioning/exact_match",
    "classification/acc",
    "classification/auroc",
    "zeroshot/top1",
    "zeroshot/top1_single",
)


def headline(metrics: dict[str, float]) -> dict[str, float]:
    """The few numbers a reader looks for first, per evaluated split, plus the hold-out gaps."""
    out = {}
    for split in sorted({k.split("/", 1)[0] for k in metrics if k.startswith("test")}):
        out.update({f"{split}/{n}": metrics[f"{split}/{n}"] for n in HEADLINE if f"{split}/{n}" in metrics})
    out.update(
        {
            k: v
            for k, v in metrics.items()
            if "/holdout_gap/" in k and k.rsplit("/", 1)[-1] in {n.rsplit("/", 1)[-1] for n in HEADLINE}
        }
    )
    return out


def robustness_table(metrics: dict[str, float]) -> tuple[list[str], dict[str, dict[str, float]]]:
    """Rows: corruption (AUC) or missing modality; columns: tracked metric."""
    rows: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        if "/robustness/" not in key:
            continue
        rest = key.split("/robustness/", 1)[1].split("/")
        if rest[-1] == "auc":
            rows.setdefault(f"{rest[0]} (auc)", {})["/".join(rest[1:-1])] = value
        elif rest[0] in ("blank_image", "empty_text"):
            rows.setdefault(rest[0], {})["/".join(rest[1:])] = value
    columns = sorted({c for r in rows.values() for c in r})
    return columns, rows


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def write_report(
    out_dir: str | Path,
    metrics: dict[str, float],
    complexity: dict | None = None,
    samples: Samples | None = None,
    title: str = "mmbench run",
    info: dict | None = None,
    plot: Path | None = None,
    max_samples: int = 8,
) -> Path:
    """A short report.md: run info, headline metrics, robustness table + plot, complexity, samples;
    every metric in a collapsed table at the end."""
    out_dir = Path(out_dir)
    lines = [f"# {title}", ""]
    for k, v in (info or {}).items():
        lines.append(f"- **{k}**: {v}")
    lines += ["", "## Metrics", "", "| metric | value |", "|---|---|"]
    lines += [f"| `{k}` | {_fmt(v)} |" for k, v in headline(metrics).items()]
    columns, rows = robustness_table(metrics)
    if rows:
        lines += [
            "",
            "## Robustness",
            "",
            "| | " + " | ".join(f"`{c}`" for c in columns) + " |",
            "|---" * (len(columns) + 1) + "|",
        ]
        lines += [f"| {name} | " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |" for name, r in rows.items()]
    if plot is not None:
        lines += ["", f"![robustness]({Path(plot).name})"]
    if complexity:
        comp = {k: v for k, v in complexity.items() if not isinstance(v, dict)}
        lines += [
            "",
            "## Complexity",
            "",
            "| " + " | ".join(comp) + " |",
            "|---" * len(comp) + "|",
            "| " + " | ".join(_fmt(v) for v in comp.values()) + " |",
        ]
        for k, v in complexity.items():
            if isinstance(v, dict):
                lines += ["", f"{k}: " + ", ".join(f"{kk} {_fmt(vv)}" for kk, vv in v.items())]
    if samples is not None and samples.vqa:
        lines += [
            "",
            "## Sample VQA predictions",
            "",
            "| image | question | answer | prediction |",
            "|---|---|---|---|",
        ]
        lines += [f"| {r} | {q} | {a} | {p} |" for r, q, a, p in samples.vqa[:max_samples]]
    if samples is not None and samples.captioning:
        lines += ["", "## Sample captions", "", "| image | reference | generated |", "|---|---|---|"]
        lines += [f"| {r} | {refs[0]} | {g} |" for r, refs, g in samples.captioning[:max_samples]]
    if samples is not None and samples.t2i:
        lines += ["", "## Generated images", "", f"![generated images]({T2I_GRID})", ""]
        lines += ["| # | image row | caption | oracle: caption true |", "|---|---|---|---|"]
        lines += [f"| {i} | {r} | {c} | {ok} |" for i, (r, c, _, ok) in enumerate(samples.t2i)]
    if samples is not None and samples.unavailable:
        lines += ["", "## Protocols not run", "", "| protocol | why |", "|---|---|"]
        lines += [f"| {name} | {why} |" for name, why in samples.unavailable.items()]
    lines += [
        "",
        "<details><summary>All metrics (names: docs/metrics.md)</summary>",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    lines += [f"| `{k}` | {_fmt(v)} |" for k, v in metrics.items()]
    lines += ["", "</details>"]
    path = out_dir / "report.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def make_plot(out_dir: str | Path, metrics: dict[str, float], title: str = "") -> Path | None:
    return plot_robustness(metrics, Path(out_dir) / PLOT, title=title)


def t2i_grid(out_dir: str | Path, generated: list, columns: int = 4) -> Path | None:
    """The t2i protocol's images as one PNG grid, each titled with its caption (green: the oracle judged the
    caption true of the image, red: not); None when nothing was generated."""
    if not generated:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = -(-len(generated) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.9 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (_, caption, image, ok) in zip(axes.flat, generated, strict=False):
        ax.imshow(image, interpolation="nearest")
        ax.set_title(caption, fontsize=7, wrap=True, color="green" if ok else "red")
    path = Path(out_dir) / T2I_GRID
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def log_to_loggers(
    loggers,
    metrics: dict[str, float],
    step: int = 0,
    samples: Samples | None = None,
    datamodule=None,
    split: str = "test",
    plot: Path | None = None,
    max_samples: int = 16,
) -> None:
    """Metrics to every Lightning logger (CSV row, W&B history + summary); on W&B also the plot and a
    table of sample predictions with their images."""
    for lg in loggers or ():
        lg.log_metrics(metrics, step=step)
        lg.save()
        if type(lg).__name__ != "WandbLogger":
            continue
        try:
            _log_wandb(lg, metrics, samples, datamodule, split, plot, max_samples)
        except Exception as err:  # presentation must never fail a finished evaluation
            log.warning("W&B presentation failed: %s", err)


def _log_wandb(lg, metrics, samples, datamodule, split, plot, max_samples) -> None:
    import wandb

    lg.experiment.summary.update(metrics)
    if plot is not None and Path(plot).exists():
        lg.log_image(key="eval/robustness", images=[str(plot)])
    if samples is not None and samples.t2i:
        lg.log_image(
            key="eval/t2i_samples",
            images=[image for _, _, image, _ in samples.t2i],
            caption=[f"{caption} ({'true' if ok else 'false'})" for _, caption, _, ok in samples.t2i],
        )
    if samples is None or datamodule is None:
        return
    images = datamodule.datasets[split].images
    rows = []
    for r, q, a, p in samples.vqa[:max_samples]:
        rows.append(["vqa", wandb.Image(images[r]), q, str(a), p])
    for r, refs, g in samples.captioning[:max_samples]:
        rows.append(["captioning", wandb.Image(images[r]), "", " | ".join(refs), g])
    if rows:
        lg.log_table(key="eval/samples", columns=["task", "image", "question", "reference", "prediction"], data=rows)


LOGGED_DURING_TRAINING = ("train/", "val/")


def publish(
    out_dir: str | Path,
    metrics: dict[str, float],
    *,
    samples: Samples | None = None,
    loggers=(),
    step: int = 0,
    datamodule=None,
    complexity: dict | None = None,
    title: str = "mmbench run",
    info: dict | None = None,
    split: str = "test",
    max_samples: int = 16,
) -> Path:
    """Plot, report.md, and the loggers (CSV, W&B) in one call; returns the report's path."""
    plot = make_plot(out_dir, metrics, title=title)
    t2i_grid(out_dir, samples.t2i if samples is not None else [])
    report = write_report(
        out_dir, metrics, complexity, samples, title=title, info=info, plot=plot, max_samples=min(max_samples, 8)
    )
    # train/ and val/ values are already in the loggers' history (CSV rows; W&B's summary keeps the last
    # value): logging them again at the final step would add a CSV row that repeats them without an epoch
    final = {k: v for k, v in metrics.items() if not k.startswith(LOGGED_DURING_TRAINING)}
    log_to_loggers(
        loggers,
        final,
        step=step,
        samples=samples,
        datamodule=datamodule,
        split=split,
        plot=plot,
        max_samples=max_samples,
    )
    return report
