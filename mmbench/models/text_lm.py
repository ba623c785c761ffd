"""Text part of decoder-LM models (LLaVA, Frozen): the language model's own token embeddings.

Returns `Features(tokens = lm.embed(ids) (B, T, H), mask (B, T), pooled = masked mean (B, H))`. Like
ViLT's depth-0 text encoder, it has no layers: the LM's layers run in the connector (fusion/prefix.py),
over the image prefix and the text together. `word_embeddings` is the LM's input table, so tied heads
(MLM) share it. No positions are added here: the LM applies them to the whole sequence, so an image
prefix shifts the text positions. `causal` changes nothing (embeddings do not mix tokens), and a token
embeds the same alone as in its sequence (`per_token = True`), which is what lets generation embed only
the newest token and continue a cached run of the LM (objectives/lm.py).

The pooled vector is a bag of embeddings, as ViLT's: what ITC reads from a model without a text tower.
"""

from __future__ import annotations

import torch
from torch import nn

from mmbench.models.decoder import Decoder
from mmbench.models.layers import masked_mean
from mmbench.models.outputs import Features


class LMEmbeddings(nn.Module):
    per_token = True  # no positions, no mixing: embedding the last token alone = its row of the whole sequence

    def __init__(self, lm: Decoder):
        super().__init__()
        # A plain reference, not a submodule: the LM is registered once, as `model.language_model`. A second
        # registration here would list its parameters under two names (the optimizer would get them twice or,
        # deduplicated, under the wrong part's lr_mult), and put its weights in the checkpoint twice.
        object.__setattr__(self, "lm", lm)

    lm: Decoder

    @property
    def word_embeddings(self) -> nn.Embedding:
        return self.lm.word_embeddings

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, causal: bool = False) -> Features:
        mask = attention_mask.bool()  # (B, T)
        tokens = self.lm.embed(input_ids)  # (B, T, H)
        return Features(tokens, mask, masked_mean(tokens, mask))
