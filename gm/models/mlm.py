"""Masked-language-model pretraining of a BERT encoder on k-mer tokens, as a LightningModule."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.utilities.model_summary import get_human_readable_count
import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric
from transformers import BertConfig, BertForMaskedLM, get_linear_schedule_with_warmup
from transformers.utils import logging as hf_logging

from gm.data.tokenizer import KmerTokenizer, PAD_ID
from gm.masking.schedules import MaskingSchedule
from gm.masking.strategies import MaskedBatch, MaskingStrategy
from gm.utils import GMError, atomic_write_text

log = logging.getLogger(__name__)

#: written beside an exported Hugging Face model: how it was pretrained (read back by fine-tuning)
PRETRAINING_META = "gm_pretraining.json"
#: the checkpoint key holding a masking schedule's state (CM-GEMS: its phase and validation history)
SCHEDULE_KEY = "gm_masking_schedule"


def build_bert_config(k: int, **encoder: Any) -> BertConfig:
    """A ``BertConfig`` for DNABERT's k-mer vocabulary; ``encoder`` holds the sizes (conf/model)."""
    return BertConfig(vocab_size=4**k + 5, pad_token_id=PAD_ID, attn_implementation="sdpa", **encoder)


def weight_decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: weight decay on weight matrices, none on biases and LayerNorm (BERT's rule)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or "LayerNorm" in name else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def seed_dropout(seed: int, device: torch.device) -> None:
    """Seed the generator dropout draws from on ``device``.

    Not ``torch.manual_seed``: that also queues seeding for every lazily initialised backend,
    capturing a stack trace each time (~1 ms a call at Lightning's stack depth).
    """
    if device.type == "cuda":
        torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()].manual_seed(seed)
    else:
        torch.default_generator.manual_seed(seed)


def step_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers, so randomness is a pure function of (seed, rank, step)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint32).view(np.uint64)[0] >> 1)


