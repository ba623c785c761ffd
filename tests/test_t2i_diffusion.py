"""objective=t2i_diffusion (mmbench/objectives/t2i_diffusion.py): the pieces against their formulas (noising, one
DDIM step, guidance, caption dropout), the sampler's contracts on a real tiny model (no leakage across the batch,
padding, seeds), and a tiny run through the CLI, stopped and resumed."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from mmbench.builder import build_module
from mmbench.config import ConfigError
from mmbench.data.collate import pixel_values
from mmbench.data.datamodule import DataInfo
from mmbench.models.outputs import Features
from mmbench.objectives.base import CaptionGenerator, ImageGenerator
from mmbench.objectives.context import StepContext
from mmbench.objectives.t2i_diffusion import T2IDiffusion, to_uint8
from mmbench.validation import validate
from tests.conftest import TINY, cli, compose_cfg, stopped_then_resumed

T, D = 1000, 8
#: a denoiser small enough for a 2-core machine: two levels of 8 and 16 channels, cross-attention at the second
SMALL = {"channels": [8, 16], "attention": [False, True], "heads": 2, "norm_groups": 4}
SMALL_ARGS = [
    "objective=[t2i_diffusion]",
    *[o for o in TINY if not o.startswith("objective.")],
    "data.image_size=24",  # the smallest Shapes image of a 3x3 grid (8-px cells)
    "data.batch_size=8",
    "model=concat",  # a 2-layer text transformer (cross-attended to) and a conv grid encoder (any image size)
    "objective.t2i_diffusion.channels=[8,16]",
    "objective.t2i_diffusion.attention=[false,true]",
    "objective.t2i_diffusion.heads=2",
    "objective.t2i_diffusion.norm_groups=4",
    "objective.t2i_diffusion.sample_steps=3",
    # the t2i protocols (in the default list: they run for a generator) on 2 test images, 2 DDIM steps
    *[f"eval.{p}.{k}=2" for p in ("t2i", "t2i_unguided") for k in ("max_images", "steps")],
]


def _objective(**settings) -> T2IDiffusion:
    torch.manual_seed(0)
    return T2IDiffusion(**{"text_dim": D, "image_size": 8, **SMALL, **settings})


def _text(B: int = 3, L: int = 5, seed: int = 0) -> Features:
    g = torch.Generator().manual_seed(seed)
    return Features(torch.randn(B, L, D, generator=g), torch.ones(B, L, dtype=torch.bool), torch.zeros(B, D))


# ---- the noise schedule and the DDIM step, by hand


def _cosine_abar(t: float, s: float = 0.008) -> float:
    return math.cos((t + s) / (1 + s) * math.pi / 2) ** 2


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_q_sample_is_the_closed_form_of_the_schedule(schedule):
    if schedule == "linear":  # DDPM: beta linear in t
        betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    elif schedule == "scaled_linear":  # Stable Diffusion: sqrt(beta) linear in t
        betas = torch.linspace(1e-4**0.5, 0.02**0.5, T, dtype=torch.float64) ** 2
    else:  # Nichol & Dhariwal: abar(t) = f(t) / f(0), f = cos^2, each beta capped at 0.999
        betas = torch.tensor([min(1 - _cosine_abar((i + 1) / T) / _cosine_abar(i / T), 0.999) for i in range(T)])
    abar = torch.cumprod(1 - betas, 0)
    objective = _objective(beta_schedule=schedule)
    x0, eps = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    t = torch.tensor([0, 17, 500, 999])
    a = abar[t].float().view(4, 1, 1, 1)
    expected = a.sqrt() * x0 + (1 - a).sqrt() * eps
    torch.testing.assert_close(objective.q_sample(x0, t, eps), expected, atol=1e-5, rtol=1e-5)
    if schedule == "linear":  # the end of the DDPM schedule is (almost) pure noise, its start (almost) the image
        assert abar[-1] < 1e-4 and abar[0] > 0.9998


def test_one_ddim_step_by_the_formula():
    objective = _objective()
    sampler = objective.sampler(10)
    # "trailing" spacing: 10 steps of 100 starting at t = T-1
    assert sampler.timesteps.tolist() == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, T, dtype=torch.float64), 0).float()
    g = torch.Generator().manual_seed(1)
    x, eps = torch.randn(2, 3, 8, 8, generator=g), 0.3 * torch.randn(2, 3, 8, 8, generator=g)
    for t, a_prev in ((499, abar[399]), (99, torch.tensor(1.0))):  # the last step lands on abar = 1
        a_t = abar[t]
        x0 = ((x - (1 - a_t).sqrt() * eps) / a_t.sqrt()).clamp(-1, 1)  # predicted x_0, clipped to the pixel range
        expected = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps  # DDIM (eta = 0), Song et al. eq. 12
        torch.testing.assert_close(sampler.step(eps, t, x, eta=0.0).prev_sample, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sampler.step(eps, 99, x, eta=0.0).prev_sample, x0)  # t=99's x0 from the loop


# ---- guidance and caption dropout, with stand-in denoisers whose outputs the test controls


class FirstTokenDenoiser(nn.Module):
    """eps = the first 3 features of the context's first token, as a per-channel constant; records the rows."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x, t, context, mask):
        self.calls.append((context.detach().clone(), mask.clone()))
        return context[:, 0, :3, None, None].expand_as(x) + 0 * x


