"""An image tokenizer: a VQ-VAE (van den Oord et al., 2017, "Neural Discrete Representation Learning").

A small conv encoder maps an image (B, 3, H, W) to a grid of vectors z_e (B, D, h, w), h = H / 2^levels; each
vector is replaced by its nearest entry of a learned codebook e (K, D) (squared Euclidean distance), giving one
code id per grid cell; a conv decoder maps the quantised grid z_q back to pixels. Trained with

    loss = ||x - dec(z_q)||^2 + ||sg[z_e] - z_q||^2 + beta ||z_e - sg[z_q]||^2      (sg: stop-gradient)
           reconstruction     codebook                commitment

and the straight-through estimator: the decoder reads z_e + sg[z_q - z_e] (= z_q in value), so the
reconstruction gradient reaches the encoder as if quantisation were the identity.

The codebook is learned one of two ways (`VectorQuantizer`'s `ema_decay`):

- by the loss above (`ema_decay=None`): every piece of state is a parameter moved by the optimizer and the forward
  pass mutates nothing. On Shapes it collapses: most of an image is background, and the few codes near the first
  encoder outputs take every vector while the rest never move (8 of 512 codes used after 600 steps).
- by exponential moving averages (`ema_decay=0.99`; van den Oord et al. 2017, appendix A.1; Razavi et al. 2019,
  VQ-VAE-2) with dead-code restarts (Dhariwal et al. 2020, Jukebox; Zeghidour et al. 2021, SoundStream): no codebook
  loss; in training each forward pass moves the buffers `cluster_size` (K,) and `cluster_sum` (K, D) towards the
  batch's assignment counts n_k and sums s_k of the vectors assigned to code k, and sets each code to the
  Laplace-smoothed mean:

      N_k <- d N_k + (1 - d) n_k        S_k <- d S_k + (1 - d) s_k
      N'_k = (N_k + eps) / (sum_j N_j + K eps) * sum_j N_j          e_k = S_k / N'_k

  then every code whose N_k is below `dead_below` is restarted at an encoder output of the batch drawn at random
  (torch's global generator, which Lightning seeds), with N_k = dead_below and S_k = dead_below * e_k, so that the
  restarted code is its own mean. The buffers start at zero, so the first training batch restarts every code: the
  codebook starts at the data (a random sample of the first batch's encoder outputs). All the state is in
  buffers, so a checkpoint holds it and a resumed run continues it. Only `forward` in training mode updates;
  `nearest`, `tokenize`, `lookup` and `decode` never do, and the frozen tokenizer of stage 2 (objective t2i_ar) is
  built without the EMA (it loads the codebook, not the statistics), so it has nothing to update.
  Single-process: under DDP the batch statistics are not all-reduced (each rank would drift its own way).

At Shapes' 48 px, levels=2 gives a 12x12 grid of codes over 4x4-pixel patches: a 16-px cell of the 3x3 scene
grid is 4x4 codes, enough to tell a small object from a large one and a circle from a square (levels=3: 6x6
codes of 8x8 pixels, 2x2 per cell, a quarter of the tokens for the autoregressive stage).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from mmbench.checks import number_problem, problems_of


class Quantized(NamedTuple):
    z: torch.Tensor  # (B, D, h, w) the straight-through output: z_q in value, gradient to z_e
    codes: torch.Tensor  # (B, h, w) long, nearest codebook entry of each grid vector
    codebook_loss: torch.Tensor  # scalar, ||sg[z_e] - z_q||^2 (mean): moves the codebook (0 with EMA updates)
    commitment_loss: torch.Tensor  # scalar, ||z_e - sg[z_q]||^2 (mean): keeps the encoder near its codes


class L2Norm(nn.Module):
    """Each vector (along the last dimension) scaled to unit length."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1)


