"""Pretraining: compose the pieces named by the config and fit (called by ``train.py``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from pytorch_lightning.callbacks import LearningRateMonitor
from omegaconf import DictConfig, OmegaConf

from gm.callbacks import AtomicCheckpointIO, ResumableCSVLogger
from gm.genome import GenomeDataModule
from gm.mlm import MLMModule
from gm.utils import GMError

log = logging.getLogger(__name__)


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a config group like ``callbacks`` or ``logger`` (null entries skipped)."""
    return [instantiate(entry) for entry in (group or {}).values() if entry is not None and "_target_" in entry]


def check_lengths(cfg: DictConfig) -> None:
    positions = int(cfg.model.max_position_embeddings)
    if int(cfg.data.max_kmers) + 2 > positions:
        raise GMError(
            f"data.max_kmers={cfg.data.max_kmers} plus [CLS] and [SEP] is longer than the model's "
            f"{positions} positions (model.max_position_embeddings); lower data.max_kmers to at most {positions - 2}"
        )


def build(cfg: DictConfig) -> tuple[GenomeDataModule, MLMModule, pl.Trainer]:
    """The data module, model and trainer of a pretraining run, from its composed config."""
    if cfg.data.get("_target_") != "gm.genome.GenomeDataModule":
        raise GMError(f"data={cfg.data.get('task', '?')} is a fine-tuning task (finetune.py); pretraining needs a genome: data=genome or data=hg38")
    check_lengths(cfg)
    if cfg.get("seed") is not None:  # 0 is a seed too
        pl.seed_everything(int(cfg.seed), workers=True)
    datamodule: GenomeDataModule = instantiate(cfg.data)
    masking = instantiate(cfg.masking, k=cfg.k)
    encoder = OmegaConf.to_container(cfg.model, resolve=True)
    optim = OmegaConf.to_container(cfg.optim, resolve=True)  # plain types: checkpoints load with weights_only
    compile_options = cfg.get("compile") or False
    if isinstance(compile_options, DictConfig):
        compile_options = OmegaConf.to_container(compile_options, resolve=True)
    module = MLMModule(encoder=encoder, masking=masking, k=cfg.k, seed=int(cfg.seed or 0), compile=compile_options, **optim)
    loggers = instantiate_group(cfg.get("logger"))
    callbacks = instantiate_group(cfg.get("callbacks"))
    if not loggers:  # nothing to report the learning rate to (logger=none)
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")  # TF32 for what runs outside bf16 autocast
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()])
    return datamodule, module, trainer


def resume_path(cfg: DictConfig) -> str | None:
    """``ckpt_path``: a checkpoint, null, or ``auto``: this run folder's ``last.ckpt`` when there is one.

    ``auto`` makes a command safe to repeat (a preempted SLURM job, a sweep started again): it
    continues where the run stopped, and a finished run only re-exports its model.
    """
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path != "auto":
        return ckpt_path
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    if last.is_file():
        log.info("ckpt_path=auto: resuming from %s", last)
        return str(last)
    return None


def train(cfg: DictConfig) -> dict[str, float]:
    """Pretrain; returns the final logged metrics. Resumes when ``cfg.ckpt_path`` is set."""
    datamodule, module, trainer = build(cfg)
    ckpt_path = resume_path(cfg)
    if ckpt_path:
        step = int(torch.load(ckpt_path, map_location="cpu", weights_only=False, mmap=True)["global_step"])
        for logger in trainer.loggers:
            if isinstance(logger, ResumableCSVLogger):
                logger.resume_from_step = step
    for logger in trainer.loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        if cfg.get("export_hf") and trainer.is_global_zero:
            path = module.export_hf(f"{cfg.paths.output_dir}/hf")
            log.info("exported Hugging Face model to %s", path)
    finally:
        finish_wandb()
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    log.info("final metrics: %s", metrics)
    return metrics


def finish_wandb() -> None:
    """Close the W&B run so the next job of a multirun (same process) gets its own run."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()
