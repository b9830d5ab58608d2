"""Genome windows: train/validation split, window plans, batches against the source FASTA,
the data module, sharding over DDP ranks x DataLoader workers, resuming, and epochs."""

from __future__ import annotations

import gzip
import itertools
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from ddp_helpers import ddp_epochs  # tests/ is on sys.path, for pytest and for spawned processes
from gm.data.fasta import build_or_load_cache, fetch
from gm.data.genome import (
    GenomeDataModule,
    GenomeWindows,
    Regions,
    ResumableLoader,
    WindowPlan,
    bucket_by_length,
    plan_windows,
    split_regions,
)
from gm.data.tokenizer import CLS_ID, PAD_ID, SEP_ID, KmerTokenizer
from gm.utils import GMError

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "genome" / "hg38_chr2_1-2333275.fa.gz"
COMPLEMENT = str.maketrans("ACGT", "TGCA")


# ------------------------------------------------------------------------------------------ helpers
def write_fasta(path: Path, records: list[tuple[str, str]], width: int = 60) -> Path:
    text = "".join(f">{h}\n" + "".join(s[i : i + width] + "\n" for i in range(0, len(s), width)) for h, s in records)
    path.write_bytes(gzip.compress(text.encode()) if path.suffix == ".gz" else text.encode())
    return path