def test_guidance_is_the_weighted_difference_of_the_conditional_and_null_predictions():
    objective = _objective(denoiser=FirstTokenDenoiser())
    text = _text()
    cond = objective.condition(text, torch.zeros(3, dtype=torch.bool))
    uncond = objective.condition(text, torch.ones(3, dtype=torch.bool))
    x, t = torch.randn(3, 3, 8, 8), torch.tensor(500)
    eps_c = text.tokens[:, 0, :3, None, None].expand_as(x)
    eps_u = objective.null_token[:3].detach()[None, :, None, None].expand_as(x)
    for w in (0.0, 2.5, 7.5):
        torch.testing.assert_close(objective.guided_noise(x, t, cond, uncond, w), eps_u + w * (eps_c - eps_u))
        assert objective.denoiser.calls[-1][0].shape[0] == 6  # conditional and null rows in one call
    torch.testing.assert_close(objective.guided_noise(x, t, cond, uncond, 1.0), eps_c)
    assert objective.denoiser.calls[-1][0].shape[0] == 3  # w = 1: the conditional rows alone


def test_caption_dropout_replaces_exactly_the_dropped_rows_by_the_null_condition():
    B, p = 4000, 0.1
    objective = _objective(caption_dropout=p, denoiser=FirstTokenDenoiser()).train()
    text = _text(B)
    text.mask[:, 3:] = False  # padded captions
    batch = {"pixel_values": torch.zeros(B, 3, 2, 2)}
    torch.manual_seed(5)
    objective(None, batch, text, text, StepContext())
    torch.manual_seed(5)  # the draws of `forward`, replayed: noise, timesteps, then the dropout
    torch.randn(B, 3, 2, 2), torch.randint(0, T, (B,))
    drop = torch.rand(B) < p
    context, mask = objective.denoiser.calls[-1]
    null = torch.zeros(D)
    null_rows = (context[:, 0] == objective.null_token.detach()).all(1) & (context[:, 1:] == 0).all((1, 2))
    assert torch.equal(null_rows, drop) and abs(drop.float().mean().item() - p) < 0.015
    assert torch.equal(context[~drop], text.tokens[~drop]) and torch.equal(mask[~drop], text.mask[~drop])
    assert torch.equal(mask[drop], (torch.arange(5) == 0).expand(int(drop.sum()), 5))  # only the null token
    assert not torch.equal(objective.null_token.detach(), null)
    objective.eval()  # validation and test: no caption is dropped
    objective(None, batch, text, text, StepContext())
    context, mask = objective.denoiser.calls[-1]
    assert torch.equal(context, text.tokens) and torch.equal(mask, text.mask)


def test_the_loss_is_the_noise_prediction_error():
    objective = _objective(caption_dropout=0.0, denoiser=FirstTokenDenoiser())
    text, x0 = _text(2), torch.randn(2, 3, 4, 4)
    torch.manual_seed(3)
    loss = objective(None, {"pixel_values": x0}, text, text, StepContext()).loss
    torch.manual_seed(3)
    noise = torch.randn(2, 3, 4, 4)
    expected = ((text.tokens[:, 0, :3, None, None] - noise) ** 2).mean()  # the stand-in predicts the first token
    torch.testing.assert_close(loss, expected)


