"""Flamingo's connector into a decoder language model: gated cross-attention inserted before its layers
(Alayrac et al., 2022, "Flamingo: a Visual Language Model for Few-Shot Learning").

The image never enters the LM's input sequence (unlike the prefix connectors, fusion/prefix.py). The text
runs through the LM (`language_model=gpt` or `hf`, frozen or tuned) and, before every `every`-th LM layer,
a GATED XATTN-DENSE block (fusion/gated_cross_attention.py) lets each text state attend to the visual tokens:

    v = resampler(image)  or  image.tokens                     (B, V, Dv)  a fixed number with a resampler
    x = lm.embed(ids)                                          (B, T, H)
    before LM layer i (i % every == 0):
        x = x + tanh(a_i) * CrossAttn(q = LN(x), kv = v)       every text token sees the whole image
        x = x + tanh(b_i) * FFN(LN(x))
    h = lm.run(x, mask)                                        causal, final norm applied

The gates start at 0, so at initialisation the LM computes exactly what it computes without an image
(Flamingo's stable insertion into a frozen LM). Flamingo inserts a block before every layer at 3B, every
4th at 9B and every 7th at 80B (`every`). Each sample has one image, which every text token may attend to
(Flamingo's interleaved per-image masking is not needed).

Outputs: `text_tokens = h` (B, T, H), `pooled` = the state at the last real text token (the only one that
has read the whole text in a causal LM; ITM / VQA heads use it), `image_tokens` = the visual tokens the
text attended to (never text-conditioned, so not a capability: MRM is refused). Leakage-free: the LM is
always causal and the cross-attention reads only the image, so `causal_text` has nothing to switch.

Generation continues a cached run (`start_decoding` / `continue_decoding`): the cache keeps the LM's
keys and values and the visual tokens, and each new token runs the gated blocks and the LM layers alone.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from mmbench.checks import number_problem, problems_of, raise_problems
from mmbench.models.decoder import Decoder, DecoderCache
from mmbench.models.fusion.gated_cross_attention import GatedCrossAttentionBlock
from mmbench.models.fusion.resampler import PerceiverResampler
from mmbench.models.layers import attention_mask, last_token_pool
from mmbench.models.outputs import Capabilities, Features, Fused


class VisualContextCache:
    """The LM's `DecoderCache` and the visual tokens the text attends to; beams reorder both."""

    def __init__(self, lm: DecoderCache, context: torch.Tensor, context_mask: torch.Tensor):
        self.lm, self.context, self.context_mask = lm, context, context_mask  # (B, V, Dv), (B, 1, 1, V)

    def select(self, rows: torch.Tensor) -> None:
        self.lm.select(rows)
        self.context, self.context_mask = self.context[rows], self.context_mask[rows]


class GatedXAttnLMFusion(nn.Module):
    capabilities = Capabilities(joint_pooled=True, text_tokens=True, image_tokens=False, causal_text=True)

    @classmethod
    def setting_problems(cls, *, every: int = 1, **settings) -> list[str]:
        """The constructor's check of `every`, also run by config validation (mmbench/checks.py)."""
        meaning = "a layer interval n >= 1 (a gated block before every n-th language model layer)"
        return problems_of(number_problem("every", every, meaning, low=1, integer=True))

    def __init__(
        self,
        lm: Decoder,
        image_dim: int,
        heads: int,
        every: int = 1,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        resampler: PerceiverResampler | None = None,
    ):
        super().__init__()
        if lm is None:
            raise ValueError("fusion=gated_xattn_lm needs a language model: language_model=gpt or language_model=hf")
        raise_problems("GatedXAttnLMFusion", self.setting_problems(every=every))
        object.__setattr__(self, "lm", lm)  # a plain reference: the LM is registered once (fusion/prefix.py)
        self.resampler = resampler  # Flamingo's Perceiver resampler over the image tokens, if given
        self.every = every
        self.blocks = nn.ModuleList(
            GatedCrossAttentionBlock(lm.hidden_size, heads, mlp_ratio, dropout, context_dim=image_dim)
            for _ in range(0, lm.num_layers, every)
        )

    lm: Decoder

    def _context(self, image: Features) -> tuple[torch.Tensor, torch.Tensor]:
        if self.resampler is not None:
            image = self.resampler(image)  # (B, N, Dv): a fixed number of visual tokens
        return image.tokens, attention_mask(image.mask)  # (B, V, Dv), (B, 1, 1, V)

    def _gate(self, context: torch.Tensor, context_mask: torch.Tensor, i: int, x: torch.Tensor) -> torch.Tensor:
        """The hook before LM layer i: a gated block every `every` layers, the identity elsewhere."""
        if i % self.every:
            return x
        return self.blocks[i // self.every](x.to(context.dtype), context=context, context_mask=context_mask)

    def forward(self, text: Features, image: Features, causal_text: bool = False) -> Fused:
        context, context_mask = self._context(image)
        hook = functools.partial(self._gate, context, context_mask)
        h = self.lm.run(text.tokens, text.mask, before_layer=hook)  # (B, T, H), always causal
        return Fused(text_tokens=h, image_tokens=context, pooled=last_token_pool(h, text.mask))

    def start_decoding(self, text: Features, image: Features) -> tuple[torch.Tensor, VisualContextCache]:
        """Text states (B, T, H), as `forward`'s text_tokens, and the cache of the run and of the image."""
        cache = VisualContextCache(self.lm.new_cache(), *self._context(image))
        return self.continue_decoding(text, cache), cache

    def continue_decoding(self, text: Features, cache: VisualContextCache) -> torch.Tensor:
        """States (B, T', H) of text tokens that follow the cached sequence (the newest token when generating)."""
        hook = functools.partial(self._gate, cache.context, cache.context_mask)
        return self.lm.run(text.tokens, text.mask, cache.lm, before_layer=hook)
