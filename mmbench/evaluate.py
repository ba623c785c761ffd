"""`mmbench-eval ckpt_path=...`: re-run the evaluation suite of training on any checkpoint.

Thin Hydra entry point (conf/eval.yaml). It reads the training run's `.hydra/config.yaml` beside
`checkpoints/`, applies the data overrides, rebuilds datamodule and module (mmbench.builder),
loads the weights and runs `mmbench.metrics.suite.evaluate_suite`, then writes metrics.json,
report.md, robustness.png and the logger outputs into its own `outputs/evals/<time>/`. The
training run's directory is opened read-only. Heavy imports happen after Hydra parsed the command
line, so `--help` stays fast.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, cast

import hydra
from omegaconf import DictConfig, OmegaConf

from mmbench import config
from mmbench.config import register_resolvers

if TYPE_CHECKING:
    from mmbench.data.dataset import PairDataset

register_resolvers()

CONFIG_DIR = str(config.CONFIG_DIR)


class EvalError(ValueError):
    """A checkpoint or override that cannot be evaluated."""


def main() -> None:
    """Console entry point."""
    evaluate()


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def evaluate(cfg: DictConfig) -> None:
    try:
        run_eval(cfg)
    except EvalError as err:
        print(f"mmbench-eval: {err}", file=sys.stderr)
        sys.exit(2)


def training_config(ckpt_path: str | Path) -> tuple[DictConfig, Path]:
    """The training run's composed config (unresolved) and its directory, from a checkpoint path."""
    ckpt = Path(ckpt_path).expanduser().resolve()
    if not ckpt.is_file():
        raise EvalError(
            f"ckpt_path={ckpt_path} is not a file; pass a run's checkpoint, e.g. "
            f"ckpt_path=outputs/runs/<time>/checkpoints/best.ckpt"
        )
    run_dir = ckpt.parent.parent
    saved = run_dir / ".hydra" / "config.yaml"
    if not saved.is_file():
        raise EvalError(
            f"no training config at {saved}; mmbench-eval expects <run>/checkpoints/<name>.ckpt "
            f"beside <run>/.hydra/config.yaml as mmbench-train writes them"
        )
    return cast(DictConfig, OmegaConf.load(saved)), run_dir  # config.yaml: a mapping


def apply_data_overrides(train_cfg: DictConfig, eval_cfg: DictConfig, data_choice: str | None) -> bool:
    """Replace (`data=<option>`) or patch (`+data.<key>=...`) the run's data config; True if changed."""
    data = eval_cfg.get("data")
    if data is None:
        return False
    node = OmegaConf.to_container(data, resolve=False)  # interpolations resolve against the run's config
    OmegaConf.set_struct(train_cfg, False)
    if data_choice:
        train_cfg.data = node
    else:
        train_cfg.data = OmegaConf.merge(train_cfg.data, node)
    return True


def eval_settings(train_cfg: DictConfig, eval_cfg: DictConfig, task: list[str]) -> dict:
    """The training run's `eval` settings with this command's `eval.<key>=...` overrides on top, so
    that a checkpoint is evaluated exactly as at the end of its training unless told otherwise;
    `eval=<option>` (or a run without an `eval` node) takes this command's `eval` config instead."""
    from mmbench.overrides import override_key

    keys = [override_key(str(o)) for o in task]
    if "eval" in keys or train_cfg.get("eval") is None:
        return cast(dict, OmegaConf.to_container(eval_cfg.eval, resolve=True))  # a DictConfig becomes a dict
    settings = OmegaConf.create(OmegaConf.to_container(train_cfg.eval, resolve=False))
    for key in keys:
        if key.startswith("eval."):
            OmegaConf.update(
                settings, key[len("eval.") :], OmegaConf.select(eval_cfg, key), merge=False, force_add=True
            )
    return cast(dict, OmegaConf.to_container(settings, resolve=True))


def read_weights(ckpt_path: str | Path) -> dict:
    """The checkpoint's state_dict, loaded weights-only (mmbench.checkpoints.load_checkpoint)."""
    from mmbench.checkpoints import CheckpointError, load_checkpoint

    try:
        ckpt = load_checkpoint(ckpt_path)
    except CheckpointError as err:
        raise EvalError(str(err)) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise EvalError(f"{ckpt_path} holds no 'state_dict'; pass a checkpoint written by mmbench-train")
    return ckpt["state_dict"]


def load_weights(module, ckpt_path: str | Path) -> None:
    module.load_state_dict(read_weights(ckpt_path))


