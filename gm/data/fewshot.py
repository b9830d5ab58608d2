"""The few-shot fine-tuning data module (spec §5): a task's split, tokenised for a k-mer model, in batches.

The split comes from :mod:`gm.data.splits` (the shipped tasks are in :mod:`gm.data.tasks`, files are
read by :mod:`gm.data.labelled`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from gm.data.labelled import Example
from gm.data.splits import FewShotSplit, make_split
from gm.data.tasks import DEFAULT_DATA_DIR, get_task
from gm.data.tokenizer import KmerTokenizer
from gm.utils import GMError

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ batches
class _Encoded(Dataset):
    """A split part tokenised once: padded ids, lengths (positions incl. CLS/SEP) and labels."""

    def __init__(self, input_ids: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor) -> None:
        self.input_ids, self.lengths, self.labels = input_ids, lengths, labels

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int) -> int:
        return i  # the collate gathers whole batches from the tensors at once


class _Collate:
    """Gathers a batch of indices and trims the padding to the batch's longest row."""

    def __init__(self, data: _Encoded) -> None:
        self.data = data

    def __call__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        width = int(self.data.lengths[index].max())
        ids = self.data.input_ids[index, :width]
        mask = (torch.arange(width)[None, :] < self.data.lengths[index][:, None]).long()
        return {"input_ids": ids, "attention_mask": mask, "labels": self.data.labels[index], "index": index}


class FewShotDataModule(pl.LightningDataModule):
    """A few-shot task's split, tokenised for a k-mer model.

    Training batches are shuffled with a generator seeded by ``seed``. Validation and test
    batches run longest-first (padding is minimal and an out-of-memory shows on the first
    batch); each batch's ``index`` holds the rows' positions in ``split.val`` / ``split.test``.
    """

    def __init__(
        self,
        task: str | None = "prom_core",
        shots: int = 10,
        seed: int = 0,
        data_dir: str | os.PathLike = DEFAULT_DATA_DIR,
        batch_size: int = 5,
        eval_batch_size: int = 256,
        k: int = 6,
        max_length: int = 512,
        resample: bool = False,
        val_fraction: float = 0.0,
        carve_seed: int = 0,
        custom_train: Any = None,  # a table, or per-class files: {label: file} or [files] (see make_split)
        custom_test: Any = None,
        custom_sequence_column: str = "sequence",
        custom_label_column: str = "label",
        custom_test_per_class: int | None = None,
        custom_label_names: list[str] | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.task, self.shots, self.seed, self.data_dir = task, int(shots), int(seed), Path(data_dir)
        self.batch_size, self.eval_batch_size, self.num_workers = int(batch_size), int(eval_batch_size), int(num_workers)
        self.k, self.max_length = int(k), int(max_length)
        self.resample, self.val_fraction, self.carve_seed = bool(resample), float(val_fraction), int(carve_seed)
        self.custom: dict[str, Any] | None = None
        if custom_train is not None:
            from omegaconf import DictConfig, ListConfig, OmegaConf

            plain = lambda v: OmegaConf.to_container(v) if isinstance(v, (DictConfig, ListConfig)) else v  # noqa: E731
            self.custom = {"train": plain(custom_train), "test": plain(custom_test), "sequence_column": custom_sequence_column,
                           "label_column": custom_label_column, "test_per_class": custom_test_per_class,
                           "label_names": list(custom_label_names) if custom_label_names else None}
        elif task is None or str(task).lower() == "custom":
            raise GMError("data=custom needs data.custom_train: a .tsv/.csv table with a header, or one FASTA or "
                          "one-sequence-per-line file per class ('{label_a: a.fa, label_b: b.fa}')")
        self.split: FewShotSplit | None = None
        self._data: dict[str, _Encoded] = {}

    @property
    def task_name(self) -> str:
        return self.split.task if self.split else (str(self.task or "custom") if self.custom else get_task(self.task).name)

    @property
    def label_names(self) -> list[str]:
        if self.split is None:
            if self.custom:
                raise GMError("call setup() first: a custom task's labels come from its file")
            return get_task(self.task).label_names
        return self.split.label_names

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def setup(self, stage: str | None = None) -> None:
        if self.split is not None:
            return
        split = make_split(self.task, self.shots, self.seed, self.data_dir, resample=self.resample,
                           val_fraction=self.val_fraction, carve_seed=self.carve_seed, custom=self.custom)
        tokenizer = KmerTokenizer(self.k, self.max_length)
        self._data = {part: self._encode(getattr(split, part), tokenizer, split.task)
                      for part in ("train", "val", "test")}
        self.split = split
        log.info("%s: %d train / %d val / %d test (%s)", split.task, len(split.train), len(split.val),
                 len(split.test), split.note)

    def _encode(self, examples: list[Example], tokenizer: KmerTokenizer, task: str) -> _Encoded:
        lengths = np.fromiter((len(e.sequence) for e in examples), dtype=np.int64, count=len(examples))
        if lengths.size:
            n_kmers = lengths - self.k + 1
            worst = int(np.argmax(n_kmers))
            if n_kmers[worst] > tokenizer.max_kmers:
                raise GMError(f"{task}: {examples[worst].source} has {lengths[worst]} bases = {n_kmers[worst]} "
                              f"{self.k}-mers, more than the {tokenizer.max_kmers} that "
                              f"max_length={self.max_length} holds")
            short = int(np.argmin(n_kmers))
            if n_kmers[short] < 1:
                raise GMError(f"{task}: {examples[short].source} has {lengths[short]} bases, fewer than k={self.k}")
        encoding = tokenizer.encode([e.sequence for e in examples])
        labels = torch.as_tensor([e.label for e in examples], dtype=torch.long)
        return _Encoded(encoding.input_ids, encoding.attention_mask.sum(1), labels)

    def _loader(self, part: str, batch_size: int, **kwargs: Any) -> DataLoader:
        if self.split is None:
            self.setup()
        data = self._data[part]
        return DataLoader(data, batch_size=batch_size, collate_fn=_Collate(data), num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, **kwargs)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True, generator=torch.Generator().manual_seed(self.seed))

    def _eval_loader(self, part: str) -> DataLoader | list:
        if self.split is None:
            self.setup()
        data = self._data[part]
        if len(data) == 0:
            return []  # no validation split: Lightning skips validation
        order = torch.argsort(data.lengths, descending=True, stable=True).tolist()
        return self._loader(part, self.eval_batch_size, sampler=order)

    def val_dataloader(self) -> DataLoader | list:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader | list:
        return self._eval_loader("test")
