"""Builds the run's parts from a composed config (used by train and eval entry points).

Data-derived sizes (vocabulary, answer set, special token ids) are known only once the data is
prepared. Each component receives those it declares in its constructor signature (e.g. `MLM`
takes `vocab_size`, `mask_id`, `special_ids`; `VQA` takes `num_answers`), so no component reads a
global config and no code switches on component names. The language model (`language_model`, when
configured) is built first and passed the same way to every part and objective that declares `lm`.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
from collections.abc import Callable
from typing import Any, cast

from hydra.utils import get_class, get_method, instantiate
from omegaconf import DictConfig, OmegaConf

from mmbench.config import PART_KEYS, language_model_node
from mmbench.data.datamodule import DataInfo, VLDataModule
from mmbench.models.lora import LoraSettings, apply_lora
from mmbench.models.model import MultimodalModel
from mmbench.module import MMBenchModule
from mmbench.objectives.base import Objective
from mmbench.objectives.context import run_order

log = logging.getLogger(__name__)


def _accepted(cfg: DictConfig, available: dict) -> dict:
    """The entries of `available` that the target of `cfg` accepts and the config does not set itself (absent or null)."""
    target = cfg._target_
    fn: Callable[..., Any]
    try:
        fn = get_class(target)
    except Exception:  # a function target
        fn = get_method(target)
    params = inspect.signature(fn).parameters
    return {k: v for k, v in available.items() if k in params and cfg.get(k) is None}


def data_kwargs(cfg: DictConfig, info: DataInfo) -> dict:
    """Values of `info` that the target of `cfg` accepts and the config does not set itself (absent or null)."""
    available = {f.name: getattr(info, f.name) for f in dataclasses.fields(info)}
    available["num_answers"] = info.num_answers
    return _accepted(cfg, available)


def model_kwargs(cfg: DictConfig, model: MultimodalModel) -> dict:
    """Parts of the built model that the target of `cfg` accepts and the config does not set: the width of the
    vision encoder's input features, `vision_input_dim` (MRM regresses them), the language model, `lm`
    (None without one; LM then builds no head of its own), and the whole `model` (ITC's momentum encoders
    start as copies of its encoders)."""
    return _accepted(cfg, {"vision_input_dim": model.vision_input_dim, "lm": model.language_model, "model": model})


def build_datamodule(cfg: DictConfig) -> VLDataModule:
    dm: VLDataModule = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup()
    return dm


#: options every model part (encoder/text, encoder/vision, fusion, language_model) may carry besides its constructor's
PART_OPTIONS = ("freeze", "lr_mult", "lora")


def split_part_options(cfg: DictConfig) -> tuple[DictConfig, bool, float, LoraSettings]:
    """(constructor config, freeze, lr_mult, lora) of one part config; the options default to (False, 1.0, no LoRA)."""
    resolved = cast(dict, OmegaConf.to_container(cfg, resolve=True))  # a DictConfig becomes a dict
    ctor = OmegaConf.create({k: v for k, v in resolved.items() if k not in PART_OPTIONS})
    lora = LoraSettings.from_node(resolved.get("lora"))
    return ctor, bool(cfg.get("freeze", False)), float(cfg.get("lr_mult", 1.0)), lora


def pretrained_init(cfg: DictConfig):
    """The `model.init_from` checkpoint, or None: an earlier mmbench run (`RunInit`, training in stages) or a
    Hugging Face checkpoint (`PretrainedInit`, weight import)."""
    name = cfg.model.get("init_from")
    if not name:
        return None
    from mmbench.models.convert.run import RunInit, run_checkpoint

    checkpoint = run_checkpoint(str(name))
    if checkpoint is not None:
        parts = cfg.model.get("init_parts")
        return RunInit(checkpoint, dict(cfg.model.get("init_map") or {}), None if parts is None else tuple(parts))
    from mmbench.models.convert import PretrainedInit

    return PretrainedInit.resolve(name)


def build_model(cfg: DictConfig, info: DataInfo) -> MultimodalModel:
    """Instantiate the language model (if any), text encoder, vision encoder and fusion; with
    `model.init_from`, at the checkpoint's sizes and with its weights (see mmbench/models/convert/)."""
    init = pretrained_init(cfg)
    if init is not None:
        cfg, info = init.adjust(cfg, info)
    return _build_model(cfg, info, init)


