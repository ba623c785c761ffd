"""Range checks of a part's numeric settings, written once for its constructor and for config validation.

A part (an objective, a fusion's Q-Former, ...) declares what is wrong with its constructor settings in a
classmethod `setting_problems(**settings) -> list[str]` built from `number_problem`; its constructor raises
them (`raise_problems`) and mmbench/validation.py reports them, prefixed with the config key, before any
data is read. One rule, two callers: the two cannot disagree. Each problem reads `name=value: what would
work`, e.g. "mask_prob=0: must be a fraction of tokens in (0, 1]".
"""

from __future__ import annotations

import inspect
import math


def as_number(value) -> float | None:
    """`value` as a float, None when it is not a number (a bool, a string that does not parse, None)."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if not math.isnan(number) else None


def number_problem(
    name: str,
    value,
    meaning: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
) -> str | None:
    """Why `value` of setting `name` is not a number in [low, high] (an end excluded when `*_open`; an
    integer when `integer`), or None when it is. `meaning` says what would work ("a probability in [0, 1)")."""
    number = as_number(value)
    if number is None or (integer and number != int(number)):
        return f"{name}={value} is not {'an integer' if integer else 'a number'}; it must be {meaning}"
    below = low is not None and (number < low or (low_open and number == low))
    above = high is not None and (number > high or (high_open and number == high))
    return f"{name}={value}: must be {meaning}" if below or above else None


def problems_of(*checks: str | None) -> list[str]:
    """The problems among `checks` (the `number_problem` results that are not None)."""
    return [c for c in checks if c]


def raise_problems(owner: str, problems: list[str]) -> None:
    """The constructor's side of a `setting_problems` check: one ValueError naming every problem."""
    if problems:
        raise ValueError(f"{owner}: " + "; ".join(problems))


def flag_problems(owner, settings: dict) -> list[str]:
    """Why a setting that `owner` (a class, or a function) declares as `name: bool = <default>` is not true or false,
    for each such setting in `settings`: a constructor's `bool(value)` would read "maybe", "no" or 0.5 as on.
    Written once for every part and objective, from the signature, so a new flag needs no check of its own."""
    try:
        parameters = inspect.signature(owner).parameters
    except (TypeError, ValueError):  # no signature to read
        return []
    return [
        f"{name}={value}: must be true or false"
        for name, value in settings.items()
        if name in parameters
        and isinstance(parameters[name].default, bool)
        and parameters[name].annotation in (bool, "bool")
        and not isinstance(value, bool)
    ]
