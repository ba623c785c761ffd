"""Builds the run's parts from a composed config (used by train and eval entry points).

Data-derived sizes (vocabulary, answer set, special token ids) are known only once the data is
prepared. Each component receives those it declares in its constructor signature (e.g. `MLM`
takes `vocab_size`, `mask_id`, `special_ids`; `VQA` takes `num_answers`), so no component reads a
global config and no code switches on component names.
"""

from __future__ import annotations

import dataclasses
import inspect

from hydra.utils import get_class, get_method, instantiate
from omegaconf import DictConfig

from mmbench.data.datamodule import DataInfo, VLDataModule
from mmbench.models.model import MultimodalModel
from mmbench.module import MMBenchModule


def data_kwargs(cfg: DictConfig, info: DataInfo) -> dict:
    """Values of `info` that the target of `cfg` accepts and the config does not set itself."""
    target = cfg._target_
    try:
        fn = get_class(target)
    except Exception:  # a function target
        fn = get_method(target)
    params = inspect.signature(fn).parameters
    available = {f.name: getattr(info, f.name) for f in dataclasses.fields(info)}
    available["num_answers"] = info.num_answers
    return {k: v for k, v in available.items() if k in params and k not in cfg}


def build_datamodule(cfg: DictConfig) -> VLDataModule:
    dm: VLDataModule = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup()
    return dm


def build_model(cfg: DictConfig, info: DataInfo) -> MultimodalModel:
    parts = {
        "text_encoder": cfg.encoder.text,
        "vision_encoder": cfg.encoder.vision,
        "fusion": cfg.fusion,
    }
    built = {name: instantiate(c, **data_kwargs(c, info)) for name, c in parts.items()}
    return MultimodalModel(**built, dim=cfg.model.dim)


def build_module(cfg: DictConfig, info: DataInfo) -> MMBenchModule:
    model = build_model(cfg, info)
    objectives = {name: instantiate(c, **data_kwargs(c, info)) for name, c in cfg.objective.items()}
    return MMBenchModule(
        model=model,
        objectives=objectives,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        weight_decay=cfg.weight_decay,
    )
