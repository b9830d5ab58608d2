"""Few-shot fine-tuning and evaluation: compose the pieces named by the config (called by ``finetune.py``)."""

from __future__ import annotations

import datetime
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from gm.config import upgrade_targets
from gm.data.fewshot import FewShotDataModule
from gm.data.splits import ShotsUnavailableError
from gm.models.classifier import ClassifierModule
from gm.models.pretrained import PretrainedInfo, load_classifier, model_label
from gm.train import config_choice, finish_wandb, instantiate_group, unless_sigterm
from gm.utils import GMError, atomic_write_text, remove_stale_temporaries

log = logging.getLogger(__name__)


def pretrained_label(cfg: DictConfig, info: PretrainedInfo) -> str:
    """The model's name in result tables: ``pretrained_name`` if given, else derived from the source
    (the same rule :func:`gm.models.pretrained.model_label` applies), prefixed by its masking strategy when known."""
    if cfg.get("pretrained_name"):
        return str(cfg.pretrained_name)
    label = model_label(info.source)
    return f"{info.masking}:{label}" if info.masking and info.kind != "none" else label


def data_choice(cfg: DictConfig) -> str:
    """The ``data=`` option the user chose (Hydra's choice), else what the data config says it is."""
    return str(config_choice("data") or cfg.data.get("task") or cfg.data.get("fasta") or cfg.data.get("_target_") or "?")


def build_data(cfg: DictConfig, k: int, max_length: int | None = None) -> FewShotDataModule:
    upgrade_targets(cfg)  # a config group written before gm/ had sub-packages
    if cfg.data.get("_target_") != "gm.data.fewshot.FewShotDataModule":
        raise GMError(f"data={data_choice(cfg)} is not a few-shot task: choose prom_core, prom_300, cohn_enh, splice_40 or custom")
    data = instantiate(cfg.data, k=k, **({"max_length": max_length} if max_length else {}))
    data.setup("fit")
    return data


def log_every(configured: int, batches_per_epoch: int) -> int:
    """``log_every_n_steps`` no larger than an epoch: a 10-shot run has 4 batches, and Lightning warns
    (and logs nothing within the epoch) when the interval is longer."""
    return max(1, min(int(configured), batches_per_epoch))


def finetune(cfg: DictConfig) -> dict[str, Any]:
    """Fine-tune on the task's training shots, test once, write ``results.json``; returns the record."""
    started = time.perf_counter()
    done = Path(cfg.paths.output_dir) / "results.json"
    remove_stale_temporaries(done.parent)  # a killed job's .results.json.*.tmp (a sweep folder run again)
    if cfg.get("skip_done") and done.is_file():  # a sweep started again: finished jobs are not re-run
        log.info("skip_done: %s exists", done)
        return json.loads(done.read_text())
    if cfg.get("seed") is not None:
        pl.seed_everything(int(cfg.seed), workers=True)
    try:
        data = build_data(cfg, int(cfg.k or 6))
    except ShotsUnavailableError as err:
        if not cfg.get("skip_unavailable"):
            raise
        log.warning("skipped: %s", err)  # a sweep over every shot count reaches some the task lacks
        atomic_write_text(Path(cfg.paths.output_dir) / "skipped.json", json.dumps({"reason": str(err)}, indent=2) + "\n")
        return {"skipped": str(err)}
    encoder = OmegaConf.to_container(cfg.model, resolve=True) if cfg.get("model") else None
    hp = cfg.finetune
    model, info = load_classifier(cfg.get("pretrained"), data.num_classes, k=cfg.get("k"), encoder=encoder, dropout=hp.dropout)
    positions = int(model.config.max_position_embeddings)
    if info.k != data.k or positions != data.max_length:  # the model decides k and how long a row may be
        data = build_data(cfg, info.k, positions)
    module = ClassifierModule(model, data.num_classes, lr=hp.lr, weight_decay=hp.weight_decay, warmup_fraction=hp.warmup_fraction)
    no_validation = {"limit_val_batches": 0} if not data.split.val else {}  # val_fraction=0: nothing to monitor
    batches = math.ceil(len(data.split.train) / int(hp.batch_size))
    trainer: pl.Trainer = instantiate(
        cfg.trainer,
        callbacks=instantiate_group(cfg.get("callbacks")),
        logger=instantiate_group(cfg.get("logger")) or False,
        log_every_n_steps=log_every(cfg.trainer.get("log_every_n_steps", 50), batches),
        **no_validation,
    )
    for logger in trainer.loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    split = data.split
    try:
        unless_sigterm(trainer, "fine-tuning stopped by SIGTERM during training; no results.json written",
                       lambda: trainer.fit(module, datamodule=data))
        # once, after training: no model selection on test
        unless_sigterm(trainer, "fine-tuning stopped by SIGTERM during testing; no results.json written",
                       lambda: trainer.test(module, datamodule=data, verbose=False))
    finally:
        finish_wandb()
    metrics = {name: module.test_results.get(name) for name in ("accuracy", "f1_macro", "mcc", "auroc")}
    record = {
        "task": data.task_name,
        "shots": int(cfg.shots),
        "seed": cfg.get("seed"),
        "pretrained": info.source,
        "pretrained_name": pretrained_label(cfg, info),
        "pretrained_kind": info.kind,
        "masking": info.masking,
        "pretrain_steps": info.pretrain_steps,
        "model": info.encoder,
        "k": info.k,
        "test_source": split.test_source,
        "train_source": split.train_source,
        "data_files": split.files,
        "data_sha256": split.data_sha256,
        "train_test_overlap": split.train_test_overlap,
        "metrics": metrics,
        "n_train": len(split.train),
        "n_val": len(split.val),
        "n_test": len(split.test),
        "label_names": list(split.label_names),
        "hyperparameters": OmegaConf.to_container(hp, resolve=True),
        "runtime_seconds": round(time.perf_counter() - started, 2),
        "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "note": split.note,
    }
    if trainer.is_global_zero:
        out = Path(cfg.paths.output_dir) / "results.json"
        atomic_write_text(out, json.dumps(record, indent=2) + "\n")
        log.info("%s %s-shot seed %s, %s: %s (test: %s, %d rows) -> %s", record["task"], record["shots"], record["seed"],
                 record["pretrained_name"], {k: round(v, 4) for k, v in metrics.items() if v is not None},
                 record["test_source"], record["n_test"], out)
    return record
