"""Validation of the composed config, run before anything is built.

Hydra already refuses unknown group options (listing the valid ones) and unknown keys (struct
mode). What it cannot know is checked here: values that are impossible together, and objective x
fusion pairings the fusion cannot serve. Every problem is collected and reported in one
`ConfigError` (mmbench/config.py) that says what is wrong and what would work.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, cast

from hydra.utils import get_class, get_method
from omegaconf import DictConfig, OmegaConf

from mmbench.config import ConfigError, language_model_node

if TYPE_CHECKING:
    from mmbench.objectives.base import Objective


def _capabilities(target: str):
    return getattr(get_class(target), "capabilities", None)


def validate(cfg: DictConfig) -> None:
    """Refuse a config that cannot run, from the config alone (no data is read, nothing is built):
    every problem found, in one `ConfigError`."""
    problems = _size_problems(cfg)
    if problems:  # every model width interpolates the chosen size: nothing else can be read
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))
    problems = _value_problems(cfg)
    if not problems:  # the checks below read the values checked above
        problems = _pairing_problems(cfg)
    if problems:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))


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
        weight = ocfg.get("weight", 1.0)
        if weight is None or not _is_number(weight) or float(weight) < 0:
            problems.append(f"objective.{name}.weight={weight} must be a number >= 0")
    monitor = cfg.get("monitor") or {}
    if monitor.get("mode") not in ("min", "max"):
        problems.append(f"monitor.mode={monitor.get('mode')} must be min or max")
    return problems


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


def _is_number(value) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return not isinstance(value, bool)


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
    init_from = cfg.model.get("init_from")
    if cfg.model.get("init_from_required") and not init_from:
        problems.append(
            "this is a later training stage (model.init_from_required): give the run it starts from, its "
            "directory or a .ckpt, e.g. model.init_from=outputs/runs/<the stage-1 run>"
        )
    elif cfg.model.get("init_map") and not init_from:
        problems.append(
            "model.init_map renames the tensors of the run model.init_from starts from, but model.init_from "
            "is not set: give the run this stage starts from (its directory or a .ckpt), "
            "e.g. model.init_from=outputs/runs/<the stage-1 run>"
        )
    if init_from and _looks_like_path(str(init_from)) and not Path(str(init_from)).expanduser().exists():
        problems.append(
            f"model.init_from={init_from}: no such directory; give a directory written by "
            f"save_pretrained or a hub id (e.g. dandelin/vilt-b32-mlm)"
        )
    return problems


#: model parts that may take the language model (a constructor parameter `lm`), by config key
LM_USERS = {"encoder/text": "encoder.text", "encoder/vision": "encoder.vision", "fusion": "fusion"}


def _language_model_problems(cfg: DictConfig) -> list[str]:
    """A part that runs a language model (a constructor parameter `lm`, e.g. fusion=prefix) needs one
    configured; a configured language model needs a part that runs it (else it is dead weight)."""
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
    has_lm = language_model_node(cfg) is not None
    if needs and not has_lm:
        return [
            f"{' and '.join(needs)} use a language model but none is configured; add one: "
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
