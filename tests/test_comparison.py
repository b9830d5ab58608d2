"""The comparison experiment's driver (gm/experiments/comparison.py): the real commands, end to end on a tiny
scale, and resuming: a second run starts nothing that finished."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import compose_train
from gm.experiments import comparison

TINY_PRETRAIN = [
    "model.hidden_size=32", "model.intermediate_size=64", "model.num_attention_heads=2", "model.num_hidden_layers=1",
    "model.max_position_embeddings=66", "data.max_kmers=64", "data.batch_size=8", "trainer.max_steps=4",
    "trainer.val_check_interval=2", "trainer.limit_val_batches=1",
]
TINY_FINETUNE = ["finetune.epochs=1", "data.eval_batch_size=1024"]


def test_experiment_configs_compose(tmp_path):
    pretrain = compose_train(tmp_path, ["experiment=comparison_pretrain", "masking=genemask"])
    assert pretrain.model.hidden_size == 64 and pretrain.trainer.max_steps == 1500 and pretrain.ckpt_path == "auto"
    finetune = compose_train(tmp_path, ["experiment=comparison_finetune"], config_name="finetune")
    assert finetune.skip_done and finetune.skip_unavailable
    assert dict(finetune.hydra.sweeper.params) == {"data": "prom_core,prom_300,cohn_enh,splice_40", "shots": "10,50,100", "seed": "0,1,2"}


def test_dry_run_lists_every_command(tmp_path, capsys):
    assert comparison.main(["--design", "paper", "--out", str(tmp_path), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("train.py -m experiment=comparison_pretrain") == 8
    assert printed.count("finetune.py -m experiment=comparison_finetune") == 9 * 4  # 8 pretrained + random init
    assert "pretrained=null model=tiny pretrained_name=random_init" in printed
    assert not (tmp_path / "compute.json").exists()


def test_dry_run_commands_can_be_pasted_into_a_shell(tmp_path, capsys):
    """Each printed line is the whole command (the interpreter too), quoted: a folder with a space survives."""
    import shlex
    import subprocess
    import sys

    out = tmp_path / "my experiment"
    assert comparison.main(["--design", "paper", "--out", str(out), "--dry-run", "--maskings", "bert", "--tasks", "splice_40"]) == 0
    lines = [line[2:] for line in capsys.readouterr().out.splitlines() if line.startswith("$ ")]
    assert len(lines) == 1 + 2 + 1  # pretrain bert; fine-tune bert and random init; results
    for line in lines:
        argv = shlex.split(line)
        assert argv[0] == sys.executable and argv[1].endswith(".py")
    pretrain = shlex.split(lines[0])
    assert f"hydra.sweep.dir={out / 'pretrain' / 'bert' / 'seed0'}" in pretrain
    # pasted as printed (plus --help, which only composes the config): the shell runs it, Hydra accepts every argument
    shown = subprocess.run(lines[0] + " --help", shell=True, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "_target_: gm.masking.strategies.BertMasking" in shown.stdout


def test_whole_experiment_on_a_tiny_scale_then_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("GM_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "exp"
    args = [
        "--design", "paper", "--out", str(out), "--maskings", "genemask", "--tasks", "splice_40", "--shots", "10", "--seeds", "0", "1",
        "--jobs", "1", "--pretrain-args", *TINY_PRETRAIN, "--finetune-args", *TINY_FINETUNE,
    ]
    assert comparison.main(args) == 0
    hf = out / "pretrain" / "genemask" / "seed0" / "hf"
    assert json.loads((hf / "gm_pretraining.json").read_text())["pretrain_steps"] == 4
    for model in ("genemask", "random_init"):
        for seed in (0, 1):
            folder = out / "finetune" / model / ("seed0" if model == "genemask" else "")
            record = json.loads((folder / "splice_40" / "shots10" / f"seed{seed}" / "results.json").read_text())
            assert (record["pretrained_name"], record["seed"], record["shots"]) == (model, seed, 10)
    table = (out / "analysis" / "finetune" / "results.md").read_text()
    assert "genemask" in table and "random_init" in table
    assert (out / "analysis" / "curves.png").stat().st_size > 0
    compute = json.loads((out / "compute.json").read_text())
    assert [(c["stage"], c["name"], c["returncode"]) for c in compute] == [
        ("pretrain", "genemask-seed0", 0), ("finetune", "finetune-genemask-seed0-splice_40", 0),
        ("finetune", "finetune-random_init-splice_40", 0), ("analyze", "results-finetune", 0), ("analyze", "curves", 0),
    ]
    # again: nothing is pretrained or fine-tuned twice; only the analysis is redone
    assert comparison.main(args) == 0
    stages = [c["stage"] for c in json.loads((out / "compute.json").read_text())]
    assert stages[5:] == ["analyze", "analyze"]


def test_an_interrupted_pretraining_is_continued_not_restarted(tmp_path, monkeypatch):
    """A run folder with checkpoints but no export (the process was killed) resumes via ckpt_path=auto."""
    monkeypatch.setenv("GM_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "exp"
    base = ["--design", "paper", "--out", str(out), "--maskings", "bert", "--stages", "pretrain", "--jobs", "1", "--pretrain-args", *TINY_PRETRAIN]
    assert comparison.main(base[:-len(TINY_PRETRAIN)] + [a.replace("max_steps=4", "max_steps=2") for a in TINY_PRETRAIN] + ["export_hf=false"]) == 0
    run = out / "pretrain" / "bert" / "seed0"
    assert not comparison.pretrained(out, "bert") and (run / "checkpoints" / "last.ckpt").is_file()
    assert comparison.main(base) == 0
    assert json.loads((run / "hf" / "gm_pretraining.json").read_text())["pretrain_steps"] == 4
    log = (out / "console" / "pretrain-bert-seed0.log").read_text()
    assert "ckpt_path=auto: resuming from" in log


def test_the_successors_strategies_are_compared_by_default(tmp_path, capsys):
    """Global-PMI, CM-STEP and CM-GEMS are pretrained beside the 2023 strategies, and paired in the reading."""
    out = tmp_path / "exp"
    assert comparison.main(["--out", str(out), "--dry-run", "--tasks", "splice_40", "--stages", "pretrain"]) == 0
    printed = capsys.readouterr().out
    for masking in ("global_pmi", "cm_step", "cm_gems", "genemask", "kmer_span"):
        assert f"masking={masking} " in printed
    assert ("cm_gems", "genemask") in comparison.COMPARISONS and "genemask_released" in comparison.MASKING_CHOICES


def test_the_sample_efficiency_design_pairs_seeds_across_pretraining_seeds(tmp_path, capsys):
    """3 pretraining seeds per strategy with the probe on; fine-tuning seeds numbered on per pretraining seed,
    so (strategy, seed) pairs share their pretraining seed and shots; random init gets every seed."""
    import shlex

    out = tmp_path / "se"
    assert comparison.main(["--out", str(out), "--dry-run", "--maskings", "genemask", "kmer_span"]) == 0
    lines = [shlex.split(line[2:]) for line in capsys.readouterr().out.splitlines() if line.startswith("$ ")]
    pretrain = [a for a in lines if a[1].endswith("train.py")]
    assert len(pretrain) == 6 and all("callbacks=probe" in a and "experiment=sample_efficiency_pretrain" in a for a in pretrain)
    assert {a[a.index("-m") + 3] for a in pretrain} == {"seed=0", "seed=1", "seed=2"}
    finetune = [a for a in lines if a[1].endswith("finetune.py")]
    seeds = {(next(x for x in a if x.startswith("pretrained_name=")), next(x for x in a if x.startswith("hydra.sweep.dir="))):
             next(x for x in a if x.startswith("seed=")) for a in finetune if "data=prom_core" in a and "experiment=sample_efficiency_finetune" in a}
    assert seeds[("pretrained_name=genemask", f"hydra.sweep.dir={out / 'finetune' / 'genemask' / 'seed1'}")] == "seed=3,4,5"
    assert seeds[("pretrained_name=random_init", f"hydra.sweep.dir={out / 'finetune' / 'random_init'}")] == "seed=0,1,2,3,4,5,6,7,8"
    assert any("experiment=comparison_finetune" in a for a in finetune)  # the paper's protocol beside
    assert comparison.finetune_seeds([0, 1, 2], 2) == [6, 7, 8]


def test_python_m_gm_comparison_is_the_driver():
    import subprocess
    import sys

    shown = subprocess.run([sys.executable, "-m", "gm.comparison", "--help"], capture_output=True, text=True, timeout=120,
                           cwd=Path(comparison.__file__).resolve().parents[2])
    assert shown.returncode == 0 and "--design" in shown.stdout


def test_the_sample_efficiency_design_runs_the_probe_and_measures_steps(tmp_path, monkeypatch):
    """Pretraining with the probe on, then the analysis: probe curves and steps to kmer_span's probe score."""
    monkeypatch.setenv("GM_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "se"
    probe = ["callbacks.probe.tasks=[splice_40]", "callbacks.probe.every_n_steps=2", "callbacks.probe.shots=10",
             "callbacks.probe.draws=2", "callbacks.probe.test_size=60", "model.hidden_size=32", "data.max_kmers=14"]
    args = ["--out", str(out), "--maskings", "kmer_span", "--pretrain-seeds", "0", "--stages", "pretrain", "analyze", "--tasks", "splice_40",
            "--jobs", "1", "--pretrain-args", *[a for a in TINY_PRETRAIN if not a.startswith(("model.hidden_size", "data.max_kmers"))], *probe]
    assert comparison.main(args) == 0
    rows = (out / "pretrain" / "kmer_span" / "seed0" / "csv" / "metrics.csv").read_text()
    assert "probe/splice_40/mcc" in rows.splitlines()[0]
    compute = json.loads((out / "compute.json").read_text())
    assert [(c["stage"], c["name"]) for c in compute] == [("pretrain", "kmer_span-seed0"), ("analyze", "curves"), ("analyze", "efficiency"),
                                                          ("analyze", "features")]
    assert all(c["returncode"] == 0 for c in compute)
    table = (out / "analysis" / "efficiency.md").read_text()  # a 4-step model: a number, or "ends at chance", never made up
    assert "| splice_40 |" in table and "kmer_span" in table
    features = json.loads((out / "analysis" / "features" / "features.json").read_text())
    assert {(r["model"], r["task"]) for r in features} == {("kmer_span-seed0", "splice_40"), ("random init", "splice_40")}
