"""Adding a part is one Python file and one YAML file (docs/design.md, "How to add ..."): a fusion and an
objective written outside the package, in a user's own module and config directory, train through the
`mmbench-train` CLI with no edit to mmbench, and config validation judges them like the built-in ones.
(A protocol of one's own is tests/test_eval.py::test_a_protocol_of_ones_own_is_a_config_node.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from tests.conftest import ROOT, TINY

PARTS = '''
"""A user's own parts: a fusion and an objective, each written against mmbench's public contracts."""
import torch
from torch import nn

from mmbench.models.outputs import Capabilities, Fused
from mmbench.objectives.base import Objective, ObjectiveOutput


class GatedSum(nn.Module):
    """Joint vector = tanh(W_t t) * sigmoid(W_v v): a joint pooled vector only."""

    capabilities = Capabilities(joint_pooled=True)

    def __init__(self, dim: int, text_dim: int, image_dim: int):
        super().__init__()
        self.text, self.image = nn.Linear(text_dim, dim), nn.Linear(image_dim, dim)

    def forward(self, text, image, causal_text=False):
        pooled = torch.tanh(self.text(text.pooled)) * torch.sigmoid(self.image(image.pooled))  # (B, D)
        return Fused(text_tokens=None, image_tokens=None, pooled=pooled)


class CaptionLength(Objective):
    """Regress the caption's token count from the joint vector (needs a fusion with a pooled vector)."""

    requires = ("joint_pooled",)

    def __init__(self, dim: int, weight: float = 1.0):
        super().__init__(weight)
        self.head = nn.Linear(dim, 1)

    def forward(self, model, batch, text, image, context):
        length = batch["attention_mask"].sum(1).float()  # (B,)
        predicted = self.head(model.fuse(text, image).pooled).squeeze(1)  # (B,)
        loss = nn.functional.mse_loss(predicted, length)
        return ObjectiveOutput(loss, {"abs_error": (predicted - length).abs().mean().detach()})
'''

FUSION_YAML = """\
_target_: my_parts.GatedSum
dim: ${model.dim}
text_dim: ${model.text_dim}
image_dim: ${model.vision_dim}
"""

OBJECTIVE_YAML = """\
caption_length:  # objectives nest under their name: objective=[itc,caption_length] holds both
  _target_: my_parts.CaptionLength
  dim: ${model.dim}
  weight: 0.01
"""


def _train(tmp_path, *overrides):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path / "src"), str(ROOT)]),  # the user's module is importable
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
    }
    args = [*TINY, f"hydra.searchpath=[file://{tmp_path / 'conf'}]", *overrides]
    return subprocess.run(
        [sys.executable, "-m", "mmbench.train", *args], cwd=tmp_path, env=env, capture_output=True, text=True
    )


def test_a_fusion_and_an_objective_of_ones_own_are_one_file_and_one_yaml_each(cache_dir, tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "my_parts.py").write_text(textwrap.dedent(PARTS))
    for group, name, text in (("fusion", "gated_sum", FUSION_YAML), ("objective", "caption_length", OBJECTIVE_YAML)):
        (tmp_path / "conf" / group).mkdir(parents=True)
        (tmp_path / "conf" / group / f"{name}.yaml").write_text(text)

    run_dir = tmp_path / "run"
    res = _train(
        tmp_path,
        "model=concat",
        "fusion=gated_sum",
        "objective=[itc,vqa,caption_length]",
        "eval.protocols=[vqa]",  # the built-in VQA protocol reads the new fusion's joint vector
        f"hydra.run.dir={run_dir}",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["status"] == "completed"
    assert "val/caption_length/abs_error" in record["metrics"]  # the new objective is logged like any other
    assert "test/vqa/acc" in record["metrics"]  # the new fusion serves the built-in VQA head and protocol

    # validation judges the new parts by their declarations: MLM needs text tokens, which GatedSum lacks
    refused = _train(tmp_path, "model=concat", "fusion=gated_sum", "objective=[itc,caption_length,mlm]")
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "objective 'mlm' needs a fusion with text_tokens, which fusion 'GatedSum' does not provide" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_an_objective_yaml_that_does_not_nest_under_its_name_is_refused_with_the_fix(tmp_path):
    (tmp_path / "conf" / "objective").mkdir(parents=True)
    flat = "_target_: mmbench.objectives.vqa.VQA\ndim: ${model.dim}\n"  # forgot the 'mine:' level
    (tmp_path / "conf" / "objective" / "mine.yaml").write_text(flat)
    res = _train(tmp_path, "objective=[itc,mine]")
    assert res.returncode == 2, res.stderr[-2000:]
    assert "an objective YAML nests its settings under its name" in res.stderr and "Traceback" not in res.stderr