def run_eval(cfg: DictConfig) -> dict:
    import dataclasses

    import torch
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate

    from mmbench.builder import build_datamodule, build_module
    from mmbench.finish import close_wandb, evaluate_and_publish
    from mmbench.metrics.complexity import reset_peak_memory
    from mmbench.record import RunRecord, read_record

    start = time.time()
    reset_peak_memory()
    out_dir = Path(cfg.paths.output_dir)
    if OmegaConf.is_missing(cfg, "ckpt_path"):
        raise EvalError("ckpt_path is not set: mmbench-eval ckpt_path=outputs/runs/<time>/checkpoints/best.ckpt")
    train_cfg, run_dir = training_config(cfg.ckpt_path)
    weights = read_weights(cfg.ckpt_path)  # before any work: a file that is not a plain checkpoint is refused
    server = _server_questions(cfg)  # likewise a missing questions file or image folder
    original = train_cfg.copy()
    choice = HydraConfig.get().runtime.choices.get("data") if HydraConfig.initialized() else None
    data_changed = apply_data_overrides(train_cfg, cfg, choice)
    OmegaConf.set_struct(train_cfg, False)
    train_cfg.paths = OmegaConf.to_container(cfg.paths, resolve=True)  # this eval's dirs; cache as configured now

    dm = build_datamodule(train_cfg)
    assert dm.info is not None  # set by the datamodule's setup
    if data_changed:  # the model's vocabulary and answer set are those of its training data
        train_dm = build_datamodule(_with_paths(original, cfg))
        assert train_dm.info is not None
        dm.tokenizer = train_dm.tokenizer
        dm.info = dataclasses.replace(
            train_dm.info,
            image_size=dm.info.image_size,
            majority_baseline=dm.info.majority_baseline,
            question_prior_baseline=dm.info.question_prior_baseline,
            question_prior_by_type=dm.info.question_prior_by_type,
        )
    module = build_module(train_cfg, dm.info)
    module.load_state_dict(weights)
    module.to(torch.device(cfg.device))

    task = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    settings = eval_settings(train_cfg, cfg, task)
    choices = (read_record(run_dir) or {}).get("choices")  # the training run's, from its metrics.json
    ckpt = str(Path(cfg.ckpt_path).resolve())
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values()]
    completed = False
    try:
        metrics, comp, eval_seconds = evaluate_and_publish(
            module,
            dm,
            settings,
            out_dir,
            metrics={},
            loggers=loggers,
            step=0,
            title=f"mmbench eval of {run_dir.name}",
            info={"checkpoint": ckpt, "choices": choices, "overrides": task},
        )
        assert eval_seconds is not None  # the suite ran
        server_file = _answer_server_questions(module, dm, server, out_dir, settings) if server else None
        record = RunRecord.evaluation(
            ckpt_path=ckpt,
            run_dir=str(run_dir),
            choices=choices,
            overrides=task,
            metrics=metrics,
            complexity=comp,
            eval_s=round(eval_seconds, 3),
            wall_s=round(time.time() - start, 3),
            vqa_server_file=str(server_file) if server_file else None,
        )
        record.write(out_dir)
        completed = True
        return record.as_dict()
    finally:
        close_wandb(completed)


def _server_questions(cfg: DictConfig):
    """(questions, data subtype, image folder) of `vqa_server.questions`, or None when it is not set."""
    from mmbench.metrics.vqa_server import ServerFileError, read_questions

    server = cfg.get("vqa_server") or {}
    if not server.get("questions"):
        return None
    try:
        return read_questions(server["questions"], server.get("images"))
    except (ServerFileError, ValueError) as err:
        raise EvalError(str(err)) from None


def _answer_server_questions(module, dm, server, out_dir: Path, settings: dict) -> Path:
    """Answer the evaluation server's questions and write its result file (mmbench/metrics/vqa_server.py)."""
    import logging

    from mmbench.metrics.common import Inputs
    from mmbench.metrics.vqa_server import ServerFileError, server_answers, write_server_file

    questions, subtype, folder = server
    # no split: the server's questions bring their own images
    inputs = Inputs(cast("PairDataset", None), dm.tokenizer, module.device, answers=dm.info.answers)
    try:
        results = server_answers(
            module, inputs, questions, folder, image_size=dm.info.image_size, batch_size=settings["batch_size"]
        )
    except ServerFileError as err:
        raise EvalError(str(err)) from None
    path = write_server_file(results, out_dir, subtype)
    logging.getLogger(__name__).info("VQA evaluation-server file: %s (%d answers)", path, len(results))
    return path


def _with_paths(train_cfg: DictConfig, eval_cfg: DictConfig) -> DictConfig:
    cfg = train_cfg.copy()
    OmegaConf.set_struct(cfg, False)
    cfg.paths = OmegaConf.to_container(eval_cfg.paths, resolve=True)
    return cfg


if __name__ == "__main__":
    main()
