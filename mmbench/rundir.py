"""A run directory holds one run of one config, and one process trains it at a time.

`claim` (called by train.py) decides before anything in the directory is written: it locks `<dir>/.lock`
(`fcntl.flock`, global rank 0 only), compares the config's identity (`config_identity`: the resolved config
without the keys in IGNORED, and its hash, stamped in identity.json, metrics.json and every checkpoint) with
the run already there, and starts, resumes, skips or refuses it (`RunDirError`: another config, or
`resume=false` on a directory that holds a run). `RunDir.start()` writes identity.json and `.hydra/` (Hydra's
own writer of `.hydra/` is off). The identity also names the run's W&B run (`wandb_run_id`).
The rules, the refusals and why: docs/sweeps.md §8.

The identity code is here because it exists to make that decision (and to stamp what the decision reads
back): splitting it off would put one decision in two files.

Light imports only (no torch): a refused or skipped job must stay fast.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import os
import secrets
import socket
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from omegaconf import DictConfig, OmegaConf

from mmbench.distributed import global_rank
from mmbench.overrides import RUN_KEYS, override_key
from mmbench.record import read_record, write_metrics

IDENTITY_FILE = "identity.json"
LOCK_FILE = ".lock"

# Keys that say how a run is executed or recorded, not what it computes: a run keeps its identity when
# they change (resume it with torch_threads=1, W&B on, no progress bar, checkpoints more often ...).
# Everything else is hashed, the evaluation settings (`eval`, `test`) included: they change the metrics
# a completed run reports, and re-evaluating a trained run with other settings is what mmbench-eval is
# for (a refusal that only differs there says so).
IGNORED = (
    *RUN_KEYS,  # resume, sweep_name, torch_threads
    "paths",  # where; other values under the run's own paths become placeholders
    "logger",
    "tags",  # how results are recorded (CSV, W&B)
    "callbacks.progress_bar",
    "callbacks.progress_log",
    "callbacks.lr_monitor",  # observers
    "callbacks.step_flops",
    "callbacks.last_checkpoint",
    "callbacks.model_checkpoint.save_last",  # how and when last.ckpt is written
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "data.num_workers",  # loader processes: the same batches
    "data.num_proc",
    "data.source.num_proc",  # conversion threads: the same cache entry
    "trainer.memory_check",  # a check before training; training is the same with or without it
    "model.gradient_checkpointing",  # recomputes activations: the same gradients (tests/test_checkpointing.py)
    # an experiment's lookup table (arch_sweep_matched: model name -> size row): the row a run uses is
    # resolved into model.sizes and compared there; the other rows are not what this run computes
    "matched_sizes",
)
EVAL_KEYS = ("eval", "test")  # what a completed run's metrics depend on beyond its weights
_ABSENT = object()


class RunDirError(RuntimeError):
    """The run directory cannot take this run. `kind`: "busy" (another process trains it) or "refused"
    (it holds a run of another config, or resume=false met an existing run)."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


# ------------------------------------------------------------------------------------ identity


def config_identity(cfg: DictConfig) -> tuple[str, dict]:
    """(hash, config): the resolved config without IGNORED keys, the run's paths as `${paths.<name>}`."""
    config = identity_config(cfg, resolve=True)
    return _digest(config), config


def identity_config(cfg: DictConfig, resolve: bool = True) -> dict:
    raw = cast(dict, OmegaConf.to_container(cfg, resolve=False))  # a DictConfig becomes a dict
    out = {}
    for key, value in raw.items():
        if key in IGNORED:
            continue
        if resolve:
            try:
                node = cfg[key]
                value = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
            except Exception:  # an interpolation that does not resolve: validate() refuses it later
                pass
        out[key] = value
    out = _drop_inert(_drop_ignored(out))
    return _placeholders(out, _path_roots(cfg)) if resolve else out


def _drop_ignored(tree: dict) -> dict:
    for dotted in IGNORED:
        parent, _, leaf = dotted.rpartition(".")
        node = _get(tree, parent) if parent else tree
        if isinstance(node, dict):
            node.pop(leaf, None)
    return tree


# Options that compute nothing when switched off: dropped from the identity while off, so a run started before
# the option existed keeps its identity and resumes after an upgrade. `data.augment` (no crop, no flip) and
# every model part's `lora` node (r = 0), `model.init_parts` (null: every part).
def _drop_inert(tree: dict) -> dict:
    augment = _get(tree, "data.augment")
    if isinstance(augment, dict) and augment.get("crop_scale") is None and not augment.get("flip"):
        tree["data"].pop("augment")
    model = tree.get("model")
    if isinstance(model, dict) and "init_parts" in model and model["init_parts"] is None:  # every part: as before it
        model.pop("init_parts")
    for node in _dicts(tree):
        if isinstance(node.get("lora"), dict) and not node["lora"].get("r"):
            node.pop("lora")
    return tree


