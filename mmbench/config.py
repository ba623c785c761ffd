"""Composing the config: conf/ as `mmbench-train` composes it, and what is read from the composition.

- `compose_train`: conf/train.yaml with overrides, for scripts and tests (the only composer outside the CLI);
- `register_resolvers`: the `${mmbench.*:}` resolvers conf/ uses (run name and group here, the sweep's in
  mmbench/sweep.py, the W&B run id in mmbench/rundir.py); `check_group_options`: the CLI's check of list
  choices (`objective=[itc,nope]`);
- `choices_of` (the group choices of a run), `language_model_node` (the language model part, if any) and
  `PART_KEYS` (each model part's config key);
- `ConfigError`: a composed config that cannot be run. `validate` (mmbench/validation.py) raises it; so
  do the data sources and pipeline.py's W&B check, for what only they can know.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

from omegaconf import DictConfig, OmegaConf


class ConfigError(ValueError):
    """A composed config that cannot be run."""


#: each model part's config key, the language model first (the builder builds it first: the parts that run it
#: receive it)
PART_KEYS = {
    "language_model": "language_model",
    "text_encoder": "encoder.text",
    "vision_encoder": "encoder.vision",
    "fusion": "fusion",
}


def language_model_node(cfg: DictConfig) -> DictConfig | None:
    """The `language_model` part config, None without one: null (language_model=none), or a node with no
    `_target_` (only options, e.g. model=frozen's `freeze: true` merged over language_model=none)."""
    node = cfg.get("language_model")
    return node if node is not None and node.get("_target_") else None


def choices_of(cfg: DictConfig) -> dict:
    """The config-group choices of a run (model, objectives, data, ...) for metrics.json and W&B."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        choices = {k: v for k, v in HydraConfig.get().runtime.choices.items() if not k.startswith("hydra")}
    else:
        choices = {}
    choices["objective"] = list(cfg.get("objective", {}).keys())
    return cast(dict, OmegaConf.to_container(OmegaConf.create(choices), resolve=True))  # a DictConfig: a dict


def _run_group() -> str | None:
    """W&B group: the multirun's directory name (one group per sweep); None for single runs."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN:
        from pathlib import Path

        return Path(hc.sweep.dir).name
    return None


def _run_name() -> str:
    """Run name from the overrides (seed excluded so seeds of one setting share a name)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return "default"
    from mmbench.overrides import RUN_KEYS, override_key

    # the experiment is the W&B group already; sweep_name/resume/torch_threads say how, not what
    skip = ("seed", "experiment", *RUN_KEYS)
    overrides = sorted(o for o in HydraConfig.get().overrides.task if override_key(o) not in skip)
    return ",".join(overrides) or "default"


def register_resolvers() -> None:
    """Resolvers used by conf/ (`${mmbench.run_name:}`, `${mmbench.run_group:}`, the sweep directory / job
    directory resolvers of mmbench.sweep and the W&B run id of mmbench.rundir); idempotent."""
    from mmbench.rundir import wandb_run_id
    from mmbench.sweep import RESOLVERS

    resolvers: dict[str, tuple[Callable[..., Any], bool]] = {
        "mmbench.run_name": (_run_name, False),
        "mmbench.run_group": (_run_group, False),
        **RESOLVERS,
        "mmbench.wandb_id": (wandb_run_id, False),
    }
    for name, (fn, cache) in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn, use_cache=cache)


def check_group_options(args: list[str], conf_dir: str) -> str | None:
    """Error message for an unknown option inside a *list* choice (`objective=[itc,nope]`), else None.

    Hydra lists the valid options for an unknown single choice (`model=nope`) but only says
    "Could not load" for an entry of a multi-select list, so the CLI checks lists itself. Options are
    looked up in `conf_dir` and in the `file://` directories of a `hydra.searchpath=[...]` override
    (a user's own parts, docs/design.md); with another kind of search path entry (`pkg://`) it leaves
    the check to Hydra.
    """
    from pathlib import Path

    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = [a for a in args if "=" in a and not a.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # Hydra reports syntax errors itself
        return None
    roots = [Path(conf_dir)]
    for override in parsed:
        if override.key_or_group == "hydra.searchpath":
            value = override.value()
            entries = value if isinstance(value, list) else [value]
            if not all(str(e).startswith("file://") for e in entries):
                return None
            roots += [Path(str(e)[len("file://") :]) for e in entries]
    for override in parsed:
        groups = [root / override.key_or_group for root in roots]
        if override.package or not any(g.is_dir() for g in groups):
            continue
        values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.value()]
        for value in values:
            if isinstance(value, str) and value.startswith("["):
                value = OverridesParser.create().parse_override(f"x={value}").value()
            names = value if isinstance(value, list) else []
            valid = sorted({p.stem for g in groups for p in g.glob("*.yaml")})
            unknown = [str(n) for n in names if str(n) not in valid]
            if unknown:
                return (
                    f"unknown option(s) {unknown} in '{override.key_or_group}'; "
                    f"available options in '{override.key_or_group}': {', '.join(valid)}"
                )
    return None


CONFIG_DIR = Path(__file__).resolve().parent.parent / "conf"


def compose_train(overrides: Sequence[str] = (), output_dir: str | Path | None = None) -> DictConfig:
    """conf/train.yaml composed with `overrides` as `mmbench-train` composes it, for scripts and tests:
    the Hydra config is set (so ${hydra:...} resolves) and then removed from the result, as the CLI
    hands its task function a config without it; `output_dir` sets paths.output_dir."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
        if output_dir is not None:
            cfg.paths.output_dir = str(output_dir)
    return cfg
