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
        ["trainer.gradient_clip_val=-1"],  # issue 33: Lightning trains with it (and clips nothing)
        ["data.batch_size=100000"],  # issue 33: the OOM killer, after two minutes of data preparation
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


def _mlm():
    from mmbench.objectives.mlm import MLM

    return MLM(dim=8, vocab_size=16, mask_id=4, special_ids=[0], mask_prob=0)


def _itc():
    from mmbench.objectives.itc import ITC

    return ITC(text_dim=8, image_dim=8, temperature_init=1.0)


def _qformer():
    from mmbench.models.fusion.qformer import QFormer

    return QFormer(dim=8, depth=0, heads=2)


def _schedule():
    import torch

    from mmbench.module import warmup_cosine

    return warmup_cosine(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1), 10, warmup_ratio=1.5)


@pytest.mark.parametrize(
    "overrides,build,owner",
    [
        (["objective.mlm.mask_prob=0"], _mlm, "MLM: "),
        (["objective.itc.temperature_init=1.0"], _itc, "ITC: "),
        (["model=blip2", "model.fusion_depth=0"], _qformer, "QFormer: "),
        (["scheduler.warmup_ratio=1.5"], _schedule, ""),
    ],
)
def test_the_constructor_raises_what_validation_reports(overrides, build, owner):
    """One rule, two callers (mmbench/checks.py): the problem validation reports from the config is the one the
    constructor raises when built with the same value."""
    with pytest.raises(ConfigError) as reported:
        validate(compose_cfg(overrides))
    with pytest.raises(ValueError) as raised:
        build()
    assert str(raised.value).startswith(owner)
    problem = str(raised.value).removeprefix(owner)
    assert problem and problem in str(reported.value), (problem, str(reported.value))
