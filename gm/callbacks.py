"""Lightning plug-ins: atomic checkpoints that record their run, a progress bar that counts steps, a CSV logger that survives resuming."""

from __future__ import annotations

import csv
import io
import os
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from pytorch_lightning.callbacks.progress.tqdm_progress import Tqdm, _update_n
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment
from pytorch_lightning.plugins.io import TorchCheckpointIO

from gm.utils import atomic_open, atomic_write_text


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints to a temporary file and rename, so a kill never leaves a torn ``last.ckpt``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        if "://" in str(path) and not str(path).startswith("file://"):  # remote filesystems: Lightning's own path
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_open(path) as handle:
            torch.save(checkpoint, handle)


#: the checkpoint key under which :class:`RunRecord` stores what the run was trained on
RUN_KEY = "gm_run"


class RunRecord(Callback):
    """Store the run's identity (data source, masking, model, k) and ``max_steps`` in every checkpoint.

    A run resumed from the checkpoint is checked against it (:func:`gm.train.check_resume`): a
    different genome or masking would otherwise continue silently, and a different
    ``max_steps`` silently reshapes the learning-rate schedule.
    """

    def __init__(self, identity: dict[str, Any]) -> None:
        self.identity = identity

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[RUN_KEY] = {**self.identity, "max_steps": int(trainer.max_steps)}


class StepCheckpoint(ModelCheckpoint):
    """Periodic checkpoints plus one at the end of training, whatever ``max_steps`` is.

    Lightning's ``ModelCheckpoint`` with ``every_n_train_steps`` misses the final weights when the
    run ends between two periodic saves; a finished run should always leave them. A periodic save
    at a step that validates is made after the validation (the final step's before it).

    A resumed run continues in its own folder, so it writes ``last.ckpt`` and ``step_*.ckpt``
    again, not ``last-v1.ckpt`` beside them (Lightning's version counter, which it applies
    whenever the folder's path differs from the one the checkpoint recorded, e.g. a moved run).
    """

    def __init__(self, *args: Any, enable_version_counter: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, enable_version_counter=enable_version_counter, **kwargs)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any, **kwargs: Any) -> None:
        if self._periodic_save_due(trainer) and self._validates_now(trainer) and not 0 < trainer.max_steps <= trainer.global_step:
            # this step validates next: save after its validation (Lightning's own deferral), so the
            # checkpoint holds what the validation decided (CM-GEMS's switch). Saved before it, a
            # resumed run would skip that validation: Lightning counts it as done
            self._defer_save_until_validation = True
            return
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)
        if 0 < trainer.max_steps <= trainer.global_step:
            # the final step: saved here, before its validation, like the periodic checkpoints. Saved
            # after it (at train end), the loop state makes a run extended from it (a larger
            # max_steps) start a new epoch, off the data plan and one off in the logged steps
            self._save_final(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._save_final(trainer)  # a run that ended another way (max_epochs, a stop signal)

    def _periodic_save_due(self, trainer: pl.Trainer) -> bool:
        every = self._every_n_train_steps
        return every >= 1 and trainer.global_step % every == 0 and not self._should_skip_saving_checkpoint(trainer)

    @staticmethod
    def _validates_now(trainer: pl.Trainer) -> bool:
        """Whether Lightning runs validation right after this training batch."""
        loop = trainer.fit_loop.epoch_loop
        if not loop._should_check_val_fx(trainer.fit_loop._data_fetcher):
            return False
        loop.val_loop.setup_data()  # what the validation would do first (once per fit)
        return not loop.val_loop.skip  # no validation data, or limit_val_batches=0

    def _save_final(self, trainer: pl.Trainer) -> None:
        if trainer.global_step > 0 and self._last_global_step_saved != trainer.global_step and not trainer.sanity_checking:
            candidates = self._monitor_candidates(trainer)
            self._save_none_monitor_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)


def continue_count(bar: Tqdm, step: int) -> None:
    """Set a freshly reset bar to ``step`` as its starting count.

    Lightning resets the bar every epoch (count 0, a new clock); jumping it to the step reached
    counted thousands of steps in no time (rates of millions of it/s, a wrong ETA). Starting the
    count there makes the rate and ETA those of the steps made since.
    """
    bar.initial = bar.last_print_n = step
    _update_n(bar, step)


class StepProgressBar(TQDMProgressBar):
    """One bar for the whole run that counts optimiser steps toward ``max_steps``.

    A streamed genome's epochs are an implementation detail; users care how far the run is.
    """

    def on_train_epoch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        if trainer.max_steps and trainer.max_steps > 0:
            self.train_progress_bar.total = trainer.max_steps
            continue_count(self.train_progress_bar, trainer.global_step)
            self.train_progress_bar.set_description(f"step (epoch {trainer.current_epoch})")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not (trainer.max_steps and trainer.max_steps > 0):
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        step = trainer.global_step
        if self.train_progress_bar is not None and self._should_update(step, self.train_progress_bar.total):
            _update_n(self.train_progress_bar, step)
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))

    def init_validation_tqdm(self) -> Tqdm:
        """No second bar for validation during training: the step bar shows val/loss when it ends."""
        return super().init_validation_tqdm() if self.trainer.state.fn == "validate" else Tqdm(disable=True)

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)  # the logger's run id, nothing to watch
        return items


class _KeepingWriter(ExperimentWriter):
    """Lightning's CSV writer, but a resumed run keeps the rows logged before its checkpoint."""

    def __init__(self, log_dir: str, keep_before_step: int | None) -> None:
        self.keep_before_step = keep_before_step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        if self.keep_before_step is None or not os.path.isfile(self.metrics_file_path):
            return super()._check_log_dir_exists()  # a fresh run: Lightning's behaviour (old metrics removed)
        with open(self.metrics_file_path, newline="") as handle:
            reader = csv.DictReader(handle)
            keys = list(reader.fieldnames or [])
            rows = [r for r in reader if r.get("step", "") == "" or int(float(r["step"])) < self.keep_before_step]
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.metrics_file_path, text.getvalue())  # what came after the checkpoint is dropped
        self.metrics_keys = keys


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` that continues ``metrics.csv`` when training resumes from a checkpoint.

    Lightning's deletes the file when its folder is reused, so a resumed run's curves would
    start at the resumed step. ``resume_from_step`` (set by :func:`gm.train.train` when it
    resumes) keeps the rows logged before that step; rows after it were logged by steps the
    resumed run trains again.
    """

    resume_from_step: int | None = None

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(self.log_dir, self.resume_from_step)
        return self._experiment
