"""Text-to-image by diffusion: Stable Diffusion's recipe (Rombach et al., 2022) at Shapes' scale, in pixel space.

A U-Net denoiser eps_theta(x_t, t, c) predicts the noise added to an image, conditioned on the caption's token
features c (the model's text encoder, `encode_text`: the step's shared `text`) by cross-attention, and on the
timestep t by a sinusoidal embedding and an MLP. Training (DDPM, Ho et al., 2020):

    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps,    eps ~ N(0, I),  t ~ U{0, ..., T-1}
    loss = || eps - eps_theta(x_t, t, c) ||^2

with x_0 the batch's `pixel_values` ((B, 3, H, W) in [-1, 1], the data's normalisation x / 127.5 - 1). With
`prediction_type` the denoiser predicts x_0 ("sample") or v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0
("v_prediction", Salimans & Ho, 2022) instead, and the loss is the MSE to that target; the DDIM sampler reads the
prediction by the same type. Guidance is the same weighted difference on any of the three (each is affine in the
others at a given x_t and t, with the same coefficients).
Caption dropout: in training each caption is replaced by the null condition with probability `caption_dropout`,
so the same network is also the unconditional model eps_theta(x_t, t, null). The null condition is one learned
token (`null_token`, in the text features' space) at position 0, every other position masked out; cross-
attention reads only real (unmasked) positions, so a caption's padding never changes its images.

Sampling is DDIM (Song et al., 2021; eta = 0: deterministic given the initial noise) with classifier-free
guidance (Ho & Salimans, 2022):

    eps = eps_uncond + w * (eps_cond - eps_uncond)      (w = `guidance`; 1: the conditional model alone)

`generate_images` (the `ImageGenerator` capability, objectives/base.py) returns images in the data's
normalisation; `to_uint8` turns them into (B, H, W, 3) uint8 pictures (what the Shapes oracle reads, and grids).

The schedules, the noising and the DDIM update are diffusers' (`DDPMScheduler.add_noise`, `DDIMScheduler.step`),
and so is the denoiser (`UNet2DConditionModel`, at a few tens of thousands of parameters here): what is ours is
the conditioning, the dropout, the guidance and the wiring to the three calls. tests/test_t2i_diffusion.py checks
the library's pieces against their formulas.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.schedulers.scheduling_ddim import DDIMScheduler
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from mmbench.checks import number_problem, problems_of, raise_problems
from mmbench.models.outputs import Features
from mmbench.objectives.base import CaptionConditioned, ObjectiveOutput

if TYPE_CHECKING:
    from mmbench.data.batch import Batch
    from mmbench.models.model import MultimodalModel
    from mmbench.objectives.context import StepContext

#: diffusers' beta schedules: DDPM's linear one, Stable Diffusion's (linear in sqrt(beta)), the cosine one of
#: Nichol & Dhariwal (2021) (beta_start / beta_end unused)
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
#: how DDIM spaces its steps over [0, T): "trailing" starts at t = T-1 (Lin et al., 2024, "Common Diffusion Noise
#: Schedules and Sample Steps are Flawed"), "leading" (Stable Diffusion's) at T - T/steps, "linspace" between
TIMESTEP_SPACINGS = ("trailing", "leading", "linspace")
#: what the denoiser predicts (diffusers' names): the noise eps (DDPM), the clean image x_0 ("sample"), or the
#: velocity v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 (Salimans & Ho, 2022; Stable Diffusion 2)
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in the `pixel_values` normalisation ([-1, 1]) -> (B, H, W, 3) uint8, the inverse of the
    collator's x / 127.5 - 1 (mmbench/data/collate.py `pixel_values`); values outside [-1, 1] are clipped."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)


class UNetDenoiser(nn.Module):
    """eps_theta(x_t, t, context): diffusers' `UNet2DConditionModel` over the pixels, cross-attending to text tokens.

    `channels[i]` is the width of resolution level i (each level after the first halves the image); levels with
    `attention[i]` have a transformer block (self-attention, cross-attention to the text, feed-forward) after
    each of their `layers_per_block` residual blocks, and the middle block always has one. `heads` attention
    heads (diffusers names this `attention_head_dim`), GroupNorm in `norm_groups` groups: per image, so no
    image's output depends on another's in the batch."""

    def __init__(
        self,
        image_size: int,
        text_dim: int,
        channels: Sequence[int] = (32, 64, 64),
        attention: Sequence[bool] = (False, True, True),
        layers_per_block: int = 1,
        heads: int = 4,
        norm_groups: int = 8,
        in_channels: int = 3,
    ):
        super().__init__()
        self.unet = UNet2DConditionModel(
            sample_size=image_size,
            in_channels=in_channels,
            out_channels=in_channels,
            block_out_channels=tuple(channels),
            down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention),
            up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
            layers_per_block=layers_per_block,
            cross_attention_dim=text_dim,
            attention_head_dim=heads,
            norm_num_groups=norm_groups,
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) noisy images, t (B,) timesteps, context (B, T, D) text tokens, mask (B, T) bool (True =
        real) -> predicted noise (B, C, H, W). Masked positions get a -10000 attention bias: weight exactly 0."""
        return self.unet(x, t, encoder_hidden_states=context, encoder_attention_mask=mask, return_dict=False)[0]


