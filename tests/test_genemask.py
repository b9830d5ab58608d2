"""GeneMask masking (spec §2): the vectorised plan against the plain loop reference
(``masking_reference.py``), the random-span control's structure, and the properties the spec
asks for, on random inputs and on real chr2 sequence.
"""

from __future__ import annotations

import copy
import csv
import functools
import itertools
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gm.data.fasta import read_fasta
from gm.masking.strategies import (
    GeneMaskMasking,
    MaskingStrategy,
    RandomSpanMasking,
    dilate,
    kmer_span_offsets,
    long_span_offsets,
    run_starts,
)
from gm.data.tokenizer import CODE_TO_BYTE, INVALID_CODE, KmerTokenizer
from gm.masking.npmi import AUTHORS_RANKING
from gm.utils import GMError
from masking_reference import genemask_reference, rank_by_position, rank_by_token
from released_reference import genemask_released_reference
from test_masking import SPEC_OFFSETS, check_masked_batch, gen, kmer_span_reference, make_batch

PAD, UNK, CLS, SEP, MASK = range(5)
KS = (3, 4, 5, 6)
P_DEFAULT = 0.15 / 8.5
ROOT = Path(__file__).resolve().parent.parent
SAMPLE_FASTA = ROOT / "data" / "genome" / "hg38_chr2_1-2333275.fa.gz"
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


# ------------------------------------------------------------------------------------------ rankings
def kmers(k: int) -> list[str]:
    """DNABERT's k-mer order, written out from spec §1: itertools.product("ATCG")."""
    return ["".join(p) for p in itertools.product("ATCG", repeat=k)]


