"""Hydra override strings (`model=vilt`, `+data.x=1`, `~logger`): pure helpers, no Hydra import.

`RUN_KEYS` are the overrides that say how to run, not what a run computes: the sweep's directory name, the
run-directory identity (mmbench/rundir.py), the W&B run name and the report's groups all leave them out.
"""

from __future__ import annotations

from collections.abc import Iterable

# overrides that say how to run a sweep, not what a job is
RUN_KEYS = ("sweep_name", "resume", "torch_threads")


def override_key(override: str) -> str:
    """The key an override sets: `+data.x=1` -> `data.x`, `~logger` -> `logger`."""
    return override.split("=", 1)[0].lstrip("+~")


def override_values(overrides: Iterable) -> dict[str, str]:
    """{key: value as written} of the overrides that set a value (`~logger`, which deletes, is left out)."""
    out = {}
    for item in overrides or []:
        item = str(item)
        if "=" in item:
            key, value = item.split("=", 1)
            out[key.lstrip("+~")] = value
    return out
