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


def test_a_checkpoint_and_its_export_fine_tune_identically(tmp_path):
    """Same weights, same seed: the .ckpt and the exported hf/ folder give the same metrics (dropout on in both)."""
    pretrain = compose_train(tmp_path / "pre", TINY + ["trainer.max_steps=3", "logger=none", "export_hf=true",
                                                       "model.max_position_embeddings=128"])
    train(pretrain)
    run = Path(pretrain.paths.output_dir)
    common = FAST + ["data=prom_core", "shots=10", "seed=3", "finetune.dropout=0.3"]
    from_ckpt = finetune(compose_finetune(tmp_path / "a", common + [f"pretrained={run / 'checkpoints' / 'last.ckpt'}"]))
    from_hf = finetune(compose_finetune(tmp_path / "b", common + [f"pretrained={run / 'hf'}"]))
    assert from_hf["pretrained_kind"] == "huggingface" and from_ckpt["pretrained_kind"] == "checkpoint"
    assert from_hf["metrics"] == pytest.approx(from_ckpt["metrics"], abs=1e-6)
    no_dropout = finetune(compose_finetune(tmp_path / "c", common + [f"pretrained={run / 'hf'}", "finetune.dropout=0.0"]))
    assert no_dropout["metrics"] != from_hf["metrics"]  # finetune.dropout reaches the model loaded from a folder


def test_undefined_metrics_are_null_and_chance_stays_zero():
    import torch

    from gm.models.classifier import ClassifierModule, undefined_metrics
    from gm.models.pretrained import load_classifier

    model, _ = load_classifier(None, 2, encoder={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64})
    module = ClassifierModule(model, 2)
    one_class = torch.zeros(10, dtype=torch.long)
    module._update("test", torch.randn(10, 2), one_class)
    values = module._compute("test")
    assert values["mcc"] is None and values["auroc"] is None and values["f1_macro"] is None
    assert values["accuracy"] is not None
    constant = torch.tensor([[2.0, 0.0]] * 10)  # always class 0, on a test set with both classes
    module._update("test", constant, torch.tensor([0, 1] * 5))
    values = module._compute("test")
    assert values["mcc"] == 0.0 and values["accuracy"] == 0.5  # at chance: a result, not undefined
    assert undefined_metrics([3, 0, 4]) == {"f1_macro": "1 class(es) have no example"}


