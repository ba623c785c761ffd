"""One training run: validate -> data -> model -> fit -> test -> metrics.json.

Kept apart from `train.py` so the CLI imports nothing heavy before Hydra has parsed the command
line (`mmbench-train --help` stays fast) and so tests can call `run(cfg)` on a composed config.
"""

from __future__ import annotations

import logging
import os
import signal
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import cast

from omegaconf import DictConfig, OmegaConf

from mmbench.checkpoints import CheckpointError, csv_history, load_checkpoint, restore_csv_history
from mmbench.config import ConfigError, choices_of
from mmbench.distributed import SavedLaunch, ddp_cleanup, ddp_single_run, global_rank
from mmbench.finish import close_wandb, evaluate_and_publish
from mmbench.record import Diverged, Interrupted, RunRecord, write_metrics
from mmbench.rundir import checkpoint_stamp, config_identity
from mmbench.validation import validate

log = logging.getLogger(__name__)


def _overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def run(cfg: DictConfig) -> dict:
    """Train, test and write `metrics.json` into `cfg.paths.output_dir`. Returns the record as written."""
    start = time.time()
    out_dir = Path(cfg.paths.output_dir)
    config_hash, config = config_identity(cfg)  # what this run is (mmbench/rundir.py); also in every checkpoint
    record = RunRecord.training(
        config_hash=config_hash, choices=choices_of(cfg), overrides=_overrides(), seed=cfg.seed, config=config
    )
    launch = SavedLaunch()  # what a DDP job of a multirun changes for Lightning's launcher, undone below
    try:
        validate(cfg)
        check_wandb_reachable(cfg)
        record.metrics, record.complexity, record.timing = _train(cfg, out_dir, config_hash, launch)
        record.status = "completed"
    except (ConfigError, CheckpointError) as err:
        record.status, record.error = "failed", str(err)
        raise
    except Diverged as err:
        record.status, record.error = "diverged", str(err)
        raise
    except KeyboardInterrupt as err:  # Interrupted, or a Ctrl-C outside Lightning (e.g. in the evaluation suite)
        record.status, record.error = "interrupted", str(err) or "interrupted by SIGINT (Ctrl-C)"
        raise
    except BaseException as err:  # record every failure, then re-raise
        record.status, record.error = "failed", f"{type(err).__name__}: {err}"
        record.traceback = traceback.format_exc()
        raise
    finally:
        record.wall_s = round(time.time() - start, 3)
        if global_rank() == 0:  # under DDP every rank runs this; one metrics.json per run
            record.write(out_dir)
        ddp_cleanup(launch)  # the next job of a sweep starts its own process group
        close_wandb(completed=record.status == "completed")
    return record.as_dict()


def check_wandb_reachable(cfg: DictConfig) -> None:
    """An online W&B logger without network waits ~100 s and then fails with a traceback: probe the W&B
    host for a few seconds first (the HF hub's probe) and refuse with one message instead."""
    wandb_cfg = (cfg.get("logger") or {}).get("wandb")
    if not wandb_cfg or str(wandb_cfg.get("mode") or "").lower() != "online":
        return
    from mmbench import hub

    url = os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai"
    if not hub.reachable(url):
        raise ConfigError(
            f"the W&B logger is online (WANDB_MODE / logger.wandb.mode) but {url} does not answer "
            f"within {hub.HUB_PROBE_TIMEOUT_S:.0f} s (no network?): set WANDB_MODE=offline (and upload "
            f"later with `wandb sync`), or check the network / WANDB_BASE_URL"
        )


