"""Validation of the composed config, run before anything is built.

Hydra already refuses unknown group options (listing the valid ones) and unknown keys (struct
mode). What it cannot know is checked here: values that are impossible together, and objective x
fusion pairings the fusion cannot serve. Every problem is collected and reported in one
`ConfigError` (mmbench/config.py) that says what is wrong and what would work.

Numbers are checked by the rule of whatever reads them, so the two cannot disagree: the parts' and
objectives' own `setting_problems` (mmbench/checks.py; their constructors raise the same problems),
Lightning's own checks of the Trainer's batch limits and precision (plus what Lightning accepts but
misreads, e.g. a negative `gradient_clip_val`), and the optimizer and schedule built by their own
constructors on a stand-in parameter. A batch larger than the training split is refused here when the
config says the split's size (Shapes); otherwise right after the data is read (pipeline.py), and a
training step that would not fit in memory after the model is built (mmbench/memory.py).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from hydra.experimental.callback import Callback
from hydra.utils import get_class, get_method
from omegaconf import DictConfig, OmegaConf

from mmbench.checks import as_number, flag_problems
from mmbench.config import PART_KEYS, ConfigError, language_model_node

if TYPE_CHECKING:
    from mmbench.objectives.base import Objective


def _capabilities(target: str):
    return getattr(get_class(target), "capabilities", None)


def validate(cfg: DictConfig) -> None:
    """Refuse a config that cannot run, from the config alone (no data is read, nothing is built):
    every problem found, in one `ConfigError`."""
    problems = missing_problems(cfg) or _size_problems(cfg)
    if problems:  # every model width interpolates the chosen size: nothing else can be read
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))
    problems = _value_problems(cfg)
    if not problems:  # these import the parts (torch, Lightning: seconds): a plain slip is refused before them
        problems = _constructor_problems(cfg)
    if not problems:  # the checks below read the values checked above
        problems = _pairing_problems(cfg)
    if problems:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))


def missing_problems(cfg: DictConfig) -> list[str]:
    """The experiment's own required values (a top-level `???`, e.g. experiment=t2i_sweep's `t2i_tokenizer`) that
    nobody gave: checked first, as whatever interpolates them cannot be read."""
    return [
        f"{key} has no value, and this experiment needs one: give it on the command line, {key}=... (the "
        f"experiment's config file, conf/experiment/, says what it names)"
        for key in map(str, cfg)
        if key != "hydra" and OmegaConf.is_missing(cfg, key)
    ]


def stage_problems(cfg: DictConfig) -> list[str]:
    """A later training stage (`model.init_from_required`, or an objective that takes part of its state from the
    earlier run, `Objective.from_earlier_run`) without the run it starts from, and the options that need that run
    (`model.init_map`, `model.init_parts`). Read from the config alone; a multirun checks them once, before any
    job starts (`StageCheck`), as every job would refuse the same."""
    problems: list[str] = []
    init_from = cfg.model.get("init_from")
    objectives = cfg.get("objective") or {}
    later = [name for name, ocfg in objectives.items() if getattr(get_class(ocfg._target_), "from_earlier_run", False)]
    if later and not init_from:
        problems.append(
            f"objective '{later[0]}' is a later training stage: it loads part of its state from an earlier run "
            "(e.g. t2i_ar its image tokenizer, trained by objective t2i_vqvae); give that run, its directory or a "
            ".ckpt: model.init_from=outputs/runs/<the stage-1 run> (experiment=t2i_ar_stage1, then t2i_ar_stage2)"
        )
    elif cfg.model.get("init_from_required") and not init_from:
        problems.append(
            "this is a later training stage (model.init_from_required): give the run it starts from, its "
            "directory or a .ckpt, e.g. model.init_from=outputs/runs/<the earlier stage's run>"
        )
    elif cfg.model.get("init_map") and not init_from:
        problems.append(
            "model.init_map renames the tensors of the run model.init_from starts from, but model.init_from "
            "is not set: give the run this stage starts from (its directory or a .ckpt), "
            "e.g. model.init_from=outputs/runs/<the stage-1 run>"
        )
    init_parts = cfg.model.get("init_parts")
    if init_parts is not None:
        unknown = [p for p in init_parts if p not in PART_KEYS] if OmegaConf.is_list(init_parts) else [init_parts]
        if unknown or not init_parts:
            problems.append(
                f"model.init_parts={init_parts}: give a non-empty list of model parts, from {list(PART_KEYS)} "
                f"(e.g. model.init_parts=[language_model]), or null for every part"
            )
        elif not init_from and not cfg.model.get("init_from_required"):  # else said above
            problems.append(
                "model.init_parts chooses the parts taken from the run model.init_from starts from, but "
                "model.init_from is not set: give that run (its directory or a .ckpt)"
            )
    return problems


class StageCheck(Callback):
    """Hydra callback (conf/hydra/default.yaml): refuses a multirun whose every job would refuse its config for
    the same reason, a later stage without the run it starts from (`stage_problems`), once and before any job
    starts or any data is prepared: one message and exit code 2, as a single run. Skipped when the sweep varies
    `model.init_from`, `model.init_parts` or `model.init_map` itself (each job then checks its own)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from mmbench.sweep import swept_keys

        params = config.hydra.sweeper.get("params")
        swept = swept_keys(
            list(config.hydra.overrides.task), cast(dict, OmegaConf.to_container(params)) if params else {}
        )
        if {"model.init_from", "model.init_parts", "model.init_map"} & set(swept):
            return
        problems = missing_problems(config) or stage_problems(config)
        if problems:
            print("mmbench: invalid configuration:\n  - " + "\n  - ".join(problems), file=sys.stderr)
            sys.exit(2)


