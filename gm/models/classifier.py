"""Sequence classification for few-shot evaluation, as a LightningModule (spec §5)."""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import AUROC, Accuracy, ConfusionMatrix, F1Score, MatthewsCorrCoef
from transformers import BertForSequenceClassification, get_linear_schedule_with_warmup

from gm.models.mlm import weight_decay_groups

log = logging.getLogger(__name__)


def classification_metrics(num_classes: int, sync_on_compute: bool = True) -> MetricCollection:
    """Accuracy, macro-F1 and MCC for every task; AUROC for binary tasks (spec §5).

    ``sync_on_compute=False`` for metrics one rank computes alone (the probe): syncing would wait for the others.
    """
    sync = {"sync_on_compute": sync_on_compute}
    metrics = {
        "accuracy": Accuracy(task="multiclass", num_classes=num_classes, **sync),
        "f1_macro": F1Score(task="multiclass", num_classes=num_classes, average="macro", **sync),
        "mcc": MatthewsCorrCoef(task="multiclass", num_classes=num_classes, **sync),
    }
    if num_classes == 2:
        metrics["auroc"] = AUROC(task="binary", **sync)
    return MetricCollection(metrics)


def undefined_metrics(truth_counts: list[int]) -> dict[str, str]:
    """The metrics that mean nothing for a set with these examples per true class, and why.

    MCC and AUROC need two true classes; macro-F1 averages per-class F1, undefined for a class the
    set lacks. Constant predictions on a set with every class are fine: MCC is then 0 (at chance).
    """
    present = sum(count > 0 for count in truth_counts)
    if present == 0:
        return dict.fromkeys(("accuracy", "f1_macro", "mcc", "auroc"), "no examples")
    if present == 1:
        return dict.fromkeys(("f1_macro", "mcc", "auroc"), "every example has the same true class")
    if present < len(truth_counts):
        return {"f1_macro": f"{len(truth_counts) - present} class(es) have no example"}
    return {}


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
        self.test_results: dict[str, float | None] = {}
        # true-class counts (confusion matrix rows), synchronised across devices like the metrics
        self.val_confusion = ConfusionMatrix(task="multiclass", num_classes=num_classes)
        self.test_confusion = ConfusionMatrix(task="multiclass", num_classes=num_classes)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    def _update(self, part: str, logits: torch.Tensor, labels: torch.Tensor) -> None:
        probs = logits.float().softmax(-1)
        for name, metric in getattr(self, f"{part}_metrics").items():
            metric.update(probs[:, 1] if name.endswith("auroc") else probs, labels)
        getattr(self, f"{part}_confusion").update(probs, labels)

    def _compute(self, part: str) -> dict[str, float | None]:
        """The part's metrics, None where undefined (with a warning); resets them."""
        metrics, confusion = getattr(self, f"{part}_metrics"), getattr(self, f"{part}_confusion")
        undefined = undefined_metrics(confusion.compute().sum(1).tolist())
        values: dict[str, float | None] = {}
        for key, value in metrics.compute().items():
            name = key.removeprefix(f"{part}/")
            values[name] = None if name in undefined else float(value)
            if name in undefined:
                log.warning("%s %s is undefined (%s): recorded as null", part, name, undefined[name])
        metrics.reset()
        confusion.reset()
        return values

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self(batch)
        loss = torch.nn.functional.cross_entropy(logits.float(), batch["labels"])
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["labels"].numel())
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits = self(batch)
        self.log("val/loss", torch.nn.functional.cross_entropy(logits.float(), batch["labels"]), batch_size=batch["labels"].numel())
        self._update("val", logits, batch["labels"])

    def on_validation_epoch_end(self) -> None:
        values = self._compute("val")
        self.log_dict({f"val/{k}": v for k, v in values.items() if v is not None}, prog_bar=True)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._update("test", self(batch), batch["labels"])

    def on_test_epoch_end(self) -> None:
        self.test_results = self._compute("test")
        self.log_dict({f"test/{k}": v for k, v in self.test_results.items() if v is not None})

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
