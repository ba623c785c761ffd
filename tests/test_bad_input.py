"""Every bad input of tests/bad_input_cases.py is refused by config validation with a message that
names the problem (and the controls are not); a few go through the real CLI for exit code 2, no
traceback and nothing prepared. scripts/bad_inputs.py times them all (docs/bad_inputs.md)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from bad_input_cases import ACCEPTED, CASES
from conftest import ROOT, compose_cfg

from mmbench.config import ConfigError
from mmbench.validation import validate


@pytest.mark.parametrize("overrides,expected,words", CASES, ids=[" ".join(c[0]) or "default" for c in CASES])
def test_config_validation_answers_every_case(overrides, expected, words):
    cfg = compose_cfg(overrides)
    if expected == ACCEPTED:
        validate(cfg)
        return
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    message = str(err.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    assert len(message.splitlines()) <= 1 + len(overrides) + 2, message  # a few lines, not a wall


def test_at_least_sixty_cases():
    assert len([c for c in CASES if c[1] != ACCEPTED]) >= 60


@pytest.mark.parametrize(
    "overrides",
    [
        ["seed=abc"],
        ["trainer.max_epochs=abc"],
        ["model.size=huge"],
        ["encoder/vision=region_feats"],
        ["monitor.metric=val/nope"],
    ],
)
def test_cli_refuses_with_exit_2_and_no_traceback_before_any_data(overrides, tmp_path):
    cache = tmp_path / "cache"
    env = {**os.environ, "MMBENCH_CACHE": str(cache), "WANDB_MODE": "offline"}
    done = subprocess.run(
        [sys.executable, "-m", "mmbench.train", *overrides, f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout
    assert "invalid configuration" in done.stderr
    assert not cache.exists() or not any(cache.iterdir()), "data was prepared before the refusal"


@pytest.mark.parametrize("override,words", [("trainer.nope=1", "nope"), ("model=nope", "vilt")])
def test_hydra_refusals_exit_2(override, words, tmp_path):
    """Hydra refuses an unknown key or option itself (exit code 1 from Hydra); mmbench-train says 2."""
    env = {**os.environ, "MMBENCH_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "offline"}
    done = subprocess.run(
        [sys.executable, "-m", "mmbench.train", override, f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    assert done.returncode == 2 and words in done.stderr, done.stderr[-2000:]
