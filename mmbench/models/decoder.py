"""Decoder language models: the optional fourth part of a `MultimodalModel` (`model.language_model`).

Two causal LMs with one interface, so a connector (fusion/prefix.py) never knows which it drives:

    lm.embed(input_ids)          (B, T) -> (B, T, H)   token embeddings only, no positions
    lm.run(embeds, mask)         (B, L, H), (B, L) bool -> (B, L, H)
                                 the decoder body over any embedding sequence: causal, positions
                                 0..L-1 applied inside (an image prefix shifts the text positions,
                                 as in LLaVA), final norm applied
    lm.run(embeds, mask, cache)  the same, continuing the sequence a `DecoderCache` holds: positions
                                 from its length on, attending to its keys and values, which it keeps
                                 (incremental decoding: one new token per step costs O(L), not O(L^2))
    lm.run(embeds, mask, cache, before_layer)
                                 with `before_layer(i, x) -> x` applied to the hidden states entering
                                 layer i (Flamingo's gated cross-attention into the LM, fusion/gated_xattn_lm.py)
    lm.logits(hidden)            (..., H) -> (..., V)   the LM head
    lm.word_embeddings           the input table (nn.Embedding), (V, H)
    lm.hidden_size, lm.max_len   H, and the number of positions (None: no limit)
    lm.num_layers                the number of decoder layers

`GPTDecoder` is the GPT-2 layout from scratch with mmbench's blocks (Radford et al., 2019: token +
learned position embeddings, pre-norm blocks, final LayerNorm, LM head tied to the token table, no
bias; std 0.02 init); a Hugging Face GPT-2 checkpoint imports into it with `model.init_from`
(mmbench/models/convert/gpt2.py). `HFDecoder` wraps any `AutoModelForCausalLM` (GPT-2, OPT,
Llama-style) loaded from a local `save_pretrained` directory or the HF cache through the one hub
policy (mmbench/models/pretrained/hub.py).

The part is built once, registered once (as `model.language_model`), and handed to the parts that
declare a constructor parameter `lm` (the text part, the connector); see mmbench/builder.py.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
from collections.abc import Callable

import torch
from torch import nn

from mmbench.models.layers import Activation, Block, BlockOptions, KVCache, attention_mask
from mmbench.models.layers import causal_mask as causal_positions  # (T, S); `causal_mask` below adds padding

log = logging.getLogger(__name__)

#: a function of (layer index, hidden states (B, L, H)) -> hidden states, run before each decoder layer
LayerHook = Callable[[int, torch.Tensor], torch.Tensor]


class DecoderCache:
    """What a decoder keeps of the positions it has run, for incremental decoding: the key padding mask
    (B, S) and, per layer, the keys and values (`KVCache`; an `HFDecoder` keeps the model's own cache)."""

    def __init__(self, layers: int = 0) -> None:
        self.layers = [KVCache() for _ in range(layers)]
        self.mask: torch.Tensor | None = None  # (B, S) bool
        self.hf = None  # transformers' Cache of an HFDecoder

    @property
    def length(self) -> int:
        return 0 if self.mask is None else self.mask.shape[1]

    def extend_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """The key padding mask of the cached positions and the new ones (B, S + T)."""
        self.mask = mask if self.mask is None else torch.cat([self.mask, mask], dim=1)
        return self.mask

    def select(self, rows: torch.Tensor) -> None:
        """Keep rows `rows` of the batch, in that order (beam search)."""
        for layer in self.layers:
            layer.select(rows)
        if self.mask is not None:
            self.mask = self.mask[rows]
        if self.hf is not None:
            self.hf.reorder_cache(rows)


class Decoder(nn.Module):
    """The interface of a decoder LM part (see the module docstring)."""

    word_embeddings: nn.Embedding
    hidden_size: int
    max_len: int | None
    num_layers: int

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def run(
        self,
        embeds: torch.Tensor,
        mask: torch.Tensor,
        cache: DecoderCache | None = None,
        before_layer: LayerHook | None = None,
    ) -> torch.Tensor:
        raise NotImplementedError

    def new_cache(self) -> DecoderCache:
        """An empty cache for `run(..., cache=)`."""
        raise NotImplementedError

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def vocab_size(self) -> int:
        return self.word_embeddings.num_embeddings

    def check_length(self, length: int) -> None:
        """Refuse a sequence (image prefix + text) longer than the LM has positions for."""
        if self.max_len is not None and length > self.max_len:
            raise ValueError(
                f"sequence of {length} embeddings (image prefix + text) exceeds the language model's "
                f"{self.max_len} positions; use fewer image tokens (fusion.num_prefix, a larger patch size), "
                f"shorter text (data.max_text_len), or a language model with more positions (language_model.max_len)"
            )


def causal_mask(mask: torch.Tensor, queries: int | None = None) -> torch.Tensor:
    """SDPA mask (B, 1, T, S) from a key padding mask (B, S) for the last T = `queries` positions (all S by
    default): position i attends to real positions <= i, and always to itself, so a padding query (e.g. a
    padded image token at position 0) never has an empty row. (PyTorch's CPU kernels return zeros for an
    empty row; other kernels and versions give NaN, which poisons every later layer even at attention
    weight 0.) Real tokens attend to themselves anyway, so their outputs are unchanged by the diagonal."""
    S = mask.shape[1]
    T = S if queries is None else queries
    itself = causal_positions(T, S, device=mask.device).triu(S - T)  # (T, S): query i's own key, past + i
    return attention_mask(mask, causal=True, queries=T) | itself  # (B, 1, T, S)


class GPTDecoder(Decoder):
    """GPT-2 from scratch: wte + wpe, `depth` pre-norm causal blocks, ln_f, head tied to wte."""

    def __init__(
        self,
        vocab_size: int,
        dim: int,
        depth: int,
        heads: int,
        max_len: int = 256,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        norm_eps: float = 1e-5,
        act_layer: Activation = nn.GELU,
    ):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, dim)  # GPT-2's wte
        self.position_embeddings = nn.Embedding(max_len, dim)  # GPT-2's wpe
        self.drop = nn.Dropout(dropout)
        kw: BlockOptions = dict(
            mlp_ratio=mlp_ratio, prenorm=True, dropout=dropout, norm_eps=norm_eps, act_layer=act_layer
        )
        self.blocks = nn.ModuleList(Block(dim, heads, **kw) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=norm_eps)  # GPT-2's ln_f
        self.hidden_size, self.max_len, self.num_layers = dim, max_len, depth
        self._init_weights(depth)

    def _init_weights(self, depth: int) -> None:
        """GPT-2: normal(0, 0.02) for matrices and embeddings, zero biases, and the residual output
        projections scaled by 1/sqrt(2 * depth) (two residual additions per block)."""
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = (
                    0.02 / math.sqrt(2 * depth) if name.endswith(("self_attn.proj.weight", "mlp.fc2.weight")) else 0.02
                )
                nn.init.normal_(p, std=std)
            elif name.endswith(".bias"):  # LayerNorm biases are 0 already
                nn.init.zeros_(p)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.word_embeddings(input_ids)  # (B, T, H)

    def run(
        self,
        embeds: torch.Tensor,
        mask: torch.Tensor,
        cache: DecoderCache | None = None,
        before_layer: LayerHook | None = None,
    ) -> torch.Tensor:
        B, L, H = embeds.shape
        past = 0 if cache is None else cache.length
        self.check_length(past + L)
        pos = torch.arange(past, past + L, device=embeds.device)
        x = self.drop(embeds + self.position_embeddings(pos))  # (B, L, H)
        keys = mask.bool() if cache is None else cache.extend_mask(mask.bool())  # (B, past + L)
        attn = causal_mask(keys, L)  # (B, 1, L, past + L)
        layers = [None] * len(self.blocks) if cache is None else cache.layers
        for i, (block, layer_cache) in enumerate(zip(self.blocks, layers)):
            if before_layer is not None:
                x = before_layer(i, x)  # (B, L, H)
            x = block(x, mask=attn, cache=layer_cache)  # (B, L, H)
        return self.norm(x)

    def new_cache(self) -> DecoderCache:
        return DecoderCache(len(self.blocks))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden @ self.word_embeddings.weight.T  # (..., V): tied, no bias


