"""Masking strategies (spec §2): exact selection against plain loop references, and the
properties every strategy must have.

To add a strategy (GeneMask, its position-ranked variant, the random-span control):
1. add a factory to ``STRATEGIES`` (name -> callable(k, **overrides)), and an entry to
   ``AGGRESSIVE`` with parameters that mask a lot, so property tests see many masked positions;
   the generic property tests (``test_strategy_*``) then cover it;
2. if the strategy has fixed-randomness internals (centres), add a loop reference and a
   fixed-centres test like ``test_kmer_span_matches_loop_reference``;
3. add its expected masking ratio to ``test_masked_fraction``.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import CONF, compose_train
from gm.masking.strategies import IGNORE_INDEX, BertMasking, KmerSpanMasking, MaskingStrategy, dilate, kmer_span_offsets
from gm.utils import GMError

PAD, UNK, CLS, SEP, MASK = range(5)
KS = (3, 4, 5, 6)
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

STRATEGIES = {
    "bert": lambda k, **kw: BertMasking(k=k, **kw),
    "kmer_span": lambda k, **kw: KmerSpanMasking(k=k, **kw),
}
#: parameters that mask many positions, so that the property tests are not vacuous
AGGRESSIVE = {
    "bert": {"mlm_probability": 0.5},
    "kmer_span": {"p_center": 0.2},
}
#: DNABERT's k-span around a centre, written out from spec §2 (not computed)
SPEC_OFFSETS = {3: (-1, 0, 1), 4: (-1, 0, 1, 2), 5: (-2, -1, 0, 1, 2), 6: (-2, -1, 0, 1, 2, 3)}


# ------------------------------------------------------------------------------------------ inputs
def make_batch(
    rng: np.random.Generator, k: int, lengths: list[int], p_unk: float = 0.05, p_special: float = 0.0
) -> torch.Tensor:
    """``[CLS] k-mers [SEP] [PAD]…`` rows with the given numbers of k-mers; some k-mers are
    ``[UNK]`` and, with ``p_special``, some are stray special tokens (which must never be masked)."""
    width = max(lengths) + 2
    ids = np.zeros((len(lengths), width), dtype=np.int64)
    vocab = 4**k + 5
    for row, n in enumerate(lengths):
        body = rng.integers(5, vocab, n)
        body[rng.random(n) < p_unk] = UNK
        stray = rng.random(n) < p_special
        body[stray] = rng.integers(0, 5, int(stray.sum()))
        ids[row, 0], ids[row, 1 : n + 1], ids[row, n + 1] = CLS, body, SEP
    return torch.from_numpy(ids)


@st.composite
def batches(draw, max_len: int = 40):
    k = draw(st.sampled_from(KS))
    lengths = draw(st.lists(st.integers(0, max_len), min_size=1, max_size=6))
    seed = draw(st.integers(0, 2**32 - 1))
    p_unk = draw(st.sampled_from([0.0, 0.1, 0.5]))
    p_special = draw(st.sampled_from([0.0, 0.05]))
    return k, make_batch(np.random.default_rng(seed), k, lengths, p_unk, p_special), seed


def gen(seed: int, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


# ------------------------------------------------------------------------------------------ references
def kmer_span_reference(ids: torch.Tensor, centres: torch.Tensor, k: int) -> torch.Tensor:
    """Plain loops over sequences and centres: mask c+o for every offset, if it is a real k-mer."""
    batch, length = ids.shape
    out = torch.zeros(batch, length, dtype=torch.bool)
    for b in range(batch):
        for c in range(length):
            if not centres[b, c]:
                continue
            for o in SPEC_OFFSETS[k]:
                p = c + o
                if 0 <= p < length and ids[b, p] >= 5:
                    out[b, p] = True
    return out


def expected_kmer_span_fraction(p_center: float, k: int, n: int) -> float:
    """Expected masked fraction of a sequence of n valid k-mers: position j is masked unless none
    of the positions j-o (o in the k-span, inside the sequence) is a centre."""
    total = 0.0
    for j in range(n):
        candidates = sum(0 <= j - o < n for o in SPEC_OFFSETS[k])
        total += 1 - (1 - p_center) ** candidates
    return total / n


def test_kmer_span_offsets_match_spec():
    for k, offsets in SPEC_OFFSETS.items():
        assert tuple(kmer_span_offsets(k)) == offsets


# ------------------------------------------------------------------------------------------ exact selection
@settings(FAST, max_examples=100)
@given(batch=batches(), p=st.sampled_from([0.0, 0.05, 0.3, 1.0]), centre_seed=st.integers(0, 2**31))
def test_kmer_span_matches_loop_reference(batch, p, centre_seed):
    k, ids, seed = batch
    strategy = KmerSpanMasking(k=k)
    valid = MaskingStrategy.valid_positions(ids)
    centres = valid & (torch.rand(ids.shape, generator=gen(centre_seed)) < p)
    expected = kmer_span_reference(ids, centres, k)

    # 1. the building blocks: dilate + valid mask
    assert torch.equal(dilate(centres, kmer_span_offsets(k)) & valid, expected)
    # 2. the whole strategy with its centres fixed
    strategy.centres = lambda input_ids, valid_, generator: centres
    out = strategy(ids, gen(seed))
    assert torch.equal(out.masked, expected)
    assert torch.equal(out.labels, torch.where(expected, ids, IGNORE_INDEX))


def test_kmer_span_centres_are_valid_and_span_is_contiguous():
    ids = torch.tensor([[CLS] + list(range(5, 25)) + [SEP]])
    strategy = KmerSpanMasking(k=6)
    centres = torch.zeros_like(ids, dtype=torch.bool)
    centres[0, 10] = True
    strategy.centres = lambda *a: centres
    assert torch.nonzero(strategy(ids, gen(0)).masked[0]).flatten().tolist() == [8, 9, 10, 11, 12, 13]
    centres[0, 10], centres[0, 1] = False, True  # next to [CLS]: clipped to valid positions
    assert torch.nonzero(strategy(ids, gen(0)).masked[0]).flatten().tolist() == [1, 2, 3, 4]
    real = KmerSpanMasking(k=6, p_center=0.5)
    valid = real.valid_positions(ids)
    assert not (real.centres(ids, valid, gen(1)) & ~valid).any()


@FAST
@given(batch=batches())
def test_bert_selection_is_independent_draw(batch):
    k, ids, seed = batch
    strategy = BertMasking(k=k, mlm_probability=0.3)
    valid = strategy.valid_positions(ids)
    # BERT's selection is the first draw of the generator: one uniform per position
    expected = valid & (torch.rand(ids.shape, generator=gen(seed)) < 0.3)
    assert torch.equal(strategy(ids, gen(seed)).masked, expected)


# ------------------------------------------------------------------------------------------ generic properties
def check_masked_batch(strategy: MaskingStrategy, ids: torch.Tensor, out) -> None:
    valid = ids >= 5
    assert torch.equal(out.valid, valid)
    assert out.masked.dtype == torch.bool and out.masked.shape == ids.shape
    assert not (out.masked & ~valid).any(), "masked a special, padding or [UNK] position"
    assert torch.equal(out.labels, torch.where(out.masked, ids, torch.full_like(ids, IGNORE_INDEX)))
    assert torch.equal(out.input_ids[~out.masked], ids[~out.masked]), "changed an unmasked position"
    new = out.input_ids[out.masked]
    is_random = new != MASK
    assert ((new[is_random] >= 5) & (new[is_random] < strategy.vocab_size)).all(), "random id not a k-mer"
    assert out.input_ids.dtype == ids.dtype and out.input_ids.device == ids.device


@FAST
@pytest.mark.parametrize("name", STRATEGIES)
@given(batch=batches(), aggressive=st.booleans())
def test_strategy_never_masks_invalid(name, batch, aggressive):
    k, ids, seed = batch
    strategy = STRATEGIES[name](k, **(AGGRESSIVE[name] if aggressive else {}))
    out = strategy(ids.clone(), gen(seed))
    check_masked_batch(strategy, ids, out)


@pytest.mark.parametrize("name", STRATEGIES)
def test_strategy_all_random_replacement_is_a_kmer(name):
    ids = make_batch(np.random.default_rng(0), 6, [510] * 8, p_unk=0.02)
    strategy = STRATEGIES[name](6, mask_token_prob=0.0, random_token_prob=1.0, **AGGRESSIVE[name])
    out = strategy(ids, gen(0))
    new = out.input_ids[out.masked]
    assert new.numel() > 500
    assert ((new >= 5) & (new < 4101)).all()
    assert new.min() < 100 and new.max() > 4000  # spread over the whole k-mer range


@pytest.mark.parametrize("name", STRATEGIES)
def test_strategy_deterministic(name):
    ids = make_batch(np.random.default_rng(1), 6, [510, 300, 17, 0], p_unk=0.05)
    strategy = STRATEGIES[name](6)
    a, b, c = strategy(ids, gen(42)), strategy(ids, gen(42)), strategy(ids, gen(43))
    for field in ("input_ids", "labels", "masked", "valid"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert not torch.equal(a.masked, c.masked)
    assert not torch.equal(a.input_ids, c.input_ids)


@pytest.mark.parametrize("name", STRATEGIES)
@pytest.mark.parametrize("k", KS)
def test_strategy_nothing_to_mask(name, k):
    strategy = STRATEGIES[name](k, **AGGRESSIVE[name])
    cases = [
        torch.tensor([[CLS, SEP]]),
        torch.tensor([[CLS, SEP, PAD, PAD], [CLS, UNK, UNK, SEP]]),
        torch.tensor([[CLS, UNK, SEP]]),
        torch.zeros((0, 5), dtype=torch.int64),
        torch.zeros((3, 0), dtype=torch.int64),
        torch.tensor([[MASK] * 7]),
    ]
    for ids in cases:
        out = strategy(ids, gen(0))
        assert not out.masked.any()
        assert torch.equal(out.input_ids, ids)
        assert (out.labels == IGNORE_INDEX).all()


# ------------------------------------------------------------------------------------------ statistics
N_LONG = 64  # sequences of 510 k-mers: 32,640 valid positions


def long_batch(k: int = 6) -> torch.Tensor:
    return make_batch(np.random.default_rng(7), k, [510] * N_LONG, p_unk=0.0)


@pytest.mark.parametrize(
    "name, params, expected, tolerance",
    [
        # independent tokens: exactly the probability
        ("bert", {}, 0.15, 0.01),
        # DNABERT: interior positions are masked unless none of the 6 positions whose span covers
        # them is a centre, 1 - 0.975**6 = 0.1412; the sequence ends lower it to 0.1408 for 510
        # k-mers (expected_kmer_span_fraction). Not 6 x 0.025 = 0.15, because spans overlap.
        ("kmer_span", {}, expected_kmer_span_fraction(0.025, 6, 510), 0.015),
    ],
)
def test_masked_fraction(name, params, expected, tolerance):
    ids = long_batch()
    fractions = []
    for seed in range(3):
        out = STRATEGIES[name](6, **params)(ids, gen(seed))
        fractions.append(out.masked.sum().item() / out.valid.sum().item())
    assert abs(np.mean(fractions) - expected) < tolerance, (fractions, expected)
    assert all(abs(f - expected) < 2 * tolerance for f in fractions), (fractions, expected)


def test_expected_kmer_span_fraction():
    assert math.isclose(expected_kmer_span_fraction(0.025, 6, 10_000), 1 - 0.975**6, rel_tol=1e-3)
    assert 0.140 < expected_kmer_span_fraction(0.025, 6, 510) < 0.1412


@pytest.mark.parametrize("name", STRATEGIES)
def test_replacement_80_10_10(name):
    ids = long_batch()
    strategy = STRATEGIES[name](6, **AGGRESSIVE[name])
    out = strategy(ids, gen(3))
    original, new = ids[out.masked], out.input_ids[out.masked]
    n = original.numel()
    assert n > 8000
    mask_frac = (new == MASK).float().mean().item()
    kept_frac = (new == original).float().mean().item()  # includes random draws equal to the original (1/4096)
    random_frac = ((new != MASK) & (new != original)).float().mean().item()
    assert abs(mask_frac - 0.8) < 0.02
    assert abs(random_frac - 0.1) < 0.015
    assert abs(kept_frac - 0.1) < 0.015


def test_replacement_probabilities_configurable():
    ids = long_batch()
    out = BertMasking(k=6, mlm_probability=0.5, mask_token_prob=0.5, random_token_prob=0.5)(ids, gen(0))
    new, original = out.input_ids[out.masked], ids[out.masked]
    assert abs((new == MASK).float().mean().item() - 0.5) < 0.02
    assert ((new == original).float().mean().item()) < 0.01
    out = BertMasking(k=6, mlm_probability=0.5, mask_token_prob=0.0, random_token_prob=0.0)(ids, gen(0))
    assert torch.equal(out.input_ids, ids) and out.masked.any()


# ------------------------------------------------------------------------------------------ parameters
@pytest.mark.parametrize(
    "make",
    [
        lambda: KmerSpanMasking(p_center=1.5),
        lambda: KmerSpanMasking(p_center=-0.1),
        lambda: BertMasking(mlm_probability=1.01),
        lambda: BertMasking(mask_token_prob=0.8, random_token_prob=0.3),
        lambda: KmerSpanMasking(mask_token_prob=0.95, random_token_prob=0.1),
        lambda: BertMasking(mask_token_prob=-0.1),
        lambda: KmerSpanMasking(k=7),
        lambda: BertMasking(k=2),
    ],
)
def test_invalid_parameters(make):
    with pytest.raises(GMError, match="masking"):
        make()


def test_defaults():
    assert BertMasking().mlm_probability == 0.15
    span = KmerSpanMasking()
    assert (span.p_center, span.k, span.vocab_size) == (0.025, 6, 4101)
    assert (span.mask_token_prob, span.random_token_prob) == (0.8, 0.1)
    assert KmerSpanMasking(k=3).vocab_size == 69


# ------------------------------------------------------------------------------------------ devices
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", STRATEGIES)
def test_runs_on_device(name, device):
    """Same checks on every device: outputs stay there, seeded runs repeat, the properties hold,
    and with the centres fixed the selection equals the loop reference."""
    ids_cpu = make_batch(np.random.default_rng(5), 6, [510, 200, 3, 0] * 4, p_unk=0.05, p_special=0.01)
    ids = ids_cpu.to(device)
    strategy = STRATEGIES[name](6, **AGGRESSIVE[name])
    a, b = strategy(ids, gen(0, device)), strategy(ids, gen(0, device))
    for field in ("input_ids", "labels", "masked", "valid"):
        assert getattr(a, field).device.type == device, field
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    check_masked_batch(strategy, ids_cpu, type(a)(*(t.cpu() for t in (a.input_ids, a.labels, a.masked, a.valid))))
    assert a.masked.any()
    if name == "kmer_span":
        centres = a.valid & (torch.rand(ids.shape, device=device, generator=gen(1, device)) < 0.1)
        strategy.centres = lambda *args: centres
        expected = kmer_span_reference(ids_cpu, centres.cpu(), 6)
        assert torch.equal(strategy(ids, gen(2, device)).masked.cpu(), expected)


@contextlib.contextmanager
def no_host_sync(device: str):
    """Fail on any tensor-to-Python conversion (.item(), bool(), int(), .tolist(), .nonzero()), each
    of which would wait for a GPU; on CUDA, torch's sync debug mode also turns any synchronising
    call into an error."""
    def refuse(*args, **kwargs):
        raise AssertionError("a host-device synchronisation while masking")

    names = ("item", "__bool__", "__int__", "__index__", "tolist", "nonzero")
    saved = {name: getattr(torch.Tensor, name) for name in names}
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
    try:
        for name in names:
            setattr(torch.Tensor, name, refuse)
        yield
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)
        if device == "cuda":
            torch.cuda.set_sync_debug_mode("default")


#: every masking strategy config (the schedules, cm_step and cm_gems, only choose between these)
STRATEGY_CONFIGS = sorted(p.stem for p in (CONF / "masking").glob("*.yaml") if p.stem not in ("cm_step", "cm_gems"))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", STRATEGY_CONFIGS)
def test_no_masking_strategy_reads_back_to_the_host(tmp_path, name, device):
    """Masking as configured (the run's own config) never waits for the device: no .item(), no
    bool(), no .tolist(), and on CUDA nothing torch's sync debug mode calls synchronising."""
    from hydra.utils import instantiate

    cfg = compose_train(tmp_path, [f"masking={name}", "logger=none"])
    strategy = instantiate(cfg.masking, k=cfg.k)
    ids = make_batch(np.random.default_rng(7), 6, [510, 200, 3, 0] * 4, p_unk=0.05, p_special=0.01).to(device)
    strategy(ids, gen(0, device))  # warm-up: a rank table's one copy to the device
    with no_host_sync(device):
        out = strategy(ids, gen(1, device))
    assert out.masked.device.type == device and out.masked.any()


# ------------------------------------------------------------------------------------------ options given to the wrong strategy
GENEMASK_ONLY_LINE = (
    "masking.ranking is an option of the NPMI-ranked strategies (masking=genemask, genemask_position, "
    "genemask_released, global_pmi); kmer_span has no ranking: choose one of those, e.g. masking=genemask masking.ranking=…"
)


def test_ranking_given_to_kmer_span_names_the_strategies_that_have_it(tmp_path, capsys):
    """Hydra's advice for `masking.ranking=` with the default kmer_span is `+masking.ranking=`,
    which then failed with a TypeError traceback from instantiate."""
    from hydra.utils import instantiate

    from conftest import TINY, compose_train
    from gm.config import run_entry

    with pytest.raises(GMError) as info:
        KmerSpanMasking(ranking="mine.csv")
    assert str(info.value) == GENEMASK_ONLY_LINE
    with pytest.raises(GMError, match=r"^masking.p_center is not an option of masking=bert \(its options: k, mask_token_prob, "
                                      r"mlm_probability, random_token_prob, replace\)$"):
        BertMasking(p_center=0.1)
    cfg = compose_train(tmp_path, TINY + ["+masking.ranking=mine.csv", "logger=none"])
    (tmp_path / "run").mkdir()
    with pytest.raises(SystemExit) as stop:
        run_entry(lambda cfg: instantiate(cfg.masking, k=cfg.k), cfg)
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: {GENEMASK_ONLY_LINE}"


@pytest.mark.parametrize(
    "argv, masking",
    [
        (["masking.ranking=mine.csv"], "kmer_span"),  # the default
        (["trainer.max_steps=5", "masking.ranking=mine.csv"], "kmer_span"),
        (["experiment=dnabert_kmer_span", "masking.ranking=mine.csv"], "kmer_span"),
        (["-m", "masking=bert,genemask", "masking.ranking=mine.csv"], "bert"),  # a sweep: every strategy needs it
        (["masking=random_span", "masking.ranking=mine.csv"], "random_span"),
        (["masking=genemask", "masking.ranking=mine.csv"], None),
        (["masking=genemask_released", "masking.rank_by=token"], None),  # inherited from genemask.yaml
        (["experiment=genemask_dnabert", "masking.ranking=mine.csv"], None),
        (["masking=random_span", "masking.all_high_if_fewer_than=9"], None),
        (["masking=global_pmi", "masking.ranking=mine.csv"], None),
        (["masking=global_pmi", "masking.special_rank=best"], None),
        (["masking=genemask_released", "masking.ties=leftmost"], None),  # inherited from genemask.yaml
        (["+masking.ranking=mine.csv"], None),  # adds the key on purpose: the strategy refuses it itself
        (["masking=nope", "masking.ranking=mine.csv"], None),  # Hydra lists the valid strategies
        (["--config-name", "other", "masking.ranking=mine.csv"], None),
        (["masking=genemask"], None),
    ],
)
def test_masking_override_error_before_hydra(argv, masking):
    from gm.masking.options import masking_override_error

    line = masking_override_error(argv)
    if masking is None:
        assert line is None
    else:
        assert line == GENEMASK_ONLY_LINE.replace("kmer_span", masking).replace("masking.ranking", argv[-1].split("=")[0]).replace(
            "no ranking", f"no {argv[-1].split('=')[0].split('.')[1]}"
        )
    assert masking_override_error(["masking=global_pmi", "masking.ties=centre"]) == (
        "masking.ties is an option of the genemask strategies (masking=genemask, genemask_position, genemask_released); "
        "global_pmi has no ties: choose one of those, e.g. masking=genemask masking.ties=…"
    )
    assert masking_override_error(["masking=bert", "masking.p_center=0.1"]) == (
        "masking.p_center is not an option of masking=bert (its options: mask_token_prob, mlm_probability, random_token_prob)"
    )
