"""Robustness: the headline metrics as curves over increasing corruption of each modality.

Corruptions (level in [0, 1]; level 0 is the clean input):

* `image_noise`     Gaussian noise of standard deviation `level` on pixels in [-1, 1] (then clipped);
* `patch_dropout`   a fraction `level` of the image's `patch_size` x `patch_size` cells set to grey
                    (0), and the same fraction of region boxes masked out for region inputs;
* `text_dropout`    each word of a text removed with probability `level`;
* `text_typos`      each word of a text given one typo (swap / drop / insert / replace a letter) with
                    probability `level`;

and one modality missing: `blank_image` (all pixels grey, no regions) and `empty_text` ("").

For each corruption and level the caller's `evaluate(corruption)` re-runs the protocols on corrupted
inputs (`mmbench.metrics.common.Inputs` applies it to every image batch and text). A curve's area
is the trapezoid rule over the levels divided by the level range, i.e. the mean metric over the
range (equal to the clean value for a perfectly robust model).

Names: `robustness/<corruption>/<metric>/l<100*level>` (e.g. `robustness/image_noise/vqa/acc/l50`),
`robustness/<corruption>/<metric>/auc`, `robustness/{blank_image,empty_text}/<metric>`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from mmbench.metrics.common import Corruption

if TYPE_CHECKING:
    from mmbench.data.batch import Batch

# --------------------------------------------------------------------------- image corruptions


def image_noise(batch: Batch, generator: torch.Generator, level: float) -> Batch:
    x = batch["pixel_values"]
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
    return {**batch, "pixel_values": (x + level * noise).clamp(-1.0, 1.0)}


def patch_dropout(batch: Batch, generator: torch.Generator, level: float, patch_size: int = 16) -> Batch:
    out = batch.copy()
    x = batch["pixel_values"]  # (B, 3, H, W)
    B, _, H, W = x.shape
    gh, gw = -(-H // patch_size), -(-W // patch_size)
    drop = torch.rand(B, 1, gh, gw, generator=generator) < level  # (B, 1, gh, gw)
    drop = drop.repeat_interleave(patch_size, 2).repeat_interleave(patch_size, 3)[..., :H, :W]  # (B, 1, H, W)
    out["pixel_values"] = x.masked_fill(drop, 0.0)
    if "region_mask" in batch:
        keep = torch.rand(batch["region_mask"].shape, generator=generator) >= level
        out["region_mask"] = batch["region_mask"] & keep
    return out


def blank_image(batch: Batch, generator: torch.Generator, level: float = 1.0) -> Batch:
    out: Batch = {**batch, "pixel_values": torch.zeros_like(batch["pixel_values"])}
    if "region_mask" in batch:
        out["region_mask"] = torch.zeros_like(batch["region_mask"])
    return out


# --------------------------------------------------------------------------- text corruptions


def text_dropout(texts: list[str], rng: np.random.Generator, level: float) -> list[str]:
    out = []
    for t in texts:  # strings, before tokenisation
        words = t.split()
        keep = rng.random(len(words)) >= level
        out.append(" ".join(w for w, k in zip(words, keep) if k))
    return out


_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _typo(word: str, rng: np.random.Generator) -> str:
    i = int(rng.integers(len(word)))
    op = int(rng.integers(4)) if len(word) > 1 else 2 + int(rng.integers(2))
    letter = _LETTERS[int(rng.integers(26))]
    if op == 0:  # swap with the next letter
        i = min(i, len(word) - 2)
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if op == 1:  # drop
        return word[:i] + word[i + 1 :]
    if op == 2:  # insert
        return word[:i] + letter + word[i:]
    return word[:i] + letter + word[i + 1 :]  # replace


def text_typos(texts: list[str], rng: np.random.Generator, level: float) -> list[str]:
    out = []
    for t in texts:
        words = t.split()
        hit = rng.random(len(words)) < level
        out.append(" ".join(_typo(w, rng) if h else w for w, h in zip(words, hit)))
    return out


def empty_text(texts: list[str], rng: np.random.Generator, level: float = 1.0) -> list[str]:
    return [""] * len(texts)


def corruption(name: str, level: float, patch_size: int = 16) -> Corruption:
    """The `Corruption` called `name` at `level`."""
    images: dict[str, Callable[..., Batch]] = {
        "image_noise": image_noise,
        "patch_dropout": partial(patch_dropout, patch_size=patch_size),
        "blank_image": blank_image,
    }
    texts: dict[str, Callable[..., list[str]]] = {
        "text_dropout": text_dropout,
        "text_typos": text_typos,
        "empty_text": empty_text,
    }
    if name in images:
        return Corruption(name, level, images=partial(images[name], level=level))
    if name in texts:
        return Corruption(name, level, texts=partial(texts[name], level=level))
    raise ValueError(f"unknown corruption {name!r}; valid: {sorted(images) + sorted(texts)}")


CURVES = ("image_noise", "patch_dropout", "text_dropout", "text_typos")
MISSING = ("blank_image", "empty_text")


def area_under_curve(levels: Sequence[float], values: Sequence[float]) -> float:
    """Trapezoid area over the levels divided by their range (the mean value over the range)."""
    x, y = np.asarray(levels, float), np.asarray(values, float)
    order = np.argsort(x)
    x, y = x[order], y[order]
    if len(x) < 2 or x[-1] == x[0]:
        return float(y.mean()) if len(y) else float("nan")
    return float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)) / (x[-1] - x[0]))


def level_key(level: float) -> str:
    return f"l{round(100 * level)}"


def robustness(
    evaluate: Callable[[Corruption | None], dict[str, float]],
    *,
    metrics: Sequence[str],
    levels: Sequence[float] = (0.0, 0.5),
    corruptions: Sequence[str] = CURVES,
    missing: Sequence[str] = MISSING,
    patch_size: int = 16,
) -> dict[str, float]:
    """Curves of `metrics` (names returned by `evaluate`) over `levels` of each corruption, their
    areas, and the metrics with one modality missing. `evaluate(None)` is the clean evaluation."""
    levels = sorted({0.0, *map(float, levels)})
    clean = evaluate(None)
    tracked = [m for m in metrics if m in clean]
    out: dict[str, float] = {}
    for name in corruptions:
        curve = {m: [clean[m]] for m in tracked}
        for level in levels[1:]:
            res = evaluate(corruption(name, level, patch_size))
            for m in tracked:
                curve[m].append(res.get(m, float("nan")))
        for m, values in curve.items():
            out.update({f"robustness/{name}/{m}/{level_key(lv)}": v for lv, v in zip(levels, values)})
            out[f"robustness/{name}/{m}/auc"] = area_under_curve(levels, values)
    for name in missing:
        res = evaluate(corruption(name, 1.0, patch_size))
        out.update({f"robustness/{name}/{m}": res.get(m, float("nan")) for m in tracked})
    return out


def plot_robustness(results: dict[str, float], path: str | Path, title: str = "") -> Path | None:
    """One panel per metric: a curve per corruption, missing-modality values as markers at level 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves: dict[str, dict[str, list[tuple[float, float]]]] = {}
    missing: dict[str, dict[str, float]] = {}
    for key, value in results.items():
        parts = key.split("/")
        if "robustness" not in parts:
            continue
        rest = parts[parts.index("robustness") + 1 :]
        name = rest[0]
        if name in MISSING:
            missing.setdefault("/".join(rest[1:]), {})[name] = value
        elif rest[-1].startswith("l") and rest[-1][1:].isdigit():
            curves.setdefault("/".join(rest[1:-1]), {}).setdefault(name, []).append((int(rest[-1][1:]) / 100, value))
    metrics = sorted(set(curves) | set(missing))
    if not metrics:
        return None
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for name, points in sorted(curves.get(metric, {}).items()):
            xs, ys = zip(*sorted(points))
            ax.plot(xs, ys, marker="o", label=name)
        for marker, (name, value) in zip("sx", sorted(missing.get(metric, {}).items())):
            ax.scatter([1.0], [value], marker=marker, s=50, label=name, zorder=3)
        ax.set_title(metric, fontsize=9)
        ax.set_xlabel("corruption level")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