class HFDecoder(Decoder):
    """Any Hugging Face `AutoModelForCausalLM`, from a local directory or the HF cache.

    `run` calls the model's base (`get_decoder()`: GPT2Model, OPTDecoder, LlamaModel) with
    `inputs_embeds` and `attention_mask` and reads `last_hidden_state` (final norm applied; OPT's
    `project_out` too, so H is the width of the input embeddings); `logits` is the model's output
    embedding (`lm_head`, tied or not). Positions are the model's own: 0..L-1 for GPT-2 and Llama
    (rotary), the count of real tokens before each one for OPT (the same for right padding and a
    prefix without padding). Models that post-process logits in `forward` (Gemma's soft-capping,
    Cohere's logit scale) are not reproduced exactly.

    `vocab_size` is the data's tokenizer's (filled by the builder). Use the model's own tokenizer
    (`data/tokenizer=hf` with the same directory): token ids mean the same words only then. mmbench adds
    [PAD] / [MASK] to a tokenizer that has none (GPT-2, Llama), so the tokenizer can exceed the model's
    table by a few ids: the table and the head are then grown to `vocab_size` (`resize_token_embeddings`,
    new rows at the mean of the old ones), as LLaVA does for its added tokens. A warning says so.
    """

    def __init__(self, name: str, vocab_size: int | None = None):
        super().__init__()
        from mmbench.models.pretrained.hub import load_hf_causal_lm  # imports transformers

        self.name = name
        self.model = load_hf_causal_lm(name)
        table = self.model.get_input_embeddings()
        assert isinstance(table, nn.Embedding)
        if vocab_size is not None and vocab_size != table.num_embeddings:
            log.warning(
                "the data's tokenizer has %d ids, the language model '%s' %d%s; ids mean the same words only "
                "with the model's own tokenizer (data/tokenizer=hf data.tokenizer.name_or_path=%s)",
                vocab_size,
                name,
                table.num_embeddings,
                f": its table and head grow by {vocab_size - table.num_embeddings} rows (added special tokens)"
                if vocab_size > table.num_embeddings
                else "",
                name,
            )
        if vocab_size is not None and vocab_size > table.num_embeddings:
            self.model.resize_token_embeddings(vocab_size)
            table = self.model.get_input_embeddings()
            assert isinstance(table, nn.Embedding)
        self.hidden_size = table.embedding_dim
        self.max_len = getattr(self.model.config, "max_position_embeddings", None)
        self.num_layers = len(self._layers())
        # the decoder's cache argument: `cache` since transformers 5, `past_key_values` before
        forward = inspect.signature(self.model.get_decoder().forward).parameters
        self._cache_arg = "cache" if "cache" in forward else "past_key_values"

    @property
    def word_embeddings(self) -> nn.Embedding:  # type: ignore[override]
        table = self.model.get_input_embeddings()
        assert isinstance(table, nn.Embedding)
        return table

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(input_ids)  # (B, T, H)

    def _layers(self) -> nn.ModuleList:
        """The decoder's layer list: `layers` (Llama, OPT, Mistral, ...) or `h` (GPT-2, GPT-J, GPT-Neo)."""
        decoder = self.model.get_decoder()
        layers = getattr(decoder, "layers", None) or getattr(decoder, "h", None)
        if not isinstance(layers, nn.ModuleList):
            raise ValueError(f"cannot find the decoder layers of {type(decoder).__name__} (no `layers` or `h` list)")
        return layers

    def run(
        self,
        embeds: torch.Tensor,
        mask: torch.Tensor,
        cache: DecoderCache | None = None,
        before_layer: LayerHook | None = None,
    ) -> torch.Tensor:
        if before_layer is None:
            return self._run(embeds, mask, cache)
        # transformers has no per-layer input hook: a forward pre-hook on each layer rewrites its hidden states
        # (the first positional argument, or `hidden_states=`) for the duration of this call
        handles = [
            layer.register_forward_pre_hook(functools.partial(_rewrite_hidden, before_layer, i), with_kwargs=True)
            for i, layer in enumerate(self._layers())
        ]
        try:
            return self._run(embeds, mask, cache)
        finally:
            for handle in handles:
                handle.remove()

    def _run(self, embeds: torch.Tensor, mask: torch.Tensor, cache: DecoderCache | None) -> torch.Tensor:
        B, L, H = embeds.shape
        if cache is None:
            self.check_length(L)
            out = self.model.get_decoder()(inputs_embeds=embeds, attention_mask=mask.long(), use_cache=False)
            return out.last_hidden_state  # (B, L, H)
        self.check_length(cache.length + L)
        keys = cache.extend_mask(mask.bool())  # (B, past + L)
        out = self.model.get_decoder()(
            inputs_embeds=embeds, attention_mask=keys.long(), use_cache=True, **{self._cache_arg: cache.hf}
        )
        cache.hf = out[self._cache_arg]  # the model's own cache (created on the first call)
        return out.last_hidden_state  # (B, L, H)

    def new_cache(self) -> DecoderCache:
        return DecoderCache()

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.get_output_embeddings()(hidden)  # (..., V)


def _rewrite_hidden(hook: LayerHook, index: int, module: nn.Module, args: tuple, kwargs: dict):
    """A forward pre-hook (with kwargs) of HF decoder layer `index`: its hidden states through `hook`."""
    if args:
        return (hook(index, args[0]), *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hook(index, kwargs["hidden_states"])}