class MLMModule(pl.LightningModule):
    """BERT MLM with a pluggable :class:`~gm.masking.strategies.MaskingStrategy`.

    Masking happens in the step, on the batch's device. Its randomness and dropout's are seeded
    from the batch's identity: (seed, epoch, global batch index) from the genome data module's
    ``batch_key``, else (seed, rank, epoch, batch index). A run resumed from a checkpoint draws
    exactly what the uninterrupted run would have drawn, and a batch is masked the same way
    whichever device and accumulation step it lands on, so 1 device x 4 accumulated batches and
    4 devices x 1 give the same optimiser step.

    ``compile`` (True, or ``torch.compile`` options such as ``{"mode": "max-autotune"}``) compiles
    the encoder in place at fit time; the prediction head on the masked positions stays eager.

    ``masking`` may be a :class:`~gm.masking.schedules.MaskingSchedule` (CM-STEP, CM-GEMS): each
    training batch then gets the strategy the schedule picks from a uniform draw seeded like the
    masks, the step and its state; the state is saved in checkpoints, validation results feed it,
    and ``train/masking_phase`` is logged.
    """

    def __init__(
        self,
        encoder: dict[str, Any],
        masking: MaskingStrategy | MaskingSchedule,
        k: int = 6,
        lr: float = 8e-4,
        betas: tuple[float, float] = (0.9, 0.98),
        eps: float = 1e-6,
        weight_decay: float = 0.01,
        warmup_steps: float = 0.05,
        seed: int = 0,
        masking_name: str | None = None,
        compile: bool | dict[str, Any] = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["masking"])
        self.hparams["masking_name"] = masking_name or masking.name
        self.hparams["masking_config"] = repr(masking)
        self.masking = masking
        self.tokenizer = KmerTokenizer(k=k, max_length=int(encoder.get("max_position_embeddings", 512)))
        self.model = BertForMaskedLM(build_bert_config(k, **encoder))
        self._generator: torch.Generator | None = None
        self.val_loss, self.val_accuracy, self.val_masked_fraction = MeanMetric(), MeanMetric(), MeanMetric()
        self._last_log_time: float | None = None
        # real (non-padding) tokens trained on by this rank; a buffer, so checkpoints carry it across resumes
        self.register_buffer("tokens_seen", torch.zeros((), dtype=torch.int64))
        self._tokens_since_log: torch.Tensor | None = None

    # ------------------------------------------------------------------------------ masking & loss
    def _seeded_generator(self, device: torch.device, *parts: int) -> torch.Generator:
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device)
        self._generator.manual_seed(step_seed(self.hparams.seed, *parts))
        return self._generator

    def seed_parts(self, batch: dict[str, Any], batch_idx: int) -> tuple[int, ...]:
        """The batch's identity for seeding: device-count independent when the data supplies it."""
        key = batch.get("batch_key")  # Python ints (never moved to the GPU, so reading them costs no sync)
        if key is not None:
            return (0, *(int(v) for v in key))
        return (3, self.global_rank, self.current_epoch, batch_idx)

    def setup(self, stage: str) -> None:
        options = self.hparams.get("compile") or False
        if stage == "fit" and options and not getattr(self, "_compiled", False):
            self.model.bert.compile(**({} if options is True else dict(options)))
            self._compiled = True

    def on_fit_start(self) -> None:
        """One line about the model (Lightning's summary table is off: its FLOPs column read 0)."""
        if self.trainer.is_global_zero:
            config, params = self.model.config, sum(p.numel() for p in self.model.parameters())
            log.info("model: BERT %d layers x %d hidden, %s parameters, k=%d, masking %s", config.num_hidden_layers,
                     config.hidden_size, get_human_readable_count(params), self.hparams.k, self.hparams.masking_name)

    def mask(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator | None, strategy: MaskingStrategy | None = None
    ) -> MaskedBatch:
        """Mask a batch with ``strategy``, by default the module's (a schedule's validation strategy)."""
        if strategy is None:
            strategy = self.masking.validation_strategy if isinstance(self.masking, MaskingSchedule) else self.masking
        return strategy(batch["input_ids"], generator)

    # ------------------------------------------------------------------------------ masking schedules
    def total_steps(self) -> int:
        """T of a schedule: the run's optimiser steps (``trainer.max_steps``)."""
        return int(self.trainer.max_steps) if self._trainer is not None and self.trainer.max_steps > 0 else 1

    def training_strategy(self, parts: tuple[int, ...]) -> MaskingStrategy:
        """The strategy that masks the training batch ``parts`` identifies (a schedule's pick, or the one strategy)."""
        if not isinstance(self.masking, MaskingSchedule):
            return self.masking
        draw = step_seed(self.hparams.seed, 5, *parts) / 2.0**63  # host-side: the same on every rank and resume
        return self.masking.strategy_for(int(self.global_step), self.total_steps(), draw)

    def on_train_start(self) -> None:
        schedule = self.masking
        if isinstance(schedule, MaskingSchedule) and schedule.wants_validation_at(int(self.global_step)):
            self._validate_now()

    def _validate_now(self) -> None:
        """Run the validation loop now, as Lightning does between two training batches.

        CM-GEMS's first point: the untrained model's validation perplexity, at step 0.
        """
        trainer = self.trainer
        first_iteration = trainer._logger_connector._first_loop_iter
        trainer.validating = True
        trainer.fit_loop.epoch_loop.val_loop.run()
        trainer.training = True
        trainer._logger_connector._first_loop_iter = first_iteration

    def _schedule_after_validation(self, loss: torch.Tensor) -> None:
        """Feed a validation perplexity to the schedule; every rank gets rank 0's value, so all decide alike."""
        schedule = self.masking
        if not isinstance(schedule, MaskingSchedule) or self.trainer.sanity_checking:
            return
        perplexity = self.trainer.strategy.broadcast(float(torch.exp(loss.detach().double())), src=0)
        step = int(self.global_step)
        if schedule.after_validation(step, perplexity) and self.trainer.is_global_zero:
            log.info("masking: validation perplexity %.4g after step %d is within tau=%g of the previous one: "
                     "switching from %s to %s", perplexity, step, getattr(schedule, "tau", float("nan")),
                     schedule.first.name, schedule.second.name)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if isinstance(self.masking, MaskingSchedule):
            checkpoint[SCHEDULE_KEY] = self.masking.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if isinstance(self.masking, MaskingSchedule) and SCHEDULE_KEY in checkpoint:
            self.masking.load_state_dict(checkpoint[SCHEDULE_KEY])

    def mlm_loss(self, masked: MaskedBatch, attention_mask: torch.Tensor, accuracy: bool = True) -> dict[str, torch.Tensor]:
        """Mean cross-entropy over masked positions; 0 (not NaN) for a batch with nothing masked.

        The prediction head runs only on the ~15% masked positions: on overlapping 6-mers its
        4,101-way output layer is a large share of a small model's compute. ``accuracy=False``
        skips the argmax on steps that log nothing.
        """
        hidden = self.model.bert(input_ids=masked.input_ids, attention_mask=attention_mask).last_hidden_state
        logits = self.model.cls(hidden[masked.masked])  # (n_masked, vocab)
        labels = masked.labels[masked.masked]
        n_masked = masked.masked.sum()
        denominator = n_masked.clamp(min=1)
        loss_sum = F.cross_entropy(logits.float(), labels, reduction="sum")
        out = {
            "loss": loss_sum / denominator,
            "masked_fraction": n_masked / masked.valid.sum().clamp(min=1),
            "n_masked": n_masked,
            "n_valid": masked.valid.sum(),
        }
        if accuracy:
            out["accuracy"] = (logits.detach().argmax(-1) == labels).sum() / denominator
        return out

    # ------------------------------------------------------------------------------ steps
    def _logs_this_step(self) -> bool:
        """Whether the logger writes this step (every ``trainer.log_every_n_steps``, and the first).

        ``self.log`` costs ~1-2 ms a call on CPU, and reading a logged value syncs a GPU; the
        other steps log nothing (the progress bar's loss updates when the logger writes)."""
        trainer = self._trainer
        return trainer is None or (trainer.global_step + 1) % max(1, trainer.log_every_n_steps) == 0 or trainer.global_step == 0

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        device = batch["input_ids"].device
        parts = self.seed_parts(batch, batch_idx)
        seed_dropout(step_seed(self.hparams.seed, 1, *parts), device)
        masked = self.mask(batch, self._seeded_generator(device, 2, *parts), self.training_strategy(parts))
        log_now = self._logs_this_step()
        out = self.mlm_loss(masked, batch["attention_mask"], accuracy=log_now)
        tokens = batch["attention_mask"].sum()
        self.tokens_seen += tokens
        self._tokens_since_log = tokens if self._tokens_since_log is None else self._tokens_since_log + tokens
        if log_now:
            now = time.perf_counter()
            metrics = {
                "train/loss": out["loss"].detach(),
                "train/perplexity": torch.exp(out["loss"].detach()),
                "train/accuracy": out["accuracy"],
                "train/masked_fraction": out["masked_fraction"],
            }
            if self._last_log_time is not None:  # real (non-padding) tokens over all devices since the last log
                metrics["train/tokens_per_sec"] = self._tokens_since_log * self.trainer.world_size / (now - self._last_log_time)
            if isinstance(self.masking, MaskingSchedule):  # a Python float: logging it costs no sync
                metrics["train/masking_phase"] = self.masking.phase(int(self.global_step), self.total_steps())
            self.log_dict(metrics)
            self.log("loss", metrics["train/loss"], prog_bar=True, logger=False)  # the bar, refreshed when logging
            self._tokens_since_log, self._last_log_time = None, now
        return out["loss"]

    def on_validation_start(self) -> None:
        self._last_log_time, self._tokens_since_log = None, None  # do not count validation time as training

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        # the same masks at every validation, so the curve compares like with like
        masked = self.mask(batch, self._seeded_generator(batch["input_ids"].device, 4, self.global_rank, batch_idx))
        out = self.mlm_loss(masked, batch["attention_mask"])
        self.val_loss.update(out["loss"], weight=out["n_masked"])
        self.val_accuracy.update(out["accuracy"], weight=out["n_masked"])
        self.val_masked_fraction.update(out["masked_fraction"], weight=out["n_valid"])

    def on_validation_epoch_end(self) -> None:
        # torchmetrics' compute() already reduces over DDP ranks, so every rank holds the same values;
        # sync_dist=True averages equal numbers and stops Lightning warning, once per metric, that they are not synced
        loss = self.val_loss.compute()
        self._schedule_after_validation(loss)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)
        self.log("val/perplexity", torch.exp(loss), sync_dist=True)
        self.log("val/accuracy", self.val_accuracy.compute(), sync_dist=True)
        self.log("val/masked_fraction", self.val_masked_fraction.compute(), sync_dist=True)
        for metric in (self.val_loss, self.val_accuracy, self.val_masked_fraction):
            metric.reset()

    # ------------------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        optimizer = torch.optim.AdamW(
            weight_decay_groups(self.model, hp.weight_decay),
            lr=hp.lr,
            betas=tuple(hp.betas),
            eps=hp.eps,
            fused=self.device.type == "cuda",
        )
        total = self.trainer.max_steps
        if total is None or total < 0:
            total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise GMError("trainer.max_steps must be set: a streamed genome has no fixed epoch length")
        warmup = hp.warmup_steps * total if 0 <= hp.warmup_steps < 1 else hp.warmup_steps
        scheduler = get_linear_schedule_with_warmup(optimizer, int(min(warmup, total)), int(total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------------------ export
    def export_hf(self, directory: str | Path) -> Path:
        """Save a Hugging Face directory (config, weights, DNABERT vocab) loadable by ``transformers``."""
        directory = Path(directory)
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a "Writing model shards" bar for one small file
        try:
            self.model.save_pretrained(directory)
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        self.tokenizer.save_pretrained(directory)
        meta = {
            "k": self.hparams.k,
            "masking": self.hparams.masking_name,
            "masking_config": self.hparams.masking_config,
            "pretrain_steps": int(self.global_step) if self._trainer is not None else None,
            # rank 0's count x devices: exact on one device, within a few windows on several
            "pretrain_tokens": int(self.tokens_seen) * (self.trainer.world_size if self._trainer is not None else 1),
        }
        atomic_write_text(directory / PRETRAINING_META, json.dumps(meta, indent=2) + "\n")
        return directory