def _dicts(tree: dict):
    """`tree` and every dict nested in it."""
    yield tree
    for value in list(tree.values()):
        if isinstance(value, dict):
            yield from _dicts(value)


def _path_roots(cfg: DictConfig) -> list[tuple[str, str]]:
    roots = []
    for name in cfg.get("paths") or {}:
        try:
            value = cfg.paths[name]
        except Exception:  # e.g. ${hydra:...} outside Hydra
            continue
        if isinstance(value, str) and value:
            roots.append((value.rstrip("/"), f"${{paths.{name}}}"))
    return sorted(roots, key=lambda r: -len(r[0]))  # the run directory before the log directory holding it


def _placeholders(value: Any, roots: list[tuple[str, str]]) -> Any:
    if isinstance(value, dict):
        return {k: _placeholders(v, roots) for k, v in value.items()}
    if isinstance(value, list):
        return [_placeholders(v, roots) for v in value]
    if isinstance(value, str):
        for root, name in roots:
            if value == root or value.startswith(root + "/"):
                return name + value[len(root) :]
    return value


def _digest(config: dict) -> str:
    return hashlib.sha1(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _get(tree: dict | None, dotted: str):
    for part in dotted.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def differences(old: dict, new: dict, first: tuple[str, ...] = ()) -> list[tuple[str, str, str]]:
    """(key, old, new) for every leaf that differs: keys under `first` (those set on a command line, the
    likely cause) first, then the others (values derived from them), each sorted."""
    a, b = _flat(old), _flat(new)
    keys = [key for key in a.keys() | b.keys() if a.get(key, _ABSENT) != b.get(key, _ABSENT)]
    keys.sort(key=lambda k: (not any(k == f or k.startswith(f + ".") for f in first), k))
    return [(key, _show(a.get(key, _ABSENT)), _show(b.get(key, _ABSENT))) for key in keys]


def _show(value) -> str:
    if value is _ABSENT:
        return "(not set)"
    return value if isinstance(value, str) else json.dumps(value)


def read_identity(run_dir: str | os.PathLike) -> dict | None:
    try:
        identity = json.loads((Path(run_dir) / IDENTITY_FILE).read_text())
    except (OSError, ValueError):
        return None
    return identity if isinstance(identity, dict) else None


def wandb_run_id(output_dir: str | None) -> str | None:
    """`${mmbench.wandb_id:...}`: a W&B run id stable for the run in a run directory, so a resumed job resumes its
    W&B run: from the directory and the run id in its identity.json, so a new run in a path used before (the old
    directory deleted) gets a W&B run of its own. From the path alone for a directory without one. None without
    a run directory: Hydra sets its runtime output dir only when a job runs, so a config printed with
    `--cfg job --resolve` has none (and no W&B run)."""
    if output_dir is None:
        return None
    run_id = (read_identity(output_dir) or {}).get("run_id")
    key = str(Path(output_dir).resolve()) + (f"\n{run_id}" if run_id else "")
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def checkpoint_stamp(config_hash: str):
    """A callback that writes the run's config hash into every checkpoint (`checkpoint["config_hash"]`)."""
    from pytorch_lightning.callbacks import LambdaCallback

    def stamp(trainer, module, checkpoint: dict) -> None:
        checkpoint["config_hash"] = config_hash

    return LambdaCallback(on_save_checkpoint=stamp)


# ------------------------------------------------------------------------------------ claim


@dataclass
class RunDir:
    """A claimed run directory. `state`: "new", "resume", "completed" (skip it) or "rank" (a DDP rank
    other than 0, which neither locks nor writes). Release the lock with `release()` or `with`."""

    path: Path
    state: str
    identity: dict = field(default_factory=dict)  # written to identity.json by start(); {} = keep the file
    _fd: int | None = None

    def start(self, cfg: DictConfig) -> None:
        """The run starts: identity.json (unless it is there already) and `.hydra/`."""
        if self.state == "rank":
            return
        if self.identity:
            write_metrics(self.path / IDENTITY_FILE, self.identity)  # atomic, strict JSON
        _save_hydra_files(self.path, cfg)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def claim(run_dir: str | os.PathLike, cfg: DictConfig, resume: bool = True, multirun: bool = False) -> RunDir:
    """Lock `run_dir` and decide whether this config may run there (module docstring). Raises RunDirError;
    writes nothing but the lock file."""
    run_dir = Path(run_dir)
    if global_rank() != 0:
        return RunDir(run_dir, "rank")
    fd = _lock(run_dir, multirun)
    try:
        config_hash, config = config_identity(cfg)
        state, identity = _decide(run_dir, cfg, config_hash, config, resume, multirun)
    except BaseException:
        os.close(fd)
        raise
    return RunDir(run_dir, state, identity, fd)


def _decide(
    run_dir: Path, cfg: DictConfig, config_hash: str, config: dict, resume: bool, multirun: bool
) -> tuple[str, dict]:
    overrides = _task_overrides()
    new = {
        "config_hash": config_hash,
        "run_id": secrets.token_hex(6),
        "created": _now(),
        "overrides": overrides,
        "config": config,
    }
    record = read_record(run_dir)
    stored = read_identity(run_dir)
    checkpoints = run_dir / "checkpoints"
    legacy = run_dir / ".hydra" / "config.yaml"
    if not (stored or record or legacy.is_file() or (checkpoints.is_dir() and any(checkpoints.iterdir()))):
        return "new", new
    status = (record or {}).get("status")
    status = status if status in ("completed", "failed", "diverged", "interrupted") else "unfinished"
    if not resume:
        held = f" (config {stored['config_hash']})" if stored and stored.get("config_hash") else ""
        raise RunDirError(
            f"resume=false starts a new run, but {run_dir} already holds {_a(status)} run{held}, and a run "
            f"directory is never overwritten: {_elsewhere(multirun)}; or delete {run_dir} if you no longer need "
            f"it. Without resume=false the same config skips a completed run and resumes any other.",
            "refused",
        )

    # what the directory holds: identity.json, else metrics.json (both resolved), else .hydra/config.yaml
    # of an mmbench from before identity files (unresolved, so compared unresolved); else unknown
    if stored is None and record and isinstance(record.get("config"), dict):
        stored = {
            "config_hash": record.get("config_hash"),
            "config": record["config"],
            "overrides": record.get("overrides"),
        }
    if stored is not None and isinstance(stored.get("config"), dict):
        old, current = _refiltered(stored["config"]), config
    elif legacy.is_file():
        try:
            saved = cast(DictConfig, OmegaConf.load(legacy))  # config.yaml: a mapping
            old, current = identity_config(saved, resolve=False), identity_config(cfg, resolve=False)
        except Exception:  # an unreadable config: nothing to compare with
            old = current = {}
        stored = {"overrides": _read_overrides(run_dir)}
    else:
        old = current = {}
    old_overrides = (stored or {}).get("overrides") or []
    first = tuple(override_key(str(o)) for o in [*overrides, *old_overrides])
    diffs = differences(old, current, first=first)
    if diffs and any(old_value == _show(_ABSENT) for _, old_value, _ in diffs):
        diffs = differences(with_defaults(old, current), current, first=first)
    if diffs:
        raise RunDirError(_mismatch(run_dir, status, diffs, old_overrides, multirun), "refused")
    state = "completed" if status == "completed" else "resume"
    if read_identity(run_dir) is not None or state == "completed":
        return state, {}  # the run's own identity.json stays; a skipped run gets nothing written
    # taken over from an older mmbench: no run id, so its W&B run id stays the one derived from the path
    return state, {**new, "run_id": None}


def holds(held: dict, config_hash: str, config: dict) -> bool:
    """Whether a stored identity (identity.json, or a metrics.json record) is a run of this config: the same
    hash, or the same config once the options added since it was written are filled in at their defaults
    (`with_defaults`)."""
    stored = held.get("config")
    if held.get("config_hash") == config_hash:
        return True
    return isinstance(stored, dict) and not differences(with_defaults(_refiltered(stored), config), config)


def with_defaults(old: dict, new: dict) -> dict:
    """`old` (a stored config) with every argument it lacks that `new` passes to the same `_target_` at that
    target's own default. An option added to a class after a run was written keeps the run's identity while it
    is at its default, without a rule per option: the convention (docs/sweeps.md §8) is that a new argument's
    default is the behaviour from before it existed. Set to anything else, it is another config. Imports the
    targets' modules (torch), so it runs only when a stored config lacks a key."""
    old = copy.deepcopy(old)
    for path, node in _target_nodes(new):
        before = _get(old, path) if path else old
        if not isinstance(before, dict) or before.get("_target_") != node["_target_"]:
            continue  # a node added or replaced since: nothing to fill in
        missing = [key for key in node if key not in before]
        defaults = _target_defaults(node["_target_"]) if missing else {}
        for key in missing:
            if key in defaults and _plain(defaults[key]) == node[key]:
                before[key] = node[key]
    return old


def _target_nodes(tree: dict, prefix: str = ""):
    """(dotted path, node) for every node of `tree` with a `_target_`."""
    if "_target_" in tree:
        yield prefix.rstrip("."), tree
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _target_nodes(value, f"{prefix}{key}.")


def _target_defaults(target: Any) -> dict[str, Any]:
    """The keyword defaults of a `_target_` (a class's __init__, or a function); {} for one that does not import."""
    from hydra.utils import get_object

    try:
        parameters = inspect.signature(get_object(str(target))).parameters
    except Exception:  # moved or renamed since: nothing counts as its default
        return {}
    return {name: p.default for name, p in parameters.items() if p.default is not inspect.Parameter.empty}


def _plain(value: Any) -> Any:
    """A Python default as the config holds it (a tuple is a list)."""
    return [_plain(v) for v in value] if isinstance(value, tuple) else value


def _refiltered(config: dict) -> dict:
    """A stored config with today's IGNORED keys removed (so that ignoring one more key later does not
    refuse every existing run)."""
    return _drop_ignored(copy.deepcopy(config))


def _mismatch(run_dir: Path, status: str, diffs: list[tuple[str, str, str]], overrides, multirun: bool) -> str:
    only_eval = all(key.split(".", 1)[0] in EVAL_KEYS for key, _, _ in diffs)
    shown = [f"{key}: {old} -> {new}" for key, old, new in diffs]
    what = "; ".join(shown[:3]) + (f"; and {len(shown) - 3} more" if len(shown) > 3 else "")
    what = f"only evaluation settings differ ({what})" if only_eval else what
    lines = [f"{run_dir} holds {_a(status)} run of another config: {what}; nothing in it was changed."]
    lines += [f"  {d}" for d in shown[:30]] + ([f"  ... and {len(shown) - 30} more"] if len(shown) > 30 else [])
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    if only_eval:
        settings = "".join(f" {key}={new}" for key, _, new in diffs if key != "test")
        lines.append(
            f"The trained run is the same: to evaluate it with these settings, run mmbench-eval "
            f"ckpt_path={ckpt}{settings}"
        )
    lines.append(
        f"To train this config: {_elsewhere(multirun)}. To skip or resume the run that is there, rerun it "
        "with its own config"
        + (f" (its overrides: {' '.join(map(str, overrides))})" if overrides else "")
        + ("." if only_eval else f"; to evaluate it with other settings, use mmbench-eval ckpt_path={ckpt}.")
    )
    return "\n".join(lines)


def _elsewhere(multirun: bool) -> str:
    if multirun:
        return "give this sweep its own directory with sweep_name=<a new name>, or resume=false (a new timestamped one)"
    return "give it another directory with another hydra.run.dir=..., or none (a new timestamped one)"


def _a(status: str) -> str:
    return ("an " if status[0] in "aeiou" else "a ") + status


def _now() -> str:
    return datetime.now().isoformat(timespec="seconds")


def _task_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    return [str(o) for o in HydraConfig.get().overrides.task] if HydraConfig.initialized() else []


def _read_overrides(run_dir: Path) -> list[str] | None:
    try:
        return [str(o) for o in OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")]
    except Exception:
        return None


def _save_hydra_files(run_dir: Path, cfg: DictConfig) -> None:
    """`.hydra/{config,hydra,overrides}.yaml` as Hydra writes them (hydra.core.utils.run_job), but after
    the claim instead of before the task function."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    hydra_cfg = cast(DictConfig, HydraConfig.instance().cfg)  # {"hydra": ...} (typed as HydraConf | None)
    out = run_dir / ".hydra"
    out.mkdir(parents=True, exist_ok=True)
    for name, node in (
        ("config.yaml", cfg),
        ("hydra.yaml", hydra_cfg),
        ("overrides.yaml", hydra_cfg.hydra.overrides.task),
    ):
        (out / name).write_text(OmegaConf.to_yaml(node), encoding="utf-8")


# ------------------------------------------------------------------------------------ lock


def _lock(run_dir: Path, multirun: bool) -> int:
    import fcntl

    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        then = (
            (
                "rerun this sweep when it has ended (its completed jobs are then skipped), or give this sweep its own "
                "directory with sweep_name=<a new name>"
            )
            if multirun
            else (
                "wait for it to end (rerunning the same command then skips or resumes the run), or give this run "
                "another hydra.run.dir"
            )
        )
        raise RunDirError(
            f"run directory {run_dir} is being trained by {holder}; one process trains a run directory "
            f"at a time: {then}",
            "busy",
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": _now()}).encode(), 0)
    return fd


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode())
        return f"process {info['pid']} on {info['host']} (started {info['started']})"
    except (OSError, ValueError, KeyError, TypeError):  # the holder has not written its name yet
        return "another process"