def test_one_class_test_or_training_file_is_one_clear_line(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    rows = ["".join(rng.choice(list("ACGT"), 40)) for _ in range(60)]
    train_file = tmp_path / "two.tsv"
    train_file.write_text("sequence\tlabel\n" + "".join(f"{s}\t{'ab'[i % 2]}\n" for i, s in enumerate(rows[:40])))
    one_test = tmp_path / "one_test.tsv"
    one_test.write_text("sequence\tlabel\n" + "".join(f"{s}\ta\n" for s in rows[40:]))
    one_train = tmp_path / "one.tsv"
    one_train.write_text("sequence\tlabel\n" + "".join(f"{s}\ta\n" for s in rows[:40]))
    args = [f"data.custom_train={train_file}", f"data.custom_test={one_test}"]
    result = run_cli("finetune.py", FAST + ["data=custom", "shots=5", *args, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "one_test.tsv: the test set holds only 'a' (20 rows)" in result.stderr, result.stderr[-2000:]
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr, result.stderr
    with pytest.raises(GMError, match=r"one\.tsv: only one label found \('a'\); a classifier needs at least two classes"):
        finetune(compose_finetune(tmp_path / "one", FAST + ["data=custom", "shots=5", f"data.custom_train={one_train}"]))


def test_genome_data_is_named_in_the_error(tmp_path):
    result = run_cli("finetune.py", ["data=genome", "logger=csv", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert result.returncode == 2
    assert "error: data=genome is not a few-shot task" in result.stderr, result.stderr[-2000:]


def test_damaged_checkpoint_is_one_line_and_non_zero(tmp_path):
    damaged = tmp_path / "damaged.ckpt"
    damaged.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 8)
    result = run_cli("finetune.py", FAST + [f"pretrained={damaged}", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert f"{damaged}: cannot read the checkpoint, the file is damaged or incomplete" in result.stderr


def test_few_batches_set_the_logging_interval_without_a_warning(tmp_path, recwarn):
    cfg = compose_finetune(tmp_path, FAST + ["data=prom_core", "shots=10", "finetune.epochs=2"])
    assert cfg.trainer.log_every_n_steps == 5  # 10 shots x 2 classes / batch 5 = 4 batches an epoch
    finetune(cfg)
    assert not [w for w in recwarn if "logging interval" in str(w.message)]
    import csv

    rows = list(csv.DictReader(open(Path(cfg.paths.output_dir) / "csv" / "metrics.csv")))
    assert sum(bool(r.get("train/loss")) for r in rows) == 2  # a point every 4 steps


def test_sigterm_exits_non_zero_without_results(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import ROOT

    run = tmp_path / "run"
    env = dict(os.environ, GM_CACHE_DIR=str(tmp_path / "cache"), GM_LOG_DIR=str(tmp_path / "logs"), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, str(ROOT / "finetune.py"), *FAST, "finetune.epochs=500", "data=prom_core",
                             "shots=10", f"hydra.run.dir={run}"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    output = []
    try:
        for line in proc.stdout:  # configure_optimizers runs just before the first training step
            output.append(line)
            if "to estimate number of stepping batches" in line:
                break
        time.sleep(2)
        assert proc.poll() is None, "".join(output)
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, "".join(output) + rest
    assert "error: fine-tuning stopped by SIGTERM during training" in rest
    assert not (run / "results.json").exists()


def test_custom_runs_record_their_files_and_are_named_after_them(tmp_path):
    import hashlib

    import numpy as np

    rng = np.random.default_rng(1)
    seqs = ["".join(rng.choice(list("ACGT"), 50)) for _ in range(48)]
    tata, other = tmp_path / "tata.fa", tmp_path / "other.txt"
    tata.write_text("".join(f">p{i}\n{s[:30]}\n{s[30:]}\n" for i, s in enumerate(seqs[:24])))
    other.write_text("".join(s + "\n" for s in seqs[24:]))
    run = tmp_path / "run"
    result = run_cli("finetune.py", FAST + ["data=custom", "shots=5", f"data.custom_train={{promoter: {tata}, other: {other}}}",
                                           f"hydra.run.dir={run}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((run / "results.json").read_text())
    assert record["task"] == "tata+other" and record["label_names"] == ["promoter", "other"]
    assert record["test_source"] == "carved" and record["n_train"] == 10
    assert [(f["role"], f["label"], f["path"], f["sha256"]) for f in record["data_files"]] == [
        ("train", "promoter", str(tata), hashlib.sha256(tata.read_bytes()).hexdigest()),
        ("train", "other", str(other), hashlib.sha256(other.read_bytes()).hexdigest())]
    table, test = tmp_path / "mine.tsv", tmp_path / "mine_test.tsv"
    table.write_text("sequence\tlabel\n" + "".join(f"{s}\t{i % 2}\n" for i, s in enumerate(seqs[:36])))
    test.write_text("sequence\tlabel\n" + "".join(f"{s}\t{i % 2}\n" for i, s in enumerate(seqs[36:])))
    cfg = compose_finetune(tmp_path / "t", FAST + ["data=custom", "shots=5", f"data.custom_train={table}", f"data.custom_test={test}"])
    record = finetune(cfg)
    assert (record["task"], record["test_source"]) == ("mine", "given")
    assert [(f["role"], f["path"]) for f in record["data_files"]] == [("train", str(table)), ("test", str(test))]
    assert len(record["data_sha256"]) == 64
    from gm.finetune import build_data

    cfg = compose_finetune(tmp_path / "u", FAST + ["data=custom", "shots=5", f"data.custom_train={table}", "data.task=tata_box"])
    assert build_data(cfg, 6).task_name == "tata_box"
