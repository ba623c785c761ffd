"""Prefix connector: image tokens projected into a decoder LM's input embeddings, prepended to the text.

LLaVA (Liu et al., 2023) projects every patch token (`projector`: `torch.nn.Linear`, or `MLPProjector` as in
LLaVA-1.5); Frozen (Tsimpoukelli et al., 2021) maps the pooled image to `num_prefix` embeddings. Then

    x    = cat[proj(image), text.tokens]          (B, N+T, H)   text.tokens = lm.embed(ids)
    h    = lm.run(x, mask)                        causal over the whole sequence

Returned: `text_tokens = h[:, N:]`, `image_tokens = h[:, :N]` (not text-conditioned, so not a capability),
`pooled` = the state at the last real text token. The run is always causal, so `causal_text` switches
nothing. An optional `connector` (BLIP-2's queries, a resampler) first maps the image to a fixed number of
tokens. Generation continues a cached run (`start_decoding` / `continue_decoding`).
The details and the reasons: docs/models.md (The prefix connector).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mmbench.models.decoder import Decoder, DecoderCache
from mmbench.models.layers import last_token_pool
from mmbench.models.outputs import Capabilities, Features, Fused


class MLPProjector(nn.Module):
    """LLaVA-1.5's `mlp2x_gelu`: Linear(in, out), GELU, Linear(out, out)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, out_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class TokenPrefix(nn.Module):
    """LLaVA: every image token (B, V, Dv) -> (B, V, H); the image's own padding mask is kept."""

    def __init__(self, projector: nn.Module):
        super().__init__()
        self.proj = projector

    def forward(self, image: Features) -> tuple[torch.Tensor, torch.Tensor]:
        return self.proj(image.tokens), image.mask  # (B, V, H), (B, V)


class PooledPrefix(nn.Module):
    """Frozen: the pooled image (B, Dv) -> `num_prefix` embeddings (B, n, H), all real."""

    def __init__(self, projector: nn.Module, num_prefix: int):
        super().__init__()
        self.proj, self.num_prefix = projector, num_prefix

    def forward(self, image: Features) -> tuple[torch.Tensor, torch.Tensor]:
        B = image.pooled.shape[0]
        prefix = self.proj(image.pooled).view(B, self.num_prefix, -1)  # (B, n, H)
        return prefix, torch.ones(B, self.num_prefix, dtype=torch.bool, device=prefix.device)


class PrefixFusion(nn.Module):
    capabilities = Capabilities(joint_pooled=True, text_tokens=True, image_tokens=False, causal_text=True)

    def __init__(
        self,
        lm: Decoder,
        image_dim: int,
        projector: Callable[[int, int], nn.Module] = nn.Linear,
        num_prefix: int | None = None,
        connector: nn.Module | None = None,
    ):
        super().__init__()
        if lm is None:
            raise ValueError("fusion=prefix needs a language model: language_model=gpt or language_model=hf")
        # A plain reference, not a submodule: the LM is registered once, as `model.language_model`. A second
        # registration here would list its parameters under two names (the optimizer would get them twice or,
        # deduplicated, under the fusion's lr_mult instead of its own) and write its weights twice.
        object.__setattr__(self, "lm", lm)
        self.connector = nn.Identity() if connector is None else connector  # Features -> Features
        H = lm.hidden_size
        # decided here, so forward has no branch: all image tokens (LLaVA) or the pooled image (Frozen)
        self.prefix: nn.Module = (
            TokenPrefix(projector(image_dim, H))
            if num_prefix is None
            else PooledPrefix(projector(image_dim, num_prefix * H), num_prefix)
        )

    lm: Decoder

    def forward(self, text: Features, image: Features, causal_text: bool = False) -> Fused:
        B, T, H = text.tokens.shape
        prefix, prefix_mask = self.prefix(self.connector(image))  # (B, N, H), (B, N)
        N = prefix.shape[1]
        x = torch.cat([prefix.to(text.tokens.dtype), text.tokens], dim=1)  # (B, N+T, H)
        mask = torch.cat([prefix_mask, text.mask], dim=1)  # (B, N+T)
        h = self.lm.run(x, mask)  # (B, N+T, H), causal whatever causal_text says (see the module docstring)
        text_h = h[:, N:]  # (B, T, H)
        return Fused(text_tokens=text_h, image_tokens=h[:, :N], pooled=last_token_pool(text_h, text.mask))

    def start_decoding(self, text: Features, image: Features) -> tuple[torch.Tensor, DecoderCache]:
        """Text states (B, T, H) of [prefix; text], as `forward`'s text_tokens, and the LM's cache of the run."""
        prefix, prefix_mask = self.prefix(self.connector(image))  # (B, N, H), (B, N)
        N = prefix.shape[1]
        cache = self.lm.new_cache()
        x = torch.cat([prefix.to(text.tokens.dtype), text.tokens], dim=1)  # (B, N+T, H)
        h = self.lm.run(x, torch.cat([prefix_mask, text.mask], dim=1), cache)  # (B, N+T, H)
        return h[:, N:], cache

    def continue_decoding(self, text: Features, cache: DecoderCache) -> torch.Tensor:
        """States (B, T', H) of text tokens that follow the cached sequence (the newest token when generating)."""
        return self.lm.run(text.tokens, text.mask, cache)