def _size_problems(cfg: DictConfig) -> list[str]:
    sizes = cfg.model.get("sizes")
    size = cfg.model.get("size")
    if isinstance(sizes, DictConfig) and size not in sizes:
        return [f"model.size={size} is not a size of model '{cfg.model.get('name')}'; choose one of {', '.join(sizes)}"]
    return []


def _number(cfg: DictConfig, key: str, kind: type = int):
    """The value at `key` as `kind`, None when the key is absent or null; raises ValueError on a non-number."""
    value = OmegaConf.select(cfg, key, default=None)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError
    number = kind(float(value)) if kind is int else float(value)
    if kind is int and float(value) != number:
        raise ValueError
    return number


# (key, type, lower bound, what a bound violation means): values that are impossible on their own
RANGES: tuple[tuple[str, type, float, str], ...] = (
    ("seed", int, 0, "a non-negative integer, e.g. seed=0"),
    ("trainer.max_epochs", int, -1, "a whole number of epochs >= 1 (-1: until max_steps)"),
    ("trainer.max_steps", int, -1, "a whole number of steps >= 1 (-1: no limit)"),
    ("trainer.accumulate_grad_batches", int, 1, "an integer >= 1"),
    # Lightning reads a negative clip value as "no clipping" (and trains); 0 / null say so plainly
    ("trainer.gradient_clip_val", float, 0, "a gradient norm (or value) >= 0 to clip at; 0 or null: no clipping"),
    ("trainer.log_every_n_steps", int, 1, "a step count >= 1"),  # 0 logs no training step, < 0 is read modulo
    # null (validate by trainer.val_check_interval steps) is allowed; 0 fails after the first epoch
    (
        "trainer.check_val_every_n_epoch",
        int,
        1,
        "an epoch count >= 1 (null: validate every trainer.val_check_interval steps)",
    ),
    ("trainer.num_sanity_val_steps", int, -1, "a batch count >= 0 (-1: the whole validation split)"),
    ("model.dim", int, 1, "a width >= 1"),
    ("model.heads", int, 1, "a head count >= 1"),
    ("model.text_dim", int, 1, "a width >= 1"),
    ("model.vision_dim", int, 1, "a width >= 1"),
    ("model.text_heads", int, 1, "a head count >= 1"),
    ("model.vision_heads", int, 1, "a head count >= 1"),
    ("model.text_depth", int, 0, "a layer count >= 0"),
    ("model.vision_depth", int, 0, "a layer count >= 0"),
    ("model.fusion_depth", int, 0, "a layer count >= 0"),
    ("model.patch_size", int, 1, "a patch size >= 1"),
    ("model.backbone_width", int, 1, "a width >= 1"),
    ("model.mlp_ratio", float, 1e-9, "a ratio > 0"),
    ("model.dropout", float, 0, "a probability in [0, 1)"),
    ("data.image_size", int, 16, "an image size >= 16 pixels"),
    ("data.max_text_len", int, 3, "at least 3 tokens ([CLS], a word, [SEP])"),
    ("data.batch_size", int, 1, "a batch size >= 1"),
    ("data.eval_batch_size", int, 1, "a batch size >= 1"),
    ("data.num_workers", int, 0, "a worker count >= 0"),
    ("data.vocab_size", int, 16, "a vocabulary of at least 16 tokens"),
    # a run trains, validates and tests: whatever the source, each split needs an example (when it has the key)
    ("data.source.num_train", int, 1, "at least 1 training scene"),
    ("data.source.num_val", int, 1, "at least 1 validation scene"),
    ("data.source.num_test", int, 1, "at least 1 test scene"),
    ("optimizer.lr", float, 1e-300, "a learning rate > 0, e.g. optimizer.lr=1e-3"),
    ("weight_decay", float, 0, "a weight decay >= 0"),
)
UPPER: dict[str, float] = {"model.dropout": 1.0 - 1e-9}
NONZERO = ("trainer.max_epochs", "trainer.max_steps")  # -1 means "no limit", 0 would train nothing


