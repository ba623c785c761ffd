"""Stage 1 of DALL-E-style text-to-image: the image tokenizer, a VQ-VAE (mmbench/models/vq.py) trained alone.

`objective=[t2i_vqvae]` reads the batch's `pixel_values` ((B, 3, H, W) in [-1, 1]) and nothing of the model (the
text and image features of the step are unused), so a normal `mmbench-train` run trains the tokenizer and its
checkpoint holds it, under `objectives.t2i_vqvae.tokenizer.*`; stage 2 (`objective=t2i_ar`,
mmbench/objectives/t2i_ar.py) loads it from that run with `model.init_from`. Loss (van den Oord et al., 2017):

    loss = recon + codebook + beta * commitment       (codebook_update=loss)
    loss = recon + beta * commitment                  (codebook_update=ema: the codebook moves by moving averages
                                                       of its assigned encoder outputs, with dead-code restarts)

`codebook_update=ema` (the default) takes `ema_decay` and `dead_below` (mmbench/models/vq.py has the formulas);
measured on Shapes it keeps far more of the codebook in use than the loss form (conf/objective/t2i_vqvae.yaml).

Logged beside the loss: `recon` (the pixel MSE), `codebook`, `commitment`, and the batch's code statistics,
`perplexity` = exp(entropy of the batch's code histogram) (K when every code is used equally, 1 when one code
is) and `usage` = the fraction of the K codes used at least once in the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from mmbench.checks import number_problem, problems_of, raise_problems
from mmbench.models.outputs import Features
from mmbench.models.vq import VQTokenizer
from mmbench.objectives.base import Objective, ObjectiveOutput

if TYPE_CHECKING:
    from mmbench.data.batch import Batch
    from mmbench.models.model import MultimodalModel
    from mmbench.objectives.context import StepContext


def code_statistics(codes: torch.Tensor, K: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(perplexity, usage) of code ids `codes` (any shape) over a codebook of K: exp(entropy of their
    histogram), and the fraction of the K codes that occur."""
    p = torch.bincount(codes.flatten(), minlength=K).float() / codes.numel()  # (K,)
    entropy = -(p * p.clamp_min(1e-12).log()).sum()
    return entropy.exp(), (p > 0).float().mean()


CODEBOOK_UPDATES = ("ema", "loss")


class T2IVQVAE(Objective):
    batch_fields = ("pixel_values",)  # the images to tokenize (read by the loss, not through the vision encoder)

    @classmethod
    def setting_problems(
        cls,
        *,
        image_size: int = 48,
        channels: Sequence[int] = (32, 64),
        codes: int = 512,
        code_dim: int = 32,
        beta: float = 0.25,
        codebook_update: str = "ema",
        ema_decay: float = 0.99,
        dead_below: float = 1.0,
        **settings,
    ) -> list[str]:
        if codebook_update not in CODEBOOK_UPDATES:
            return [
                f"codebook_update={codebook_update}: one of {', '.join(CODEBOOK_UPDATES)} (ema: moving averages with "
                "dead-code restarts; loss: the codebook loss term)"
            ]
        decay = ema_decay if codebook_update == "ema" else None
        problems = VQTokenizer.setting_problems(
            image_size, channels, codes, code_dim, ema_decay=decay, dead_below=dead_below
        )
        problems += problems_of(number_problem("beta", beta, "a commitment weight >= 0, e.g. 0.25", low=0))
        return problems + super().setting_problems(**settings)

    def __init__(
        self,
        image_size: int,
        channels: Sequence[int] = (32, 64),
        codes: int = 512,
        code_dim: int = 32,
        normalize: bool = True,
        beta: float = 0.25,
        codebook_update: str = "ema",
        ema_decay: float = 0.99,
        dead_below: float = 1.0,
        weight: float = 1.0,
    ):
        super().__init__(weight)
        channels = list(channels)
        ema: dict = dict(codebook_update=codebook_update, ema_decay=ema_decay, dead_below=dead_below)
        problems = self.setting_problems(
            image_size=image_size, channels=channels, codes=codes, code_dim=code_dim, beta=beta, **ema
        )
        raise_problems("T2IVQVAE", problems)
        self.beta = float(beta)
        decay = float(ema_decay) if codebook_update == "ema" else None
        self.tokenizer = VQTokenizer(channels, codes, code_dim, normalize, ema_decay=decay, dead_below=dead_below)

    def forward(
        self, model: MultimodalModel, batch: Batch, text: Features, image: Features, context: StepContext
    ) -> ObjectiveOutput:
        x = batch["pixel_values"]  # (B, 3, H, W) in [-1, 1]; `text` and `image` are unused
        recon, q = self.tokenizer(x)
        recon_loss = F.mse_loss(recon.float(), x.float())
        loss = recon_loss + q.codebook_loss + self.beta * q.commitment_loss  # codebook_loss 0 with EMA updates
        perplexity, usage = code_statistics(q.codes, self.tokenizer.codes)
        metrics = {"recon": recon_loss.detach(), "codebook": q.codebook_loss.detach()}
        metrics |= {"commitment": q.commitment_loss.detach(), "perplexity": perplexity, "usage": usage}
        return ObjectiveOutput(loss, metrics)
