"""Weight import from Hugging Face transformers checkpoints (`model.init_from`).

One module per family maps the HF base model's state dict onto mmbench parts; this module picks
the family from the checkpoint config's `model_type` (a table, not a chain of name tests) and
applies it in three steps, used by `mmbench.builder`:

1. `adjust(cfg, info)`: the checkpoint's sizes replace the preset's (`model.dim`, depths, heads,
   `patch_size`, ...) and its vocabulary replaces the tokenizer's, so encoders, fusion *and*
   objective heads are built at the checkpoint's widths;
2. `part_kwargs`: constructor options that make the parts compute the reference function
   (LayerNorm eps, activation, pre/post-norm, [IMG] token, pooling, ...), given to `instantiate`;
3. `load(model)`: the mapped tensors are loaded part by part with `strict=True`, so every
   parameter of an imported part comes from the checkpoint; checkpoint tensors with no place in
   mmbench (e.g. CLIP's projections, task heads) are listed in one log line.

Each family module provides `MODEL_TYPE`, `PARTS` (the part classes the preset must use), `sizes`,
`part_kwargs(config, processor)` and `convert(state_map, config, model)`.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from types import ModuleType
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf, open_dict

from mmbench.config import PART_KEYS
from mmbench.models.convert import bert, clip, gpt2, lxmert, vilt, visualbert
from mmbench.models.convert.common import StateMap
from mmbench.models.pretrained.hub import load_hf_config, load_hf_json, load_hf_model

if TYPE_CHECKING:
    from transformers import PretrainedConfig

log = logging.getLogger(__name__)

FAMILIES: dict[str, ModuleType] = {m.MODEL_TYPE: m for m in (bert, vilt, clip, visualbert, lxmert, gpt2)}


class ImportConfigError(ValueError):
    """The composed config cannot receive the checkpoint (wrong part types)."""


@dataclasses.dataclass
class PretrainedInit:
    name: str  # local directory or hub id
    config: PretrainedConfig  # the checkpoint's transformers config
    family: ModuleType

    @classmethod
    def resolve(cls, name: str) -> PretrainedInit:
        config = load_hf_config(str(name))
        family = FAMILIES.get(config.model_type)
        if family is None:
            raise ValueError(
                f"model.init_from={name} is a '{config.model_type}' checkpoint; weight import supports "
                f"{sorted(FAMILIES)}. For other text/vision models use encoder/text=hf or encoder/vision=hf."
            )
        return cls(str(name), config, family)

    def check_parts(self, cfg: DictConfig) -> None:
        from hydra.utils import get_class

        wrong = []
        for part, expected in self.family.PARTS.items():
            target = OmegaConf.select(cfg, f"{PART_KEYS[part]}._target_")
            if target is None or not issubclass(get_class(target), expected):
                wrong.append(f"{PART_KEYS[part]} is {target}, needs {expected.__module__}.{expected.__name__}")
        if wrong:
            raise ImportConfigError(
                f"model.init_from={self.name} ({self.config.model_type}) cannot be loaded into this model: "
                + "; ".join(wrong)
                + ". Use the matching preset (model=vilt, clip, visualbert or lxmert; VisualBERT and LXMERT "
                "checkpoints need encoder/vision=region_feats; GPT-2 needs language_model=gpt, e.g. model=llava)."
            )

    def adjust(self, cfg: DictConfig, info):
        """(cfg, info) with the checkpoint's sizes and vocabulary; the inputs are not modified."""
        self.check_parts(cfg)
        cfg = copy.deepcopy(cfg)
        with open_dict(cfg):
            for key, value in self.family.sizes(self.config).items():
                OmegaConf.update(cfg, f"model.{key}", value, merge=False)
        text_config = getattr(self.config, "text_config", self.config)
        vocab = text_config.vocab_size
        if info.vocab_size > vocab:
            raise ValueError(
                f"the data's tokenizer has {info.vocab_size} tokens but {self.name} only {vocab}; "
                f"use the checkpoint's tokenizer (tokenizer=hf with name {self.name})"
            )
        if info.vocab_size != vocab:
            log.warning(
                "tokenizer vocabulary (%d) differs from %s's (%d): token ids only mean the same words with "
                "the checkpoint's tokenizer (tokenizer=hf)",
                info.vocab_size,
                self.name,
                vocab,
            )
        return cfg, dataclasses.replace(info, vocab_size=vocab)

    def part_kwargs(self) -> dict[str, dict]:
        """Constructor options per part; `processor` is the checkpoint's preprocessor_config.json ({} if none)."""
        return self.family.part_kwargs(self.config, load_hf_json(self.name, "preprocessor_config.json") or {})

    def load(self, model) -> dict:
        """Load the checkpoint into `model` (strict per imported part); returns a small report."""
        hf_model, loading = load_hf_model(self.name, output_loading_info=True)
        sm = StateMap(hf_model.state_dict())
        self.family.convert(sm, self.config, model)
        for part, state in sm.parts.items():
            module = getattr(model, part)
            for key, param in module.state_dict().items():  # empty placeholders (e.g. no [IMG] token)
                if param.numel() == 0 and key not in state:
                    state[key] = param
            result = module.load_state_dict(state, strict=False)
            if result.missing_keys or result.unexpected_keys:
                raise RuntimeError(
                    f"importing {self.name} into {part}: parameters not provided by the checkpoint "
                    f"{result.missing_keys}, mapped tensors the model lacks {result.unexpected_keys}"
                )
        unused = sm.unused()
        heads = sorted(loading.get("unexpected_keys", []) if isinstance(loading, dict) else [])
        log.info(
            "model.init_from=%s (%s): loaded %d tensors into %s; checkpoint tensors mmbench has no place for: %s%s",
            self.name,
            self.config.model_type,
            sum(len(s) for s in sm.parts.values()),
            ", ".join(sm.parts),
            unused or "none",
            f"; task heads not in the base model: {heads}" if heads else "",
        )
        return {"parts": sorted(sm.parts), "unused": unused, "heads": heads}
