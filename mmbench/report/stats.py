"""The statistics of `mmbench-report`: mean ± std over seeds, the Student-t interval of the mean,
Welch's t-test, the Holm correction, and which metrics are lower-is-better. scipy is imported
lazily (keeps `mmbench-report --help` fast)."""

from __future__ import annotations

import math
import re
import warnings

import numpy as np

LOWER_IS_BETTER = ("loss", "ppl", "perplexity", "frechet")  # frechet: the t2i protocol's distance to real images


def lower_is_better(metric: str) -> bool:
    return metric.lower().endswith(LOWER_IS_BETTER)


# a path component naming a fraction in [0, 1]: accuracies (acc, acc_color, swap_acc), recalls (i2t_r5),
# retrieval rmean, top-1, Winoground-style scores, baselines, the area under a robustness curve (auc), AUROC,
# the captioning scores in [0, 1] (BLEU-n, METEOR, ROUGE-L, SPICE, exact match; not CIDEr-D, which is x10)
_FRACTION = re.compile(
    r"(acc(_\w+)?|\w+_acc|rmean|top\d+(_\w+)?|[it]2[it]_r\d+|\w*_score|\w*baseline(_\w+)?|auc|auroc"
    r"|bleu\d|meteor|rouge_l|spice|exact_match)"
)


# the t2i protocols' metrics (<split>/t2i/<caption type>/<criterion>, .../oracle/cell): the criteria and summaries of
# mmbench/t2i/criteria.py and the oracle's accuracies are shares of images; `images` (a count), `frechet` and
# `agreement` (a cosine) are not
T2I_PROTOCOLS = {"t2i", "t2i_unguided"}
T2I_FRACTIONS = {"present", "color", "size", "count", "relation", "extra", "faithful", "caption_true", "cell", "scene"}


def unit_range(metric: str) -> tuple[float, float] | None:
    """(0, 1) for a metric whose name says it is a fraction (an accuracy, recall, score, ...), else None.

    A t-interval knows nothing of a metric's range: three seeds at 0.998, 0.999, 1.0 give [0.997, 1.001],
    an accuracy above 1. `table` clips the interval of such metrics to [0, 1] (and its captions say so)."""
    if lower_is_better(metric):
        return None
    parts = metric.lower().split("/")
    if T2I_PROTOCOLS & set(parts[:2]):  # text-to-image: the shares of images meeting a criterion, the oracle's accuracy
        return (0.0, 1.0) if parts[-1] in T2I_FRACTIONS else None
    return (0.0, 1.0) if any(_FRACTION.fullmatch(part) for part in parts) else None


def mean_std(values) -> tuple[float, float]:
    x = np.asarray(values, dtype=float)
    return float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else 0.0


def t_ci(values, level: float = 0.95, bounds: tuple[float, float] | None = None) -> tuple[float, float] | None:
    """Student-t confidence interval of the mean: mean ± t_{(1+level)/2, n-1} * s / sqrt(n), s the
    sample std (ddof=1), clipped to `bounds` (the metric's range, e.g. `unit_range`) when given. None for
    a single value: there is no spread to build an interval from.

    Unlike a bootstrap over 2-3 seeds (which can never leave [min, max]), its width grows as n
    shrinks (t_{0.975, 1} = 12.7, t_{0.975, 2} = 4.30)."""
    x = np.asarray(values, dtype=float)
    n = len(x)
    if n < 2:
        return None
    from scipy import stats  # lazy: keeps `mmbench-report --help` fast

    half = float(stats.t.ppf(0.5 + level / 2.0, n - 1)) * float(x.std(ddof=1)) / math.sqrt(n)
    mean = float(x.mean())
    lo, hi = mean - half, mean + half
    return (max(lo, bounds[0]), min(hi, bounds[1])) if bounds else (lo, hi)


def welch_p(a, b) -> float | None:
    """Two-sided p-value of Welch's t-test (unequal variances) of mean(a) == mean(b).

    None when the test is undefined: fewer than 2 values on either side (no variance estimate), or
    every value equal within each side (the standard error is 0; t is 0/0 or x/0)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or len(b) < 2 or (np.ptp(a) == 0 and np.ptp(b) == 0):
        return None
    from scipy import stats  # lazy: keeps `mmbench-report --help` fast

    with warnings.catch_warnings():
        if np.ptp(a) == 0 or np.ptp(b) == 0:  # a constant side: scipy's "precision loss" warning is moot
            warnings.filterwarnings("ignore", "Precision loss", RuntimeWarning)
        return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def holm(pvalues) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values, in the input order: the i-th smallest p (1-based) times
    (m - i + 1), made non-decreasing in that order and capped at 1."""
    p = np.asarray(pvalues, dtype=float)
    m = len(p)
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate(p[order] * (m - np.arange(m)))  # (m,) in ascending-p order
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted
