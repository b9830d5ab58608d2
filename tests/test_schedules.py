"""Masking schedules (issue 14): CM-STEP's probability, CM-GEMS's latch, their configs, and the
equalities users assume: every DDP rank picks the same phase, and a run killed after the switch
and resumed trains exactly like an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import ROOT, TINY, compose_train
from gm.masking.schedules import PlateauSwitch, StepCurriculum, global_pmi_share
from gm.masking.strategies import GeneMaskMasking, GlobalPMIMasking, KmerSpanMasking
from gm.models.mlm import SCHEDULE_KEY
from gm.train import build, train
from gm.utils import GMError
from test_train import kill_at_checkpoint, read_metrics, train_losses


# ------------------------------------------------------------------------------------------ CM-STEP's q
@pytest.mark.parametrize(
    "total, expected",
    [
        (1, {0: 0.0, 1: 1.0, 5: 1.0}),  # T < 100: no division by zero
        (50, {0: 0.0, 1: 0.02, 25: 0.5, 49: 0.98, 50: 1.0}),
        (99, {0: 0.0, 1: 0.01, 98: 0.98, 99: 1.0}),
        (100, {0: 0.0, 1: 0.01, 57: 0.57, 99: 0.99, 100: 1.0, 1000: 1.0}),
        (150, {0: 0.0, 2: 0.01, 149: 0.99, 150: 1.0, 151: 1.0}),  # not a multiple of 100: never above 1
        (10_000, {0: 0.0, 99: 0.0, 100: 0.01, 5_050: 0.5, 9_999: 0.99, 10_000: 1.0}),
    ],
)
def test_global_pmi_share_at_edge_values_of_total_steps(total, expected):
    for step, q in expected.items():
        assert global_pmi_share(step, total) == pytest.approx(q, abs=1e-12), (step, total)


def test_global_pmi_share_needs_a_total():
    with pytest.raises(GMError, match="trainer.max_steps >= 1"):
        global_pmi_share(3, 0)


@settings(max_examples=300, deadline=None)
@given(total=st.integers(1, 2_000_000), step=st.integers(0, 4_000_000))
def test_global_pmi_share_properties(total, step):
    q = global_pmi_share(step, total)
    assert 0.0 <= q <= 1.0 and round(q * 100) == pytest.approx(q * 100)
    assert global_pmi_share(total, total) == 1.0 and global_pmi_share(0, total) == 0.0
    assert global_pmi_share(step + 1, total) >= q  # never falls
    if total % 100 == 0 and step <= total:  # the released formula, where it is defined
        assert q == math.floor(step / math.floor(total / 100)) / 100


def test_step_curriculum_picks_global_pmi_with_probability_q():
    schedule = StepCurriculum(KmerSpanMasking(), GlobalPMIMasking())
    assert schedule.strategy_for(0, 100, 0.0) is schedule.first  # q = 0: never Global-PMI
    assert schedule.strategy_for(100, 100, 0.999999) is schedule.second  # q = 1: always
    assert schedule.strategy_for(30, 100, 0.29) is schedule.second and schedule.strategy_for(30, 100, 0.30) is schedule.first
    draws = torch.rand(20_000, generator=torch.Generator().manual_seed(0)).tolist()
    share = sum(schedule.strategy_for(40, 100, u) is schedule.second for u in draws) / len(draws)
    assert share == pytest.approx(0.40, abs=0.015)


# ------------------------------------------------------------------------------------------ CM-GEMS's latch
def test_plateau_switch_latches_once_tau_is_met_and_never_reverts():
    schedule = PlateauSwitch(GeneMaskMasking(), GlobalPMIMasking(), tau=1.0)
    fed = [(0, 4100.0), (500, 60.0), (1000, 30.0), (1500, 29.2), (2000, 80.0), (2500, 80.0), (3000, float("nan"))]
    switched = [schedule.after_validation(step, ppl) for step, ppl in fed]
    assert switched == [False, False, False, True, False, False, False]  # only at |29.2 - 30| < 1, once
    assert schedule.switched_at == 1500 and schedule.phase(2600, 10_000) == 1.0
    assert schedule.strategy_for(1501, 10_000, 0.5) is schedule.second


@pytest.mark.parametrize("values, tau", [([50.0, 49.0], 1.0), ([50.0, 50.0], 0.0), ([float("nan"), float("nan")], 1e9),
                                         ([float("inf"), float("inf")], 1e9)])
def test_plateau_switch_needs_a_difference_strictly_below_tau(values, tau):
    schedule = PlateauSwitch(GeneMaskMasking(), GlobalPMIMasking(), tau=tau)
    assert not any(schedule.after_validation(i, v) for i, v in enumerate(values))
    assert schedule.phase(10, 10) == 0.0 and schedule.strategy_for(10, 10, 0.0) is schedule.first


def test_plateau_switch_state_round_trips_and_the_first_point_is_step_zero():
    schedule = PlateauSwitch(GeneMaskMasking(), GlobalPMIMasking(), tau=5.0)
    assert schedule.wants_validation_at(0) and not schedule.wants_validation_at(7)
    schedule.after_validation(0, 100.0)
    assert not schedule.wants_validation_at(0)  # done once
    schedule.after_validation(4, 97.0)
    restored = PlateauSwitch(GeneMaskMasking(), GlobalPMIMasking(), tau=5.0)
    restored.load_state_dict(json.loads(json.dumps(schedule.state_dict())))  # plain types: any checkpoint format
    assert restored.state_dict() == schedule.state_dict() and restored.phase(5, 10) == 1.0 and restored.switched_at == 4
    released_like = PlateauSwitch(GeneMaskMasking(), GlobalPMIMasking(), validate_at_start=False)
    assert not released_like.wants_validation_at(0)


@pytest.mark.parametrize("tau", [-1.0, float("inf"), "abc"])
def test_bad_tau_is_one_line(tau):
    with pytest.raises(GMError, match="masking.tau must be a finite number"):
        PlateauSwitch(GeneMaskMasking(), GlobalPMIMasking(), tau=tau)


# ------------------------------------------------------------------------------------------ configs
@pytest.mark.parametrize("masking, kind, first, second", [("cm_step", StepCurriculum, KmerSpanMasking, GlobalPMIMasking),
                                                          ("cm_gems", PlateauSwitch, GeneMaskMasking, GlobalPMIMasking)])
def test_schedule_configs_compose_from_the_strategies_configs(tmp_path, masking, kind, first, second):
    ranked = [f"masking.{role}.rank_by=random" for role, cls in (("first", first), ("second", second)) if cls is not KmerSpanMasking]
    cfg = compose_train(tmp_path, TINY + [f"masking={masking}", "k=4", "masking.second.p_center=0.02", *ranked])  # no 4-mer ranking
    assert cfg.masking.first._target_.endswith(first.__name__) and cfg.masking.second._target_.endswith(second.__name__)
    schedule = instantiate(cfg.masking, k=cfg.k)
    assert type(schedule) is kind and type(schedule.first) is first and type(schedule.second) is second
    assert schedule.first.k == schedule.second.k == 4  # the run's k reaches both strategies
    assert schedule.second.p_center == 0.02
    if masking == "cm_gems":
        assert schedule.tau == 1.0 and instantiate(compose_train(tmp_path, TINY + ["masking=cm_gems", "masking.tau=0.5"]).masking).tau == 0.5


def test_a_schedule_option_on_a_strategy_names_it():
    from gm.masking.options import masking_override_error

    assert "masking.tau is not an option of masking=genemask" in masking_override_error(["masking=genemask", "masking.tau=0.5"])
    assert masking_override_error(["masking=cm_gems", "masking.tau=0.5", "masking.first.p_center=0.02"]) is None


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.val_fraction=0"], "data.val_fraction=0 holds out no validation data"),
        (["trainer.limit_val_batches=0"], "trainer.limit_val_batches=0 turns validation off"),
        (["trainer.val_check_interval=6", "masking.validate_at_start=false"], "validates 0 time(s) before its last step"),
        (["trainer.val_check_interval=100"], "validates 0 time(s) before its last step"),
    ],
)
def test_cm_gems_without_validation_fails_at_start(tmp_path, overrides, message):
    cfg = compose_train(tmp_path, TINY + ["masking=cm_gems", *overrides])
    with pytest.raises(GMError, match="masking=cm_gems switches when consecutive validation perplexities") as err:
        build(cfg)
    assert message in str(err.value)


# ------------------------------------------------------------------------------------------ training
def test_cm_gems_with_a_large_tau_switches_at_its_first_validation(tmp_path, caplog):
    cfg = compose_train(tmp_path, TINY + ["masking=cm_gems", "masking.tau=1e9", "logger=csv", "trainer.max_steps=8",
                                          "trainer.val_check_interval=4", "callbacks.model_checkpoint.every_n_train_steps=4"])
    with caplog.at_level("INFO", logger="gm.models.mlm"):
        train(cfg)
    run = Path(cfg.paths.output_dir)
    rows = read_metrics(run)
    phase = {int(r["step"]): float(r["train/masking_phase"]) for r in rows if r.get("train/masking_phase")}
    assert [phase[s] for s in sorted(phase)] == [0.0] * 4 + [1.0] * 4  # steps 0-3 GeneMask, 4-7 Global-PMI
    val_steps = sorted(int(r["step"]) for r in rows if r.get("val/perplexity"))
    assert val_steps[0] == 0 and len(val_steps) == 3  # the untrained model, then after steps 4 and 8
    assert "switching from genemask to global_pmi" in caplog.text and "after step 4" in caplog.text
    state = torch.load(run / "checkpoints" / "step_0000004.ckpt", weights_only=False)[SCHEDULE_KEY]
    assert state["phase"] == 1 and state["switched_at"] == 4 and len(state["history"]) == 2  # saved after its validation


def test_cm_step_trains_and_logs_its_probability(tmp_path):
    cfg = compose_train(tmp_path, TINY + ["masking=cm_step", "logger=csv", "trainer.max_steps=5"])
    train(cfg)
    phase = {int(r["step"]): float(r["train/masking_phase"]) for r in read_metrics(Path(cfg.paths.output_dir))
             if r.get("train/masking_phase")}
    assert phase == pytest.approx({s: global_pmi_share(s, 5) for s in range(5)})  # logged as float32


def test_cm_step_picks_by_batch_identity_not_by_device(tmp_path):
    """The pick for a batch depends on (seed, batch key, step): the same whichever rank draws it."""
    cfg = compose_train(tmp_path, TINY + ["masking=cm_step", "trainer.max_steps=100"])
    module = build(cfg)[1]
    module._trainer = SimpleNamespace(global_step=0, max_steps=100)  # what the module reads of its trainer
    assert {module.training_strategy((0, 0, key)).name for key in range(400)} == {"kmer_span"}  # q = 0
    module._trainer.global_step = 50  # q = 0.5
    picks = {key: module.training_strategy((0, 0, key)).name for key in range(400)}
    again = {key: module.training_strategy((0, 0, key)).name for key in reversed(range(400))}
    assert picks == again  # a pure function of the batch key: any rank, any order, a resumed run
    assert 0.4 < sum(name == "global_pmi" for name in picks.values()) / 400 < 0.6


def _phase_per_rank(rank_files: list[Path]) -> list[dict[int, float]]:
    return [{int(s): p for s, p in json.loads(f.read_text()).items()} for f in rank_files]


def test_ddp_ranks_report_the_same_phase_at_every_step(tmp_path):
    """2 real processes (gloo): CM-GEMS switches on the same step on both ranks, from validation
    data that differs between them; the checkpoint holds the switch."""
    out = tmp_path / "phases"
    out.mkdir()
    script = ROOT / "tests" / "ddp_schedule_run.py"
    args = TINY + ["masking=cm_gems", "masking.tau=1e9", "trainer.devices=2", "trainer.accelerator=cpu",
                   "trainer.max_steps=8", "trainer.val_check_interval=4", "logger=csv", f"hydra.run.dir={tmp_path / 'ddp'}"]
    env = dict(os.environ, GM_CACHE_DIR=str(tmp_path / "cache"), GM_PHASE_DIR=str(out), PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, str(script), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = _phase_per_rank(sorted(out.glob("rank*.json")))
    assert len(ranks) == 2 and ranks[0] == ranks[1]
    assert [ranks[0][s] for s in range(8)] == [0.0] * 4 + [1.0] * 4
    state = torch.load(tmp_path / "ddp" / "checkpoints" / "last.ckpt", weights_only=False)[SCHEDULE_KEY]
    assert state["switched_at"] == 4


def test_resume_after_sigkill_past_the_switch_matches_uninterrupted_run(tmp_path, small_fasta):
    """CM-GEMS switches after step 4; a run killed after that with SIGKILL and resumed from
    last.ckpt, or resumed from the checkpoint of the switch step itself, trains exactly as the
    uninterrupted run (same losses at every step, same phase)."""
    common = TINY + [
        f"data.fasta={small_fasta}", "data.split_block=2000", "masking=cm_gems", "masking.tau=1e9",
        "trainer.max_steps=16", "trainer.val_check_interval=4", "callbacks.model_checkpoint.every_n_train_steps=2",
        "logger=csv",
    ]
    full = compose_train(tmp_path / "full", common)  # in-process where no process is killed: faster
    train(full)
    expected = train_losses(Path(full.paths.output_dir))
    assert sorted(expected) == list(range(16))

    checkpoints = kill_at_checkpoint(tmp_path, common, 10)
    for name, start in (("last.ckpt", None), ("step_0000004.ckpt", 4)):
        checkpoint = torch.load(checkpoints / name, weights_only=False)
        step = checkpoint["global_step"]
        assert checkpoint[SCHEDULE_KEY]["switched_at"] == 4 and (start is None or step == start)
        assert 4 <= step < 16, "the kill should land after the switch and before the end"
        resumed = compose_train(tmp_path / f"resumed_{step}", common + [f"ckpt_path={checkpoints / name}"])
        train(resumed)
        folder = Path(resumed.paths.output_dir)
        got = train_losses(folder)
        assert sorted(got) == list(range(step, 16))
        for s in got:
            assert got[s] == pytest.approx(expected[s], rel=1e-5, abs=1e-6), f"resumed from {name}: step {s}"
        phases = {int(r["step"]): float(r["train/masking_phase"]) for r in read_metrics(folder) if r.get("train/masking_phase")}
        assert all(phases[s] == 1.0 for s in range(step, 16))