def write_ranking(path: Path, ranks: dict[str, int]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ngram", "count", "rank"])
        for i, (kmer, rank) in enumerate(ranks.items()):
            writer.writerow([kmer.lower() if i % 7 == 0 else kmer, 1000 + i, rank])  # case is ignored
    return path


def expected_table(ranks: dict[str, int], k: int) -> list[int]:
    """``table[token_id]``: specials and absent k-mers get the worst rank, max(max rank, #ranked) + 1."""
    worst = max(max(ranks.values()), len(ranks)) + 1
    return [worst] * 5 + [ranks.get(kmer, worst) for kmer in kmers(k)]


def authors_ranks() -> dict[str, int]:
    with open(AUTHORS_RANKING, newline="") as handle:
        return {row["ngram"]: int(row["norm_pmi_rank_rel"]) for row in csv.DictReader(handle)}


RANKING_KINDS = ("permutation", "ties", "partial", "huge")


@pytest.fixture(scope="module")
def rankings(tmp_path_factory) -> dict[tuple[int, str], tuple[str | None, list[int]]]:
    """(k, kind) -> (ranking CSV or None for the shipped default, the table it must give).

    ``ties`` has only 3 distinct ranks (exercises both tie rules), ``partial`` leaves 30% of the
    k-mers out (worst rank), ``huge`` spreads the ranks up to ~2e9 (only their order may matter).
    """
    directory = tmp_path_factory.mktemp("rankings")
    rng = np.random.default_rng(2024)
    out: dict[tuple[int, str], tuple[str | None, list[int]]] = {}
    for k in KS:
        names = kmers(k)
        permutation = rng.permutation(len(names)) + 1
        kinds = {
            "permutation": dict(zip(names, permutation.tolist())),
            "ties": dict(zip(names, rng.integers(1, 4, len(names)).tolist())),
            "partial": {n: int(r) for n, r, keep in zip(names, permutation, rng.random(len(names)) < 0.7) if keep},
            "huge": dict(zip(names, (permutation * 500_000 + rng.integers(0, 1000, len(names))).tolist())),
        }
        for kind, ranks in kinds.items():
            out[(k, kind)] = (str(write_ranking(directory / f"{kind}_{k}.csv", ranks)), expected_table(ranks, k))
    out[(6, "default")] = (None, expected_table(authors_ranks(), 6))
    return out


_MASKERS: dict[tuple, GeneMaskMasking] = {}


def masker(
    ranking: str | None, k: int, rank_by: str, all_high_if_fewer_than: int, special_rank: str = "worst", ties: str = "leftmost"
) -> GeneMaskMasking:
    key = (ranking, k, rank_by, all_high_if_fewer_than, special_rank, ties)
    if key not in _MASKERS:  # reading a ranking CSV once per configuration is enough
        _MASKERS[key] = GeneMaskMasking(
            k=k, ranking=ranking, rank_by=rank_by, all_high_if_fewer_than=all_high_if_fewer_than,
            special_rank=special_rank, ties=ties,
        )
    return _MASKERS[key]


def reference_rank(strategy, table: list[int], ids: list[list[int]]):
    """The loop reference's rank function for a strategy's settings, from the expected ``table``:
    with ``special_rank="best"`` the special ids 0-4 rank 0 (what only rank_by=position looks up);
    a position beyond the vocabulary stays the worst."""
    if strategy.rank_by == "token":
        return rank_by_token(table, ids)
    if strategy.special_rank == "best":
        return rank_by_position([0] * 5 + list(table[5:]), worst=max(table))
    return rank_by_position(table)


# ------------------------------------------------------------------------------------------ inputs
@st.composite
def cases(draw):
    """A batch (random ids with [CLS]/[SEP], [PAD] tails, scattered [UNK] and stray specials),
    and centres with a density drawn per row: rows with no centre, rows that are all centres."""
    k = draw(st.sampled_from(KS))
    short = st.integers(0, 40)
    lengths = draw(st.lists(st.one_of(short, short, st.integers(40, 300)), min_size=1, max_size=6))
    seed = draw(st.integers(0, 2**32 - 1))
    p_unk = draw(st.sampled_from([0.0, 0.1, 0.5]))
    p_special = draw(st.sampled_from([0.0, 0.05]))
    ids = make_batch(np.random.default_rng(seed), k, lengths, p_unk, p_special)
    densities = st.sampled_from([0.0, 0.02, 0.1, 0.3, 1.0])
    density = torch.tensor(draw(st.lists(densities, min_size=len(lengths), max_size=len(lengths))))
    centres = (ids >= 5) & (torch.rand(ids.shape, generator=gen(seed)) < density[:, None])
    return k, ids, centres, seed


def real_windows(n_windows: int, n_bases: int = 515, seed: int = 0) -> list[str]:
    """N-free windows of the shipped chr2 sample (soft-masked lower case kept), as strings."""
    (record,) = list(read_fasta(SAMPLE_FASTA, progress=False))
    codes = record.codes
    bad = np.concatenate(([0], np.cumsum(codes == INVALID_CODE)))
    starts = np.flatnonzero(bad[n_bases:] == bad[:-n_bases])  # windows without any non-ACGT base
    chosen = np.sort(np.random.default_rng(seed).choice(starts, n_windows, replace=False))
    return [CODE_TO_BYTE[codes[s : s + n_bases]].tobytes().decode() for s in chosen]


@pytest.fixture(scope="module")
def real_batch() -> tuple[list[str], torch.Tensor]:
    sequences = real_windows(96)
    return sequences, KmerTokenizer(6).encode(sequences).input_ids


@functools.lru_cache(maxsize=1)
def released_rows() -> torch.Tensor:
    """640 rows of the shipped chr2 sample as the released code saw them (512 positions: [CLS],
    510 6-mers, [SEP]); every 8th row is cut to 20-400 bases, so the batch is padded."""
    rng = np.random.default_rng(7)
    sequences = [s if i % 8 else s[: int(rng.integers(20, 401))] for i, s in enumerate(real_windows(640, seed=3))]
    return KmerTokenizer(6).encode(sequences).input_ids


def released_kmer_ranks(strategy: GeneMaskMasking) -> dict[int, int]:
    """The released rank dict, keyed by k-mer id: every k-mer of the shipped ranking (all 4096)."""
    table = strategy.rank_table.tolist()
    return {token: table[token] for token in range(5, len(table))}


def check_against_reference(
    strategy: GeneMaskMasking, table: list[int], ids: torch.Tensor, centres: torch.Tensor
) -> None:
    valid = MaskingStrategy.valid_positions(ids)
    masked, high, best = strategy.plan(ids, valid, centres)
    ref_masked, ref_high, ref_best = genemask_reference(
        ids.tolist(), centres.tolist(), reference_rank(strategy, table, ids.tolist()), strategy.k,
        strategy.all_high_if_fewer_than, strategy.ties,
    )
    assert masked.tolist() == ref_masked
    assert high.tolist() == ref_high
    for b, c in centres.nonzero().tolist():
        assert best[b, c].item() == ref_best[b][c], (b, c)


# ------------------------------------------------------------------------------------------ exact, centres fixed
@settings(FAST, max_examples=100)
@given(
    case=cases(),
    kind=st.sampled_from(RANKING_KINDS + ("default",)),
    rank_by=st.sampled_from(["token", "position"]),
    all_high=st.sampled_from([0, 9]),
    special_rank=st.sampled_from(["worst", "best"]),
    ties=st.sampled_from(["leftmost", "centre"]),
)
def test_plan_matches_loop_reference(rankings, case, kind, rank_by, all_high, special_rank, ties):
    k, ids, centres, seed = case
    if kind == "default" and k != 6:
        kind = "permutation"  # the shipped ranking has 6-mers only
    path, table = rankings[(k, kind)]
    strategy = masker(path, k, rank_by, all_high, special_rank, ties)
    assert strategy.rank_table.tolist() == table  # gm.masking.npmi.rank_table's documented worst-rank rule
    check_against_reference(strategy, table, ids, centres)

    # the whole strategy with its centres fixed: same positions, labels where masked
    fixed = copy.copy(strategy)
    fixed.centres = lambda input_ids, valid, generator: centres
    out = fixed(ids, gen(seed))
    ref_masked = torch.tensor(genemask_reference(
        ids.tolist(), centres.tolist(), reference_rank(strategy, table, ids.tolist()), k, all_high, ties
    )[0], dtype=torch.bool).reshape(ids.shape)
    assert torch.equal(out.masked, ref_masked)
    check_masked_batch(strategy, ids, out)


def test_plan_tie_rules_by_hand(tmp_path):
    """k=3, every k-mer rank 1 except two: ties go to the leftmost position and centre."""
    ranks = {kmer: 5 for kmer in kmers(3)}
    ranks["CCC"], ranks["GGG"] = 2, 1
    strategy = GeneMaskMasking(k=3, ranking=str(write_ranking(tmp_path / "r.csv", ranks)))
    aaa, ccc, ggg = (5 + kmers(3).index(s) for s in ("AAA", "CCC", "GGG"))
    #                 0    1    2    3    4    5    6    7    8    9   10   11   12   13   14   15
    ids = torch.tensor([[CLS, aaa, aaa, aaa, ccc, aaa, ccc, aaa, aaa, aaa, aaa, aaa, aaa, aaa, aaa, SEP]])
    centres = torch.zeros_like(ids, dtype=torch.bool)
    centres[0, [2, 5, 9, 12]] = True  # spans {1,2,3}, {4,5,6}, {8,9,10}, {11,12,13}
    masked, high, best = strategy.plan(ids, ids >= 5, centres)
    assert best[0, [2, 5, 9, 12]].tolist() == [1, 4, 8, 11]  # ties -> leftmost position
    # scores 5, 2, 5, 5: the high set is the 2 best, centre 5 and then the leftmost of the 5s
    assert torch.nonzero(high[0]).flatten().tolist() == [2, 5]
    assert torch.nonzero(masked[0]).flatten().tolist() == [1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13]
    ids[0, 11] = ggg  # now centre 12 has the best score; centre 5 keeps its place
    masked, high, best = strategy.plan(ids, ids >= 5, centres)
    assert torch.nonzero(high[0]).flatten().tolist() == [5, 12]
    assert best[0, 12].item() == 11
    assert torch.nonzero(masked[0]).flatten().tolist() == list(range(1, 7)) + list(range(8, 14))
    centres[0, 2] = False  # alone with centre 5 (score 2) and 12 (score 1): ceil(3/2) = 2 high
    masked, high, best = strategy.plan(ids, ids >= 5, centres)
    assert torch.nonzero(high[0]).flatten().tolist() == [5, 12]
    assert torch.nonzero(masked[0]).flatten().tolist() == list(range(2, 7)) + list(range(8, 14))


def test_plan_exact_for_long_rows_and_large_scores():
    """Keys score * L + position must not overflow: rows of 3000 positions, scores up to 2**20
    (the random scores' range), against the reference with the same scores. The scores are
    constant over blocks of 16 positions, so that centres' scores (minima over the k-span) reach
    the top of the range and score * L exceeds 2**31."""
    strategy = RandomSpanMasking(k=6)
    rng = np.random.default_rng(3)
    ids = make_batch(rng, 6, [2998, 2500, 40], p_unk=0.01)
    blocks = rng.integers(0, 1 << 20, (ids.shape[0], ids.shape[1] // 16 + 1))
    scores = torch.from_numpy(np.repeat(blocks, 16, axis=1)[:, : ids.shape[1]]).int()
    strategy.position_scores = lambda input_ids, valid, generator: scores.masked_fill(~valid, 1 << 26)
    centres = (ids >= 5) & (torch.rand(ids.shape, generator=gen(0)) < 0.05)
    masked, high, best = strategy.plan(ids, ids >= 5, centres)
    ref_masked, ref_high, ref_best = genemask_reference(
        ids.tolist(), centres.tolist(), lambda b, p: int(scores[b, p]), 6
    )
    assert masked.tolist() == ref_masked and high.tolist() == ref_high
    for b, c in centres.nonzero().tolist():
        assert best[b, c].item() == ref_best[b][c]


# ------------------------------------------------------------------------------------------ random-span control
@FAST
@given(case=cases(), all_high=st.sampled_from([0, 9]))
def test_random_span_structure(case, all_high):
    k, ids, centres, seed = case
    strategy = RandomSpanMasking(k=k, all_high_if_fewer_than=all_high, rank_by="token")
    assert strategy.rank_by == "random" and strategy.rank_table is None
    valid = ids >= 5
    masked, high, best = strategy.plan(ids, valid, centres, gen(seed))
    assert not (masked & ~valid).any()
    # every centre's k-span
    assert torch.equal(masked & kmer_span_reference(ids, centres, k), kmer_span_reference(ids, centres, k))
    assert torch.equal(masked | (dilate(centres, kmer_span_offsets(k)) & valid), masked)
    # ceil(m/2) high centres per row (all of them below the released rule's threshold)
    assert not (high & ~centres).any()
    for m, h in zip(centres.sum(1).tolist(), high.sum(1).tolist()):
        assert h == (m if m < all_high else math.ceil(m / 2))
    # each high centre's long span around a valid best(c) in its k-span, and nothing else
    expected = kmer_span_reference(ids, centres, k)
    for b, c in high.nonzero().tolist():
        anchor = best[b, c].item()
        assert anchor - c in SPEC_OFFSETS[k] and valid[b, anchor]
        for q in range(max(0, anchor - k + 1), min(ids.shape[1], anchor + k)):
            assert masked[b, q] == valid[b, q]
            expected[b, q] |= bool(valid[b, q])
    assert torch.equal(masked, expected)


def test_random_span_choice_is_random():
    """Same centres, different seeds: the high set and anchors change; NPMI plays no part."""
    ids = make_batch(np.random.default_rng(0), 6, [510] * 16, p_unk=0.0)
    centres = (ids >= 5) & (torch.rand(ids.shape, generator=gen(1)) < P_DEFAULT)
    strategy = RandomSpanMasking()
    a, b = strategy.plan(ids, ids >= 5, centres, gen(2)), strategy.plan(ids, ids >= 5, centres, gen(3))
    assert not torch.equal(a[1], b[1])
    assert torch.equal(a[1], strategy.plan(ids, ids >= 5, centres, gen(2))[1])


# ------------------------------------------------------------------------------------------ properties
STRATEGIES = {
    "genemask": lambda **kw: GeneMaskMasking(**kw),
    "genemask_position": lambda **kw: GeneMaskMasking(rank_by="position", **kw),
    "genemask_released": lambda **kw: GeneMaskMasking(
        rank_by="position", all_high_if_fewer_than=9, special_rank="best", ties="centre", **kw
    ),
    "random_span": lambda **kw: RandomSpanMasking(**kw),
}


@settings(FAST, max_examples=30)
@pytest.mark.parametrize("name", STRATEGIES)
@given(data=st.data())
def test_never_masks_special_or_padding(rankings, name, data):
    k = data.draw(st.sampled_from(KS))
    lengths = data.draw(st.lists(st.integers(0, 120), min_size=1, max_size=5))
    seed = data.draw(st.integers(0, 2**32 - 1))
    p_center = data.draw(st.sampled_from([P_DEFAULT, 0.2, 1.0]))
    replace = data.draw(st.sampled_from(["token", "span"]))
    ids = make_batch(np.random.default_rng(seed), k, lengths, p_unk=0.1, p_special=0.05)
    ranking = None if k == 6 else rankings[(k, "ties")][0]
    strategy = STRATEGIES[name](k=k, ranking=ranking, p_center=p_center, replace=replace)
    out = strategy(ids.clone(), gen(seed))
    check_masked_batch(strategy, ids, out)


@pytest.mark.parametrize("k", KS)
def test_nothing_to_mask(rankings, k):
    strategy = GeneMaskMasking(k=k, ranking=rankings[(k, "permutation")][0], p_center=1.0)
    for ids in [
        torch.tensor([[CLS, SEP]]),
        torch.tensor([[CLS, SEP, PAD, PAD], [CLS, UNK, UNK, SEP]]),
        torch.zeros((0, 5), dtype=torch.int64),
        torch.zeros((3, 0), dtype=torch.int64),
        torch.tensor([[MASK] * 7]),
    ]:
        out = strategy(ids, gen(0))
        assert not out.masked.any() and torch.equal(out.input_ids, ids)


def expected_genemask_fraction(p: float, k: int, n: int, all_high_if_fewer_than: int = 0) -> tuple[float, float]:
    """Expected masked fraction of a row of n valid k-mers, and the share of high centres.

    A row has m ~ Binomial(n, p) centres, ceil(m/2) of them high, so a centre is high with
    probability h = E[ceil(m/2)] / E[m] (0.528 for n = 510: rows with an odd m round up; 0.679
    with the released rule, all m high when m < 9, for which this gives 15.3%). Model:
    centres independent, each high with probability h, its best k-mer uniform over the (clipped)
    k-span. Position j stays unmasked when no centre covers it:

        P(j unmasked) = prod over c of (1 - p * q(c, j)),
        q(c, j) = 1 if j is in c's k-span, else h * P(|j - best(c)| <= k - 1).

    Without overlaps a centre masks k + (k-1) h = 8.64 tokens, 15.2%; overlapping spans bring it
    to 14.17% for n = 510, k = 6. (A Monte Carlo of the loop reference over 100,000 rows gives
    14.14% +- 0.014%; the implementation over 40,000 rows 14.17% +- 0.02%.)
    """
    offsets = list(kmer_span_offsets(k))
    m = np.arange(n + 1)
    pm = np.array([math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(n + 1)])
    n_high = np.where(m < all_high_if_fewer_than, m, np.ceil(m / 2))
    h = float((pm * n_high).sum() / (pm * m).sum())
    total = 0.0
    for j in range(n):
        log_unmasked = 0.0
        for c in range(max(0, j - 2 * k), min(n, j + 2 * k)):
            if j - c in offsets:
                q = 1.0
            else:
                span = [c + o for o in offsets if 0 <= c + o < n]
                q = h * sum(abs(j - s) <= k - 1 for s in span) / len(span)
            log_unmasked += math.log1p(-p * q)
        total += 1 - math.exp(log_unmasked)
    return total / n, h


def test_expected_genemask_fraction():
    fraction, h = expected_genemask_fraction(P_DEFAULT, 6, 510)
    assert 0.527 < h < 0.529
    assert 0.1410 < fraction < 0.1425
    # almost no overlap (tiny p): m is almost always 0 or 1, so h ~ 1 and a centre masks 2k - 1
    # tokens (a little less at the row ends, where spans are clipped)
    tiny, h = expected_genemask_fraction(1e-5, 6, 510)
    assert h > 0.99 and 0.97 < tiny / (1e-5 * 11) < 1.0
    released, h = expected_genemask_fraction(P_DEFAULT, 6, 510, all_high_if_fewer_than=9)
    assert 0.67 < h < 0.69 and 0.150 < released < 0.156


@pytest.mark.parametrize("name", STRATEGIES)
def test_masked_fraction_near_15_percent(name):
    """Default p_center = 0.15 / 8.5 on 512 rows of 510 real-ish k-mers (random sequence read by
    the tokenizer, so neighbouring tokens overlap as in the genome): 14.17% expected (see
    expected_genemask_fraction); the spread of a row's fraction is ~0.044, so the mean of
    4 x 512 rows has a standard error of ~0.001; the tolerance is 4 of them."""
    rng = np.random.default_rng(11)
    sequences = ["".join(rng.choice(list("ACGT"), 515)) for _ in range(512)]
    ids = KmerTokenizer(6).encode(sequences).input_ids
    strategy = STRATEGIES[name]()
    expected, _ = expected_genemask_fraction(P_DEFAULT, 6, 510, strategy.all_high_if_fewer_than)
    fractions = [strategy(ids, gen(seed)).masked.sum().item() / (512 * 510) for seed in range(4)]
    print(f"{name}: masked fraction {np.mean(fractions):.4f} (expected {expected:.4f})")
    assert abs(np.mean(fractions) - expected) < 0.004, fractions
    assert abs(np.mean(fractions) - 0.15) < 0.015


def check_best_kmer_hidden(
    masked: torch.Tensor, high: torch.Tensor, best: torch.Tensor, valid: torch.Tensor, k: int
) -> int:
    """No valid unmasked token shares a base with the best k-mer of a high centre.

    Token q covers bases q .. q+k-1 (in the row's base coordinates shifted by [CLS]); the best
    k-mer b covers b .. b+k-1; they share a base iff |q - b| <= k - 1.
    """
    readable = valid & ~masked
    n = 0
    for row, c in high.nonzero().tolist():
        b = best[row, c].item()
        assert valid[row, b], (row, c, b)
        assert not readable[row, max(0, b - k + 1) : b + k].any(), (row, c, b)
        n += 1
    return n


@FAST
@given(case=cases(), rank_by=st.sampled_from(["token", "position", "random"]))
def test_high_spans_hide_best_kmer_random_inputs(rankings, case, rank_by):
    k, ids, centres, seed = case
    path = rankings[(k, "ties")][0]
    strategy = RandomSpanMasking(k=k) if rank_by == "random" else masker(path, k, rank_by, 0)
    valid = ids >= 5
    masked, high, best = strategy.plan(ids, valid, centres, gen(seed))
    check_best_kmer_hidden(masked, high, best, valid, k)


@pytest.mark.parametrize("name", STRATEGIES)
def test_high_spans_hide_best_kmer_real_sequence(real_batch, name):
    sequences, ids = real_batch
    tokenizer = KmerTokenizer(6)
    strategy = STRATEGIES[name](p_center=0.05)
    valid = ids >= 5
    centres = strategy.centres(ids, valid, gen(5))
    masked, high, best = strategy.plan(ids, valid, centres, gen(6))
    assert check_best_kmer_hidden(masked, high, best, valid, 6) > 500
    # the same in the sequence's own letters: the unmasked tokens, read as a DNABERT user would,
    # leave every base of each best k-mer unknown
    for row, c in high.nonzero().tolist()[:200]:
        b = best[row, c].item()
        start = b - 1  # token b (after [CLS]) is the k-mer starting at base b - 1
        assert tokenizer.decode([int(ids[row, b])])[0] == sequences[row][start : start + 6].upper()
        readable = set()
        for q in torch.nonzero(~masked[row] & valid[row]).flatten().tolist():
            readable.update(range(q - 1, q - 1 + 6))
        assert not readable & set(range(start, start + 6))


def test_position_ranking_differs_from_token_on_real_sequence(real_batch):
    _, ids = real_batch
    valid = ids >= 5
    token, position = GeneMaskMasking(), GeneMaskMasking(rank_by="position")
    centres = token.centres(ids, valid, gen(0))
    by_token, by_position = token.plan(ids, valid, centres), position.plan(ids, valid, centres)
    assert not torch.equal(by_token[0], by_position[0])  # masks
    assert not torch.equal(by_token[1], by_position[1])  # high sets
    assert not torch.equal(by_token[2][centres], by_position[2][centres])  # best k-mers
    # position ranking ignores the sequence: shuffled k-mers, same centres, same plan
    shuffled = ids.clone()
    shuffled[:, 1:-1] = shuffled[:, 1:-1][:, torch.randperm(ids.shape[1] - 2, generator=gen(1))]
    again = position.plan(shuffled, valid, centres)
    assert all(torch.equal(x, y) for x, y in zip(by_position, again))
    assert not torch.equal(token.plan(shuffled, valid, centres)[1], by_token[1])


def test_released_rule_only_changes_rows_with_fewer_than_9_centres(real_batch):
    _, ids = real_batch
    valid = ids >= 5
    centres = torch.zeros_like(valid)
    rng = np.random.default_rng(4)
    counts = [i % 21 for i in range(ids.shape[0])]  # rows with 0..20 centres
    for row, m in enumerate(counts):
        centres[row, torch.from_numpy(rng.choice(np.arange(1, 511), m, replace=False))] = True
    for rank_by in ("token", "position"):
        paper = GeneMaskMasking(rank_by=rank_by).plan(ids, valid, centres)
        released = GeneMaskMasking(rank_by=rank_by, all_high_if_fewer_than=9).plan(ids, valid, centres)
        assert torch.equal(paper[2], released[2])  # best(c) does not depend on the rule
        for row, m in enumerate(counts):
            if m >= 9:
                assert torch.equal(paper[0][row], released[0][row]) and torch.equal(paper[1][row], released[1][row])
            else:
                assert torch.equal(released[1][row], centres[row])  # every centre is high
                assert paper[1][row].sum().item() == math.ceil(m / 2)
                assert torch.equal(released[0][row] | paper[0][row], released[0][row])
                if m >= 2:
                    assert not torch.equal(paper[1][row], released[1][row])


# ------------------------------------------------------------------------------------------ the released code
def test_genemask_released_masks_what_the_released_code_masks():
    """Same centres (p = 0.15 / 8.5) on 640 real rows: genemask_released masks exactly what a
    transcription of the released mask_tokens masks (tests/released_reference.py).

    The settings before special_rank/ties existed (positions 1-4 ranked worst, leftmost ties)
    differ on rows with a centre whose k-span reaches positions 1-4 (a centre at <= 6): there the
    released code ranks those positions best, so the centre gets a long span near the start and a
    high-set place (which can push another centre of the row out of the high set)."""
    ids = released_rows()
    valid = ids >= 5
    released = GeneMaskMasking(rank_by="position", all_high_if_fewer_than=9, special_rank="best", ties="centre")
    centres = released.centres(ids, valid, gen(11))
    reference = torch.tensor(genemask_released_reference(ids.tolist(), centres.tolist(), released_kmer_ranks(released)))
    agree = (released.plan(ids, valid, centres)[0] == reference).all(dim=1)
    print(f"genemask_released vs the released code: {int(agree.sum())}/640 rows agree")
    assert bool(agree.all())

    old = GeneMaskMasking(rank_by="position", all_high_if_fewer_than=9)  # special_rank worst, leftmost ties
    differs = (old.plan(ids, valid, centres)[0] != reference).any(dim=1)
    near_start = centres[:, :7].any(dim=1)
    print(f"old settings (special_rank=worst, ties=leftmost): {640 - int(differs.sum())}/640 rows agree; "
          f"{int(near_start.sum())} rows have a centre at <= 6")
    assert 0 < int(differs.sum()) and not (differs & ~near_start).any()
    # special_rank=best alone is not enough: the released scan gives ties among positions 1-4 to the centre
    best_only = GeneMaskMasking(rank_by="position", all_high_if_fewer_than=9, special_rank="best")
    differs_ties = (best_only.plan(ids, valid, centres)[0] != reference).any(dim=1)
    print(f"special_rank=best, ties=leftmost: {640 - int(differs_ties.sum())}/640 rows agree")
    assert 0 < int(differs_ties.sum()) and not (differs_ties & ~centres[:, 1:5].any(dim=1)).any()


def test_centre_tie_rule_by_hand():
    """Position-ranked, positions 1-4 best (rank 0): a centre at 3 keeps itself as best(c) under
    ties=centre (the released scan), the leftmost position 1 under ties=leftmost; a centre at 6,
    whose own rank is not best, gets its leftmost best neighbour 4 either way."""
    ids = KmerTokenizer(6).encode(["ACGTTGCAACGTAGCATCGATCAGT"]).input_ids  # 20 6-mers
    centres = torch.zeros_like(ids, dtype=torch.bool)
    centres[0, [3, 6]] = True
    plans = {
        ties: GeneMaskMasking(rank_by="position", special_rank="best", ties=ties).plan(ids, ids >= 5, centres)
        for ties in ("leftmost", "centre")
    }
    assert plans["leftmost"][2][0, [3, 6]].tolist() == [1, 4]
    assert plans["centre"][2][0, [3, 6]].tolist() == [3, 4]
    # ceil(2/2) = 1 high centre, both score 0: the leftmost centre, 3; its long span around best(c)
    for ties, best in (("leftmost", 1), ("centre", 3)):
        masked, high, _ = plans[ties]
        assert torch.nonzero(high[0]).flatten().tolist() == [3]
        spans = set(range(1, 6)) | set(range(4, 10)) | set(range(max(1, best - 5), best + 6))
        assert torch.nonzero(masked[0]).flatten().tolist() == sorted(spans)
    with pytest.raises(GMError, match="masking.ties must be one of leftmost, centre, got 'right'"):
        GeneMaskMasking(ties="right")
    with pytest.raises(GMError, match="masking.special_rank must be one of worst, best, got 'zero'"):
        GeneMaskMasking(special_rank="zero")


def test_released_config_has_the_released_settings(tmp_path):
    from hydra.utils import instantiate

    from conftest import compose_train

    for name, expected in {
        "genemask": ("token", "worst", "leftmost", 0),
        "genemask_position": ("position", "worst", "leftmost", 0),
        "genemask_released": ("position", "best", "centre", 9),
    }.items():
        strategy = instantiate(compose_train(tmp_path, [f"masking={name}", "logger=none"]).masking, k=6)
        assert (strategy.rank_by, strategy.special_rank, strategy.ties, strategy.all_high_if_fewer_than) == expected, name


# ------------------------------------------------------------------------------------------ replacement
def masked_runs(masked: torch.Tensor) -> list[tuple[int, int, int]]:
    """Maximal runs of masked positions as (row, start, stop), by a plain loop."""
    runs = []
    for row, line in enumerate(masked.tolist()):
        start = None
        for i, m in enumerate(line + [False]):
            if m and start is None:
                start = i
            elif not m and start is not None:
                runs.append((row, start, i))
                start = None
    return runs


@pytest.mark.parametrize("name", STRATEGIES)
def test_span_replacement_is_uniform_within_runs(name):
    rng = np.random.default_rng(8)
    ids = KmerTokenizer(6).encode(["".join(rng.choice(list("ACGT"), 515)) for _ in range(768)]).input_ids
    out = STRATEGIES[name](replace="span")(ids, gen(9))
    runs = masked_runs(out.masked)
    assert run_starts(out.masked)[out.masked].tolist() == [start for _, start, stop in runs for _ in range(start, stop)]
    kinds = {"mask": 0, "random": 0, "kept": 0}
    coincidences = random_tokens = 0
    for row, start, stop in runs:
        new, old = out.input_ids[row, start:stop], ids[row, start:stop]
        if (new == MASK).all():
            kinds["mask"] += 1
        elif torch.equal(new, old):
            kinds["kept"] += 1
        else:
            assert not (new == MASK).any(), "a run mixes [MASK] with other replacements"
            kinds["random"] += 1
            coincidences += int((new == old).sum())  # a random k-mer equal to the original, 1/4096
            random_tokens += stop - start
    n_runs = sum(kinds.values())
    assert n_runs == len(runs) > 3000
    assert coincidences <= max(3, 0.005 * random_tokens), "a run mixes kept and random tokens"
    assert abs(kinds["mask"] / n_runs - 0.8) < 0.03, kinds
    assert abs(kinds["random"] / n_runs - 0.1) < 0.025, kinds
    assert abs(kinds["kept"] / n_runs - 0.1) < 0.025, kinds


# ------------------------------------------------------------------------------------------ determinism, devices
@pytest.mark.parametrize("name", STRATEGIES)
def test_seeded_runs_repeat(name):
    ids = make_batch(np.random.default_rng(1), 6, [510, 300, 17, 0], p_unk=0.05)
    strategy = STRATEGIES[name]()
    a, b, c = strategy(ids, gen(42)), strategy(ids, gen(42)), strategy(ids, gen(43))
    for field in ("input_ids", "labels", "masked", "valid"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert not torch.equal(a.masked, c.masked)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", STRATEGIES)
def test_runs_on_device(name, device):
    """Outputs stay on the device, seeded runs repeat, and with the centres fixed the plan equals
    the CPU plan (the reference for the NPMI-ranked variants)."""
    ids_cpu = make_batch(np.random.default_rng(5), 6, [510, 200, 3, 0] * 4, p_unk=0.05, p_special=0.01)
    ids = ids_cpu.to(device)
    strategy = STRATEGIES[name]()
    a, b = strategy(ids, gen(0, device)), strategy(ids, gen(0, device))
    for field in ("input_ids", "labels", "masked", "valid"):
        assert getattr(a, field).device.type == device, field
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    check_masked_batch(strategy, ids_cpu, type(a)(*(t.cpu() for t in (a.input_ids, a.labels, a.masked, a.valid))))
    valid = ids >= 5
    centres = valid & (torch.rand(ids.shape, device=device, generator=gen(1, device)) < 0.1)
    on_device = strategy.plan(ids, valid, centres, gen(2, device))
    assert all(t.device.type == device for t in on_device)
    if strategy.rank_by != "random":
        on_cpu = strategy.plan(ids_cpu, valid.cpu(), centres.cpu())
        assert all(torch.equal(x.cpu(), y) for x, y in zip(on_device, on_cpu))
        table = strategy.rank_table.tolist()
        check_against_reference(strategy, table, ids_cpu, centres.cpu())


# ------------------------------------------------------------------------------------------ configuration
def test_bad_rank_by():
    with pytest.raises(GMError, match="rank_by"):
        GeneMaskMasking(rank_by="npmi")


def test_ranking_without_needed_columns(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("kmer,score\nAAAAAA,1\n")
    with pytest.raises(GMError, match=re.escape(str(path))):
        GeneMaskMasking(ranking=str(path))
    with pytest.raises(GMError, match=re.escape(str(tmp_path / "missing.csv"))):
        GeneMaskMasking(ranking=str(tmp_path / "missing.csv"))
    with pytest.raises(GMError, match=r"line 2: 'CCTCCC' is not a 3-mer of A/C/G/T \(a ranking of 6-mers; k=3 needs 3-mers: "
                                      r"python analyze.py npmi --k 3\)"):
        GeneMaskMasking(k=3)  # the shipped ranking has 6-mers only


def test_shipped_ranking_is_the_default():
    strategy = GeneMaskMasking()
    table = strategy.rank_table
    assert table.shape == (4101,)
    assert table[5 + kmers(6).index("CCTCCC")].item() == 1  # the authors' top 6-mer
    assert table[5 + kmers(6).index("GGGAGG")].item() == 2
    assert sorted(table[5:].tolist()) == list(range(1, 4097))
    assert (table[:5] == 4097).all() and table[:5].min() > table[5:].max()  # specials: worst rank
    assert torch.equal(table, GeneMaskMasking(ranking=str(AUTHORS_RANKING)).rank_table)
    assert strategy.p_center == P_DEFAULT and strategy.rank_by == "token" and strategy.all_high_if_fewer_than == 0
    assert tuple(long_span_offsets(6)) == tuple(range(-5, 6))


def test_loop_masking_baseline_matches_the_strategies_statistics():
    """The benchmark's all-loops baseline masks like the vectorised strategies (same distribution)."""
    from gm.masking.strategies import BertMasking, KmerSpanMasking
    from masking_reference import loop_masking

    ids = torch.randint(5, 4101, (64, 512))
    for strategy in (BertMasking(), KmerSpanMasking(), GeneMaskMasking(), GeneMaskMasking(rank_by="position"), RandomSpanMasking()):
        _, labels = loop_masking(strategy, ids.tolist(), seed=0)
        loop_fraction = (torch.tensor(labels) != -100).float().mean().item()
        vector_fraction = strategy(ids, torch.Generator().manual_seed(0)).masked.float().mean().item()
        assert abs(loop_fraction - vector_fraction) < 0.012, (strategy.name, loop_fraction, vector_fraction)