def _train(cfg: DictConfig, out_dir: Path, config_hash: str, launch: SavedLaunch) -> tuple[dict, dict, dict]:
    """Returns (metrics, complexity, timing): `timing` is where this process's time went (`log_timing`)."""
    entered = time.time()
    import pytorch_lightning as pl
    from hydra.utils import instantiate

    from mmbench.noise import silence_known_noise

    silence_known_noise()

    from mmbench.builder import build_datamodule, build_module
    from mmbench.metrics.complexity import reset_peak_memory

    reset_peak_memory()  # this run's own peak, also when a launcher worker runs several jobs

    # resume: an unfinished run of the same job directory continues from its last checkpoint, which is
    # read first (weights only), so a file that is not a plain checkpoint is refused before any work
    last = out_dir / "checkpoints" / "last.ckpt"
    ckpt_path = str(last) if cfg.get("resume", True) and last.exists() else None
    resume_step = int(load_checkpoint(ckpt_path)["global_step"]) if ckpt_path else None

    pl.seed_everything(cfg.seed, workers=True)
    dm = build_datamodule(cfg)
    assert dm.info is not None  # set by the datamodule's setup
    dm.check_train_batch()  # a batch larger than the training split, once its size is known: before any model
    module = build_module(cfg, dm.info)
    if module.model.init_report is not None and global_rank() == 0:  # a load from a run: what it took, what it did not
        write_metrics(out_dir / "init_from.json", module.model.init_report)
    if cfg.trainer.get("memory_check", True):  # a step that would not fit in memory, before training (memory.py)
        from mmbench.memory import check_memory

        check_memory(module, dm, trainer_cfg=cfg.trainer, optimizer_target=str(cfg.optimizer._target_))

    from pytorch_lightning.callbacks import ModelCheckpoint

    from mmbench.callbacks import LastCheckpoint, MidEpochResume, RNGState, ValidationTime

    validation_time = ValidationTime()
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    callbacks += [RNGState(), MidEpochResume(), validation_time]
    callbacks.append(checkpoint_stamp(config_hash))  # checkpoint["config_hash"]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values()]
    trainer_cfg = cast(dict, OmegaConf.to_container(cfg.trainer, resolve=True))  # a DictConfig becomes a dict
    trainer_cfg.pop("memory_check", None)  # mmbench's switch (above), not a Trainer argument
    trainer: pl.Trainer = instantiate(trainer_cfg, callbacks=callbacks, logger=loggers or False)
    hparams = cast(dict, OmegaConf.to_container(cfg, resolve=True))  # a DictConfig becomes a dict
    hparams["choices"] = choices = choices_of(cfg)
    # flat top-level keys (choice/model = "vilt", choice/objective = "itc+itm") so dashboards group by them
    hparams.update({f"choice/{k}": "+".join(map(str, v)) if isinstance(v, list) else v for k, v in choices.items()})
    hparams["overrides"] = _overrides()
    if ckpt_path:
        log.info("resuming from %s", ckpt_path)
    history = csv_history(trainer.loggers, resume_step)  # the CSV curves before the checkpoint
    for lg in trainer.loggers:
        lg.log_hyperparams(hparams)
    restore_csv_history(history)
    if trainer.world_size > 1:
        ddp_single_run(launch)  # in a multirun, Lightning's extra ranks re-run this job, not the whole sweep
    t0 = time.time()
    with _interrupts(trainer):
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
    fit_seconds = time.time() - t0
    # training throughput without the validations inside fit, over the steps this process ran (a resumed
    # run's earlier steps were timed by the process that ran them)
    train_seconds = fit_seconds - validation_time.seconds
    steps_run = trainer.global_step - (resume_step or 0)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    t_test = time.time()
    if cfg.get("test", True):
        # best.ckpt, not last.ckpt (also a ModelCheckpoint, and maybe the first one)
        best = next(
            (
                c.best_model_path
                for c in trainer.checkpoint_callbacks
                if isinstance(c, ModelCheckpoint) and not isinstance(c, LastCheckpoint)
            ),
            "",
        )
        with _interrupts(trainer):
            results = trainer.test(module, datamodule=dm, ckpt_path=best or None, verbose=False, weights_only=True)
        for res in results:
            metrics.update({k: float(v) for k, v in res.items()})
    test_seconds = time.time() - t_test
    # the evaluation suite (docs/metrics.md) on the best weights that trainer.test loaded
    t_finish = time.time()
    metrics, comp, suite_seconds = evaluate_and_publish(
        module,
        dm,
        cast(dict, OmegaConf.to_container(cfg.eval, resolve=True)) if cfg.get("eval") else {},
        out_dir,
        metrics=metrics,
        loggers=trainer.loggers,
        step=trainer.global_step,
        title=f"mmbench run {out_dir.name}",
        info={"choices": choices_of(cfg)},
        train_seconds=train_seconds,
        samples_seen=steps_run * dm.batch_size * trainer.accumulate_grad_batches,
        evaluate=bool(cfg.get("test", True)),
        publish=trainer.is_global_zero,
    )
    timing = {
        "setup_s": t0 - entered,  # data, model, memory check, loggers
        "train_s": train_seconds,  # trainer.fit without its validations
        "validation_s": validation_time.seconds,  # the validations inside trainer.fit (sanity check included)
        "test_s": test_seconds,  # trainer.test
        "suite_s": suite_seconds or 0.0,  # the evaluation suite
        "finish_s": time.time() - t_finish - (suite_seconds or 0.0),  # complexity, report.md, loggers' tables
    }
    timing = {k: round(v, 3) for k, v in timing.items()}
    log_timing(timing)
    log.info("metrics: %s", metrics)
    return metrics, comp, timing


def log_timing(timing: dict[str, float]) -> None:
    """One line saying where a run's time went, and the share of evaluation (validation, test, suite)."""
    total = sum(timing.values())
    evaluation = timing["validation_s"] + timing["test_s"] + timing["suite_s"]
    log.info(
        "time: setup %.0f s, training %.0f s, validation %.0f s, test %.0f s, evaluation suite %.0f s, "
        "finish %.0f s; evaluation %.0f%% of %.0f s",
        timing["setup_s"],
        timing["train_s"],
        timing["validation_s"],
        timing["test_s"],
        timing["suite_s"],
        timing["finish_s"],
        100 * evaluation / total if total else 0.0,
        total,
    )


@contextmanager
def _interrupts(trainer):
    """Ctrl-C and SIGTERM inside `trainer.fit` / `trainer.test` raise `Interrupted`. Lightning catches a
    KeyboardInterrupt, tears down and calls `sys.exit(1)` from its handler (and from then on ignores
    SIGINT); after a SIGTERM it raises `SIGTERMException` (a SystemExit) at the next batch. Both would
    otherwise be recorded as `failed: SystemExit: 1`."""
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    sigint = signal.getsignal(signal.SIGINT)
    try:
        yield
    except SIGTERMException as err:
        raise Interrupted(f"interrupted by SIGTERM at global step {trainer.global_step}", signal.SIGTERM) from err
    except SystemExit as err:
        if not isinstance(err.__context__, KeyboardInterrupt):
            raise
        signal.signal(signal.SIGINT, sigint)  # Lightning set SIG_IGN and does not restore it
        message = f"interrupted by SIGINT (Ctrl-C) at global step {trainer.global_step}"
        raise Interrupted(message, signal.SIGINT) from err