class T2IDiffusion(CaptionConditioned):
    batch_fields = ("pixel_values",)  # the images to generate (read by the loss, not through the vision encoder)

    @classmethod
    def setting_problems(
        cls,
        *,
        image_size: int = 48,
        timesteps: int = 1000,
        beta_schedule: str = "linear",
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        prediction_type: str = "epsilon",
        caption_dropout: float = 0.1,
        sample_steps: int = 50,
        eta: float = 0.0,
        guidance: float = 3.0,
        timestep_spacing: str = "trailing",
        channels: Sequence[int] = (32, 64, 64),
        attention: Sequence[bool] = (False, True, True),
        layers_per_block: int = 1,
        heads: int = 4,
        norm_groups: int = 8,
        **settings,
    ) -> list[str]:
        problems = problems_of(
            number_problem("timesteps", timesteps, "a whole number of noise levels >= 2, e.g. 1000", low=2, integer=True),
            number_problem("beta_start", beta_start, "a noise variance in (0, 1), e.g. 1e-4", low=0, high=1, low_open=True, high_open=True),
            number_problem("beta_end", beta_end, "a noise variance in (0, 1), e.g. 0.02", low=0, high=1, low_open=True, high_open=True),
            number_problem("caption_dropout", caption_dropout, "a probability in [0, 1), e.g. 0.1", low=0, high=1, high_open=True),
            number_problem("sample_steps", sample_steps, f"a whole number of DDIM steps in [1, timesteps={timesteps}]", low=1, high=timesteps if isinstance(timesteps, int) else None, integer=True),
            number_problem("eta", eta, "a DDIM noise scale in [0, 1] (0: deterministic DDIM, 1: DDPM-like)", low=0, high=1),
            number_problem("guidance", guidance, "a guidance scale >= 0 (1: no guidance, 0: unconditional)", low=0),
            number_problem("layers_per_block", layers_per_block, "a whole number of residual blocks >= 1", low=1, integer=True),
            number_problem("heads", heads, "a head count >= 1", low=1, integer=True),
            number_problem("norm_groups", norm_groups, "a GroupNorm group count >= 1", low=1, integer=True),
        )  # fmt: skip
        if beta_schedule not in BETA_SCHEDULES:
            problems.append(f"beta_schedule={beta_schedule}: one of {', '.join(BETA_SCHEDULES)}")
        elif beta_schedule != "squaredcos_cap_v2" and not problems and beta_start >= beta_end:
            problems.append(f"beta_start={beta_start} >= beta_end={beta_end}: the noise must grow with t")
        if prediction_type not in PREDICTION_TYPES:
            problems.append(f"prediction_type={prediction_type}: one of {', '.join(PREDICTION_TYPES)}")
        if timestep_spacing not in TIMESTEP_SPACINGS:
            problems.append(f"timestep_spacing={timestep_spacing}: one of {', '.join(TIMESTEP_SPACINGS)}")
        widths = list(channels) if isinstance(channels, Sequence) and not isinstance(channels, str) else []
        if not widths or any(not isinstance(c, int) or c < 1 for c in widths):
            problems.append(f"channels={channels}: a list of widths >= 1, one per resolution level, e.g. [32,64,64]")
        elif not isinstance(attention, Sequence) or len(attention) != len(widths):
            problems.append(
                f"attention={attention}: one true/false per level of channels={widths} (cross-attention there or not)"
            )
        elif not problems:
            factor = 2 ** (len(widths) - 1)
            if image_size % factor:
                problems.append(
                    f"channels={widths}: {len(widths)} levels halve the image {len(widths) - 1} times, so the image "
                    f"size must be divisible by {factor}, but it is {image_size}; use fewer levels or another size"
                )
            if any(c % norm_groups for c in widths):
                problems.append(f"norm_groups={norm_groups} must divide every width of channels={widths}")
            attended = [c for c, a in zip(widths, attention, strict=True) if a] + [widths[-1]]  # + the middle block
            if any(c % heads for c in attended):
                problems.append(f"heads={heads} must divide the widths of the attention levels, {attended}")
        return problems + super().setting_problems(**settings)

    def __init__(
        self,
        text_dim: int,
        image_size: int,
        timesteps: int = 1000,
        beta_schedule: str = "linear",
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        prediction_type: str = "epsilon",
        caption_dropout: float = 0.1,
        sample_steps: int = 50,
        eta: float = 0.0,
        guidance: float = 3.0,
        timestep_spacing: str = "trailing",
        clip_sample: bool = True,
        channels: Sequence[int] = (32, 64, 64),
        attention: Sequence[bool] = (False, True, True),
        layers_per_block: int = 1,
        heads: int = 4,
        norm_groups: int = 8,
        weight: float = 1.0,
        denoiser: nn.Module | None = None,
    ):
        super().__init__(weight)
        channels, attention = list(channels), [bool(a) for a in attention]
        problems = self.setting_problems(
            image_size=image_size,
            timesteps=timesteps,
            beta_schedule=beta_schedule,
            beta_start=beta_start,
            beta_end=beta_end,
            prediction_type=prediction_type,
            caption_dropout=caption_dropout,
            sample_steps=sample_steps,
            eta=eta,
            guidance=guidance,
            timestep_spacing=timestep_spacing,
            channels=channels,
            attention=attention,
            layers_per_block=layers_per_block,
            heads=heads,
            norm_groups=norm_groups,
        )
        raise_problems("T2IDiffusion", problems)
        self.image_size, self.timesteps = image_size, timesteps
        self.caption_dropout, self.sample_steps, self.eta, self.guidance = caption_dropout, sample_steps, eta, guidance
        # the schedule: betas and their cumulative products, in float32 on the CPU (the schedulers move them)
        schedule = dict(num_train_timesteps=timesteps, beta_schedule=beta_schedule, beta_start=beta_start)
        schedule |= dict(beta_end=beta_end, prediction_type=prediction_type)
        self.prediction_type = prediction_type
        self.noise_scheduler = DDPMScheduler(**schedule)
        self.sampler_settings = dict(
            schedule, clip_sample=clip_sample, set_alpha_to_one=True, steps_offset=0, timestep_spacing=timestep_spacing
        )
        self.init_null_token(text_dim)  # the null condition: one learned token where a caption's first token would be
        if denoiser is None:  # (a stand-in denoiser: tests)
            denoiser = UNetDenoiser(image_size, text_dim, channels, attention, layers_per_block, heads, norm_groups)
        self.denoiser = denoiser

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, for x0 and noise (B, C, H, W) and t (B,)."""
        return self.noise_scheduler.add_noise(x0, noise, t)

    def forward(
        self, model: MultimodalModel, batch: Batch, text: Features, image: Features, context: StepContext
    ) -> ObjectiveOutput:
        x0 = batch["pixel_values"]  # (B, 3, H, W) in [-1, 1]; `image` (the vision encoder's features) is unused
        B = x0.shape[0]
        noise = torch.randn_like(x0)
        t = torch.randint(0, self.timesteps, (B,), device=x0.device)
        drop_p = self.caption_dropout if self.training else 0.0  # validation and test: the conditional loss
        drop = torch.rand(B, device=x0.device) < drop_p  # (B,)
        cond, mask = self.condition(text, drop)
        prediction = self.denoiser(self.q_sample(x0, t, noise), t, cond, mask)  # (B, 3, H, W)
        loss = F.mse_loss(prediction.float(), self.target(x0, noise, t).float())
        return ObjectiveOutput(loss)

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the denoiser learns to predict at x_t = q_sample(x0, t, noise): eps, x_0, or v (PREDICTION_TYPES)."""
        if self.prediction_type == "sample":
            return x0
        if self.prediction_type == "v_prediction":
            return self.noise_scheduler.get_velocity(x0, noise, t)
        return noise

    def guided_noise(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cond: tuple[torch.Tensor, torch.Tensor],
        uncond: tuple[torch.Tensor, torch.Tensor],
        guidance: float,
    ) -> torch.Tensor:
        """eps_uncond + w (eps_cond - eps_uncond) at noisy images x (B, C, H, W) and timestep t (0-d), given the
        conditional and the null (context, mask): both predictions in one denoiser call on 2B rows (w = 1: the
        conditional prediction alone, one call on B rows)."""
        B = x.shape[0]
        if guidance == 1.0:
            return self.denoiser(x, t.expand(B), *cond)
        context, mask = (torch.cat([c, u]) for c, u in zip(cond, uncond, strict=True))  # (2B, T, D), (2B, T)
        eps_cond, eps_uncond = self.denoiser(torch.cat([x, x]), t.expand(2 * B), context, mask).chunk(2)
        return eps_uncond + guidance * (eps_cond - eps_uncond)

    def sampler(self, steps: int) -> DDIMScheduler:
        """A DDIM scheduler over this objective's noise schedule, set to `steps` steps (a new one per call: the
        scheduler keeps its steps as state)."""
        scheduler = DDIMScheduler(**self.sampler_settings)
        scheduler.set_timesteps(steps)
        return scheduler

    @torch.no_grad()
    def sample(
        self,
        text: Features,
        *,
        generator: torch.Generator | list[torch.Generator],
        guidance: float | None = None,
        steps: int | None = None,
        eta: float | None = None,
    ) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] for encoded captions `text`: DDIM from x_T ~ N(0, I) drawn from
        `generator` (one generator, or one per caption: then each image depends on its own seed alone, not on
        its place in the batch). guidance / steps / eta default to the configured ones."""
        guidance = self.guidance if guidance is None else float(guidance)
        eta = self.eta if eta is None else float(eta)
        scheduler = self.sampler(self.sample_steps if steps is None else int(steps))
        B, device = text.tokens.shape[0], text.tokens.device
        shape = (B, 3, self.image_size, self.image_size)
        x = randn_tensor(shape, generator=generator, device=device, dtype=text.tokens.dtype)  # x_T
        cond = self.condition(text, torch.zeros(B, dtype=torch.bool, device=device))
        uncond = self.condition(text, torch.ones(B, dtype=torch.bool, device=device))
        for t in scheduler.timesteps:
            eps = self.guided_noise(x, t.to(device), cond, uncond, guidance)
            noise_from = cast(Any, generator) if eta > 0 else None  # diffusers' randn_tensor takes one or a list
            x = scheduler.step(eps, int(t), x, eta=eta, generator=noise_from, return_dict=False)[0]
        return x.clamp(-1, 1)

    @torch.no_grad()
    def generate_images(
        self,
        model: MultimodalModel,
        batch: Batch,
        *,
        generator: torch.Generator | list[torch.Generator],
        guidance: float | None = None,
        steps: int | None = None,
    ) -> torch.Tensor:
        """Images (B, 3, H, W) in the data's normalisation for the captions of `batch` (`input_ids`,
        `attention_mask`), encoded by the model's text encoder; see `sample`. Call with the model in eval mode."""
        text = model.encode_text(batch["input_ids"], batch["attention_mask"])
        return self.sample(text, generator=generator, guidance=guidance, steps=steps)
