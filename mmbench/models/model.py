"""`MultimodalModel`: every architecture is text encoder + vision encoder + fusion (+ a language model).

Objectives talk to the model only through three calls (see docs/design.md):

    text  = model.encode_text(input_ids, attention_mask)   # Features
    image = model.encode_image(batch)                       # Features
    joint = model.fuse(text, image, causal_text=False)      # Fused

`encode_image(batch, hide=InputMask(selected, embedding))` is the same call with some input tokens
hidden before the vision encoder's first layer (masked region / patch modeling). Only encoders
with `maskable_inputs = True` take it (their `forward(batch, hide=...)`); the others are refused
here, by name, before anything runs.

The optional fourth part, `language_model` (a `Decoder`, mmbench/models/decoder.py), is not a fourth
call: the text part embeds with it and the connector runs it (LLaVA / Frozen: fusion/prefix.py), so
the three calls stay the whole interface. It is registered here, once, so that `freeze` / `lr_mult`
name it like any part and its parameters appear once in the optimizer; the parts that use it hold a
plain reference. The LM objective reads its next-token head (`language_model.logits`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from mmbench.models.decoder import Decoder
from mmbench.models.outputs import Capabilities, Features, Fused, InputMask

if TYPE_CHECKING:
    from mmbench.data.batch import Batch

PARTS = ("text_encoder", "vision_encoder", "fusion", "language_model")


class MultimodalModel(nn.Module):
    """Text encoder + vision encoder + fusion, and optionally the decoder language model they share.

    `frozen` parts get `requires_grad=False` and stay in eval mode (no dropout, fixed norm
    statistics) when the model is put in training mode. `lr_mult` maps a part to a multiplier of
    the base learning rate; the LightningModule turns it into optimizer parameter groups.
    """

    def __init__(
        self,
        text_encoder: nn.Module,
        vision_encoder: nn.Module,
        fusion: nn.Module,
        dim: int,
        frozen: tuple[str, ...] = (),
        lr_mult: dict[str, float] | None = None,
        language_model: Decoder | None = None,
    ):
        super().__init__()
        self.text_encoder = text_encoder
        self.vision_encoder = vision_encoder
        self.fusion = fusion
        self.language_model = language_model
        self.dim = dim
        if language_model is not None and language_model.hidden_size != dim:
            raise ValueError(
                f"the language model's hidden size is {language_model.hidden_size} but model.dim={dim}: the fused "
                f"tokens are the language model's states, so set model.dim={language_model.hidden_size}"
            )
        present = [p for p in PARTS if getattr(self, p) is not None]
        unknown = [p for p in [*frozen, *(lr_mult or {})] if p not in present]
        if unknown:
            raise ValueError(f"unknown model part(s) {unknown}; this model's parts are {present}")
        self.frozen = tuple(frozen)
        self.lr_mult = {part: float(m) for part, m in (lr_mult or {}).items()}
        #: what `model.init_from` loaded into this model and what it did not (mmbench/models/convert/run.py); None: no run
        self.init_report: dict | None = None
        for part in self.frozen:
            getattr(self, part).requires_grad_(False)
        self.train()

    def train(self, mode: bool = True) -> MultimodalModel:
        super().train(mode)
        for part in self.frozen:
            getattr(self, part).eval()
        return self

    @property
    def capabilities(self) -> Capabilities:
        caps = self.fusion.capabilities  # a class attribute of every fusion
        assert isinstance(caps, Capabilities)
        return caps

    @property
    def word_embeddings(self) -> nn.Module:
        """Input word embeddings, tied to the output layer of MLM / LM heads: an `nn.Embedding`, or a
        `ProjectedEmbedding` for a pretrained table of another width; heads read its `weight` (V, D)."""
        table = self.text_encoder.word_embeddings
        assert isinstance(table, nn.Module)
        return table

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, causal: bool = False) -> Features:
        return self.text_encoder(input_ids, attention_mask, causal=causal)

    @property
    def vision_input_dim(self) -> int | None:
        """Width of the vision encoder's `Features.inputs` (MRM's regression target); None when it has none."""
        return getattr(self.vision_encoder, "input_dim", None)

    def encode_image(self, batch: Batch, hide: InputMask | None = None) -> Features:
        if hide is None:
            return self.vision_encoder(batch)
        if not getattr(self.vision_encoder, "maskable_inputs", False):
            raise ValueError(
                f"vision encoder {type(self.vision_encoder).__name__} cannot hide input tokens before its layers "
                f"(maskable_inputs is not set), which masked region modeling needs; encoders that can: PatchEncoder, "
                f"ConvEncoder, RegionEncoder, RegionFeatureEncoder (encoder/vision=patch, vit, conv, region, region_feats)"
            )
        return self.vision_encoder(batch, hide=hide)

    def fuse(self, text: Features, image: Features, causal_text: bool = False) -> Fused:
        return self.fusion(text, image, causal_text=causal_text)
