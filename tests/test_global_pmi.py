"""Global-PMI masking (the successor paper's baseline): the vectorised plan against the plain loop
reference (``masking_reference.global_pmi_reference``) and against a transcription of the released
code (``released_reference.global_pmi_released_reference``), and the properties every strategy has.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gm.data.tokenizer import KmerTokenizer
from gm.masking.strategies import GlobalPMIMasking, MaskingStrategy, long_span_offsets
from gm.utils import GMError
from masking_reference import global_pmi_reference, loop_masking
from released_reference import global_pmi_released_reference
from test_genemask import (  # noqa: F401  (rankings is a fixture)
    DEVICES,
    FAST,
    KS,
    cases,
    rankings,
    real_windows,
    reference_rank,
    released_kmer_ranks,
    released_rows,
)
from test_masking import check_masked_batch, gen, make_batch, no_host_sync

P_GLOBAL = 0.15 / 11
_MASKERS: dict[tuple, GlobalPMIMasking] = {}


def masker(ranking: str | None, k: int, rank_by: str, special_rank: str = "worst") -> GlobalPMIMasking:
    key = (ranking, k, rank_by, special_rank)
    if key not in _MASKERS:  # reading a ranking CSV once per configuration is enough
        _MASKERS[key] = GlobalPMIMasking(k=k, ranking=ranking, rank_by=rank_by, special_rank=special_rank)
    return _MASKERS[key]


def check_against_reference(
    strategy: GlobalPMIMasking, table: list[int] | None, ids: torch.Tensor, draws: torch.Tensor, seed: int
) -> None:
    valid = MaskingStrategy.valid_positions(ids)
    masked, chosen = strategy.plan(ids, valid, draws, gen(seed, ids.device.type))
    if strategy.rank_by == "random":  # the plan draws its scores first from the generator: the same scores
        scores = strategy.position_scores(ids, valid, gen(seed, ids.device.type)).cpu()
        rank = lambda row, position: int(scores[row, position])  # noqa: E731
    else:
        rank = reference_rank(strategy, table, ids.tolist())
    ref_masked, ref_chosen = global_pmi_reference(ids.tolist(), draws.tolist(), rank, strategy.k)
    assert masked.cpu().tolist() == ref_masked
    assert chosen.cpu().tolist() == ref_chosen


# ------------------------------------------------------------------------------------------ exact, draws fixed
@settings(FAST, max_examples=100)
@given(
    case=cases(),
    kind=st.sampled_from(["permutation", "ties", "partial", "huge", "default"]),
    rank_by=st.sampled_from(["token", "position", "random"]),
    special_rank=st.sampled_from(["worst", "best"]),
)
def test_plan_matches_loop_reference(rankings, case, kind, rank_by, special_rank):
    k, ids, draws, seed = case
    if kind == "default" and k != 6:
        kind = "permutation"  # the shipped ranking has 6-mers only
    path, table = rankings[(k, kind)]
    strategy = masker(path, k, rank_by, special_rank)
    check_against_reference(strategy, table, ids, draws, seed)
    # the whole strategy with its draws fixed: same positions, labels where masked
    fixed = GlobalPMIMasking(k=k, ranking=path, rank_by=rank_by, special_rank=special_rank)
    fixed.centres = lambda input_ids, valid, generator: draws
    out = fixed(ids, gen(seed))
    assert torch.equal(out.masked, fixed.plan(ids, ids >= 5, draws, gen(seed))[0])
    check_masked_batch(fixed, ids, out)


def test_plan_by_hand():
    """k=3, scores given: m draws pick the m best-scored valid positions, ties leftmost."""
    strategy = GlobalPMIMasking(k=3, rank_by="random")
    scores = torch.tensor([[9, 5, 1, 5, 5, 0, 3, 1, 9, 9, 9]])
    strategy.position_scores = lambda input_ids, valid, generator: scores.masked_fill(~valid, 1 << 26)
    #                    0  1  2  3  4  5  6  7  8  9 10
    ids = torch.tensor([[2, 7, 7, 7, 7, 1, 7, 7, 7, 3, 0]])  # [UNK] at 5 (score 0, but not valid)
    draws = torch.zeros_like(ids, dtype=torch.bool)
    draws[0, [1, 8]] = True  # two draws: their places play no part
    masked, chosen = strategy.plan(ids, ids >= 5, draws)
    assert torch.nonzero(chosen[0]).flatten().tolist() == [2, 7]  # score 1 twice
    assert torch.nonzero(masked[0]).flatten().tolist() == [1, 2, 3, 4, 6, 7, 8]  # spans 0..4, 5..9 without specials
    draws[0, 3] = True  # a third: the 3 at 6
    assert torch.nonzero(strategy.plan(ids, ids >= 5, draws)[1][0]).flatten().tolist() == [2, 6, 7]
    draws[0, 4] = True  # a fourth: the leftmost of the 5s, 1
    assert torch.nonzero(strategy.plan(ids, ids >= 5, draws)[1][0]).flatten().tolist() == [1, 2, 6, 7]


@pytest.mark.parametrize("k", KS)
def test_nothing_to_choose(rankings, k):
    """No draws, no valid position, no position at all (L = 0), no row: nothing masked, no error."""
    strategy = masker(rankings[(k, "permutation")][0], k, "token")
    for ids in [
        torch.tensor([[2, 3]]),
        torch.tensor([[2, 3, 0, 0], [2, 1, 1, 3]]),
        torch.zeros((0, 5), dtype=torch.int64),
        torch.zeros((3, 0), dtype=torch.int64),
        torch.tensor([[4] * 7]),
    ]:
        for draws in (ids >= 5, torch.ones_like(ids, dtype=torch.bool)):  # draws off valid positions do not count
            masked, chosen = strategy.plan(ids, ids >= 5, draws)
            assert not masked.any() and not chosen.any() and masked.shape == ids.shape
        out = GlobalPMIMasking(k=k, ranking=rankings[(k, "permutation")][0], p_center=1.0)(ids, gen(0))
        assert not out.masked.any() and torch.equal(out.input_ids, ids)
    ids = make_batch(np.random.default_rng(0), k, [30, 0, 12])
    masked, chosen = strategy.plan(ids, ids >= 5, torch.zeros_like(ids, dtype=torch.bool))
    assert not masked.any() and not chosen.any()


# ------------------------------------------------------------------------------------------ the released code
def test_position_ranked_is_the_released_global_pmi():
    """rank_by=position with the default special_rank=worst masks what the released Global-PMI
    code masks, given the same draws, on 640 real rows (some of them short and padded)."""
    ids = released_rows()
    valid = ids >= 5
    strategy = GlobalPMIMasking(rank_by="position")
    draws = strategy.centres(ids, valid, gen(4))
    ref_masked, ref_chosen = global_pmi_released_reference(ids.tolist(), draws.tolist(), released_kmer_ranks(strategy))
    masked, chosen = strategy.plan(ids, valid, draws)
    agree = (masked == torch.tensor(ref_masked)).all(dim=1)
    print(f"global_pmi rank_by=position vs the released code: {int(agree.sum())}/640 rows agree")
    assert bool(agree.all()) and torch.equal(chosen, torch.tensor(ref_chosen))
    # special_rank=best would put positions 1-4 first: not the released Global-PMI
    best = GlobalPMIMasking(rank_by="position", special_rank="best").plan(ids, valid, draws)[1]
    assert torch.equal(best[:, 1:5], (draws.sum(1, keepdim=True) > torch.arange(4)) & valid[:, 1:5])


# ------------------------------------------------------------------------------------------ properties
@settings(FAST, max_examples=30)
@given(data=st.data())
def test_never_masks_special_or_padding(rankings, data):
    k = data.draw(st.sampled_from(KS))
    lengths = data.draw(st.lists(st.integers(0, 120), min_size=1, max_size=5))
    seed = data.draw(st.integers(0, 2**32 - 1))
    ids = make_batch(np.random.default_rng(seed), k, lengths, p_unk=0.1, p_special=0.05)
    strategy = GlobalPMIMasking(
        k=k,
        ranking=None if k == 6 else rankings[(k, "ties")][0],
        rank_by=data.draw(st.sampled_from(["token", "position", "random"])),
        p_center=data.draw(st.sampled_from([P_GLOBAL, 0.2, 1.0])),
        replace=data.draw(st.sampled_from(["token", "span"])),
    )
    check_masked_batch(strategy, ids, strategy(ids.clone(), gen(seed)))


def expected_random_fraction(p: float, k: int, n: int) -> float:
    """Masked fraction of n valid positions when m ~ Binomial(n, p) distinct positions, uniform
    (rank_by=random), each mask the 2k-1 span around them: position j stays unmasked when none of
    the w_j positions within k-1 of it is chosen, probability C(n - w_j, m) / C(n, m)."""
    windows = [min(n, j + k) - max(0, j - k + 1) for j in range(n)]
    total = 0.0
    for m in range(n + 1):
        pm = math.comb(n, m) * p**m * (1 - p) ** (n - m)
        if pm < 1e-15:
            continue
        total += pm * sum(1 - math.comb(n - w, m) / math.comb(n, m) for w in windows) / n
    return total


def test_masked_fraction_on_real_rows():
    """Default p_center = 0.15 / 11 on 560 real rows of 510 6-mers. Random ranks: m spans at random
    places, which overlap a little (13.95% expected, not 15%;
    a Monte Carlo of 20,000 rows gives 13.95% too). NPMI ranks choose fewer distinct
    bases: the best-ranked k-mers of a sequence cluster (a repeat of CCTCCC / GGGAGG, or
    position-ranked neighbours whose ids share a prefix), so their 11-token spans overlap."""
    ids = released_rows()
    ids = ids[(ids >= 5).sum(dim=1) == 510]
    n_valid = (ids >= 5).sum().item()
    expected = expected_random_fraction(P_GLOBAL, 6, 510)
    fractions = {
        rank_by: np.mean([GlobalPMIMasking(rank_by=rank_by)(ids, gen(seed)).masked.sum().item() / n_valid for seed in range(4)])
        for rank_by in ("random", "token", "position")
    }
    print(f"global_pmi masked fraction on {ids.shape[0]} real rows: "
          + ", ".join(f"{name} {value:.4f}" for name, value in fractions.items()) + f" (random expected {expected:.4f})")
    assert 0.139 < expected < 0.140
    assert abs(fractions["random"] - expected) < 0.004  # 4 x 560 rows: standard error ~0.001
    for rank_by in ("token", "position"):
        assert 0.09 < fractions[rank_by] < expected


def test_spans_hide_every_base_of_the_chosen_kmers():
    """Each chosen k-mer's 2k-1 span is masked (within valid positions), and every masked position
    lies in such a span: no valid unmasked token shares a base with a chosen k-mer."""
    ids = released_rows()
    valid = ids >= 5
    strategy = GlobalPMIMasking()
    masked, chosen = strategy.plan(ids, valid, strategy.centres(ids, valid, gen(9)))
    assert torch.equal(chosen.sum(1), torch.minimum(strategy.centres(ids, valid, gen(9)).sum(1), valid.sum(1)))
    covered = torch.zeros_like(masked)
    position = torch.arange(ids.shape[1])
    for offset in long_span_offsets(6):  # covered[p] |= chosen[p - offset], where p - offset is a position
        covered |= torch.roll(chosen, offset, dims=1) & (position >= offset) & (position < ids.shape[1] + offset)
    assert torch.equal(masked, covered & valid)


# ------------------------------------------------------------------------------------------ configuration, benchmark baseline
def test_defaults_and_options():
    strategy = GlobalPMIMasking()
    assert (strategy.name, strategy.p_center, strategy.rank_by, strategy.special_rank) == ("global_pmi", P_GLOBAL, "token", "worst")
    assert strategy.options() == {
        "k", "mask_token_prob", "random_token_prob", "replace", "p_center", "ranking", "rank_by", "special_rank"
    }
    with pytest.raises(GMError, match=r"^masking.ties is an option of the genemask strategies .*global_pmi has no ties"):
        GlobalPMIMasking(ties="centre")
    with pytest.raises(GMError, match="masking.rank_by must be one of token, position, random, got 'npmi'"):
        GlobalPMIMasking(rank_by="npmi")


def test_loop_masking_baseline_matches_the_strategy_statistics():
    """The benchmark's all-loops baseline masks like the vectorised strategy (same distribution)."""
    ids = KmerTokenizer(6).encode(real_windows(48, seed=5)).input_ids
    for rank_by in ("token", "position", "random"):
        strategy = GlobalPMIMasking(rank_by=rank_by)
        fractions = []
        for seed in range(3):
            _, labels = loop_masking(strategy, ids.tolist(), seed=seed)
            fractions.append(((torch.tensor(labels) != -100).float().mean().item(),
                              strategy(ids, gen(seed)).masked.float().mean().item()))
        loop_fraction, vector_fraction = np.mean(fractions, axis=0)
        assert abs(loop_fraction - vector_fraction) < 0.015, (rank_by, loop_fraction, vector_fraction)