def _build_model(cfg: DictConfig, info: DataInfo, init) -> MultimodalModel:
    """`build_model` with the checkpoint already resolved and the config and data info adjusted to it."""
    overrides: dict[str, dict] = init.part_kwargs() if init is not None else {}
    # the language model first: the parts that declare `lm` receive it
    parts = {
        name: language_model_node(cfg) if name == "language_model" else OmegaConf.select(cfg, key)
        for name, key in PART_KEYS.items()
    }
    built: dict[str, Any] = {}
    frozen: list[str] = []
    lr_mult: dict[str, float] = {}
    lora: dict[str, LoraSettings] = {}
    for name, part_cfg in parts.items():
        if part_cfg is None:  # no language model (the default)
            continue
        ctor, freeze, mult, lora[name] = split_part_options(part_cfg)
        shared = _accepted(ctor, {"lm": built.get("language_model")})
        kwargs = {**data_kwargs(ctor, info), **shared, **overrides.get(name, {})}
        ctor = OmegaConf.create({k: v for k, v in ctor.items() if k not in kwargs})
        built[name] = instantiate(ctor, **kwargs)
        if freeze:
            frozen.append(name)
        if mult != 1.0:
            lr_mult[name] = mult
    model = MultimodalModel(**built, dim=cfg.model.dim, frozen=tuple(frozen), lr_mult=lr_mult)
    if init is not None:  # what was loaded and what was not: written by the run to init_from.json
        model.init_report = init.load(model)
    for name, settings in lora.items():  # after the pretrained weights: the adapters wrap the loaded layers
        if settings.r:
            _add_lora(model, name, settings)
    if cfg.model.get("gradient_checkpointing"):
        from mmbench.models.checkpointing import enable_gradient_checkpointing

        enable_gradient_checkpointing(model)
    return model


def _add_lora(model: MultimodalModel, name: str, settings: LoraSettings) -> None:
    """LoRA adapters on the model's part `name`, and a log line of what the model now trains."""
    part = getattr(model, name)
    frozen = sum(p.numel() for p in part.parameters())
    adapters = apply_lora(part, settings, PART_KEYS[name])
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log.info(
        "LoRA r=%d on %s: %s adapter parameters over its %s frozen ones; the model trains %s of %s (%.2f%%)",
        settings.r,
        PART_KEYS[name],
        f"{adapters:,}",
        f"{frozen:,}",
        f"{trainable:,}",
        f"{total:,}",
        100 * trainable / total,
    )


def _load_inherited(init, objectives: dict[str, Objective]) -> None:
    """The state that later-stage objectives take from the earlier run of `model.init_from` (`Objective.inherits`)."""
    later = [name for name, o in objectives.items() if o.from_earlier_run]
    if not later:
        return
    from mmbench.models.convert.run import RunInit

    if not isinstance(init, RunInit):
        raise ValueError(
            f"objective '{later[0]}' is a later training stage: it loads part of its state from an earlier mmbench "
            "run; give that run's directory (or a .ckpt) as model.init_from"
        )
    init.load_objectives(objectives)


def build_module(cfg: DictConfig, info: DataInfo) -> MMBenchModule:
    init = pretrained_init(cfg)  # resolved once, for the model and the objectives
    if init is not None:  # objective heads are built at the checkpoint's widths and vocabulary too
        cfg, info = init.adjust(cfg, info)
    model = _build_model(cfg, info, init)
    # built (their heads drawn from the RNG) in run order, so the config list's order changes nothing
    classes = {name: cast(type[Objective], get_class(c._target_)) for name, c in cfg.objective.items()}
    order = run_order({name: (cls.provides, cls.uses) for name, cls in classes.items()})
    objectives = {}
    for (
        name
    ) in order:  # sizes from the data (vocabulary, answers, labels) and from the built model (MRM's target width)
        ocfg = cfg.objective[name]
        objectives[name] = instantiate(ocfg, **data_kwargs(ocfg, info), **model_kwargs(ocfg, model))
    _load_inherited(init, objectives)
    module = MMBenchModule(
        model=model,
        objectives=objectives,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        weight_decay=cfg.weight_decay,
    )
    if cfg.model.get("compile"):
        module.compile_parts()
    return module
