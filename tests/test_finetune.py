"""Few-shot fine-tuning end to end through the real configs: every task, pretrained sources, sweeps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import TINY, compose_train, run_cli
from gm.finetune import finetune
from gm.train import train
from gm.utils import GMError

#: a 32-wide, 1-layer model and one epoch: a fine-tuning run in seconds
FAST = [
    "model=tiny",
    "model.hidden_size=32",
    "model.intermediate_size=64",
    "model.num_attention_heads=2",
    "model.num_hidden_layers=1",
    "finetune.epochs=1",
    "data.eval_batch_size=1024",
    "logger=csv",
    "callbacks.progress_bar.refresh_rate=0",
]
REQUIRED = {
    "task", "shots", "seed", "pretrained", "masking", "pretrain_steps", "test_source", "metrics", "n_train", "n_test",
    "runtime_seconds",
}


def compose_finetune(tmp_path: Path, overrides: list[str]):
    return compose_train(tmp_path, overrides, config_name="finetune")


@pytest.mark.parametrize(
    ("task", "classes", "n_test", "test_source"),
    [("prom_core", 2, 5920, "shipped"), ("prom_300", 2, 1000, "carved"), ("cohn_enh", 2, 294, "carved"), ("splice_40", 3, 3000, "shipped")],
)
def test_every_task_fine_tunes_and_writes_a_complete_record(tmp_path, task, classes, n_test, test_source):
    cfg = compose_finetune(tmp_path, FAST + [f"data={task}", "shots=10", "seed=1"])
    record = finetune(cfg)
    saved = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())
    assert saved == json.loads(json.dumps(record))
    assert REQUIRED <= set(saved)
    assert (saved["task"], saved["shots"], saved["seed"], saved["test_source"]) == (task, 10, 1, test_source)
    assert saved["n_train"] == 10 * classes and saved["n_test"] == n_test
    metrics = saved["metrics"]
    assert set(metrics) == {"accuracy", "f1_macro", "mcc", "auroc"}
    assert 0.0 <= metrics["accuracy"] <= 1.0 and -1.0 <= metrics["mcc"] <= 1.0
    assert (metrics["auroc"] is None) == (classes == 3)
    assert saved["pretrained"] is None and saved["pretrained_name"] == "random init"


def test_hyperparameters_follow_the_shot_regime(tmp_path):
    few = compose_finetune(tmp_path, ["shots=100"]).finetune
    many = compose_finetune(tmp_path, ["shots=500"]).finetune
    assert (few.lr, few.epochs, few.batch_size) == (1e-4, 20, 5)
    assert (many.lr, many.epochs, many.batch_size) == (5e-5, 5, 15)
    assert (few.warmup_fraction, few.weight_decay, few.dropout) == (0.1, 0.01, 0.1)
    assert compose_finetune(tmp_path, ["shots=10", "finetune.lr=3e-4"]).finetune.lr == 3e-4


def test_fine_tuning_a_pretrained_checkpoint_records_its_history(tmp_path):
    pretrain = compose_train(tmp_path / "pre", TINY + ["masking=genemask", "trainer.max_steps=4", "logger=none", "model.max_position_embeddings=128"])
    train(pretrain)
    ckpt = Path(pretrain.paths.output_dir) / "checkpoints" / "last.ckpt"
    cfg = compose_finetune(tmp_path / "ft", FAST + [f"pretrained={ckpt}", "data=prom_core", "shots=10"])
    record = finetune(cfg)
    assert (record["masking"], record["pretrain_steps"], record["pretrained_kind"]) == ("genemask", 4, "checkpoint")
    assert record["pretrained"] == str(ckpt) and record["pretrained_name"].startswith("genemask:")
    assert record["model"]["hidden_size"] == 32  # the pretrained architecture, not conf/model


def test_sequences_longer_than_the_model_positions_are_a_clear_error(tmp_path):
    short = compose_train(tmp_path / "pre", TINY + ["trainer.max_steps=1", "logger=none", "model.max_position_embeddings=40", "data.max_kmers=38"])
    train(short)
    ckpt = Path(short.paths.output_dir) / "checkpoints" / "last.ckpt"
    with pytest.raises(GMError, match="prom_core"):
        finetune(compose_finetune(tmp_path / "ft", FAST + [f"pretrained={ckpt}", "data=prom_core"]))


def test_unavailable_shots_fail_clearly_or_are_skipped(tmp_path):
    with pytest.raises(GMError, match="per class"):
        finetune(compose_finetune(tmp_path / "a", FAST + ["data=cohn_enh", "shots=1000"]))
    cfg = compose_finetune(tmp_path / "b", FAST + ["data=cohn_enh", "shots=1000", "skip_unavailable=true"])
    assert "skipped" in finetune(cfg)
    assert json.loads((Path(cfg.paths.output_dir) / "skipped.json").read_text())["reason"]
    assert not (Path(cfg.paths.output_dir) / "results.json").exists()


def test_entry_points_refuse_the_other_kind_of_data(tmp_path):
    with pytest.raises(GMError, match="fine-tuning task"):
        train(compose_train(tmp_path, ["data=prom_core", "logger=none"]))


def test_custom_task_bad_row_is_one_clear_error(tmp_path):
    bad = tmp_path / "mine.tsv"
    bad.write_text("sequence\tlabel\nACGTACGTACGTACGTACGT\tyes\nACGTACGTAC??ACGTACGT\tno\n")
    result = run_cli("finetune.py", FAST + ["data=custom", f"data.custom_train={bad}", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert result.returncode == 2
    assert "mine.tsv:3" in result.stderr or "mine.tsv: line 3" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_multirun_writes_one_record_per_job_and_analyze_tabulates_them(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli("finetune.py", ["-m", *FAST, "data=prom_core", "shots=10", "seed=0,1", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    records = sorted(sweep.glob("*/results.json"))
    assert len(records) == 2
    assert sorted(json.loads(p.read_text())["seed"] for p in records) == [0, 1]
    for job in sorted(p.parent for p in records):
        assert OmegaConf.load(job / ".hydra" / "config.yaml").task_name == "finetune"
        assert list((job / "wandb").glob("offline-run-*")) or (job / "csv" / "metrics.csv").exists()
    analysis = run_cli("analyze.py", ["results", str(sweep), "--out", str(tmp_path / "table")], tmp_path)
    assert analysis.returncode == 0, analysis.stderr[-3000:]
    assert "prom_core" in analysis.stdout and "random init" in analysis.stdout
    assert list((tmp_path / "table").glob("*.png")) and list((tmp_path / "table").glob("*.md"))


def test_skip_done_returns_the_saved_record_without_training(tmp_path):
    cfg = compose_finetune(tmp_path, FAST + ["data=prom_core", "shots=10", "skip_done=true"])
    first = finetune(cfg)
    results = Path(cfg.paths.output_dir) / "results.json"
    stamp = results.stat().st_mtime_ns
    again = finetune(cfg)
    assert again == json.loads(json.dumps(first)) and results.stat().st_mtime_ns == stamp  # not re-run
    cfg.skip_done = False
    assert finetune(cfg)["finished_at"] >= first["finished_at"] and results.stat().st_mtime_ns != stamp
