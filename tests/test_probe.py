"""The few-shot probe callback (``callbacks=probe``): what it logs, that it leaves training alone, resume, DDP, bad input."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY, compose_train, run_cli
from gm.masking.strategies import KmerSpanMasking
from gm.models.mlm import MLMModule
from gm.probe import ProbeCallback, balanced_subset, fit_probe
from gm.train import build, train
from gm.utils import GMError
from test_train import kill_at_checkpoint, train_losses

#: a probe that takes a second: Splice-40 (40 bases fit TINY's 66 positions), 5 shots, 2 draws, 60 test rows
SMALL = ["callbacks=probe", "callbacks.probe.tasks=[splice_40]", "callbacks.probe.shots=5", "callbacks.probe.draws=2",
         "callbacks.probe.test_size=60", "callbacks.probe.every_n_steps=3"]
KEYS = ("probe/splice_40/mcc", "probe/splice_40/mcc_std", "probe/splice_40/accuracy")


def rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "csv" / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def probe_values(run_dir: Path, key: str = "probe/splice_40/mcc") -> list[tuple[int, float]]:
    return [(int(r["step"]), float(r[key])) for r in rows(run_dir) if r.get(key)]


def tiny_module(positions: int = 66) -> MLMModule:
    torch.manual_seed(0)
    return MLMModule({"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
                      "max_position_embeddings": positions}, KmerSpanMasking())


# ------------------------------------------------------------------------------------------ the pieces
def test_fit_probe_separates_separable_classes_deterministically():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(60, 8, generator=generator, dtype=torch.float64)
    y = (x[:, 0] + x[:, 1] > 0).long()
    first, again = fit_probe(x, y, 2, 0.01, 50), fit_probe(x, y, 2, 0.01, 50)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    weight, bias, (mean, std) = first
    assert (((x - mean) / std @ weight + bias).argmax(1) == y).float().mean() > 0.95


def test_test_subset_is_class_balanced_and_fixed():
    probe = ProbeCallback(tasks=["splice_40"], shots=5, draws=2, test_size=61)
    test = probe.tasks[0].test
    assert np.bincount([e.label for e in test]).tolist() == [20, 20, 20]
    assert [e.sequence for e in test] == [e.sequence for e in ProbeCallback(tasks=["splice_40"], shots=5, draws=2, test_size=61).tasks[0].test]
    draws = probe.tasks[0].draws
    assert len(draws) == 2 and all(len(d) == 15 for d in draws)
    assert {e.sequence for e in draws[0]} != {e.sequence for e in draws[1]}  # independent draws
    assert not {e.sequence for d in draws for e in d} & {e.sequence for e in test}
    assert len(balanced_subset(test, 3, 10_000, 0)) == 60  # no more than there is


def test_measure_restores_mode_and_every_random_stream_and_repeats_exactly():
    module = tiny_module()
    probe = ProbeCallback(tasks=["splice_40"], shots=5, draws=3, test_size=60)
    probe.setup(None, module, "fit")
    module.train()
    before = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    first = probe.measure(module)
    assert module.training and all(m.training for m in module.modules())
    assert torch.equal(torch.get_rng_state(), before[0]) and np.array_equal(np.random.get_state()[1], before[1])
    assert random.getstate() == before[2]
    assert set(first) == set(KEYS) and -1 <= first[KEYS[0]] <= 1 and 0 <= first[KEYS[2]] <= 1
    assert probe.measure(module) == first


# ------------------------------------------------------------------------------------------ in a run
def test_probe_logs_to_every_logger_once_per_step_and_leaves_training_alone(tmp_path):
    """Steps 0, 3 and 6 (start, every 3, end) reach the CSV and W&B loggers alike; losses as without the probe."""
    common = TINY + ["trainer.max_steps=6", "seed=0"]
    plain = compose_train(tmp_path / "plain", common + ["logger=csv"])
    train(plain)
    cfg = compose_train(tmp_path / "probe", common + SMALL + ["logger=default"])
    datamodule, module, trainer = build(cfg)
    calls: dict[str, list[tuple[int, tuple[str, ...]]]] = {}
    for logger in trainer.loggers:
        original = logger.log_metrics

        def record(metrics, step=None, _name=type(logger).__name__, _original=original):
            if any(k.startswith("probe/") for k in metrics):
                calls.setdefault(_name, []).append((step, tuple(sorted(metrics))))
            return _original(metrics, step)

        logger.log_metrics = record
    trainer.fit(module, datamodule=datamodule)
    assert sorted(calls) == ["ResumableCSVLogger", "WandbLogger"]
    for got in calls.values():
        assert got == [(step, tuple(sorted(KEYS))) for step in (0, 3, 6)]
    run = Path(cfg.paths.output_dir)
    assert [step for step, _ in probe_values(run)] == [0, 3, 6]
    for key in KEYS:
        assert len(probe_values(run, key)) == 3
    # the probe draws nothing from the training streams: the same losses, train and validation
    assert train_losses(run) == train_losses(Path(plain.paths.output_dir))
    val = lambda d: [(r["step"], r["val/loss"]) for r in rows(d) if r.get("val/loss")]  # noqa: E731
    assert val(run) == val(Path(plain.paths.output_dir))


def test_a_run_resumed_at_a_probe_step_probes_it_again_once(tmp_path):
    """The resumed CSV drops the checkpoint's step (trained again), so the probe there is logged again, once."""
    cfg = compose_train(tmp_path, TINY + SMALL + ["logger=csv", "trainer.max_steps=6"])
    train(cfg)
    run = Path(cfg.paths.output_dir)
    first = probe_values(run)
    assert [step for step, _ in first] == [0, 3, 6]
    cfg.ckpt_path = str(run / "checkpoints" / "step_0000003.ckpt")
    train(cfg)
    assert probe_values(run) == first


def test_a_task_longer_than_the_model_is_one_clear_error(tmp_path):
    cfg = compose_train(tmp_path, TINY + SMALL + ["callbacks.probe.tasks=[prom_core]", "logger=none"])
    with pytest.raises(GMError, match=r"callbacks.probe.tasks: prom_core's sequences are up to 70 bases = 65 6-mers, "
                                      r"more than the 64 the model's 66 positions hold"):
        train(cfg)


@pytest.mark.parametrize("kwargs, message", [
    ({"tasks": ["prom_999"]}, "callbacks.probe.tasks: unknown few-shot task 'prom_999'; choose from prom_core"),
    ({"tasks": ["cohn_enh"], "shots": 600}, "callbacks.probe.shots=600: cohn_enh 600 shots"),
    ({"every_n_steps": 0}, "callbacks.probe.every_n_steps=0: must be a whole number >= 1"),
    ({"draws": 0}, "callbacks.probe.draws=0: must be a whole number >= 1"),
    ({"tasks": "splice_40"}, "give a list of few-shot tasks"),
    ({"l2": "abc"}, "callbacks.probe.l2=abc: must be a number >= 0"),
])
def test_bad_settings_are_one_clear_error(kwargs, message):
    with pytest.raises(GMError, match=message.replace("(", r"\(").replace("[", r"\[")):
        ProbeCallback(**{"shots": 5, "draws": 1, "test_size": 20, "tasks": ["splice_40"], **kwargs})


def test_bad_setting_on_the_command_line_is_one_line(tmp_path):
    result = run_cli("train.py", TINY + SMALL + ["callbacks.probe.every_n_steps=0", "logger=csv",
                                                  f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, timeout=120)
    assert result.returncode == 2
    assert "error: callbacks.probe.every_n_steps=0: must be a whole number >= 1" in result.stderr
    assert "Traceback" not in result.stderr


# ------------------------------------------------------------------------------------------ resume and DDP
def test_resume_after_sigkill_with_the_probe_matches_uninterrupted_run(tmp_path, small_fasta):
    """Kill a probed run with SIGKILL, resume: losses and probe values continue exactly (the resumed-at probe included)."""
    common = TINY + SMALL + [
        f"data.fasta={small_fasta}", "data.split_block=2000", "data.num_workers=2", "data.reverse_complement=0.5",
        "trainer.max_steps=24", "trainer.val_check_interval=8", "callbacks.model_checkpoint.every_n_train_steps=4",
        "callbacks.probe.every_n_steps=8", "logger=csv",
    ]
    full = run_cli("train.py", common + [f"hydra.run.dir={tmp_path / 'full'}"], tmp_path)
    assert full.returncode == 0, full.stderr[-3000:]
    expected, expected_probe = train_losses(tmp_path / "full"), probe_values(tmp_path / "full")
    assert [s for s, _ in expected_probe] == [0, 8, 16, 24]

    last = kill_at_checkpoint(tmp_path, common, 16) / "last.ckpt"
    resumed_from = torch.load(last, weights_only=False)["global_step"]
    assert 12 <= resumed_from < 24

    resumed = run_cli("train.py", common + [f"hydra.run.dir={tmp_path / 'killed'}", f"ckpt_path={last}"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    got = train_losses(tmp_path / "killed")
    assert sorted(got) == list(range(24))
    for step in got:
        assert got[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6), f"step {step}"
    got_probe = probe_values(tmp_path / "killed")
    assert [s for s, _ in got_probe] == [0, 8, 16, 24]  # once each: the kept rows, then the resumed run's
    for (step, value), (_, want) in zip(got_probe, expected_probe):
        assert value == pytest.approx(want, abs=1e-6), f"probe at step {step}"


def test_ddp_two_cpu_processes_log_one_probe_value_per_step(tmp_path):
    args = TINY + SMALL + ["trainer.devices=2", "trainer.accelerator=cpu", "trainer.max_steps=10",
                           "trainer.val_check_interval=5", "callbacks.model_checkpoint.every_n_train_steps=5",
                           "callbacks.probe.every_n_steps=5", "logger=csv", f"hydra.run.dir={tmp_path / 'ddp'}"]
    result = run_cli("train.py", args, tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Starting with 2 processes" in result.stderr + result.stdout
    for key in KEYS:
        assert [s for s, _ in probe_values(tmp_path / "ddp", key)] == [0, 5, 10], key
    assert (result.stderr + result.stdout).count("probe at step 5 ") == 1  # one log line, from rank 0
