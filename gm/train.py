"""Pretraining: compose the pieces named by the config and fit (called by ``train.py``)."""

from __future__ import annotations

import logging
import secrets
import signal
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.callbacks import LearningRateMonitor
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import SIGTERMException

from gm.callbacks import RUN_KEY, AtomicCheckpointIO, ResumableCSVLogger, RunRecord
from gm.config import current_targets, upgrade_targets
from gm.data.fasta import fetch_target, fingerprint, is_url
from gm.data.genome import GenomeDataModule
from gm.models.mlm import PRETRAINING_META, MLMModule
from gm.utils import GMError, atomic_write_text, remove_stale_temporaries

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


def check_validation_for_schedule(cfg: DictConfig, masking: Any) -> None:
    """Refuse a schedule that switches on validation (CM-GEMS) in a run that cannot validate often enough.

    The released code then trains on silently without ever switching.
    """
    if not getattr(masking, "needs_validation", False):
        return
    name = config_choice("masking") or getattr(masking, "name", "the masking")
    need = f"masking={name} switches when consecutive validation perplexities differ by less than masking.tau"
    trainer = cfg.trainer
    if float(cfg.data.get("val_fraction", 0.1) or 0) <= 0:
        raise GMError(f"{need}, but data.val_fraction=0 holds out no validation data; set data.val_fraction>0 (e.g. 0.1)")
    limit = trainer.get("limit_val_batches", 1.0)
    if limit is not None and float(limit) == 0:
        raise GMError(f"{need}, but trainer.limit_val_batches=0 turns validation off; set it above 0")
    interval, max_steps = trainer.get("val_check_interval"), int(trainer.get("max_steps") or -1)
    if isinstance(interval, int) and not isinstance(interval, bool) and max_steps > 0:
        accumulate = int(trainer.get("accumulate_grad_batches") or 1)
        # validations after micro-batches interval, 2*interval, ... that come before the last optimiser step
        before_end = max(0, -(-max_steps * accumulate // interval) - 1)
        points = before_end + (1 if getattr(masking, "validate_at_start", False) else 0)
        if points < 2:
            raise GMError(
                f"{need}, but with trainer.max_steps={max_steps} and trainer.val_check_interval={interval} "
                f"(training batches) this run validates {before_end} time(s) before its last step, too few to ever "
                f"switch; lower trainer.val_check_interval (the paper: every 500 of 10,000 steps)"
            )


def build(cfg: DictConfig) -> tuple[GenomeDataModule, MLMModule, pl.Trainer]:
    """The data module, model and trainer of a pretraining run, from its composed config."""
    upgrade_targets(cfg)  # a config group written before gm/ had sub-packages
    if cfg.data.get("_target_") != "gm.data.genome.GenomeDataModule":
        raise GMError(f"data={cfg.data.get('task', '?')} is a fine-tuning task (finetune.py); pretraining needs a genome: data=genome or data=hg38")
    check_lengths(cfg)
    if cfg.get("seed") is not None:  # 0 is a seed too
        pl.seed_everything(int(cfg.seed), workers=True)
    datamodule: GenomeDataModule = instantiate(cfg.data)
    masking = instantiate(cfg.masking, k=cfg.k)
    check_validation_for_schedule(cfg, masking)
    encoder = OmegaConf.to_container(cfg.model, resolve=True)
    optim = OmegaConf.to_container(cfg.optim, resolve=True)  # plain types: checkpoints load with weights_only
    compile_options = cfg.get("compile") or False
    if isinstance(compile_options, DictConfig):
        compile_options = OmegaConf.to_container(compile_options, resolve=True)
    module = MLMModule(encoder=encoder, masking=masking, k=cfg.k, seed=int(cfg.seed or 0), compile=compile_options, **optim)
    loggers = instantiate_group(cfg.get("logger"))
    callbacks = instantiate_group(cfg.get("callbacks")) + [RunRecord(run_identity(cfg))]
    if not loggers:  # nothing to report the learning rate to (logger=none)
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")  # TF32 for what runs outside bf16 autocast
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()])
    return datamodule, module, trainer


