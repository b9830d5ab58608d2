"""Streaming genome windows for MLM pretraining (spec §4), sharded over DDP ranks and workers.

An epoch is a *plan*: a deterministic function of (seed, epoch) listing every window as
(region, start, length, reverse-complement flag). Each region (a piece of an N-free segment
inside one split block) is cut from a random offset under ``max_offset`` into consecutive,
non-overlapping windows, half of maximum length and half of random length. The plan is shuffled,
grouped into batches of similar length (length bucketing, so little is computed on padding),
and the batches are dealt to ranks in turn: global batch g goes to rank g mod world. A rank's
batches are dealt round-robin to its DataLoader workers; the DataLoader's in-order round-robin
then yields them in order exactly. Because batches are formed before they are dealt, global
batch g holds the same windows on any number of devices, which is what keeps a run with a fixed
global batch size (devices x batch x accumulation) the same run on 1 GPU or 64. Knowing the plan,
resuming is "start the plan of epoch e at batch j": :class:`ResumableLoader` saves (e, j) in
Lightning checkpoints.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from gm.data.fasta import GenomeCache, build_or_load_cache, fetch, fetch_target, is_url, open_fasta, unpack
from gm.data.tokenizer import PAD_ID, KmerTokenizer
from gm.utils import GMError

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ regions
@dataclass
class Regions:
    """Stretches of N-free sequence that windows are cut from (one split, train or validation)."""

    segment: np.ndarray  # index into the cache's segments
    start: np.ndarray  # offset inside the segment
    length: np.ndarray

    def __len__(self) -> int:
        return int(self.segment.size)

    @property
    def bases(self) -> int:
        return int(self.length.sum())


def split_regions(cache: GenomeCache, block_size: int, val_fraction: float, seed: int) -> tuple[Regions, Regions]:
    """Cut segments into blocks of ``block_size`` bases and assign whole blocks to validation.

    A block belongs to one split only, so no base is ever in both; the choice depends only on
    the genome and ``seed``, never on the run, so train and validation stay apart across runs.
    """
    if block_size <= 0:
        raise GMError(f"data.split_block must be positive, got {block_size}")
    if not 0.0 <= val_fraction < 1.0:
        raise GMError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
    n_blocks = -(-cache.seg_length // block_size)
    segment = np.repeat(np.arange(cache.seg_length.size), n_blocks)
    within = np.arange(segment.size) - np.repeat(np.cumsum(n_blocks) - n_blocks, n_blocks)
    start = within * block_size
    length = np.minimum(block_size, cache.seg_length[segment] - start)
    n_val = int(round(val_fraction * segment.size))
    if val_fraction > 0 and n_val == 0:
        n_val = 1  # asked for validation: never silently hold out nothing (one block is too few)
    if n_val >= segment.size:
        raise GMError(
            f"genome of {cache.total_bases} bases splits into {segment.size} blocks of {block_size}: too few "
            f"to hold out {val_fraction:.0%} for validation (lower data.split_block)"
        )
    is_val = np.zeros(segment.size, dtype=bool)
    is_val[np.random.default_rng(seed).permutation(segment.size)[:n_val]] = True
    pick = lambda m: Regions(segment[m], start[m], length[m])  # noqa: E731
    return pick(~is_val), pick(is_val)


# ------------------------------------------------------------------------------------------ plans
@dataclass
class WindowPlan:
    """All windows of one epoch of one split, in the order they are served."""

    region: np.ndarray
    start: np.ndarray  # offset inside the region
    length: np.ndarray  # bases
    reverse: np.ndarray  # bool: reverse-complement

    def __len__(self) -> int:
        return int(self.region.size)

    def take(self, index: np.ndarray | slice) -> "WindowPlan":
        return WindowPlan(self.region[index], self.start[index], self.length[index], self.reverse[index])


def plan_windows(
    regions: Regions,
    rng: np.random.Generator,
    *,
    min_bases: int,
    max_bases: int,
    p_max_length: float = 0.5,
    max_offset: int = 1000,
    reverse_complement: float = 0.0,
    shuffle: bool = True,
) -> WindowPlan:
    """Cut every region into consecutive windows starting at a random offset (spec §4).

    Each window is ``max_bases`` long with probability ``p_max_length``, else uniform in
    [min_bases, max_bases]; the remainder at a region's end becomes one last shorter window
    when it has at least ``min_bases``.
    """
    mean = p_max_length * max_bases + (1 - p_max_length) * (min_bases + max_bases) / 2
    out_region, out_start, out_length = [], [], []
    offsets = rng.integers(0, np.maximum(np.minimum(max_offset, regions.length - min_bases + 1), 1))
    for index in range(len(regions)):
        usable = int(regions.length[index] - offsets[index])
        if usable < min_bases:
            continue
        n = int(usable / mean * 1.2) + 8
        while True:
            lengths = np.where(rng.random(n) < p_max_length, max_bases, rng.integers(min_bases, max_bases + 1, n))
            ends = np.cumsum(lengths)
            if ends[-1] >= usable:
                break
            n *= 2
        keep = int(np.searchsorted(ends, usable, side="right"))
        lengths = lengths[:keep]
        remainder = usable - int(ends[keep - 1] if keep else 0)
        if remainder >= min_bases:
            lengths = np.append(lengths, remainder)
        starts = offsets[index] + np.concatenate(([0], np.cumsum(lengths)[:-1]))
        out_region.append(np.full(lengths.size, index))
        out_start.append(starts)
        out_length.append(lengths)
    if not out_region:
        empty = np.zeros(0, dtype=np.int64)
        return WindowPlan(empty, empty, empty, np.zeros(0, dtype=bool))
    region = np.concatenate(out_region).astype(np.int64)
    start = np.concatenate(out_start).astype(np.int64)
    length = np.concatenate(out_length).astype(np.int64)
    reverse = rng.random(region.size) < reverse_complement
    plan = WindowPlan(region, start, length, reverse)
    return plan.take(rng.permutation(len(plan))) if shuffle else plan


def batch_windows(batches: np.ndarray, batch_size: int) -> np.ndarray:
    """Window indices of whole batches, in order: batch b holds windows b*size .. b*size + size - 1."""
    return (batches[:, None] * batch_size + np.arange(batch_size)).ravel()


def bucket_by_length(plan: WindowPlan, batch_size: int, pool_batches: int, rng: np.random.Generator | None) -> WindowPlan:
    """Group windows of similar length into batches; the set of windows is unchanged.

    Half of the windows are shorter than the maximum, so a batch of randomly drawn windows is
    padded to the longest (almost always a full one) and about a quarter of its positions are
    padding. Sorting by length inside consecutive pools of ``pool_batches`` batches and cutting
    the pools into batches leaves a few percent; shuffling the whole batches afterwards (``rng``;
    None keeps pool order) keeps long and short batches interleaved over the epoch. A short last
    batch stays last, so batch boundaries fall at multiples of ``batch_size``.
    """
    n = len(plan)
    if pool_batches <= 0 or n == 0:
        return plan
    pool = np.arange(n) // (pool_batches * batch_size)
    order = np.lexsort((plan.length, pool))  # by pool, then length; stable, so ties keep the shuffled order
    n_full = n // batch_size
    batch_order = rng.permutation(n_full) if rng is not None else np.arange(n_full)
    window_order = np.concatenate((batch_windows(batch_order, batch_size), np.arange(n_full * batch_size, n)))
    return plan.take(order[window_order])


# ------------------------------------------------------------------------------------------ dataset
class GenomeWindows(IterableDataset):
    """Batches of tokenised windows for one split, for one rank; workers share the rank's batches.

    Yields dicts with ``input_ids`` and ``attention_mask`` (padded to the longest window of the
    batch, rounded up to a multiple of ``pad_to_multiple_of``), ``windows`` (record, start, length,
    reverse) for inspection, ``stream_pos`` (epoch, batch index on this rank) that
    :class:`ResumableLoader` uses to know what training consumed, and ``batch_key`` (epoch, global
    batch index, as Python ints): the batch's identity whatever the number of ranks, which seeds
    its masking.
    """

    def __init__(
        self,
        cache: GenomeCache,
        regions: Regions,
        tokenizer: KmerTokenizer,
        *,
        batch_size: int,
        min_bases: int,
        max_bases: int,
        p_max_length: float,
        max_offset: int,
        reverse_complement: float,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        train: bool = True,
        bucket_batches: int = 0,
        pad_to_multiple_of: int = 1,
    ) -> None:
        super().__init__()
        self.cache, self.regions, self.tokenizer = cache, regions, tokenizer
        self.batch_size = batch_size
        self.bucket_batches, self.pad_to_multiple_of = bucket_batches, max(1, pad_to_multiple_of)
        self.plan_args = dict(
            min_bases=min_bases,
            max_bases=max_bases,
            p_max_length=p_max_length,
            max_offset=max_offset,
            reverse_complement=reverse_complement if train else 0.0,
            shuffle=train,
        )
        self.seed, self.rank, self.world_size, self.train = seed, rank, world_size, train
        self.epoch, self.skip = 0, 0
        self._packed: np.ndarray | None = None
        self._plan_cache: tuple[int, WindowPlan] | None = None
        # absolute coordinates of each region, for gathering bases
        self._region_offset = cache.seg_offset[regions.segment] + regions.start
        self._region_record = cache.seg_record[regions.segment]
        self._region_record_start = cache.seg_start[regions.segment] + regions.start

    def set_position(self, epoch: int, skip: int = 0) -> None:
        """Serve epoch ``epoch`` starting at its batch ``skip`` (set before iterating)."""
        self.epoch, self.skip = epoch, skip

    def plan(self, epoch: int) -> WindowPlan:
        """The windows this rank serves in ``epoch`` (validation ignores the epoch)."""
        epoch = epoch if self.train else 0
        if self._plan_cache is None or self._plan_cache[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch, 0 if self.train else 1])
            full = plan_windows(self.regions, rng, **self.plan_args)
            full = bucket_by_length(full, self.batch_size, self.bucket_batches, rng if self.train else None)
            if self.train:  # global batch g to rank g % world; equal counts, so every rank runs the same steps
                per_rank = math.ceil(len(full) / self.batch_size) // self.world_size
                batches = np.arange(per_rank) * self.world_size + self.rank
                index = batch_windows(batches, self.batch_size)
                mine = full.take(index[index < len(full)])
            else:  # validation may be uneven: no window is dropped
                mine = full.take(slice(self.rank, None, self.world_size))
            self._plan_cache = (epoch, mine)
        return self._plan_cache[1]

    def num_batches(self, epoch: int) -> int:
        return math.ceil(len(self.plan(epoch)) / self.batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        plan = self.plan(self.epoch)
        for batch in range(self.skip + worker, self.num_batches(self.epoch), workers):
            yield self.make_batch(plan.take(slice(batch * self.batch_size, (batch + 1) * self.batch_size)), batch)

    def make_batch(self, windows: WindowPlan, batch_index: int = 0) -> dict[str, torch.Tensor]:
        """Gather, reverse-complement and tokenise a batch of windows in a few array operations."""
        if self._packed is None:
            self._packed = self.cache.packed()
        lengths = windows.length
        within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        reverse = np.repeat(windows.reverse, lengths)
        within = np.where(reverse, np.repeat(lengths, lengths) - 1 - within, within)
        positions = np.repeat(self._region_offset[windows.region] + windows.start, lengths) + within
        codes = unpack(self._packed, positions) ^ reverse.astype(np.uint8)  # A<->T, C<->G is code ^ 1
        encoding = self.tokenizer.encode_codes(codes, lengths)
        input_ids, attention_mask = self._pad(encoding.input_ids, encoding.attention_mask)
        meta = np.stack(
            [
                self._region_record[windows.region],
                self._region_record_start[windows.region] + windows.start,
                lengths,
                windows.reverse.astype(np.int64),
            ],
            axis=1,
        )
        epoch = self.epoch if self.train else 0
        global_index = batch_index * self.world_size + self.rank if self.train else batch_index
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "windows": torch.from_numpy(meta),
            "stream_pos": torch.tensor([epoch, batch_index]),
            "batch_key": (int(epoch), int(global_index)),  # Python ints: stay on the host
        }

    def _pad(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Round the padded length up to a multiple (tensor cores; fewer shapes for torch.compile)."""
        length, multiple = input_ids.shape[1], self.pad_to_multiple_of
        target = min(-(-length // multiple) * multiple, max(length, self.tokenizer.max_length))
        if target == length:
            return input_ids, attention_mask
        extra = target - length
        return torch.nn.functional.pad(input_ids, (0, extra), value=PAD_ID), torch.nn.functional.pad(attention_mask, (0, extra))


class ResumableLoader(DataLoader):
    """A DataLoader over :class:`GenomeWindows` whose position Lightning saves in checkpoints.

    The position is what *training consumed* (``mark_consumed`` is called on every trained batch),
    not what the loader produced: Lightning prefetches, so those differ by a batch or more.
    """

    def __init__(self, dataset: GenomeWindows, num_workers: int = 0, pin_memory: bool = False) -> None:
        super().__init__(
            dataset,
            batch_size=None,
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=False,  # workers must see each epoch's position
            generator=torch.Generator().manual_seed(0),  # leave the global RNG (dropout) untouched
            prefetch_factor=4 if num_workers else None,
        )
        self._next_epoch = 0
        self._resume: tuple[int, int] | None = None
        self._consumed = (0, 0)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:  # type: ignore[override]
        epoch, skip = self._resume if self._resume is not None else (self._next_epoch, 0)
        self._resume = None
        if skip >= self.dataset.num_batches(epoch):
            epoch, skip = epoch + 1, 0
        self._next_epoch = epoch + 1
        self.dataset.set_position(epoch, skip)
        yield from super().__iter__()

    def mark_consumed(self, batch: dict[str, Any]) -> None:
        epoch, index = (int(v) for v in batch["stream_pos"])
        self._consumed = (epoch, index + 1)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._consumed[0], "batches": self._consumed[1]}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = (int(state["epoch"]), int(state["batches"]))
        self._consumed = self._resume


# ------------------------------------------------------------------------------------------ module
def _rank_and_world(trainer: pl.Trainer | None) -> tuple[int, int]:
    if trainer is not None:
        return trainer.global_rank, trainer.world_size
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class GenomeDataModule(pl.LightningDataModule):
    """Pretraining windows from any FASTA (path or URL; plain, gzip or bgzip; many records).

    ``prepare_data`` (once per node) downloads the file if given a URL and builds the 2-bit cache;
    ``setup`` (every rank) memory-maps it and splits it by region into train and validation.
    Lengths are in k-mers, as the model sees them: a window of n k-mers spans n + k - 1 bases.
    """

    def __init__(
        self,
        fasta: str,
        k: int = 6,
        max_kmers: int = 510,
        min_kmers: int = 5,
        p_max_length: float = 0.5,
        max_offset: int = 1000,
        batch_size: int = 10,
        val_batch_size: int | None = None,
        bucket_batches: int = 100,
        pad_to_multiple_of: int = 8,
        num_workers: int = 0,
        pin_memory: bool = False,
        val_fraction: float = 0.1,
        split_block: int = 100_000,
        split_seed: int = 0,
        reverse_complement: float = 0.0,
        seed: int = 0,
        cache_dir: str = ".cache/genome",
        download_dir: str | None = None,
    ) -> None:
        super().__init__()
        if not 1 <= min_kmers <= max_kmers:
            raise GMError(f"need 1 <= data.min_kmers <= data.max_kmers, got {min_kmers} and {max_kmers}")
        if batch_size < 1:
            raise GMError(f"data.batch_size must be at least 1, got {batch_size}")
        if bucket_batches < 0 or pad_to_multiple_of < 1:
            raise GMError(
                f"need data.bucket_batches >= 0 and data.pad_to_multiple_of >= 1, got {bucket_batches} and {pad_to_multiple_of}"
            )
        if not is_url(str(fasta)):
            open_fasta(fasta).close()  # a missing or empty file fails now, with its name, not inside fit
        self.fasta, self.k = str(fasta), k
        self.tokenizer = KmerTokenizer(k=k, max_length=max_kmers + 2)
        self.min_bases, self.max_bases = min_kmers + k - 1, max_kmers + k - 1
        self.p_max_length, self.max_offset = p_max_length, max_offset
        self.batch_size, self.val_batch_size = batch_size, val_batch_size or batch_size
        self.bucket_batches, self.pad_to_multiple_of = bucket_batches, pad_to_multiple_of
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.val_fraction, self.split_block, self.split_seed = val_fraction, split_block, split_seed
        self.reverse_complement, self.seed = reverse_complement, seed
        self.cache_dir = cache_dir
        self.download_dir = download_dir or os.path.join(cache_dir, "downloads")
        self.cache: GenomeCache | None = None
        self.train_regions: Regions | None = None
        self.val_regions: Regions | None = None
        self.train_set: GenomeWindows | None = None
        self.val_set: GenomeWindows | None = None
        self._train_loader: ResumableLoader | None = None

    @property
    def fasta_path(self) -> Path:
        return fetch_target(self.fasta, self.download_dir) if is_url(self.fasta) else Path(self.fasta)

    def prepare_data(self) -> None:
        if is_url(self.fasta):
            fetch(self.fasta, self.download_dir)
        build_or_load_cache(self.fasta_path, self.cache_dir, self.min_bases)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        # Another rank's prepare_data built the cache; loading verifies it matches the source.
        self.cache = build_or_load_cache(self.fasta_path, self.cache_dir, self.min_bases)
        self._check_length(self.cache)
        self.train_regions, self.val_regions = split_regions(self.cache, self.split_block, self.val_fraction, self.split_seed)
        rank, world = _rank_and_world(self.trainer)
        self.train_set = self.windows("train", rank, world)
        self.val_set = self.windows("validation", rank, world)
        if self.train_set.num_batches(0) == 0:
            raise GMError(
                f"{self.fasta}: the training split ({self.train_regions.bases} bases) gives no window for rank "
                f"{rank} of {world}; use a larger genome or fewer devices"
            )
        log.info(
            "genome %s: %d bases in %d segments; train %d bases, validation %d bases",
            self.fasta, self.cache.total_bases, len(self.cache.seg_length), self.train_regions.bases, self.val_regions.bases,
        )

    def windows(self, split: str, rank: int, world_size: int) -> GenomeWindows:
        """The windows ``rank`` of ``world_size`` serves from ``split`` ("train" or "validation"), after ``setup``.

        Validation windows depend on the split alone (its seed is ``split_seed``), so runs with
        different seeds are compared on the same windows.
        """
        assert self.cache is not None and self.train_regions is not None and self.val_regions is not None, "call setup() first"
        if split not in ("train", "validation"):
            raise ValueError(f"split must be 'train' or 'validation', got {split!r}")
        train = split == "train"
        return GenomeWindows(
            self.cache,
            self.train_regions if train else self.val_regions,
            self.tokenizer,
            batch_size=self.batch_size if train else self.val_batch_size,
            train=train,
            min_bases=self.min_bases,
            max_bases=self.max_bases,
            p_max_length=self.p_max_length,
            max_offset=self.max_offset,
            reverse_complement=self.reverse_complement,
            seed=self.seed if train else self.split_seed,
            rank=rank,
            world_size=world_size,
            bucket_batches=self.bucket_batches,
            pad_to_multiple_of=self.pad_to_multiple_of,
        )

    def _check_length(self, cache: GenomeCache) -> None:
        """A genome must hold one window of maximum length for training and one for validation.

        Half of the recipe's windows have the maximum length; a genome shorter than that is no
        pretraining corpus, whatever the split (lowering data.split_block would not help).
        """
        splits = 2 if self.val_fraction > 0 else 1
        need = splits * self.max_bases
        if cache.total_bases < need:
            length = sum(cache.meta["record_lengths"])
            windows = "one for training and one for validation" if splits == 2 else "one for training"
            raise GMError(
                f"{self.fasta}: genome too short: {cache.total_bases:,} usable bases (of {length:,}; runs of A/C/G/T "
                f"of at least {self.min_bases}), but a window of data.max_kmers={self.max_bases - self.k + 1} "
                f"{self.k}-mers spans {self.max_bases} bases and it needs {windows}: at least {need:,} bases; "
                "use a longer genome (or lower data.max_kmers)"
            )

    def train_dataloader(self) -> ResumableLoader:
        assert self.train_set is not None, "call setup() first"
        if self._train_loader is None:
            self._train_loader = ResumableLoader(self.train_set, self.num_workers, self.pin_memory)
        return self._train_loader

    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None, "call setup() first"
        return DataLoader(
            self.val_set,
            batch_size=None,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            generator=torch.Generator().manual_seed(0),
        )

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.trainer is not None and self.trainer.training and self._train_loader is not None:
            self._train_loader.mark_consumed(batch)
        return batch