def gapped_genome(
    seed: int = 0, lengths: tuple[int, ...] = (9000, 6000, 12000), alphabets: tuple[str, ...] | None = None
) -> list[tuple[str, str]]:
    """Records with runs of N, IUPAC codes and soft-masked (lower case) stretches."""
    rng = np.random.default_rng(seed)
    records = []
    for i, n in enumerate(lengths):
        letters = list(alphabets[i] if alphabets else "ACGT")
        seq = rng.choice(letters, n)
        seq[: rng.integers(0, 50)] = "N"
        for _ in range(n // 2000):  # gaps of N and single ambiguity codes
            at = rng.integers(0, n - 100)
            seq[at : at + rng.integers(1, 80)] = "N"
            seq[rng.integers(0, n)] = rng.choice(list("RYKMSWn"))
        lower = rng.integers(0, n - 500)
        seq[lower : lower + 400] = np.char.lower(seq[lower : lower + 400])
        records.append((f"chr{i + 1} test record", "".join(seq)))
    return records


def reference_window(records: list[tuple[str, str]], record: int, start: int, length: int, reverse: int) -> str:
    seq = records[record][1][start : start + length].upper()
    return seq[::-1].translate(COMPLEMENT) if reverse else seq


def check_batch(batch: dict, records: list[tuple[str, str]], tokenizer: KmerTokenizer) -> None:
    """Every row decodes to the source bases at its coordinates; masks and framing match lengths."""
    ids, mask, meta = batch["input_ids"], batch["attention_mask"], batch["windows"]
    assert ids.shape == mask.shape and ids.shape[0] == meta.shape[0] and meta.shape[1] == 4
    k = tokenizer.k
    longest = int(meta[:, 2].max()) - k + 1 + 2
    assert longest <= ids.shape[1] < longest + 8  # padded to the longest window (rounded up to a multiple of 8)
    assert ids.shape[1] in (longest, tokenizer.max_length) or ids.shape[1] % 8 == 0
    for row in range(ids.shape[0]):
        record, start, length, reverse = meta[row].tolist()
        n = length - k + 1
        assert mask[row].tolist() == [1] * (n + 2) + [0] * (ids.shape[1] - n - 2)
        assert ids[row, 0] == CLS_ID and ids[row, n + 1] == SEP_ID and (ids[row, n + 2 :] == PAD_ID).all()
        assert 0 <= start and start + length <= len(records[record][1])
        want = reference_window(records, record, start, length, reverse)
        assert "N" not in want
        assert tokenizer.decode_sequence(ids[row]) == want


def window_keys(batches) -> list[tuple[int, int, int, int]]:
    return [tuple(row) for b in batches for row in (b["windows"] if isinstance(b, dict) else b).tolist()]


def assert_disjoint(intervals: list[tuple[int, int, int]]) -> None:
    """(record, start, length) intervals share no base."""
    for a, b in zip(sorted(intervals), sorted(intervals)[1:]):
        assert a[0] != b[0] or a[1] + a[2] <= b[1], (a, b)


def region_intervals(cache, regions: Regions) -> list[tuple[int, int, int]]:
    record = cache.seg_record[regions.segment]
    start = cache.seg_start[regions.segment] + regions.start
    return list(zip(record.tolist(), start.tolist(), regions.length.tolist()))


def plan_keys(dataset: GenomeWindows, epoch: int) -> list[tuple[int, int, int, int]]:
    plan = dataset.plan(epoch)
    return window_keys([dataset.make_batch(plan)]) if len(plan) else []


def make_windows(cache, regions, *, k=6, max_kmers=40, min_kmers=5, batch_size=8, reverse_complement=0.5, seed=0, **kw):
    return GenomeWindows(
        cache,
        regions,
        KmerTokenizer(k=k, max_length=max_kmers + 2),
        batch_size=batch_size,
        min_bases=min_kmers + k - 1,
        max_bases=max_kmers + k - 1,
        p_max_length=0.5,
        max_offset=100,
        reverse_complement=reverse_complement,
        seed=seed,
        **kw,
    )


DM_KWARGS = dict(
    k=6, max_kmers=60, min_kmers=5, batch_size=8, split_block=2000, val_fraction=0.2, reverse_complement=0.5,
    max_offset=200,
)


@pytest.fixture
def genome(tmp_path) -> tuple[Path, list[tuple[str, str]]]:
    records = gapped_genome()
    return write_fasta(tmp_path / "genome.fa.gz", records), records


def datamodule(fasta: Path, cache_dir: Path, **overrides) -> GenomeDataModule:
    dm = GenomeDataModule(str(fasta), cache_dir=str(cache_dir), **{**DM_KWARGS, **overrides})
    dm.prepare_data()
    dm.setup("fit")
    return dm


# ------------------------------------------------------------------------------------------ split
def test_split_regions_partition_every_segment(tmp_path):
    records = gapped_genome(1, (30_000, 20_000, 25_000))
    cache = build_or_load_cache(write_fasta(tmp_path / "g.fa", records), tmp_path / "cache", 10)
    train, val = split_regions(cache, block_size=700, val_fraction=0.15, seed=3)
    assert len(val) > 5 and len(train) > 5
    # together they tile every segment exactly: contiguous, from 0 to its length, each base once
    seg = np.concatenate([train.segment, val.segment])
    start = np.concatenate([train.start, val.start])
    length = np.concatenate([train.length, val.length])
    assert (length > 0).all() and (length <= 700).all()
    for s in range(cache.seg_length.size):
        order = np.argsort(start[seg == s])
        starts, lengths = start[seg == s][order], length[seg == s][order]
        assert starts[0] == 0 and (starts[1:] == (starts + lengths)[:-1]).all()
        assert starts[-1] + lengths[-1] == cache.seg_length[s]
    assert train.bases + val.bases == cache.total_bases
    # train and validation never share a base (absolute coordinates in the records)
    train_iv, val_iv = region_intervals(cache, train), region_intervals(cache, val)
    assert_disjoint(train_iv + val_iv)
    # validation's share of blocks is round(val_fraction x blocks); of bases, about val_fraction
    n_blocks = len(train) + len(val)
    assert len(val) == round(0.15 * n_blocks)
    assert abs(val.bases / cache.total_bases - 0.15) < 0.05


def test_split_is_deterministic_given_its_seed(tmp_path):
    cache = build_or_load_cache(write_fasta(tmp_path / "g.fa", gapped_genome(2)), tmp_path / "cache", 10)
    a_train, a_val = split_regions(cache, 500, 0.2, seed=7)
    b_train, b_val = split_regions(cache, 500, 0.2, seed=7)
    for a, b in ((a_train, b_train), (a_val, b_val)):
        for field in ("segment", "start", "length"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    _, c_val = split_regions(cache, 500, 0.2, seed=8)
    assert set(region_intervals(cache, c_val)) != set(region_intervals(cache, a_val))
    # no validation requested: everything trains
    train, val = split_regions(cache, 500, 0.0, seed=7)
    assert len(val) == 0 and train.bases == cache.total_bases


def test_split_errors_when_genome_too_small(tmp_path):
    small = build_or_load_cache(write_fasta(tmp_path / "s.fa", [("s", "ACGT" * 150)]), tmp_path / "cache", 10)
    with pytest.raises(GMError, match="too few"):  # one block cannot hold out anything
        split_regions(small, 1000, 0.1, seed=0)
    with pytest.raises(GMError, match="too few"):  # two blocks, both would be validation
        split_regions(small, 300, 0.9, seed=0)
    train, val = split_regions(small, 300, 0.1, seed=0)  # two blocks: one each
    assert len(train) == 1 and len(val) == 1
    with pytest.raises(GMError, match="split_block"):
        split_regions(small, 0, 0.1, seed=0)
    with pytest.raises(GMError, match="val_fraction"):
        split_regions(small, 100, 1.0, seed=0)
    (tmp_path / "tiny.fa").write_text(">t\n" + "ACGT" * 100 + "\n")
    with pytest.raises(GMError, match="too few"):
        datamodule(tmp_path / "tiny.fa", tmp_path / "cache2", split_block=100_000, val_fraction=0.1)


def test_genome_too_short_for_a_window_says_so(tmp_path):
    """A 50-base FASTA was told to lower data.split_block; the genome is what is too short."""
    fasta = tmp_path / "fifty.fa"
    fasta.write_text(">s\n" + "ACGTTGCA" * 6 + "AC\n")
    with pytest.raises(GMError) as info:
        datamodule(fasta, tmp_path / "cache")  # max_kmers=60: a window of 65 bases, one per split
    assert str(info.value) == (
        f"{fasta}: genome too short: 50 usable bases (of 50; runs of A/C/G/T of at least 10), but a window of "
        "data.max_kmers=60 6-mers spans 65 bases and it needs one for training and one for validation: at least "
        "130 bases; use a longer genome (or lower data.max_kmers)"
    )
    assert "split_block" not in str(info.value)
    fasta.write_text(">s\n" + "ACGT" * 30 + "NNNNN" + "ACGTTGCA" + "\n")  # 120 usable of 133 (the 8 after the Ns: too short a run)
    with pytest.raises(GMError, match=r"genome too short: 120 usable bases \(of 133; .*at least 130 bases"):
        datamodule(fasta, tmp_path / "cache")
    dm = datamodule(fasta, tmp_path / "cache", val_fraction=0.0)  # no validation: one window is enough
    assert dm.train_set.num_batches(0) >= 1


# ------------------------------------------------------------------------------------------ plans
def synthetic_regions(seed: int = 0, n: int = 300) -> Regions:
    lengths = np.random.default_rng(seed).integers(1, 3000, n)
    lengths[:5] = [1, 9, 10, 11, 75]
    return Regions(np.arange(n), np.zeros(n, dtype=np.int64), lengths)


PLAN = dict(min_bases=10, max_bases=65, p_max_length=0.5, max_offset=100)


@pytest.mark.parametrize("max_offset", [0, 100, 1000])
def test_plan_windows_cut_regions_into_consecutive_windows(max_offset):
    regions = synthetic_regions()
    plan = plan_windows(regions, np.random.default_rng(1), **{**PLAN, "max_offset": max_offset}, shuffle=False)
    assert len(plan) > 3000
    assert ((plan.length >= 10) & (plan.length <= 65)).all()
    last = np.zeros(len(plan), dtype=bool)
    for r in range(len(regions)):
        mine = plan.region == r
        size = int(regions.length[r])
        if size < 10:
            assert not mine.any()  # too short for one window
            continue
        starts, lengths = plan.start[mine], plan.length[mine]
        assert starts.size and (np.diff(starts) > 0).all()
        assert starts[0] < max(1, min(max_offset, size - 10 + 1))  # random offset under max_offset
        assert (starts[1:] == (starts + lengths)[:-1]).all()  # consecutive, never overlapping
        assert starts[-1] + lengths[-1] <= size  # inside the region
        assert size - (starts[-1] + lengths[-1]) < 10  # only a scrap shorter than a window is left
        last[np.flatnonzero(mine)[-1]] = True
    # half of the windows (not counting each region's remainder) have the maximum length
    share = np.mean(plan.length[~last] == 65)
    assert 0.45 < share < 0.55, share
    others = plan.length[~last & (plan.length != 65)]
    assert others.min() == 10 and others.max() == 64 and abs(others.mean() - 37.5) < 2  # uniform in [10, 65]


def test_plan_windows_random_choices():
    regions = synthetic_regions(2)
    a = plan_windows(regions, np.random.default_rng(5), **PLAN, reverse_complement=0.3)
    b = plan_windows(regions, np.random.default_rng(5), **PLAN, reverse_complement=0.3)
    for field in ("region", "start", "length", "reverse"):  # deterministic for the same generator seed
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert abs(a.reverse.mean() - 0.3) < 0.03
    c = plan_windows(regions, np.random.default_rng(6), **PLAN)
    first = lambda p: {r: s for r, s in sorted(zip(p.region.tolist(), p.start.tolist()), reverse=True)}  # noqa: E731
    fa, fc = first(a), first(c)
    assert np.mean([fa[r] != fc[r] for r in fa]) > 0.9  # fresh offsets with another seed
    # shuffling only reorders: the unshuffled plan from the same seed holds the same windows
    ordered = plan_windows(regions, np.random.default_rng(5), **PLAN, reverse_complement=0.3, shuffle=False)
    def key(p):
        return sorted(zip(p.region.tolist(), p.start.tolist(), p.length.tolist(), p.reverse.tolist()))

    assert key(ordered) == key(a)
    assert (np.diff(ordered.region) >= 0).all() and not (np.diff(a.region) >= 0).all()
    # p_max_length 1: all full-length windows except remainders
    full = plan_windows(regions, np.random.default_rng(5), **{**PLAN, "p_max_length": 1.0}, shuffle=False)
    assert np.mean(full.length == 65) > 0.9
    # no regions, no windows
    none = np.zeros(0, np.int64)
    empty = plan_windows(Regions(none, none, none), np.random.default_rng(0), **PLAN)
    assert len(empty) == 0


# ------------------------------------------------------------------------------------------ batches
@pytest.mark.parametrize("k", [3, 6])
def test_batches_decode_to_the_source_and_never_cross_records(tmp_path, k):
    # two records of different compositions: a window spanning both would mix the alphabets
    records = gapped_genome(3, (5000, 4000), alphabets=("AC", "AG"))
    cache = build_or_load_cache(write_fasta(tmp_path / "two.fa", records, 70), tmp_path / "cache", 5 + k - 1)
    regions, _ = split_regions(cache, 1000, 0.0, seed=0)
    dataset = make_windows(cache, regions, k=k, reverse_complement=0.5)
    batches = list(dataset)
    assert len(batches) == dataset.num_batches(0) > 10
    assert [b["stream_pos"].tolist() for b in batches] == [[0, i] for i in range(len(batches))]
    tokenizer = dataset.tokenizer
    allowed = {(0, 0): set("AC"), (0, 1): set("GT"), (1, 0): set("AG"), (1, 1): set("CT")}
    for batch in batches:
        assert batch["input_ids"].shape[0] <= 8
        check_batch(batch, records, tokenizer)
        for row, (record, _, _, reverse) in zip(batch["input_ids"], batch["windows"].tolist()):
            assert set(tokenizer.decode_sequence(row)) <= allowed[record, reverse]
    keys = window_keys(batches)
    assert {r for *_, r in keys} == {0, 1} and {rec for rec, *_ in keys} == {0, 1}
    assert len(set(keys)) == len(keys)
    assert_disjoint([key[:3] for key in keys])  # no base twice in an epoch
    assert sum(key[2] for key in keys) > 0.85 * cache.total_bases  # and the genome is nearly all used


def in_batches(keys: list, batch_size: int) -> list[list]:
    return [keys[i : i + batch_size] for i in range(0, len(keys), batch_size)]


@pytest.mark.parametrize("bucket_batches", [0, 3])
def test_shard_plans_partition_the_epoch(tmp_path, bucket_batches):
    cache = build_or_load_cache(write_fasta(tmp_path / "g.fa", gapped_genome(4)), tmp_path / "cache", 10)
    train, val = split_regions(cache, 1000, 0.2, seed=0)
    for regions, is_train in ((train, True), (val, False)):
        full = plan_keys(make_windows(cache, regions, train=is_train, bucket_batches=bucket_batches), 0)
        for world in (2, 3):
            shards = [
                plan_keys(make_windows(cache, regions, train=is_train, rank=r, world_size=world, bucket_batches=bucket_batches), 0)
                for r in range(world)
            ]
            union = [w for shard in shards for w in shard]
            assert len(set(union)) == len(union)
            if is_train:
                # global batch g is rank g % world's batch g // world: the same windows on any number of
                # ranks; every rank gets the same number of batches, so the last len % world batches are dropped
                per_rank = [in_batches(shard, 8) for shard in shards]
                assert len({len(b) for b in per_rank}) == 1
                interleaved = [batch for group in zip(*per_rank) for batch in group]
                assert interleaved == in_batches(full, 8)[: len(interleaved)]
                assert len(interleaved) == len(in_batches(full, 8)) // world * world
            else:  # validation drops nothing
                assert sorted(union) == sorted(full)


def test_length_bucketing_removes_padding_and_keeps_the_windows(tmp_path):
    """Bucketing regroups the same windows (same lengths) into batches of similar length."""
    cache = build_or_load_cache(SAMPLE, tmp_path / "cache", 10)
    train, _ = split_regions(cache, 100_000, 0.1, seed=0)
    kwargs = dict(k=6, max_kmers=510, batch_size=10, reverse_complement=0.0)
    naive = make_windows(cache, train, **kwargs)
    bucketed = make_windows(cache, train, bucket_batches=100, pad_to_multiple_of=8, **kwargs)
    for epoch in (0, 1):
        a, b = naive.plan(epoch), bucketed.plan(epoch)
        assert sorted(zip(a.region, a.start, a.length)) == sorted(zip(b.region, b.start, b.length))
    plan = naive.plan(0)

    def padding_share(dataset: GenomeWindows) -> float:
        plan = dataset.plan(0)
        masks = [dataset.make_batch(plan.take(slice(i, i + 10)))["attention_mask"] for i in range(0, 2000, 10)]
        return 1 - sum(int(m.sum()) for m in masks) / sum(m.numel() for m in masks)

    assert padding_share(naive) > 0.2  # half the windows are shorter than the maximum
    assert padding_share(bucketed) < 0.03
    # long and short batches stay interleaved over the epoch, not sorted
    batch_max = bucketed.plan(0).length[: len(plan) // 10 * 10].reshape(-1, 10).max(1)
    first_half_full = (batch_max[: len(batch_max) // 2] == 515).mean()
    assert 0.3 < first_half_full < 0.7 and (np.diff(batch_max) != 0).sum() > len(batch_max) / 3


def test_bucket_by_length_keeps_batch_boundaries():
    rng = np.random.default_rng(0)
    n = 95
    plan = WindowPlan(np.arange(n), np.zeros(n, np.int64), rng.integers(5, 100, n), np.zeros(n, bool))
    out = bucket_by_length(plan, 10, 2, np.random.default_rng(1))
    assert sorted(out.region.tolist()) == list(range(n))
    assert set(out.region[90:].tolist()) <= set(range(80, 95))  # the short last batch stays last (last pool)
    for batch in out.region[:90].reshape(-1, 10):  # each full batch comes from one pool of 20 windows, sorted
        assert len({int(i) // 20 for i in batch}) == 1
        assert list(plan.length[batch]) == sorted(plan.length[batch])
    assert bucket_by_length(plan, 10, 0, None) is plan


def test_pad_to_multiple_of_never_passes_the_model_length(tmp_path, genome):
    fasta, records = genome
    for multiple in (1, 8, 64):
        dm = datamodule(fasta, tmp_path / "cache", pad_to_multiple_of=multiple, max_kmers=60)
        for batch in itertools.islice(iter(dm.train_dataloader()), 20):
            width = batch["input_ids"].shape[1]
            longest = int(batch["attention_mask"].sum(1).max())
            assert width == min(-(-longest // multiple) * multiple, 62) or (multiple == 1 and width == longest)
            assert (batch["input_ids"][batch["attention_mask"] == 0] == PAD_ID).all()


# ------------------------------------------------------------------------------------------ data module
def test_datamodule_on_generated_multi_record_genome(tmp_path, genome):
    fasta, records = genome
    dm = datamodule(fasta, tmp_path / "cache")
    assert (tmp_path / "cache").is_dir() and dm.cache.record_names == ["chr1", "chr2", "chr3"]
    train_loader, val_loader = dm.train_dataloader(), dm.val_dataloader()
    assert isinstance(train_loader, ResumableLoader) and dm.train_dataloader() is train_loader
    train, val = list(train_loader), list(val_loader)
    assert len(train) == dm.train_set.num_batches(0) and len(val) == dm.val_set.num_batches(0)
    for batch in train + val:
        check_batch(batch, records, dm.tokenizer)
    assert all(not b["windows"][:, 3].any() for b in val)  # no reverse complement in validation
    assert any(b["windows"][:, 3].any() for b in train)
    train_keys, val_keys = window_keys(train), window_keys(val)
    assert {k[0] for k in train_keys} == {0, 1, 2}
    assert_disjoint([key[:3] for key in train_keys + val_keys])  # train and validation share no base
    assert abs(sum(k[2] for k in val_keys) / sum(k[2] for k in train_keys + val_keys) - 0.2) < 0.1


def test_datamodule_windows_of_any_rank_are_its_setup_datasets_share(tmp_path, genome):
    """``windows(split, rank, world)`` is what ``setup`` builds for that rank: the 8 ranks' plans of
    a world of 8 are the global batches dealt in turn, and rank 0 of 1 is setup's own plan."""
    fasta, _ = genome
    dm = datamodule(fasta, tmp_path / "cache")
    assert plan_keys(dm.windows("train", 0, 1), 0) == plan_keys(dm.train_set, 0)
    assert plan_keys(dm.windows("validation", 0, 1), 0) == plan_keys(dm.val_set, 0)
    whole = in_batches(plan_keys(dm.train_set, 0), dm.batch_size)
    shards = [in_batches(plan_keys(dm.windows("train", rank, 8), 0), dm.batch_size) for rank in range(8)]
    per_rank = len(whole) // 8
    assert all(len(shard) == per_rank for shard in shards)
    assert [batch for step in zip(*shards) for batch in step] == whole[: per_rank * 8]
    with pytest.raises(ValueError, match="split must be"):
        dm.windows("test", 0, 1)


def test_datamodule_on_shipped_genome(tmp_path):
    dm = datamodule(
        SAMPLE, tmp_path / "cache", max_kmers=510, batch_size=10, split_block=100_000, val_fraction=0.1, max_offset=1000
    )
    assert dm.cache.record_names == ["chr2"] and dm.cache.meta["record_lengths"] == [2_333_275]
    assert dm.cache.seg_start.min() >= 10_000  # the leading Ns are not sequence
    lines = gzip.decompress(SAMPLE.read_bytes()).decode().split("\n")
    records = [("chr2", "".join(lines[1:]))]
    iterator = iter(dm.train_dataloader())
    train = [next(iterator) for _ in range(3)]
    del iterator
    val = list(dm.val_dataloader())
    for batch in train + val[:2]:
        check_batch(batch, records, dm.tokenizer)
    assert train[0]["input_ids"].shape[1] <= 512
    full = dm.train_set.plan(0)
    assert np.mean(full.length == dm.max_bases) > 0.4
    starts = dm.train_set._region_record_start[full.region] + full.start
    train_iv = list(zip([0] * len(full), starts.tolist(), full.length.tolist()))
    assert_disjoint(train_iv + [key[:3] for key in window_keys(val)])
    assert sum(full.length) + sum(k[2] for k in window_keys(val)) > 0.85 * dm.cache.total_bases


def test_datamodule_from_file_url(tmp_path, genome):
    fasta, records = genome
    url = fasta.as_uri() + "#download"
    dm = GenomeDataModule(url, cache_dir=str(tmp_path / "cache"), **DM_KWARGS)
    assert dm.fasta_path == tmp_path / "cache" / "downloads" / "genome.fa.gz"
    dm.prepare_data()
    assert dm.fasta_path.read_bytes() == fasta.read_bytes()
    dm.setup("fit")
    check_batch(next(iter(dm.val_dataloader())), records, dm.tokenizer)
    assert fetch(url, tmp_path / "cache" / "downloads") == dm.fasta_path


# ------------------------------------------------------------------------------------------ sharding
def test_ddp_two_ranks_two_workers_share_every_window_once(tmp_path, genome):
    fasta, records = genome
    kwargs = dict(DM_KWARGS, num_workers=2, batch_size=6)
    out = tmp_path / "out"
    out.mkdir()
    mp.spawn(
        ddp_epochs,
        args=(2, str(tmp_path / "init"), str(fasta), str(tmp_path / "cache"), str(out), kwargs),
        nprocs=2,
        join=True,
    )
    results = [pickle.loads((out / f"rank{r}.pkl").read_bytes()) for r in range(2)]
    for result in results:
        assert "error" not in result, result["error"]
    assert [r["dataset_rank"] for r in results] == [(0, 2, 0, 2), (1, 2, 1, 2)]  # read from torch.distributed
    assert all(r["num_workers"] == 2 for r in results)
    assert results[0]["gathered_counts"] == results[1]["gathered_counts"]

    single = GenomeDataModule(str(fasta), cache_dir=str(tmp_path / "cache"), **kwargs)  # no process group: world 1
    single.setup("fit")
    assert (single.train_set.rank, single.train_set.world_size) == (0, 1)
    for epoch in (0, 1):
        full = plan_keys(single.train_set, epoch)
        seen = [r["train"][epoch] for r in results]
        for rank, got in enumerate(seen):
            n = len(got["windows"])
            assert n == results[0]["gathered_counts"][0][epoch]
            # batches arrive in plan order, dealt round-robin to the two workers, which both work
            assert got["stream_pos"] == [(epoch, i) for i in range(n)]
            assert got["batch_key"] == [(epoch, 2 * i + rank) for i in range(n)]
            assert got["worker"] == [i % 2 for i in range(n)]
        assert len(seen[0]["windows"]) == len(seen[1]["windows"]) > 4  # same number of steps on both ranks
        per_rank = [window_keys(got["windows"]) for got in seen]
        union = per_rank[0] + per_rank[1]
        assert len(set(union)) == len(union)  # nothing twice, across ranks and workers
        # global batch g (rank g % 2) holds the windows of batch g of the single-process run
        interleaved = [window_keys([b]) for pair in zip(seen[0]["windows"], seen[1]["windows"]) for b in pair]
        single_batches = in_batches(full, kwargs["batch_size"])
        assert interleaved == single_batches[: len(interleaved)]
        assert len(single_batches) - len(interleaved) <= 1  # nothing lost but the odd batch, the plan's last
        for got in seen:  # and the tokens are the source's
            for windows, ids in zip(got["windows"][:5], got["input_ids"][:5]):
                batch = {
                    "windows": torch.from_numpy(windows),
                    "input_ids": torch.from_numpy(ids),
                    "attention_mask": torch.from_numpy((ids != PAD_ID).astype(np.int64)),
                }
                check_batch(batch, records, single.tokenizer)
    assert set(window_keys(results[0]["train"][0]["windows"])) != set(window_keys(results[0]["train"][1]["windows"]))
    # validation: split across ranks unevenly if need be, but no window dropped or repeated
    val = [window_keys(r["val"]["windows"]) for r in results]
    assert len(set(val[0]) & set(val[1])) == 0
    assert sorted(val[0] + val[1]) == sorted(plan_keys(single.val_set, 0))
    assert all(r["val"]["stream_pos"] == [(0, i) for i in range(len(r["val"]["windows"]))] for r in results)


# ------------------------------------------------------------------------------------------ resume
def assert_same_batches(got, want) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["windows"], b["windows"])
        assert torch.equal(a["stream_pos"], b["stream_pos"])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resumable_loader_resumes_mid_epoch(tmp_path, genome, num_workers):
    fasta, _ = genome
    cache = tmp_path / "cache"
    reference = datamodule(fasta, cache, num_workers=num_workers).train_dataloader()
    epoch0, epoch1 = list(reference), list(reference)
    assert len(epoch0) > 8 and not torch.equal(epoch0[0]["windows"], epoch1[0]["windows"])

    loader = datamodule(fasta, cache, num_workers=num_workers).train_dataloader()
    assert loader.state_dict() == {"epoch": 0, "batches": 0}
    iterator = iter(loader)
    produced = [next(iterator) for _ in range(7)]  # the trainer's prefetch runs ahead of training
    for batch in produced[:5]:
        loader.mark_consumed(batch)
    state = loader.state_dict()
    assert state == {"epoch": 0, "batches": 5}
    del iterator

    resumed = datamodule(fasta, cache, num_workers=num_workers).train_dataloader()  # a fresh process, as it were
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state
    rest = list(resumed)
    assert_same_batches(rest, epoch0[5:])
    assert_same_batches(produced, epoch0[:7])
    assert_same_batches(list(resumed), epoch1)


def test_resumable_loader_state_at_end_of_epoch_starts_the_next(tmp_path, genome):
    fasta, _ = genome
    cache = tmp_path / "cache"
    reference = datamodule(fasta, cache).train_dataloader()
    epochs = [list(reference) for _ in range(3)]
    loader = datamodule(fasta, cache).train_dataloader()
    for batch in loader:
        loader.mark_consumed(batch)
    state = loader.state_dict()
    assert state == {"epoch": 0, "batches": len(epochs[0])}
    resumed = datamodule(fasta, cache).train_dataloader()
    resumed.load_state_dict(state)
    assert_same_batches(list(resumed), epochs[1])
    # a state in the middle of epoch 1 resumes there and goes on to epoch 2
    for batch in epochs[1][:3]:
        resumed.mark_consumed(batch)
    again = datamodule(fasta, cache).train_dataloader()
    again.load_state_dict(resumed.state_dict())
    assert again.state_dict() == {"epoch": 1, "batches": 3}
    assert_same_batches(list(again), epochs[1][3:])
    assert_same_batches(list(again), epochs[2])


# ------------------------------------------------------------------------------------------ epochs
def test_each_epoch_has_fresh_windows_and_validation_is_fixed(tmp_path, genome):
    fasta, records = genome
    dm = datamodule(fasta, tmp_path / "cache")
    train_loader = dm.train_dataloader()
    first, second = window_keys(list(train_loader)), window_keys(list(train_loader))
    assert len(set(first) & set(second)) < 0.1 * len(first)  # fresh offsets and lengths
    assert [k[:3] for k in first[:10]] != [k[:3] for k in second[:10]]  # and a fresh order
    starts = lambda keys: {(r, s) for r, s, *_ in keys}  # noqa: E731
    assert starts(first) != starts(second)
    val_a, val_b = list(dm.val_dataloader()), list(dm.val_dataloader())
    assert_same_batches(val_a, val_b)
    # a new data module with the same seed serves the same validation set, and the same epoch 0
    other = datamodule(fasta, tmp_path / "cache")
    assert_same_batches(list(other.val_dataloader()), val_a)
    assert window_keys(list(other.train_dataloader())) == first
    # another seed: other training windows; the same validation regions (split_seed fixes the split)
    reseeded = datamodule(fasta, tmp_path / "cache", seed=1)
    assert window_keys(list(reseeded.train_dataloader())) != first
    for field in ("segment", "start", "length"):
        np.testing.assert_array_equal(getattr(reseeded.val_set.regions, field), getattr(dm.val_set.regions, field))