def resume_path(cfg: DictConfig) -> str | None:
    """``ckpt_path``: a checkpoint, null, or ``auto``: this run folder's ``last.ckpt`` when there is one.

    ``auto`` makes a command safe to repeat (a preempted SLURM job, a sweep started again): the
    run folder is the newest one of this task started with the same overrides, or a fixed
    ``hydra.run.dir``/sweep folder (:func:`gm.config.launch_id`); it continues where the run
    stopped, and a finished run does nothing.
    """
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path != "auto":
        return ckpt_path
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    if last.is_file():
        log.info("ckpt_path=auto: resuming from %s", last)
        return str(last)
    return None


def read_checkpoint(path: str) -> dict[str, Any]:
    """The checkpoint at ``path`` (tensors memory-mapped), or a :class:`GMError` saying why it cannot be resumed."""
    if not Path(path).is_file():
        raise GMError(f"ckpt_path={path}: no such file; give a run's checkpoints/last.ckpt (or ckpt_path=auto)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as err:  # noqa: BLE001  truncated, empty or not a checkpoint: torch raises many kinds
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise GMError(
            f"ckpt_path={path}: not a readable checkpoint (truncated, empty or another kind of file: {reason}); "
            "resume from another one, e.g. a step_*.ckpt of the same run"
        ) from None
    if not isinstance(checkpoint, dict) or "global_step" not in checkpoint or "state_dict" not in checkpoint:
        raise GMError(f"ckpt_path={path}: not a train.py checkpoint (no global_step/state_dict)")
    return checkpoint


def config_choice(group: str) -> str | None:
    """The config group option a run was composed with (``genemask``, ``logo``), when Hydra knows it."""
    if not HydraConfig.initialized():
        return None
    choice = HydraConfig.get().runtime.choices.get(group)
    return None if choice is None else str(choice)


def run_identity(cfg: DictConfig) -> dict[str, Any]:
    """What a checkpoint must share with a run resuming it: data source, masking, model and k.

    The data source is its content (size and hash, :func:`gm.data.fasta.fingerprint`, as the genome
    cache uses; not its mtime, so a copied or moved genome is the same) where the file is here,
    else its path or URL.
    """
    fasta = str(cfg.data.fasta)
    local = fetch_target(fasta, cfg.data.download_dir) if is_url(fasta) else Path(fasta)
    content = None
    if local.is_file():
        source = fingerprint(local)
        content = {"size": source["size"], "hash": source["hash"]}
    return {
        "data": {"fasta": fasta, "content": content},
        "masking": {"name": config_choice("masking"), "config": OmegaConf.to_container(cfg.masking, resolve=True)},
        "model": {"name": config_choice("model"), "config": OmegaConf.to_container(cfg.model, resolve=True)},
        "k": int(cfg.k),
    }


def _differs(what: str, saved: dict[str, Any], now: dict[str, Any]) -> str | None:
    """``what differs (...)`` naming the options, or the settings, that changed; None when equal."""
    if saved.get("config") == now.get("config"):
        return None
    if saved.get("name") and now.get("name") and saved["name"] != now["name"]:
        return f"{what} differs (checkpoint: {saved['name']}, now: {now['name']})"
    old, new = saved.get("config"), now.get("config")
    if isinstance(old, dict) and isinstance(new, dict):
        keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        return f"{what} differs (" + ", ".join(f"{what}.{k}: checkpoint {old.get(k)}, now {new.get(k)}" for k in keys) + ")"
    return f"{what} differs (checkpoint: {old}, now: {new})"


def resume_differences(checkpoint: dict[str, Any], identity: dict[str, Any], hparams: Any) -> list[str]:
    """How the run resuming ``checkpoint`` differs from the one that saved it (data, masking, model, k).

    Checkpoints saved before :class:`~gm.callbacks.RunRecord` existed are compared on what their
    hyper-parameters hold (model sizes, k and the masking's settings); their data is unknown.
    """
    saved = checkpoint.get(RUN_KEY)
    hp = checkpoint.get("hyper_parameters") or {}
    if saved is None:
        saved = {
            "masking": {"name": hp.get("masking_name"), "config": hp.get("masking_config")},
            "model": {"name": None, "config": hp.get("encoder")},
            "k": hp.get("k"),
        }
        identity = {**identity, "masking": {"name": hparams.get("masking_name"), "config": hparams.get("masking_config")}}
    # a checkpoint written before gm/ had sub-packages names the same classes by their old modules
    saved = {**saved, **{what: {**saved[what], "config": current_targets(saved[what].get("config"))}
                         for what in ("masking", "model") if isinstance(saved.get(what), dict)}}
    found = []
    data_saved, data_now = saved.get("data"), identity["data"]
    if data_saved is not None:
        if data_saved.get("content") and data_now.get("content"):
            same = data_saved["content"] == data_now["content"]
        else:
            same = data_saved.get("fasta") == data_now.get("fasta")
        if not same:
            found.append(f"data differs (checkpoint: {data_saved.get('fasta')}, now: {data_now.get('fasta')}" +
                         (", another file" if data_saved.get("fasta") == data_now.get("fasta") else "") + ")")
    for what in ("masking", "model"):
        difference = _differs(what, saved[what], identity[what])
        if difference:
            found.append(difference)
    if saved.get("k") is not None and saved["k"] != identity["k"]:
        found.append(f"k differs (checkpoint: {saved['k']}, now: {identity['k']})")
    return found


def check_resume(path: str, checkpoint: dict[str, Any], cfg: DictConfig, hparams: Any) -> None:
    """Refuse to resume a checkpoint of another data source, masking, model or k, unless ``resume_override``."""
    found = resume_differences(checkpoint, run_identity(cfg), hparams)
    if not found:
        return
    if not cfg.get("resume_override"):
        raise GMError(f"cannot resume {path}: {'; '.join(found)}; pass resume_override=true to allow it")
    log.warning("resume_override=true: resuming %s although %s", path, "; ".join(found))


def _linear_factor(step: int, warmup_setting: float, total: int) -> float:
    """The learning-rate factor of :meth:`MLMModule.configure_optimizers`' schedule at ``step``."""
    warmup = int(min(warmup_setting * total if 0 <= warmup_setting < 1 else warmup_setting, total))
    if step < warmup:
        return step / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


def note_schedule_change(checkpoint: dict[str, Any], max_steps: int, warmup_setting: float) -> str | None:
    """A warning when a resumed run's ``max_steps`` reshapes the learning-rate schedule, else None.

    The schedule (warm-up, then linear decay to 0 at ``max_steps``) is rebuilt for the new
    ``max_steps`` at the saved step: the rate jumps. Continuing the old schedule instead would
    train every extra step at a learning rate of 0.
    """
    saved_steps = (checkpoint.get(RUN_KEY) or {}).get("max_steps")
    schedulers = checkpoint.get("lr_schedulers") or []
    if not saved_steps or saved_steps == max_steps or max_steps <= 0 or not schedulers:
        return None
    # the first resumed step runs at the restored rate; the rebuilt schedule applies from the next one
    step, base = int(schedulers[0]["last_epoch"]) + 1, float(schedulers[0]["base_lrs"][0])
    old_warmup = float((checkpoint.get("hyper_parameters") or {}).get("warmup_steps", warmup_setting))
    old, new = base * _linear_factor(step, old_warmup, saved_steps), base * _linear_factor(step, warmup_setting, max_steps)
    return (
        f"trainer.max_steps changed from {saved_steps} to {max_steps}: the learning-rate schedule is rebuilt "
        f"(warm-up, then linear decay to 0 at step {max_steps} instead of {saved_steps}), so the learning rate "
        f"at step {step} is {new:.3g} instead of {old:.3g}"
    )


def wandb_run_id(run_dir: Path, resuming: bool) -> str:
    """The W&B run id of this run folder: kept in ``wandb/run_id``, reused when the run resumes.

    A fresh start in the folder gets a new id. Only rank 0 writes it (the ranks Lightning
    spawns run this again and would replace it).
    """
    path = run_dir / "wandb" / "run_id"
    if resuming and path.is_file():
        return path.read_text().strip()
    run_id = secrets.token_hex(4)
    if rank_zero_only.rank == 0:
        atomic_write_text(path, run_id + "\n")
    return run_id


def train(cfg: DictConfig) -> dict[str, float]:
    """Pretrain; returns the final logged metrics. Resumes when ``cfg.ckpt_path`` is set.

    A resumed run continues in its checkpoint's run folder (:func:`gm.config.launch_id`) with the
    same CSV and W&B run, after checking the checkpoint was trained on the same data, masking
    and model (:func:`check_resume`).
    """
    output_dir = Path(cfg.paths.output_dir)
    downloads = [Path(cfg.data.download_dir)] if cfg.data.get("download_dir") else []  # a killed download: ~1 GB
    for folder in (output_dir, output_dir / "checkpoints", output_dir / "csv", output_dir / "hf", output_dir / "wandb", *downloads):
        remove_stale_temporaries(folder)  # what a killed earlier run was writing there
    ckpt_path = resume_path(cfg)
    checkpoint = read_checkpoint(ckpt_path) if ckpt_path else None
    step = int(checkpoint["global_step"]) if checkpoint is not None else 0
    max_steps = int(cfg.trainer.get("max_steps") or -1)
    if checkpoint is not None and 0 < max_steps <= step:
        log.info("%s: this run already finished at step %d (trainer.max_steps=%d): nothing to train; "
                 "to train further, resume it with a larger trainer.max_steps", ckpt_path, step, max_steps)
        if not cfg.get("export_hf") or (output_dir / "hf" / PRETRAINING_META).is_file():
            return {}
    if cfg.get("logger") and cfg.logger.get("wandb") is not None:
        with open_dict(cfg):
            cfg.logger.wandb.id = wandb_run_id(output_dir, resuming=checkpoint is not None)
    datamodule, module, trainer = build(cfg)
    if checkpoint is not None:
        check_resume(ckpt_path, checkpoint, cfg, module.hparams)
        note = note_schedule_change(checkpoint, max_steps, float(module.hparams.warmup_steps))
        if note:
            log.warning("%s", note)
        for logger in trainer.loggers:
            if isinstance(logger, ResumableCSVLogger):
                logger.resume_from_step = step
        del checkpoint  # Lightning loads it again
        # resuming writes into the run's own checkpoints/ (perhaps moved since): Lightning's warnings are expected
        warnings.filterwarnings("ignore", r"Checkpoint directory .* exists and is not empty")
        warnings.filterwarnings("ignore", r"The dirpath has changed from")
    for logger in trainer.loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    try:
        stopped = (f"training stopped by SIGTERM; resume with ckpt_path={output_dir}/checkpoints/last.ckpt "
                   "(the last periodic checkpoint) or ckpt_path=auto")
        try:
            unless_sigterm(trainer, stopped, lambda: trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path))
        except RuntimeError as err:
            if ckpt_path and "Error(s) in loading state_dict" in str(err):
                lines = [line.strip() for line in str(err).splitlines() if line.strip().startswith("size mismatch")]
                raise GMError(
                    f"cannot resume {ckpt_path}: its weights do not fit model={config_choice('model') or 'this model'} "
                    f"({len(lines)} tensors differ in size, e.g. {lines[0] if lines else str(err).splitlines()[0]})"
                ) from None
            raise
        if cfg.get("export_hf") and trainer.is_global_zero:
            path = module.export_hf(f"{cfg.paths.output_dir}/hf")
            log.info("exported Hugging Face model to %s", path)
    finally:
        finish_wandb()
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if metrics and trainer.is_global_zero:  # once, not per DDP rank; val/* are over all ranks, train/* rank 0's batches
        shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k != "loss")  # "loss": the bar's train/loss
        log.info("final metrics%s: %s", " (train/*: rank 0's batches)" if trainer.world_size > 1 else "", shown)
    return metrics


def unless_sigterm(trainer: pl.Trainer, message: str, run: Callable[[], Any]) -> None:
    """Run a Lightning stage; if SIGTERM (a preempted or cancelled job) stopped it, say so and exit 143.

    Lightning turns SIGTERM into ``SIGTERMException``, a ``SystemExit`` with code 0, or, late in a
    loop, only sets ``received_sigterm``: either way the run is unfinished and no launcher may take
    it for done.
    """
    try:
        run()
    except SIGTERMException:
        pass
    if trainer.received_sigterm:
        log.error("%s", message)
        if trainer.is_global_zero:
            print(f"error: {message}", file=sys.stderr)
        raise SystemExit(128 + signal.SIGTERM)


def finish_wandb() -> None:
    """Close the W&B run so the next job of a multirun (same process) gets its own run."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()