def _value_problems(cfg: DictConfig) -> list[str]:
    problems, checked = [], {key for key, *_ in RANGES}
    for key, kind, low, meaning in RANGES:
        try:
            value = _number(cfg, key, kind)
        except ValueError:
            value = OmegaConf.select(cfg, key)
            problems.append(f"{key}={value} is not {'an integer' if kind is int else 'a number'}; it must be {meaning}")
            continue
        if value is None:
            continue
        if value < low or value > UPPER.get(key, float("inf")) or (key in NONZERO and value == 0):
            if _alias_of(cfg, key) not in checked:  # text_dim: ${model.dim} is model.dim's problem
                problems.append(f"{key}={value}: must be {meaning}")
    seen_pairs = set()
    for dim, heads in (
        ("model.dim", "model.heads"),
        ("model.text_dim", "model.text_heads"),
        ("model.vision_dim", "model.vision_heads"),
    ):
        d, h = (_safe_number(cfg, k) for k in (dim, heads))
        if (d, h) in seen_pairs:  # the towers inherit the fusion's width and heads unless set
            continue
        seen_pairs.add((d, h))
        if d and h and d > 0 and h > 0 and d % h:
            problems.append(
                f"{dim}={d} is not divisible by {heads}={h}; attention splits the width into equal "
                f"heads: use a head count that divides it (e.g. {heads}={_head_divisor(d, h)})"
            )
    for name, ocfg in (cfg.get("objective") or {}).items():
        if not isinstance(ocfg, DictConfig) or "_target_" not in ocfg:
            problems.append(
                f"objective.{name} is not an objective node with a _target_: an objective YAML nests its "
                f"settings under its name (conf/objective/itc.yaml starts with 'itc:')"
            )
            continue
    if not isinstance(cfg.model.get("gradient_checkpointing", False), bool):
        problems.append(
            f"model.gradient_checkpointing={cfg.model.get('gradient_checkpointing')}: true (recompute each transformer "
            f"layer in the backward pass) or false"
        )
    monitor = cfg.get("monitor") or {}
    if monitor.get("mode") not in ("min", "max"):
        problems.append(f"monitor.mode={monitor.get('mode')} must be min or max")
    problems += _batch_problems(cfg)
    return problems


def _constructor_problems(cfg: DictConfig) -> list[str]:
    """What the parts' constructors, the optimizer, the schedule and Lightning's Trainer would refuse, asked of
    them (one rule in one place, mmbench/checks.py)."""
    problems = []
    for name, ocfg in (cfg.get("objective") or {}).items():
        # the objective's own check of its settings (weight, mask_prob, temperatures, ...), as its constructor runs it
        owner, settings = get_class(ocfg._target_), _ctor_kwargs(ocfg)
        check = getattr(owner, "setting_problems", None)
        found = [*flag_problems(owner, settings), *(check(**settings) if check else [])]
        problems += [f"objective.{name}.{problem}" for problem in found]
    problems += _trainer_problems(cfg)
    for key in PART_KEYS.values():
        node = OmegaConf.select(cfg, key)
        problems += _part_problems(cfg, node, key) if isinstance(node, DictConfig) else []
        problems += _lora_problems(node, key) if isinstance(node, DictConfig) else []
    return problems + _augment_problems(cfg) + _optimizer_problems(cfg)


#: Lightning's batch limits (a fraction in [0, 1] or a whole number of batches), with what 0 would mean here
BATCH_LIMITS: dict[str, str | None] = {
    "limit_train_batches": "0 batches: the run would train nothing",
    "limit_val_batches": "0 batches: nothing would be validated, and the best checkpoint is chosen by monitor.metric, "
    "which validation logs (a quick run: trainer.limit_val_batches=1)",
    "limit_test_batches": "0 batches: nothing would be tested (to skip testing: test=false)",
    "overfit_batches": None,  # 0 = off
    "val_check_interval": "0 would validate after every training batch (0.0) or fail (0); null: once per epoch",
}