class OracleDenoiser(nn.Module):
    """Knows the clean images x0 (B, C, H, W): predicts exactly what `prediction_type` asks for at (x_t, t)."""

    def __init__(self, x0: torch.Tensor, abar: torch.Tensor, prediction_type: str):
        super().__init__()
        self.x0, self.abar, self.prediction_type = x0, abar, prediction_type

    def forward(self, x, t, context, mask):
        a = self.abar[t].view(-1, 1, 1, 1)
        x0 = self.x0.repeat(x.shape[0] // self.x0.shape[0], 1, 1, 1)  # guidance: conditional and null rows
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()  # the noise that took x0 to x_t
        if self.prediction_type == "sample":
            return x0
        if self.prediction_type == "v_prediction":
            return a.sqrt() * eps - (1 - a).sqrt() * x0
        return eps


def _cosine_schedule_abar() -> torch.Tensor:
    betas = torch.tensor([min(1 - _cosine_abar((i + 1) / T) / _cosine_abar(i / T), 0.999) for i in range(T)])
    return torch.cumprod(1 - betas.double(), 0).float()


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_each_prediction_type_learns_its_target_and_an_exact_prediction_samples_the_image(prediction_type):
    """The loss is the MSE to eps, x_0 or v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 by the formula; and a
    denoiser that predicts its target exactly makes DDIM (cosine schedule, abar_T ~ 0) land on the clean images
    from pure noise, with guidance or without: the sampler reads each prediction by its type."""
    abar = _cosine_schedule_abar()
    x0 = torch.rand(2, 3, 8, 8) * 1.6 - 0.8  # inside the pixel range: clipping changes nothing
    objective = _objective(beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type, caption_dropout=0.0)
    objective.denoiser = OracleDenoiser(x0, abar, prediction_type)
    torch.manual_seed(3)
    loss = objective(None, {"pixel_values": x0}, _text(2), _text(2), StepContext()).loss
    assert loss.item() < 1e-9  # the exact prediction of its own target
    torch.manual_seed(3)
    noise, t = torch.randn_like(x0), torch.randint(0, T, (2,))
    a = abar[t].view(-1, 1, 1, 1)
    target = {"epsilon": noise, "sample": x0, "v_prediction": a.sqrt() * noise - (1 - a).sqrt() * x0}
    torch.testing.assert_close(objective.target(x0, noise, t), target[prediction_type], atol=1e-5, rtol=1e-5)
    for guidance in (1.0, 3.0):
        images = objective.sample(_text(2), generator=torch.Generator().manual_seed(0), guidance=guidance, steps=10)
        torch.testing.assert_close(images, x0, atol=1e-3, rtol=1e-3)


def test_to_uint8_inverts_the_pixel_normalisation_and_is_an_image_generator():
    images = np.random.default_rng(0).integers(0, 256, (2, 5, 6, 3), dtype=np.uint8)
    assert np.array_equal(to_uint8(pixel_values(list(images))).numpy(), images)
    objective = _objective()
    assert isinstance(objective, ImageGenerator) and not isinstance(objective, CaptionGenerator)


# ---- the sampler on a real tiny model built as the CLI builds it


@pytest.fixture(scope="module")
def module():
    cfg = compose_cfg(SMALL_ARGS)
    torch.manual_seed(0)
    return build_module(cfg, DataInfo.of_vocab(64, max_text_len=16, image_size=24)).eval()


def _captions(seed: int = 0, B: int = 3, L: int = 6) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(7, 64, (B, L), generator=g)
    ids[:, 0], ids[:, -1] = 2, 3  # [CLS] ... [SEP] (the trained tokenizer's ids)
    return {"input_ids": ids, "attention_mask": torch.ones(B, L, dtype=torch.long)}


def _generate(module, batch, seed=0, **kw):
    objective = module.objectives["t2i_diffusion"]
    return objective.generate_images(module.model, batch, generator=torch.Generator().manual_seed(seed), **kw)


def test_no_caption_changes_another_captions_image(module):
    batch = _captions()
    reference = _generate(module, batch)
    changed = {k: v.clone() for k, v in batch.items()}
    changed["input_ids"][1, 1:-1] = torch.randint(7, 64, (4,), generator=torch.Generator().manual_seed(9))
    images = _generate(module, changed)
    for i in (0, 2):
        torch.testing.assert_close(images[i], reference[i], atol=1e-5, rtol=0)
    assert (images[1] - reference[1]).abs().max() > 1e-3  # and the changed caption's own image does change


def test_padding_a_caption_never_changes_its_image(module):
    batch = _captions()
    padded = {
        "input_ids": torch.cat([batch["input_ids"], torch.zeros(3, 5, dtype=torch.long)], 1),  # [PAD] = 0
        "attention_mask": torch.cat([batch["attention_mask"], torch.zeros(3, 5, dtype=torch.long)], 1),
    }
    torch.testing.assert_close(_generate(module, padded), _generate(module, batch), atol=1e-5, rtol=0)


def test_same_seed_same_images_and_per_caption_generators_do_not_depend_on_the_batch(module):
    batch = _captions()
    first = _generate(module, batch, seed=4, guidance=2.0, steps=3)
    assert torch.equal(first, _generate(module, batch, seed=4, guidance=2.0, steps=3))
    assert not torch.equal(first, _generate(module, batch, seed=5, guidance=2.0, steps=3))
    assert first.shape == (3, 3, 24, 24) and first.min() >= -1 and first.max() <= 1
    objective = module.objectives["t2i_diffusion"]
    text = module.model.encode_text(batch["input_ids"], batch["attention_mask"])
    noisy = [objective.sample(text, generator=torch.Generator().manual_seed(4), steps=3, eta=1.0) for _ in range(2)]
    assert torch.equal(noisy[0], noisy[1]) and not torch.equal(noisy[0], first)  # eta > 0 draws from the same seed
    # one generator per caption: each image depends on its own seed, not on the captions beside it
    seeds = [torch.Generator().manual_seed(10 + i) for i in range(3)]
    together = objective.generate_images(module.model, batch, generator=seeds, steps=3)
    alone = objective.generate_images(
        module.model,
        {k: v[2:] for k, v in batch.items()},
        generator=[torch.Generator().manual_seed(12)],
        steps=3,
    )
    torch.testing.assert_close(together[2:], alone, atol=1e-5, rtol=0)


# ---- config validation, and tiny runs through the CLI


def test_validation_accepts_the_objective_on_every_text_encoder_and_refuses_bad_settings():
    for model in ("vilt", "clip", "llava", "concat"):
        validate(compose_cfg(["objective=[t2i_diffusion]", f"model={model}"]))
    for override, words in (
        ("objective.t2i_diffusion.caption_dropout=1", "objective.t2i_diffusion.caption_dropout=1: must be"),
        ("objective.t2i_diffusion.sample_steps=2000", "sample_steps=2000"),
        ("objective.t2i_diffusion.guidance=-1", "guidance=-1"),
        ("objective.t2i_diffusion.beta_schedule=cosine", "squaredcos_cap_v2"),
        ("objective.t2i_diffusion.channels=[8,8,8,8,8,8]", "attention=[False, False, True]"),
        ("objective.t2i_diffusion.prediction_type=eps", "one of epsilon, sample, v_prediction"),
        ("objective.t2i_diffusion.norm_groups=5", "norm_groups=5"),
    ):
        with pytest.raises(ConfigError, match=None) as err:
            validate(compose_cfg(["objective=[t2i_diffusion]", override]))
        assert words in str(err.value), str(err.value)
    # 6 levels halve a 48-px image 5 times: 48 is not divisible by 32
    six = ["objective.t2i_diffusion.channels=[8,8,8,8,8,8]", "objective.t2i_diffusion.attention=[0,0,0,0,0,1]"]
    with pytest.raises(ConfigError, match="divisible by 32, but it is 48"):
        validate(compose_cfg(["objective=[t2i_diffusion]", *six]))


def test_experiment_t2i_diffusion_trains_and_scores_with_and_without_guidance_in_one_command(cache_dir, tmp_path):
    args = [a for a in SMALL_ARGS if not a.startswith(("objective=", "model="))]  # the experiment's
    res = cli(["experiment=t2i_diffusion", *args], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    (path,) = (tmp_path / "outputs" / "runs").glob("*/metrics.json")
    record = json.loads(path.read_text())
    assert record["status"] == "completed"
    loss = record["metrics"]["test/t2i_diffusion/loss"]
    assert math.isfinite(loss) and 0 < loss < 10
    for name in ("t2i", "t2i_unguided"):  # 4 captions of each of 2 test images, read back by the oracle
        assert record["metrics"][f"test/{name}/overall/images"] == 8
    assert (path.parent / "t2i_samples.png").exists()


def test_a_run_stopped_mid_epoch_resumes_to_the_uninterrupted_metrics(cache_dir, monkeypatch, tmp_path):
    from mmbench.pipeline import run

    reference = run(compose_cfg(SMALL_ARGS, tmp_path / "uninterrupted"))
    resumed = stopped_then_resumed(SMALL_ARGS, tmp_path / "stopped", 2, monkeypatch)
    assert resumed["status"] == "completed"
    assert resumed["metrics"] == reference["metrics"]  # ==: bit-identical on CPU
