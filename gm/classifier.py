"""Sequence classification for few-shot evaluation, as a LightningModule (spec §5)."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import AUROC, Accuracy, F1Score, MatthewsCorrCoef
from transformers import BertForSequenceClassification, get_linear_schedule_with_warmup

from gm.mlm import weight_decay_groups


def classification_metrics(num_classes: int) -> MetricCollection:
    """Accuracy, macro-F1 and MCC for every task; AUROC for binary tasks (spec §5)."""
    metrics = {
        "accuracy": Accuracy(task="multiclass", num_classes=num_classes),
        "f1_macro": F1Score(task="multiclass", num_classes=num_classes, average="macro"),
        "mcc": MatthewsCorrCoef(task="multiclass", num_classes=num_classes),
    }
    if num_classes == 2:
        metrics["auroc"] = AUROC(task="binary")
    return MetricCollection(metrics)


class ClassifierModule(pl.LightningModule):
    """Fine-tunes a BERT classifier; evaluates once on the test set after training.

    There is no model selection: the paper fine-tunes for a fixed number of epochs and tests the
    final model, so the optional validation split is only monitored, never used to pick a model.
    """

    def __init__(
        self,
        model: BertForSequenceClassification,
        num_classes: int,
        lr: float = 1e-4,
        weight_decay: float = 0.01,
        warmup_fraction: float = 0.1,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        self.model = model
        self.val_metrics = classification_metrics(num_classes).clone(prefix="val/")
        self.test_metrics = classification_metrics(num_classes).clone(prefix="test/")
        self.test_results: dict[str, float] = {}

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    def _update(self, metrics: MetricCollection, logits: torch.Tensor, labels: torch.Tensor) -> None:
        probs = logits.float().softmax(-1)
        for name, metric in metrics.items():
            metric.update(probs[:, 1] if name.endswith("auroc") else probs, labels)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self(batch)
        loss = torch.nn.functional.cross_entropy(logits.float(), batch["labels"])
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["labels"].numel())
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits = self(batch)
        self.log("val/loss", torch.nn.functional.cross_entropy(logits.float(), batch["labels"]), batch_size=batch["labels"].numel())
        self._update(self.val_metrics, logits, batch["labels"])

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.val_metrics.compute(), prog_bar=True)
        self.val_metrics.reset()

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._update(self.test_metrics, self(batch), batch["labels"])

    def on_test_epoch_end(self) -> None:
        values = self.test_metrics.compute()
        self.log_dict(values)
        self.test_results = {key.removeprefix("test/"): float(value) for key, value in values.items()}
        self.test_metrics.reset()

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        optimizer = torch.optim.AdamW(
            weight_decay_groups(self.model, hp.weight_decay),
            lr=hp.lr,
            fused=self.device.type == "cuda",
        )
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = get_linear_schedule_with_warmup(optimizer, int(hp.warmup_fraction * total), total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