def _trainer_problems(cfg: DictConfig) -> list[str]:
    """The Trainer's numbers by Lightning's own checks (they run when the Trainer is built, after the data and
    the model), and the values Lightning accepts but reads otherwise than a user means."""
    trainer = cfg.get("trainer") or {}
    problems = []
    for key, zero in BATCH_LIMITS.items():
        value = trainer.get(key)
        if value is None or (key == "limit_test_batches" and not cfg.get("test", True)):
            continue
        problem = _batch_limit_problem(key, value)
        if problem is None and zero and as_number(value) == 0:
            problem = f"trainer.{key}={value}: {zero}"
        problems += [problem] if problem else []
    if isinstance(trainer.get("val_check_interval"), float) and "check_val_every_n_epoch" in trainer:
        if trainer.get("check_val_every_n_epoch") is None:  # Lightning's DataConnector refuses it, at Trainer init
            problems.append(
                f"trainer.val_check_interval={trainer.get('val_check_interval')} is a fraction of an epoch, but "
                f"trainer.check_val_every_n_epoch=null validates by steps: give a whole number of steps"
            )
    algorithm = trainer.get("gradient_clip_algorithm")
    if algorithm is not None:
        from pytorch_lightning.utilities.enums import GradClipAlgorithmType

        if not GradClipAlgorithmType.supported_type(str(algorithm).lower()):
            valid = GradClipAlgorithmType.supported_types()
            problems.append(
                f"trainer.gradient_clip_algorithm={algorithm}: Lightning clips by {' or '.join(valid)} (default norm)"
            )
    problems += _precision_problems(trainer)
    fast = trainer.get("fast_dev_run")
    fast_number = as_number(fast) if fast is not None and not isinstance(fast, bool) else 0
    if fast_number is None or fast_number < 0:
        problems.append(f"trainer.fast_dev_run={fast}: true, false or a batch count >= 0")
    if not isinstance(trainer.get("memory_check", True), bool):
        problems.append(
            f"trainer.memory_check={trainer.get('memory_check')}: true (check that a step fits in memory) or false"
        )
    devices = trainer.get("devices")
    if isinstance(devices, int) and not isinstance(devices, bool) and devices != -1 and devices < 1:
        problems.append(f"trainer.devices={devices}: a device count >= 1, -1 (all), auto or a list of device ids")
    return problems


def _batch_limit_problem(key: str, value) -> str | None:
    """Lightning's check of a batch limit or validation interval (its `_determine_batch_limits`, and its parser
    of a time interval "DD:HH:MM:SS" for val_check_interval)."""
    from lightning_fabric.utilities.exceptions import MisconfigurationException
    from pytorch_lightning.trainer import setup

    try:
        if key == "val_check_interval" and isinstance(value, (str, DictConfig)):
            setup._parse_time_interval_seconds(value if isinstance(value, str) else dict(value))
        elif isinstance(value, bool) or as_number(value) is None:
            return f"trainer.{key}={value} is not a number; it must be a fraction in [0.0, 1.0] or a whole number of batches"
        elif value != 1:  # 1 and 1.0 are valid; Lightning logs what they mean on each call
            setup._determine_batch_limits(value, key)
    except MisconfigurationException as err:
        return f"trainer.{key}={value}: {err}"
    return None


def _precision_problems(trainer) -> list[str]:
    """Lightning's list of precisions, and fp16 autocast on CPU, which Lightning replaces with bf16 silently."""
    import warnings

    from lightning_fabric.connector import _convert_precision_to_unified_args

    precision = trainer.get("precision")
    try:
        with warnings.catch_warnings():  # "16" / "bf16" are aliases Lightning warns about; the Trainer warns again
            warnings.simplefilter("ignore")
            unified = _convert_precision_to_unified_args(precision)
    except ValueError as err:
        return [f"trainer.precision={precision}: {err}"]
    if unified == "16-mixed" and trainer.get("accelerator") == "cpu":
        return [
            f"trainer.precision={precision}: fp16 autocast does not run on CPU (Lightning would train in bf16-mixed "
            f"instead); on CPU use trainer.precision=32 (bf16 autocast measured ~8x slower there) or bf16-mixed"
        ]
    return []


#: the model part configs whose nodes (and nested nodes: a fusion's Q-Former, resampler) may declare checks