class VectorQuantizer(nn.Module):
    """Nearest-neighbour lookup into a learned codebook (K, D), with the VQ-VAE losses and the straight-through
    estimator. With `normalize`, the encoder's vectors and the codes are scaled to unit length before the lookup
    and the losses (ViT-VQGAN's l2-normalised codes, Yu et al., 2022): the nearest code is then the most similar
    by cosine, and no code can sit unused far from every encoder output, the usual cause of codebook collapse.
    Measured on Shapes at 48 px (batch 64, lr 1e-3, 300 steps, tokenizer alone, the codebook loss): 37 of 512 codes
    used in a batch with it, 22 without, at the same reconstruction error (0.016); both still far from the whole
    codebook. `ema_decay` (EMA updates with dead-code restarts, the module docstring) is what fixes the collapse:
    277 of 512 codes over the validation set after 400 steps, against 5 with the codebook loss
    (docs/objectives.md)."""

    cluster_size: torch.Tensor  # (K,) buffers of the EMA update (`ema_decay` set), N_k
    cluster_sum: torch.Tensor  # (K, D) S_k

    def __init__(
        self,
        codes: int,
        code_dim: int,
        normalize: bool = True,
        ema_decay: float | None = None,
        dead_below: float = 1.0,
        eps: float = 1e-5,
    ):
        super().__init__()
        self.codebook = nn.Embedding(codes, code_dim)
        nn.init.uniform_(self.codebook.weight, -1.0 / codes, 1.0 / codes)  # the reference implementation's init
        self.norm = L2Norm() if normalize else nn.Identity()
        # in the state dict, so that a later stage built with the other setting is refused when it loads these codes
        self.register_buffer("normalized", torch.tensor(bool(normalize)))
        self.ema_decay, self.dead_below, self.eps = ema_decay, float(dead_below), float(eps)
        if ema_decay is not None:  # the codebook moves by the EMA alone (see the module docstring)
            self.codebook.weight.requires_grad_(False)
            self.register_buffer("cluster_size", torch.zeros(codes))  # (K,) N_k; zero: every code restarts at first
            self.register_buffer("cluster_sum", torch.zeros(codes, code_dim))  # (K, D) S_k

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Code ids (...,) of the codebook entries nearest to vectors z (..., D), by squared Euclidean distance
        (ties: the lowest id)."""
        e = self.norm(self.codebook.weight)  # (K, D)
        flat = self.norm(z.reshape(-1, z.shape[-1]))  # (M, D)
        d = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ e.t() + e.pow(2).sum(1)[None]  # (M, K)
        return d.argmin(1).view(z.shape[:-1])

    def forward(self, z_e: torch.Tensor) -> Quantized:
        """z_e (B, D, h, w) -> `Quantized`."""
        z_e = self.norm(z_e.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # (B, D, h, w), unit length with `normalize`
        codes = self.nearest(z_e.permute(0, 2, 3, 1))  # (B, h, w)
        z_q = self.lookup(codes)  # (B, D, h, w), the codes before this batch's update
        ema = self.ema_decay is not None
        codebook_loss = z_q.new_zeros(()) if ema else F.mse_loss(z_q, z_e.detach())
        commitment_loss = F.mse_loss(z_e, z_q.detach())
        z = z_e + (z_q - z_e).detach()  # straight through: forward z_q, backward identity to z_e
        if ema and self.training:
            self.update(z_e.detach().permute(0, 2, 3, 1).flatten(0, 2), codes.flatten())  # (B*h*w, D), (B*h*w,)
        return Quantized(z, codes, codebook_loss, commitment_loss)

    @torch.no_grad()
    def update(self, z: torch.Tensor, codes: torch.Tensor) -> None:
        """One EMA step on vectors z (M, D) assigned to `codes` (M,), then the dead-code restarts (the module
        docstring has the formulas)."""
        assert self.ema_decay is not None, "update() is the EMA codebook update: build with ema_decay"
        K, d = self.codebook.num_embeddings, self.ema_decay
        z = z.float()
        onehot = F.one_hot(codes, K).type_as(z)  # (M, K)
        with torch.autocast(z.device.type, enabled=False):  # the sums in float32 under mixed precision too
            sums = onehot.t() @ z  # (K, D) s_k
        self.cluster_size.mul_(d).add_(onehot.sum(0), alpha=1 - d)  # N_k <- d N_k + (1 - d) n_k
        self.cluster_sum.mul_(d).add_(sums, alpha=1 - d)  # S_k <- d S_k + (1 - d) s_k
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (total + K * self.eps) * total  # (K,) Laplace smoothing
        self.codebook.weight.copy_(self.cluster_sum / smoothed[:, None])
        dead = self.cluster_size < self.dead_below  # (K,)
        n = int(dead.sum())
        if n:  # restart at encoder outputs of this batch, distinct ones when there are enough
            M = z.shape[0]
            pick = torch.randperm(M, device=z.device)[:n] if M >= n else torch.randint(M, (n,), device=z.device)
            fresh = z[pick]  # (n, D)
            self.codebook.weight[dead] = fresh.to(self.codebook.weight.dtype)
            self.cluster_size[dead] = self.dead_below
            self.cluster_sum[dead] = fresh * self.dead_below

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Code ids (B, h, w) -> their codebook vectors (B, D, h, w) (unit length with `normalize`)."""
        return self.norm(self.codebook(codes)).permute(0, 3, 1, 2)


