"""LLaVA's two-stage recipe as two named experiments chained by a run's checkpoint: stage 1 trains the
projector alone (vision encoder and LM frozen), stage 2 starts from every tensor of stage 1 and tunes the
projector and the LM (vision still frozen) on captions + generated answers; stage 2 refuses to start
without a stage-1 run."""

from __future__ import annotations

import pytest
import torch

from mmbench.builder import build_datamodule, build_module
from mmbench.config import ConfigError
from mmbench.pipeline import run
from mmbench.validation import validate
from tests.conftest import TINY, compose_cfg

TINY_PARTS = [o for o in TINY if not o.startswith("objective.")]


def _trainable(module) -> set[str]:
    return {n.split(".")[0] for n, p in module.model.named_parameters() if p.requires_grad}


def test_llava_stage_two_starts_from_stage_one_and_trains_what_llava_trains(cache_dir, tmp_path):
    stage1 = compose_cfg(["experiment=llava_stage1", "hydra.mode=RUN", *TINY_PARTS], tmp_path / "stage1")
    dm = build_datamodule(stage1)
    assert _trainable(build_module(stage1, dm.info)) == {"fusion"}  # the projector alone
    assert run(stage1)["status"] == "completed"

    stage2 = compose_cfg(
        ["experiment=llava_stage2", "hydra.mode=RUN", *TINY_PARTS, f"model.init_from={tmp_path / 'stage1'}"],
        tmp_path / "stage2",
    )
    validate(stage2)
    module = build_module(stage2, dm.info)
    assert _trainable(module) == {"fusion", "language_model"}  # LLaVA stage 2: the vision encoder stays frozen
    ckpt = torch.load(tmp_path / "stage1" / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    theirs = {k[len("model.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    ours = module.model.state_dict()
    assert set(ours) == set(theirs)  # the same model: every tensor comes from stage 1
    for key, value in theirs.items():
        assert torch.equal(ours[key], value), key
    record = run(stage2)
    assert record["status"] == "completed" and "test/vqa_generative/acc" in record["metrics"]


def test_llava_stage_two_without_a_stage_one_run_is_refused():
    with pytest.raises(ConfigError, match="later training stage"):
        validate(compose_cfg(["experiment=llava_stage2"]))
    validate(compose_cfg(["experiment=llava_stage1"]))