def _part_problems(cfg: DictConfig, node: DictConfig, path: str) -> list[str]:
    """The `setting_problems` a part's class declares (mmbench/checks.py: its constructor raises the same), for
    the node at `path` and the nodes nested in it; a value interpolated from another key names that key."""
    problems = []
    target = node.get("_target_")
    owner = _class_or_none(target) if target else None
    if owner is not None:
        settings = {
            str(k): node[k]
            for k in node
            if not str(k).startswith("_") and not OmegaConf.is_missing(node, k) and not OmegaConf.is_config(node[k])
        }
        check = getattr(owner, "setting_problems", None)
        for problem in [*flag_problems(owner, settings), *(check(**settings) if check else [])]:
            alias = _alias_of(cfg, f"{path}.{problem.split('=', 1)[0]}")
            problems.append(f"{path}.{problem}" + (f" (set it through {alias})" if alias else ""))
    for key in node:
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not OmegaConf.is_missing(node, key):
            problems += _part_problems(cfg, node[key], f"{path}.{key!s}")
    return problems


def _lora_problems(part: DictConfig, path: str) -> list[str]:
    """The part's `lora` node, by the check its constructor runs (mmbench/models/lora.py), and peft installed."""
    import importlib.util

    from mmbench.models.lora import LoraSettings

    node = part.get("lora")
    if node is None:
        return []
    if not isinstance(node, DictConfig):
        return [f"{path}.lora={node}: a node (r, alpha, dropout, target_modules), e.g. {path}.lora.r=16"]
    settings = cast(dict, OmegaConf.to_container(node, resolve=True))
    problems = [f"{path}.lora.{problem}" for problem in LoraSettings.setting_problems(**settings)]
    if not problems and settings.get("r") and importlib.util.find_spec("peft") is None:
        problems.append(f"{path}.lora.r={settings['r']}: LoRA needs the peft library (pip install 'mmbench[hf]')")
    return problems


def _augment_problems(cfg: DictConfig) -> list[str]:
    """`data.augment` by the check the data module runs (mmbench/data/augment.py), and no flip on Shapes, whose
    captions, questions and claims state left / right relations that a mirrored image makes false."""
    from mmbench.data.augment import Augment

    node = OmegaConf.select(cfg, "data.augment")
    if node is None:
        return []
    if not isinstance(node, DictConfig):
        return [f"data.augment={node}: a node (crop_scale, crop_ratio, flip), e.g. data.augment.crop_scale=[0.5,1.0]"]
    settings = cast(dict, OmegaConf.to_container(node, resolve=True))
    problems = [f"data.augment.{problem}" for problem in Augment.setting_problems(**settings)]
    source = str(OmegaConf.select(cfg, "data.source._target_") or "")
    if settings.get("flip") is True and source.startswith("mmbench.data.shapes."):
        problems.append(
            "data.augment.flip=true on Shapes: its captions, questions and claims say which object is left of "
            "which, and a mirrored image makes them false; crop only (data.augment.crop_scale=[0.5,1.0])"
        )
    return problems


def _class_or_none(target: str):
    """The class `target` names; None for a function (a pooling, a partial), which declares no checks."""
    from hydra.utils import get_object

    try:
        found = get_object(target)
    except Exception:  # a target that does not import: instantiation reports it
        return None
    return found if isinstance(found, type) else None


def _batch_problems(cfg: DictConfig) -> list[str]:
    """A batch larger than the training split, where the config says the split's size: Shapes' scenes x captions
    per image (every (image, caption) pair is one example, mmbench/data/dataset.py). The loader keeps its last
    partial batch, so such a batch is the whole split at every step; other sources are checked once read."""
    batch = _safe_number(cfg, "data.batch_size")
    scenes = _safe_number(cfg, "data.source.num_train")
    captions = _safe_number(cfg, "data.source.captions_per_image")
    if not (batch and scenes and captions) or min(batch, scenes, captions) < 1 or batch <= scenes * captions:
        return []
    examples = scenes * captions
    return [
        f"data.batch_size={batch} is larger than the training split: {scenes} scenes x {captions} captions = "
        f"{examples} (image, caption) examples, so every step would hold the whole split; use data.batch_size <= "
        f"{examples} (default 64), or more training scenes (data.source.num_train >= {-(-batch // captions)})"
    ]


def _alias_of(cfg: DictConfig, key: str) -> str | None:
    """`model.dim` when the value at `key` is written `${model.dim}`, else None."""
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    child = node._get_node(leaf) if isinstance(node, DictConfig) and leaf in node else None
    raw = child._value() if child is not None else None
    if isinstance(raw, str) and raw.startswith("${") and raw.endswith("}") and raw.count("$") == 1:
        return raw[2:-1]
    return None