class VQTokenizer(nn.Module):
    """Conv encoder -> `VectorQuantizer` -> conv decoder. `channels[i]` is the width after the i-th stride-2
    convolution (len(channels) = levels halvings of the image); `codes` codebook entries of `code_dim`; `ema_decay`
    None: the codebook learned by the loss, else by EMA updates with restarts below `dead_below`."""

    @staticmethod
    def setting_problems(
        image_size: int,
        channels: Sequence[int] = (32, 64),
        codes: int = 512,
        code_dim: int = 32,
        normalize: bool = True,
        ema_decay: float | None = None,
        dead_below: float = 1.0,
        key: str = "",
    ) -> list[str]:
        widths = list(channels) if isinstance(channels, Sequence) and not isinstance(channels, str) else []
        problems = problems_of(
            number_problem(f"{key}codes", codes, "a codebook size >= 2, e.g. 512", low=2, integer=True),
            number_problem(f"{key}code_dim", code_dim, "a code width >= 1, e.g. 32", low=1, integer=True),
            number_problem(f"{key}dead_below", dead_below, "an EMA cluster size >= 0 (0: no restarts), e.g. 1", low=0),
        )
        if ema_decay is not None:
            decay, open_ends = "a decay in (0, 1), e.g. 0.99", dict(low_open=True, high_open=True)
            problems += problems_of(number_problem(f"{key}ema_decay", ema_decay, decay, low=0, high=1, **open_ends))
        if not widths or any(not isinstance(c, int) or c < 1 for c in widths):
            problems.append(f"{key}channels={channels}: a list of widths >= 1, one per halving, e.g. [32,64]")
        elif isinstance(image_size, int) and image_size % 2 ** len(widths):
            problems.append(
                f"{key}channels={widths}: {len(widths)} stride-2 levels need an image size divisible by "
                f"{2 ** len(widths)}, but it is {image_size}; use fewer levels or another size"
            )
        return problems

    def __init__(
        self,
        channels: Sequence[int] = (32, 64),
        codes: int = 512,
        code_dim: int = 32,
        normalize: bool = True,
        ema_decay: float | None = None,
        dead_below: float = 1.0,
    ):
        super().__init__()
        widths = list(channels)
        self.levels, self.codes = len(widths), codes
        down: list[nn.Module] = []
        for c_in, c_out in zip([3, *widths[:-1]], widths, strict=True):
            down += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.ReLU()]
        top = widths[-1]
        self.encoder = nn.Sequential(*down, nn.Conv2d(top, top, 3, padding=1), nn.ReLU(), nn.Conv2d(top, code_dim, 1))
        self.quantizer = VectorQuantizer(codes, code_dim, normalize, ema_decay, dead_below)
        up: list[nn.Module] = [nn.Conv2d(code_dim, top, 3, padding=1), nn.ReLU()]
        for c_in, c_out in zip(widths[::-1], [*widths[-2::-1], widths[0]], strict=True):
            up += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), nn.ReLU()]
        self.decoder = nn.Sequential(*up, nn.Conv2d(widths[0], 3, 3, padding=1))

    def grid(self, image_size: int) -> int:
        """The side of the code grid of an image_size image."""
        return image_size // 2**self.levels

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, Quantized]:
        """images (B, 3, H, W) in [-1, 1] -> (reconstruction (B, 3, H, W), `Quantized`)."""
        q = self.quantizer(self.encoder(images))  # z_e (B, D, h, w) quantised
        return self.decoder(q.z), q

    def tokenize(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) -> code ids (B, h * w), row-major (the order the autoregressive stage writes them)."""
        z_e = self.encoder(images)  # (B, D, h, w)
        return self.quantizer.nearest(z_e.permute(0, 2, 3, 1)).flatten(1)  # (B, h * w)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Code ids (B, h, w) -> images (B, 3, H, W) in [-1, 1] (clamped)."""
        return self.decoder(self.quantizer.lookup(codes)).clamp(-1, 1)
