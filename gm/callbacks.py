"""Lightning plug-ins: atomic checkpoints and a progress bar that counts steps, not epochs."""

from __future__ import annotations

import os
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint, TQDMProgressBar
from pytorch_lightning.callbacks.progress.tqdm_progress import _update_n
from pytorch_lightning.plugins.io import TorchCheckpointIO

from gm.utils import atomic_open


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints to a temporary file and rename, so a kill never leaves a torn ``last.ckpt``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        if "://" in str(path) and not str(path).startswith("file://"):  # remote filesystems: Lightning's own path
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_open(path) as handle:
            torch.save(checkpoint, handle)


class StepCheckpoint(ModelCheckpoint):
    """Periodic checkpoints plus one at the end of training, whatever ``max_steps`` is.

    Lightning's ``ModelCheckpoint`` with ``every_n_train_steps`` misses the final weights when the
    run ends between two periodic saves; a finished run should always leave them.
    """

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if trainer.global_step > 0 and self._last_global_step_saved != trainer.global_step and not trainer.sanity_checking:
            candidates = self._monitor_candidates(trainer)
            self._save_none_monitor_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)


class StepProgressBar(TQDMProgressBar):
    """One bar for the whole run that counts optimiser steps toward ``max_steps``.

    A streamed genome's epochs are an implementation detail; users care how far the run is.
    """

    def on_train_epoch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        if trainer.max_steps and trainer.max_steps > 0:
            self.train_progress_bar.total = trainer.max_steps
            _update_n(self.train_progress_bar, trainer.global_step)
            self.train_progress_bar.set_description(f"step (epoch {trainer.current_epoch})")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not (trainer.max_steps and trainer.max_steps > 0):
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        step = trainer.global_step
        if self.train_progress_bar is not None and self._should_update(step, self.train_progress_bar.total):
            _update_n(self.train_progress_bar, step)
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))