def _safe_number(cfg: DictConfig, key: str) -> int | None:
    try:
        return _number(cfg, key)
    except ValueError:
        return None


def _head_divisor(dim: int, heads: int) -> int:
    return min((h for h in range(1, dim + 1) if dim % h == 0), key=lambda h: (abs(h - heads), h))


def _pairing_problems(cfg: DictConfig) -> list[str]:
    """Choices that cannot work together: objective x fusion, encoders / objectives x data, eval, monitor."""
    problems: list[str] = []
    objectives = cfg.get("objective") or {}
    if len(objectives) == 0:
        problems.append("the objective list is empty; choose at least one, e.g. objective=[itc,itm]")

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

    vision_encoder = get_class(cfg.encoder.vision._target_)
    for name, ocfg in objectives.items():  # e.g. MRM hides input tokens: not every vision encoder can
        objective = cast("type[Objective]", get_class(ocfg._target_))
        problems += objective.vision_problems(name, vision_encoder, **_ctor_kwargs(ocfg))

    problems += _language_model_problems(cfg)
    problems += _data_source_problems(cfg)
    problems += _data_field_problems(cfg)
    problems += _eval_problems(cfg)
    problems += _monitor_problems(cfg)
    problems += _search_problems(cfg)
    problems += stage_problems(cfg)
    init_from = cfg.model.get("init_from")
    if init_from and _looks_like_path(str(init_from)) and not Path(str(init_from)).expanduser().exists():
        problems.append(
            f"model.init_from={init_from}: no such directory; give a directory written by "
            f"save_pretrained or a hub id (e.g. dandelin/vilt-b32-mlm)"
        )
    return problems


#: torch's words for the optimizer settings it refuses -> what would work
OPTIMIZER_HINTS = {
    "beta": "betas in [0, 1), e.g. optimizer.betas=[0.9,0.98]",
    "epsilon": "eps >= 0, e.g. optimizer.eps=1e-6",
    "learning rate": "lr > 0, e.g. optimizer.lr=1e-3",
    "weight_decay": "weight_decay >= 0",
    "momentum": "momentum >= 0",
}


def _optimizer_problems(cfg: DictConfig) -> list[str]:
    """What the optimizer and the schedule refuse, asked of their own constructors, called as the module calls
    them (`optimizer(params=groups)`, `scheduler(optimizer, total_steps=...)`) on a stand-in parameter."""
    import torch
    from hydra.utils import instantiate

    optimizer_cfg = cfg.get("optimizer")
    if not optimizer_cfg or "_target_" not in optimizer_cfg:
        return []
    if "weight_decay" in optimizer_cfg:  # the constructor would take it, and every parameter group override it
        value = optimizer_cfg.weight_decay
        instead = (
            f"weight_decay={value}" if (as_number(value) or 0) >= 0 else "weight_decay >= 0, e.g. weight_decay=0.01"
        )
        return [
            f"optimizer.weight_decay={value} is not read: the module gives each parameter group its weight decay "
            f"from the top-level key (matrices decay, biases and norms do not); use {instead} instead"
        ]
    group = {"params": [torch.nn.Parameter(torch.zeros(1))], "weight_decay": float(cfg.get("weight_decay") or 0.0)}
    try:
        optimizer = instantiate(optimizer_cfg)(params=[group])
    except Exception as err:
        hint = next((h for word, h in OPTIMIZER_HINTS.items() if word in str(err).lower()), None)
        name = str(optimizer_cfg._target_).rsplit(".", 1)[-1]
        return [f"optimizer ({name}) refuses its settings: {err}" + (f"; {hint}" if hint else "")]
    scheduler_cfg = cfg.get("scheduler")
    if scheduler_cfg and "_target_" in scheduler_cfg:
        try:
            instantiate(scheduler_cfg)(optimizer, total_steps=1000)
        except Exception as err:
            return [f"scheduler ({str(scheduler_cfg._target_).rsplit('.', 1)[-1]}): {err}"]
    return []


#: model parts that may take the language model (a constructor parameter `lm`), by config key
LM_USERS = {"encoder/text": "encoder.text", "encoder/vision": "encoder.vision", "fusion": "fusion"}