# ------------------------------------------------------------------------------------------ devices, no host sync
def test_no_host_sync_catches_a_sync():
    with pytest.raises(AssertionError, match="synchronisation"):
        with no_host_sync("cpu"):
            torch.ones(3).sum().item()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("rank_by", ["token", "position", "random"])
def test_runs_on_device_without_host_sync(rank_by, device):
    """Outputs stay on the device, nothing is read back to the host while masking, seeded runs
    repeat, and with the draws fixed the plan equals the CPU plan and the loop reference."""
    ids_cpu = make_batch(np.random.default_rng(5), 6, [510, 200, 3, 0] * 4, p_unk=0.05, p_special=0.01)
    ids = ids_cpu.to(device)
    strategy = GlobalPMIMasking(rank_by=rank_by)
    strategy(ids, gen(0, device))  # warm-up: the rank table's one copy to the device
    valid = ids >= 5
    draws = valid & (torch.rand(ids.shape, device=device, generator=gen(1, device)) < 0.1)
    with no_host_sync(device):
        a, b = strategy(ids, gen(0, device)), strategy(ids, gen(0, device))
        on_device = strategy.plan(ids, valid, draws, gen(2, device))
    for field in ("input_ids", "labels", "masked", "valid"):
        assert getattr(a, field).device.type == device, field
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert all(t.device.type == device for t in on_device)
    check_masked_batch(strategy, ids_cpu, type(a)(*(t.cpu() for t in (a.input_ids, a.labels, a.masked, a.valid))))
    table = strategy.rank_table.tolist() if strategy.rank_table is not None else None
    check_against_reference(strategy, table, ids, draws, 2)
    if rank_by != "random":
        on_cpu = strategy.plan(ids_cpu, valid.cpu(), draws.cpu())
        assert all(torch.equal(x.cpu(), y) for x, y in zip(on_device, on_cpu))
