"""Stage 2 of DALL-E-style text-to-image (Ramesh et al., 2021): a causal transformer writes an image's codes.

The image tokenizer is stage 1's VQ-VAE (mmbench/models/vq.py, trained by `objective=t2i_vqvae`), loaded from
that run through `model.init_from` (its `objectives.<tokenizer_from>.tokenizer.*` tensors; `inherits` below,
mmbench/models/convert/run.py) and frozen: requires_grad False, and it has no train-time behaviour to switch off
(no dropout, no batch norm; it is built without stage 1's EMA codebook update, so it loads the codes, encoder and
decoder and leaves stage 1's `cluster_size` / `cluster_sum` statistics behind, and only `tokenize` and `decode`
are called). An image (B, 3, H, W) becomes N = h * w code ids, row-major.

The sequence is [caption condition ; image codes]: the condition is the text encoder's tokens (the step's shared
`text`, so every text encoder composes with it) projected to the transformer's width, with a learned position
per caption position; then a learned start token and the codes, each with a learned position of the code grid:

    positions   c_0 .. c_{T-1}   s      v_0 ... v_{N-2}
    predicts                     v_0    v_1 ... v_{N-1}          loss = CE(logits, v)

One causal mask over the whole sequence (`attention_mask(..., causal=True)`, mmbench/models/layers.py) with the
caption's padding masked out as keys; the image positions do not depend on the caption's length, so padding a
caption never changes its logits (tested). The blocks are mmbench's `Block` (pre-norm, GPT-2 layout).

Caption dropout (`caption_dropout`): in training a caption is replaced by the null condition, one learned token
at position 0 with every other position masked out (as objective t2i_diffusion), so the same network is also the
unconditional model. Sampling (`generate_images`, the `ImageGenerator` capability): N steps, each one token for
every caption of the batch at once, with a KV cache (the `Block`'s `KVCache`: each step costs O(T + N), not
O((T + N)^2)); classifier-free guidance on the logits, logits_u + guidance * (logits_c - logits_u), the
conditional and null rows in one call on 2B rows; then temperature and top-k, and one draw per caption by the
inverse CDF of a uniform drawn in advance from the caption's generator (so a caption's image depends on its own
seed, not on the captions beside it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from mmbench.checks import number_problem, problems_of, raise_problems
from mmbench.models.layers import Block, KVCache, attention_mask
from mmbench.models.outputs import Features
from mmbench.models.vq import VQTokenizer
from mmbench.objectives.base import CaptionConditioned, ObjectiveOutput

if TYPE_CHECKING:
    from mmbench.data.batch import Batch
    from mmbench.models.model import MultimodalModel
    from mmbench.objectives.context import StepContext


class ARImageTransformer(nn.Module):
    """A causal transformer over [projected caption tokens ; start token ; image codes] -> logits of the next code.

    `forward` scores every code of a known sequence in one pass (training); `prefix` and `step` run the same
    computation incrementally with one `KVCache` per block (sampling)."""

    def __init__(
        self,
        text_dim: int,
        max_text_len: int,
        codes: int,
        positions: int,
        dim: int = 128,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.cond_proj = nn.Linear(text_dim, dim)
        self.cond_pos = nn.Parameter(torch.randn(max_text_len, dim) * 0.02)  # (T_max, dim)
        self.code_emb = nn.Embedding(codes, dim)
        self.start = nn.Parameter(torch.randn(dim) * 0.02)
        self.image_pos = nn.Parameter(torch.randn(positions, dim) * 0.02)  # (N, dim), start token at 0
        self.blocks = nn.ModuleList(
            Block(dim, heads, mlp_ratio=mlp_ratio, prenorm=True, dropout=dropout) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, codes)
        self.max_text_len = max_text_len

    def _condition(self, cond: torch.Tensor) -> torch.Tensor:
        B, T, _ = cond.shape
        if T > self.max_text_len:
            raise ValueError(f"{T} caption tokens, but the transformer has {self.max_text_len} caption positions")
        return self.cond_proj(cond) + self.cond_pos[:T]  # (B, T, dim)

    def _run(self, x: torch.Tensor, mask: torch.Tensor, caches: list[KVCache] | None = None) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            x = block(x, mask=mask, cache=None if caches is None else caches[i])
        return self.norm(x)

    def forward(self, cond: torch.Tensor, cond_mask: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """cond (B, T, text_dim), cond_mask (B, T) bool (True = real), codes (B, N) -> logits (B, N, K): row i
        scores code i given the caption and codes < i."""
        B, N = codes.shape
        start = (self.start + self.image_pos[0]).expand(B, 1, -1)  # (B, 1, dim)
        shifted = self.code_emb(codes[:, :-1]) + self.image_pos[1:N]  # (B, N - 1, dim)
        x = torch.cat([self._condition(cond), start, shifted], 1)  # (B, T + N, dim)
        keys = torch.cat([cond_mask.bool(), cond_mask.new_ones(B, N, dtype=torch.bool)], 1)  # (B, T + N)
        h = self._run(x, attention_mask(keys, causal=True))  # (B, T + N, dim)
        return self.head(h[:, -N:])  # (B, N, K)

    def prefix(
        self, cond: torch.Tensor, cond_mask: torch.Tensor, caches: list[KVCache]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run [condition ; start] into empty `caches`: (logits of code 0 (B, K), the key mask so far (B, T + 1))."""
        B = cond.shape[0]
        x = torch.cat([self._condition(cond), (self.start + self.image_pos[0]).expand(B, 1, -1)], 1)  # (B, T+1, dim)
        keys = torch.cat([cond_mask.bool(), cond_mask.new_ones(B, 1, dtype=torch.bool)], 1)  # (B, T + 1)
        h = self._run(x, attention_mask(keys, causal=True), caches)
        return self.head(h[:, -1]), keys

    def step(
        self, code: torch.Tensor, i: int, keys: torch.Tensor, caches: list[KVCache]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append code i-1's id `code` (B,) at image position i: (logits of code i (B, K), the key mask (B, S + 1))."""
        x = (self.code_emb(code) + self.image_pos[i])[:, None]  # (B, 1, dim)
        keys = torch.cat([keys, keys.new_ones(keys.shape[0], 1)], 1)  # (B, S + 1)
        h = self._run(x, attention_mask(keys, causal=True, queries=1), caches)  # mask (B, 1, 1, S + 1)
        return self.head(h[:, -1]), keys


def guide(logits: torch.Tensor, guidance: float) -> torch.Tensor:
    """Classifier-free guidance on logits (2B, K) = [conditional rows ; null rows]: u + g (c - u), (B, K)."""
    cond, uncond = logits.chunk(2)
    return uncond + guidance * (cond - uncond)


def pick(logits: torch.Tensor, u: torch.Tensor, *, temperature: float, top_k: int) -> torch.Tensor:
    """One code per row of logits (B, K): softmax(logits / temperature) restricted to the top_k best (0: all),
    drawn by the inverse CDF at uniforms u (B,) in [0, 1). A code outside the top k has probability 0 and is never
    drawn (its CDF step has width 0)."""
    logits = logits.float() / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    cdf = logits.softmax(-1).cumsum(-1)  # (B, K)
    target = (u.to(cdf) * cdf[:, -1]).unsqueeze(1)  # (B, 1), below the total mass
    return torch.searchsorted(cdf, target, right=True).squeeze(1).clamp_max(logits.shape[-1] - 1)


class T2IAR(CaptionConditioned):
    batch_fields = ("pixel_values",)  # the images whose codes are predicted (through the frozen tokenizer)
    from_earlier_run = True  # the tokenizer comes from the run of model.init_from (`inherits`)

    @classmethod
    def setting_problems(
        cls,
        *,
        image_size: int = 48,
        tokenizer: Mapping[str, Any] | None = None,
        dim: int = 128,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        caption_dropout: float = 0.1,
        guidance: float = 3.0,
        temperature: float = 1.0,
        top_k: int = 0,
        **settings,
    ) -> list[str]:
        tokenizer = dict(tokenizer or {})
        unknown = sorted(set(tokenizer) - {"channels", "codes", "code_dim", "normalize"})
        if unknown:
            return [
                f"tokenizer.{unknown[0]}: not a tokenizer setting; the tokenizer takes channels, codes, code_dim, "
                "normalize"
            ]
        problems = VQTokenizer.setting_problems(image_size, key="tokenizer.", **tokenizer)
        problems += problems_of(
            number_problem("dim", dim, "a width >= 1, e.g. 128", low=1, integer=True),
            number_problem("depth", depth, "a number of blocks >= 1", low=1, integer=True),
            number_problem("heads", heads, "a head count >= 1", low=1, integer=True),
            number_problem("mlp_ratio", mlp_ratio, "a feed-forward width ratio > 0, e.g. 4", low=0, low_open=True),
            number_problem("dropout", dropout, "a probability in [0, 1)", low=0, high=1, high_open=True),
            number_problem("caption_dropout", caption_dropout, "a probability in [0, 1), e.g. 0.1", low=0, high=1, high_open=True),
            number_problem("guidance", guidance, "a guidance scale >= 0 (1: no guidance, 0: unconditional)", low=0),
            number_problem("temperature", temperature, "a sampling temperature > 0, e.g. 1", low=0, low_open=True),
            number_problem("top_k", top_k, "a whole number of codes >= 0 (0: all)", low=0, integer=True),
        )  # fmt: skip
        if not problems and dim % heads:
            problems.append(f"heads={heads} must divide dim={dim}")
        return problems + super().setting_problems(**settings)

    def __init__(
        self,
        text_dim: int,
        image_size: int,
        max_text_len: int,
        tokenizer: Mapping[str, Any] | None = None,
        tokenizer_from: str = "t2i_vqvae",
        dim: int = 128,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        caption_dropout: float = 0.1,
        guidance: float = 3.0,
        temperature: float = 1.0,
        top_k: int = 0,
        weight: float = 1.0,
    ):
        super().__init__(weight)
        settings: dict[str, Any] = dict(dim=dim, depth=depth, heads=heads, mlp_ratio=mlp_ratio, dropout=dropout)
        sampling: dict[str, Any] = dict(guidance=guidance, temperature=temperature, top_k=top_k)
        tokenizer = {k: (list(v) if k == "channels" else v) for k, v in (tokenizer or {}).items()}
        problems = self.setting_problems(
            image_size=image_size, tokenizer=tokenizer, caption_dropout=caption_dropout, **settings, **sampling
        )
        raise_problems("T2IAR", problems)
        self.tokenizer = VQTokenizer(**tokenizer).requires_grad_(False)  # frozen: loaded from stage 1
        self.tokenizer_from = tokenizer_from
        self.grid = self.tokenizer.grid(image_size)
        self.caption_dropout, self.guidance = caption_dropout, guidance
        self.temperature, self.top_k = temperature, top_k
        self.init_null_token(text_dim)  # the null condition (caption dropout)
        self.transformer = ARImageTransformer(
            text_dim, max_text_len, self.tokenizer.codes, self.grid * self.grid, **settings
        )

    def inherits(self) -> dict[str, str]:
        """{prefix of this objective's state: prefix of the earlier run's state dict} (model.init_from)."""
        return {"tokenizer.": f"objectives.{self.tokenizer_from}.tokenizer."}

    def forward(
        self, model: MultimodalModel, batch: Batch, text: Features, image: Features, context: StepContext
    ) -> ObjectiveOutput:
        x = batch["pixel_values"]  # (B, 3, H, W) in [-1, 1]; `image` (the vision encoder's features) is unused
        B = x.shape[0]
        with torch.no_grad():
            codes = self.tokenizer.tokenize(x)  # (B, N)
        drop_p = self.caption_dropout if self.training else 0.0  # validation and test: the conditional loss
        drop = torch.rand(B, device=x.device) < drop_p  # (B,)
        logits = self.transformer(*self.condition(text, drop), codes)  # (B, N, K)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), codes.flatten())
        acc = (logits.argmax(-1) == codes).float().mean()
        return ObjectiveOutput(loss, {"acc": acc})

    @torch.no_grad()
    def sample_codes(
        self,
        text: Features,
        *,
        generator: torch.Generator | list[torch.Generator],
        guidance: float | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
    ) -> torch.Tensor:
        """Code grids (B, h, w) for encoded captions `text`, every caption of the batch decoded together (the loop
        is over the N code positions only). Code i of caption b is drawn by `pick` at uniform U[b, i], all N drawn
        in advance from `generator` (one for the batch, or one per caption: then a caption's codes depend on its
        own seed alone). guidance / temperature / top_k default to the configured ones."""
        guidance = self.guidance if guidance is None else float(guidance)
        temperature = self.temperature if temperature is None else float(temperature)
        top_k = self.top_k if top_k is None else int(top_k)
        B, device, N = text.tokens.shape[0], text.tokens.device, self.grid * self.grid
        if isinstance(generator, list):  # one generator per caption: its N uniforms (the model runs batched)
            u = torch.stack([torch.rand(N, generator=g, device=device) for g in generator])  # (B, N)
        else:
            u = torch.rand(B, N, generator=generator, device=device)  # (B, N)
        tokens, mask = self.condition(text, torch.zeros(B, dtype=torch.bool, device=device))
        guided = guidance != 1.0
        if guided:  # the null rows after the conditional ones: (2B, T, D), (2B, T)
            null_tokens, null_mask = self.condition(text, torch.ones(B, dtype=torch.bool, device=device))
            tokens, mask = torch.cat([tokens, null_tokens]), torch.cat([mask, null_mask])
        caches = [KVCache() for _ in self.transformer.blocks]
        logits, keys = self.transformer.prefix(tokens, mask, caches)  # (B or 2B, K)
        codes = []
        for i in range(N):
            code = pick(guide(logits, guidance) if guided else logits, u[:, i], temperature=temperature, top_k=top_k)
            codes.append(code)  # (B,)
            if i + 1 < N:
                logits, keys = self.transformer.step(torch.cat([code, code]) if guided else code, i + 1, keys, caches)
        return torch.stack(codes, 1).view(B, self.grid, self.grid)

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
        `attention_mask`), encoded by the model's text encoder, codes drawn by `sample_codes` and decoded by the
        tokenizer. `steps` is ignored: an autoregressive model always writes all h * w codes. Call in eval mode."""
        text = model.encode_text(batch["input_ids"], batch["attention_mask"])
        return self.tokenizer.decode(self.sample_codes(text, generator=generator, guidance=guidance))