def _language_model_problems(cfg: DictConfig) -> list[str]:
    """A part that runs a language model (a constructor parameter `lm`, e.g. fusion=prefix), or an objective
    that requires one (a parameter `lm` without a default, e.g. lm_text), needs one configured; a configured language model needs a part that runs it (else it is dead weight)."""
    import inspect

    users, needs = [], []
    for group, key in LM_USERS.items():
        target = OmegaConf.select(cfg, f"{key}._target_")
        if target is None:
            continue
        param = inspect.signature(get_class(target)).parameters.get("lm")
        if param is not None:
            users.append(f"{group} '{target.rsplit('.', 1)[-1]}'")
            if param.default is inspect.Parameter.empty:
                needs.append(users[-1])
    for name, ocfg in (cfg.get("objective") or {}).items():  # an objective that trains the LM alone (lm_text)
        param = inspect.signature(get_class(ocfg._target_)).parameters.get("lm") if ocfg.get("_target_") else None
        if param is not None and param.default is inspect.Parameter.empty:
            needs.append(f"objective '{name}'")
    has_lm = language_model_node(cfg) is not None
    if needs and not has_lm:
        return [
            f"{' and '.join(needs)} {'uses' if len(needs) == 1 else 'use'} a language model but none is configured; add one: "
            f"language_model=gpt (from scratch) or language_model=hf language_model.name=<dir or hub id>"
        ]
    if has_lm and not users:
        return [
            f"language_model={cfg.language_model._target_.rsplit('.', 1)[-1]} is configured but no part runs it "
            f"(encoder/text, encoder/vision and fusion take no `lm`); drop it (language_model=none) or use a "
            f"connector that does (fusion=prefix with encoder/text=lm_embeddings, e.g. model=llava)"
        ]
    return []


