"""Validation of the composed config, run before anything is built.

Hydra already refuses unknown group options (listing the valid ones) and unknown keys (struct
mode). What it cannot know is checked here: values that are impossible together, and objective x
fusion pairings the fusion cannot serve. Every problem is collected and reported in one
`ConfigError` that says what is wrong and what would work.
"""

from __future__ import annotations

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf


class ConfigError(ValueError):
    """A composed config that cannot be run."""


def _capabilities(target: str):
    return getattr(get_class(target), "capabilities", None)


def validate(cfg: DictConfig) -> None:
    problems: list[str] = []
    objectives = cfg.get("objective") or {}
    if len(objectives) == 0:
        problems.append("the objective list is empty; choose at least one, e.g. objective=[itc,itm]")

    for name, ocfg in objectives.items():
        weight = ocfg.get("weight", 1.0)
        if weight is None or float(weight) < 0:
            problems.append(f"objective.{name}.weight={weight} must be a number >= 0")

    vision = cfg.encoder.vision
    if "patch_size" in vision and "image_size" in vision:
        if int(vision.image_size) % int(vision.patch_size) != 0:
            problems.append(
                f"image size {vision.image_size} is not divisible by patch size {vision.patch_size}; "
                f"use a patch size that divides it (e.g. model.patch_size={_divisor(int(vision.image_size))})"
            )

    fusion_target = cfg.fusion._target_
    fusion_name = cfg.fusion.get("name", fusion_target.rsplit(".", 1)[-1])
    caps = _capabilities(fusion_target)
    if caps is not None:
        for name, ocfg in objectives.items():
            needs = getattr(get_class(ocfg._target_), "requires", ())
            missing = [need for need in needs if not getattr(caps, need)]
            if missing:
                problems.append(
                    f"objective '{name}' needs a fusion with {', '.join(missing)}, which fusion "
                    f"'{fusion_name}' does not provide; drop '{name}' or pick a fusion that provides it "
                    f"(e.g. fusion=merged)"
                )

    for key in ("batch_size",):
        value = cfg.data.get(key)
        if value is not None and int(value) <= 0:
            problems.append(f"data.{key}={value} must be > 0")

    if problems:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))


def _divisor(n: int) -> int:
    return next(p for p in (16, 8, 4, 2, 1) if n % p == 0)


def choices_of(cfg: DictConfig) -> dict:
    """The config-group choices of a run (model, objectives, data, ...) for metrics.json and W&B."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        choices = {k: v for k, v in HydraConfig.get().runtime.choices.items() if not k.startswith("hydra")}
    else:
        choices = {}
    choices["objective"] = list(cfg.get("objective", {}).keys())
    return OmegaConf.to_container(OmegaConf.create(choices), resolve=True)


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
    from mmbench.sweep import RUN_KEYS, override_key

    # the experiment is the W&B group already; sweep_name/resume/torch_threads say how, not what
    skip = ("seed", "experiment", *RUN_KEYS)
    overrides = sorted(o for o in HydraConfig.get().overrides.task if override_key(o) not in skip)
    return ",".join(overrides) or "default"


def register_resolvers() -> None:
    """Resolvers used by conf/ (`${mmbench.run_name:}`, `${mmbench.run_group:}`, and the sweep
    directory / job directory / W&B id resolvers of mmbench.sweep); idempotent."""
    from mmbench.sweep import RESOLVERS

    resolvers = {"mmbench.run_name": (_run_name, False), "mmbench.run_group": (_run_group, False), **RESOLVERS}
    for name, (fn, cache) in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn, use_cache=cache)


def check_group_options(args: list[str], conf_dir: str) -> str | None:
    """Error message for an unknown option inside a *list* choice (`objective=[itc,nope]`), else None.

    Hydra lists the valid options for an unknown single choice (`model=nope`) but only says
    "Could not load" for an entry of a multi-select list, so the CLI checks lists itself.
    """
    from pathlib import Path

    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = [a for a in args if "=" in a and not a.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # noqa: BLE001 - Hydra reports syntax errors itself
        return None
    root = Path(conf_dir)
    for override in parsed:
        group = root / override.key_or_group
        if override.package or not group.is_dir():
            continue
        values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.value()]
        for value in values:
            if isinstance(value, str) and value.startswith("["):
                value = OverridesParser.create().parse_override(f"x={value}").value()
            names = value if isinstance(value, list) else []
            valid = sorted(p.stem for p in group.glob("*.yaml"))
            unknown = [str(n) for n in names if str(n) not in valid]
            if unknown:
                return (
                    f"unknown option(s) {unknown} in '{override.key_or_group}'; "
                    f"available options in '{override.key_or_group}': {', '.join(valid)}"
                )
    return None