def _search_problems(cfg: DictConfig) -> list[str]:
    """A search over objective weights must not optimise the weighted loss those weights scale."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    params = HydraConfig.get().sweeper.get("params") or {}
    weights = sorted(str(k) for k in params if str(k).startswith("objective.") and str(k).endswith(".weight"))
    metric = str((cfg.get("monitor") or {}).get("metric"))
    if weights and metric == "val/loss":
        return [
            f"the sweep varies {', '.join(weights)} while optimising monitor.metric=val/loss, the weighted sum of "
            f"the objective losses: lowering a weight lowers the target by construction. Optimise a metric the "
            f"weights do not scale, e.g. monitor.metric=val/vqa/acc monitor.mode=max (the hparams_search=optuna default)"
        ]
    return []


def _looks_like_path(value: str) -> bool:
    """A local path rather than a hub id (`owner/name`): absolute, relative with ./ or ../, or ~."""
    return value.startswith(("/", "./", "../", "~")) or value.count("/") > 1


def _source_declaration(cfg: DictConfig, name: str):
    """(function, settings) of what the data source's module declares beside its builder (`name` is
    `provided_fields` or `config_problems`, see mmbench/data/shapes.py and hf.py), or (None, None)."""
    source = cfg.data.get("source")
    target = source.get("_target_") if source is not None else None
    if not target:
        return None, None
    try:
        declared = get_method(target.rsplit(".", 1)[0] + "." + name)
    except Exception:  # a source without the declaration is not checked
        return None, None
    resolved = cast(dict, OmegaConf.to_container(source, resolve=True))  # a DictConfig becomes a dict
    settings = {k: v for k, v in resolved.items() if not k.startswith("_")}
    return declared, settings


def _data_source_problems(cfg: DictConfig) -> list[str]:
    """The data source's own check of its settings (e.g. more scenes than Shapes' grid allows, a
    local path that does not exist)."""
    check, settings = _source_declaration(cfg, "config_problems")
    return check(**settings) if check else []


def _data_field_problems(cfg: DictConfig) -> list[str]:
    """Fields the encoders and objectives read that the configured data does not provide. A data source
    declares them in a `provided_fields(**source config)` function beside its builder (shapes, hf)."""
    provided_fields, settings = _source_declaration(cfg, "provided_fields")
    if provided_fields is None:
        return []
    provided = provided_fields(**settings)
    data_name = (
        cfg.data.get("name")
        or cfg.data.source.get("benchmark")
        or cfg.data.source._target_.rsplit(".", 1)[-1].removeprefix("build_")
    )
    problems = []
    readers = [
        (
            f"encoder/vision '{cfg.encoder.vision._target_.rsplit('.', 1)[-1]}'",
            getattr(get_class(cfg.encoder.vision._target_), "batch_fields", ()),
        )
    ]
    for name, ocfg in (cfg.get("objective") or {}).items():
        objective = cast("type[Objective]", get_class(ocfg._target_))
        readers.append((f"objective '{name}'", objective.fields_read(**_ctor_kwargs(ocfg))))
    for who, fields in readers:
        missing = [f for f in fields if f not in provided]
        if missing:
            problems.append(
                f"{who} reads {', '.join(missing)}, which data '{data_name}' does not provide "
                f"(it provides {', '.join(sorted(provided))}); drop it or use data that has them" + _field_hint(missing)
            )
    return problems


def _ctor_kwargs(ocfg: DictConfig) -> dict:
    """The constructor arguments an objective config gives (resolved, without `_target_` and friends)."""
    resolved = cast(dict, OmegaConf.to_container(ocfg, resolve=True))  # a DictConfig becomes a dict
    return {k: v for k, v in resolved.items() if not k.startswith("_")}


def _field_hint(missing: list[str]) -> str:
    if "pixel_values_right" in missing:
        return " (two images per example: NLVR2's released files, data=nlvr2 data.root=<dir>)"
    if "region_feats" in missing:
        return " (Shapes has boxes, not precomputed features: encoder/vision=region)"
    if "region_labels" in missing:
        return (
            " (MRM's classification term predicts the objects' labels: map them with data.source.columns."
            "region_labels, or set objective.mrm.classification_weight=0 for feature regression only)"
        )
    if "negative_ids" in missing:
        return (
            " (ITM's text_negatives pairs each image with its caption's hard negative, the column "
            "caption_negatives, which Shapes writes: use data=shapes or objective.itm.text_negatives=false)"
        )
    if any(f.startswith("question") or f == "answer_scores" for f in missing):
        return " (VQA needs questions and answers: data.source.columns.question / answers)"
    return ""


def _eval_problems(cfg: DictConfig) -> list[str]:
    """Unknown protocol names, and settings a default protocol does not take (a typo such as
    eval.retrieval.rerank=8 would otherwise fail after training)."""
    from mmbench.metrics import EVAL_DEFAULTS, clean_protocols, protocol_names

    ev = cfg.get("eval") or {}
    valid = protocol_names(ev)
    unknown = [p for p in (ev.get("protocols") or []) if p not in valid]
    if unknown:
        return [
            f"eval.protocols: unknown protocol(s) {unknown}; valid: {', '.join(valid)} "
            "(a protocol of your own: a node eval.<name> with its function as _target_, docs/design.md)"
        ]
    defaults = cast(DictConfig, OmegaConf.load(EVAL_DEFAULTS))  # a mapping
    problems = []
    for name in clean_protocols(defaults):
        node, default = ev.get(name) or {}, defaults[name]
        if node.get("_target_", default._target_) != default._target_:
            continue  # a protocol of the user's own: its function checks its settings
        extra = sorted(set(node) - set(default))
        if extra:
            problems.append(
                f"eval.{name}: unknown setting(s) {extra}; valid: {', '.join(k for k in default if k[0] != '_')}"
            )
    captioning = ev.get("captioning") or {}
    if (
        "captioning" in defaults
        and captioning.get("_target_", defaults.captioning._target_) == defaults.captioning._target_
    ):
        from mmbench.metrics.captioning import setting_problems

        settings = {k: captioning.get(k, defaults.captioning.get(k)) for k in ("tokenizer", "scorers")}
        problems += [f"eval.captioning.{p}" for p in setting_problems(**settings)]
    retrieval = ev.get("retrieval") or {}
    if (
        "retrieval" in defaults
        and retrieval.get("_target_", defaults.retrieval._target_) == defaults.retrieval._target_
    ):
        from mmbench.metrics.retrieval import RERANK_RULES

        rule = retrieval.get("rerank_rule", defaults.retrieval.get("rerank_rule"))
        if rule not in RERANK_RULES:
            problems.append(
                f"eval.retrieval.rerank_rule={rule}: valid rules are {', '.join(RERANK_RULES)} "
                f"(itm: ALBEF's ITM score; itm_itc: BLIP's ITM + ITC)"
            )
    return problems


def _monitor_problems(cfg: DictConfig) -> list[str]:
    """The monitored metric must be one the run logs at validation: val/loss or val/<objective>/<name>."""
    metric = str((cfg.get("monitor") or {}).get("metric"))
    objectives = list(cfg.get("objective") or {})
    parts = metric.split("/")
    if metric == "val/loss" or (len(parts) == 3 and parts[0] == "val" and parts[1] in objectives):
        return []
    examples = ", ".join(["val/loss", *(f"val/{o}/loss" for o in objectives[:2])])
    return [
        f"monitor.metric={metric} is not logged by this run; use val/loss or val/<objective>/<metric> "
        f"of one of its objectives ({', '.join(objectives)}), e.g. {examples}"
    ]


def _divisor(n: int) -> int:
    return next(p for p in (16, 8, 4, 2, 1) if n % p == 0)
