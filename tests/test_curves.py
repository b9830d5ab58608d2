"""`python analyze.py curves`: pretraining curves of several runs from their CSV logs."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import TINY, compose_train, random_genome, write_fasta
from gm.analysis.curves import add_parser, expand_runs, load_runs, plot_curves, read_metrics, run, seed_band, smooth, strategy_name
from gm.utils import GMError

LABEL = "L2/H32"  # TINY's model: 2 layers, hidden size 32 (not the tiny preset's 64)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Two real tiny pretraining runs logged with logger=csv: genemask and kmer_span."""
    from gm.train import train

    base = tmp_path_factory.mktemp("curves")
    fasta = write_fasta(base / "small.fa", random_genome())
    folders = {}
    for masking in ("genemask", "kmer_span"):
        cfg = compose_train(base / masking, TINY + [f"masking={masking}", "logger=csv", f"data.fasta={fasta}",
                                                    "trainer.max_steps=4", "trainer.val_check_interval=2",
                                                    "callbacks.model_checkpoint.every_n_train_steps=100"])
        train(cfg)
        folders[masking] = base / masking / "run"
        assert (folders[masking] / "csv" / "metrics.csv").is_file()
    return folders


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_parser(p.add_subparsers(dest="command"))
    return p


def test_two_real_runs_plot_with_labels_from_their_configs(runs, tmp_path):
    out = tmp_path / "figs" / "curves.png"
    result = plot_curves([runs["genemask"], runs["kmer_span"]], out)
    assert [r["label"] for r in result["runs"]] == [f"genemask, {LABEL}", f"kmer_span, {LABEL}"]
    assert result["panels"] == ["training loss", "masked-token accuracy", "masked fraction", "validation loss"]
    assert all(r["last_step"] == 3 for r in result["runs"])
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[0] > 800 and image.size[1] > 600
    assert not list(out.parent.glob(".*.tmp"))


def test_metrics_of_a_real_run(runs):
    metrics = read_metrics(runs["genemask"] / "csv" / "metrics.csv")
    steps, loss = metrics["train/loss"]
    assert steps.tolist() == [0, 1, 2, 3] and np.isfinite(loss).all() and (loss > 5).all()
    val_steps, _ = metrics["val/loss"]
    assert val_steps.tolist() == [1, 3]  # validation every 2 steps
    fraction = metrics["train/masked_fraction"][1]
    assert ((fraction > 0.05) & (fraction < 0.3)).all()


def test_cli_labels_override_and_smoothing(runs, tmp_path, capsys):
    out = tmp_path / "c.png"
    args = parser().parse_args(["curves", str(runs["genemask"]), str(runs["kmer_span"]), "--labels", "GM", "DNABERT",
                                "--smooth", "3", "--out", str(out)])
    assert args.func is run and args.func(args) == 0
    printed = capsys.readouterr().out
    assert "GM: " in printed and "DNABERT: " in printed and str(out) in printed
    assert Image.open(out).format == "PNG"
    args = parser().parse_args(["curves", str(runs["genemask"]), "--labels", "a", "b", "--out", str(out)])
    assert args.func(args) == 2
    assert "2 label(s) for 1 run(s)" in capsys.readouterr().err


def test_sweep_folder_expands_to_its_jobs(runs, tmp_path):
    sweep = tmp_path / "multiruns" / "2025-01-01_10-00-00"
    for job, masking in ((0, "genemask"), (1, "kmer_span"), (10, "genemask")):
        shutil.copytree(runs[masking], sweep / str(job))
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    # job 10 carries a Hydra config, which wins over the logger's copy: position-ranked GeneMask, DNABERT's size
    config = yaml.safe_load((runs["genemask"] / "csv" / "hparams.yaml").read_text())
    config["masking"]["rank_by"] = "position"
    config["model"].update(hidden_size=768, num_hidden_layers=12)
    (sweep / "10" / ".hydra").mkdir()
    (sweep / "10" / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    found = expand_runs([sweep])
    assert [folder.name for folder, _ in found] == ["0", "1", "10"]  # numeric order
    result = plot_curves([sweep], tmp_path / "sweep.png")
    assert [r["label"] for r in result["runs"]] == [f"genemask, {LABEL}", f"kmer_span, {LABEL}", "genemask (position), dnabert"]


def test_same_labels_get_folder_names(runs, tmp_path):
    copy = tmp_path / "again"
    shutil.copytree(runs["genemask"], copy)
    labels = [r.label for r in load_runs([runs["genemask"], copy])]
    assert labels == [f"genemask, {LABEL} [run]", f"genemask, {LABEL} [again]"]


def _with_probe(run: Path, copy: Path, mcc: dict[int, float]) -> Path:
    """A copy of a real run whose metrics.csv also holds ``probe/splice_40/mcc`` rows, as the probe logs them."""
    import csv

    shutil.copytree(run, copy)
    path = copy / "csv" / "metrics.csv"
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        fields, rows = list(reader.fieldnames or []), list(reader)
    fields += ["probe/splice_40/mcc", "probe/splice_40/accuracy"]
    rows += [{"step": str(step), "probe/splice_40/mcc": str(value), "probe/splice_40/accuracy": "0.5"} for step, value in mcc.items()]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return copy


def test_probe_panels_draw_a_mean_and_band_over_runs_with_the_same_label(runs, tmp_path):
    seeds = [_with_probe(runs["genemask"], tmp_path / f"seed{i}", {0: 0.0, 2: 0.1 * (i + 1), 4: 0.2 + 0.1 * i}) for i in range(3)]
    other = _with_probe(runs["kmer_span"], tmp_path / "kmer", {0: 0.0, 4: 0.5})
    out = tmp_path / "probe.png"
    result = plot_curves([*seeds, other], out)
    assert result["probe_tasks"] == ["splice_40"] and result["panels"][-1] == "probe MCC: splice_40"
    assert [r["group"] for r in result["runs"]] == [f"genemask, {LABEL}"] * 3 + [f"kmer_span, {LABEL}"]
    steps, mean, low, high = seed_band([r for r in load_runs(seeds)], "probe/splice_40/mcc")
    assert steps.tolist() == [0, 2, 4]
    np.testing.assert_allclose(mean, [0.0, 0.2, 0.3])
    np.testing.assert_allclose(low, [0.0, 0.1, 0.2])
    np.testing.assert_allclose(high, [0.0, 0.3, 0.4])
    with Image.open(out) as image:
        assert image.format == "PNG"


def test_runs_given_the_same_label_share_one_colour_in_every_panel(runs, tmp_path):
    """Three seeds labelled alike are one legend entry: drawn in one colour, not three unlabelled ones."""
    result = plot_curves([runs["genemask"], runs["genemask"], runs["kmer_span"]], tmp_path / "c.png",
                         labels=["genemask", "genemask", "kmer_span"])
    colours = [r["colour"] for r in result["runs"]]
    assert colours[0] == colours[1] != colours[2]


def test_strategy_names():
    assert strategy_name({"_target_": "gm.masking.strategies.BertMasking"}) == "bert"
    assert strategy_name({"_target_": "gm.masking.strategies.RandomSpanMasking"}) == "random_span"
    assert strategy_name({"_target_": "gm.masking.strategies.GeneMaskMasking", "rank_by": "token"}) == "genemask"
    assert strategy_name({"_target_": "gm.masking.strategies.GeneMaskMasking", "rank_by": "position",
                          "all_high_if_fewer_than": 9}) == "genemask (released)"
    assert strategy_name({"_target_": "gm.masking.strategies.GlobalPMIMasking"}) == "global_pmi"
    assert strategy_name({"_target_": "gm.masking.strategies.GlobalPMIMasking", "rank_by": "position"}) == "global_pmi (position)"
    assert strategy_name({"_target_": "gm.masking.schedules.StepCurriculum", "first": {}, "second": {}}) == "cm_step"
    assert strategy_name({"_target_": "gm.masking.schedules.PlateauSwitch", "tau": 1.0}) == "cm_gems"
    assert strategy_name(None) is None


def test_a_cm_gems_run_shows_its_phase_and_switch(runs, tmp_path):
    """A real CM-GEMS run that switches after its first validation: the phase panel, and the switch step."""
    from gm.train import train

    cfg = compose_train(tmp_path / "gems", TINY + ["masking=cm_gems", "masking.tau=1e9", "logger=csv", "trainer.max_steps=6",
                                                   "trainer.val_check_interval=2", "callbacks.model_checkpoint.every_n_train_steps=100"])
    train(cfg)
    result = plot_curves([tmp_path / "gems" / "run", runs["genemask"]], tmp_path / "curves.png")
    assert "masking phase" in result["panels"]
    assert [r["switch_step"] for r in result["runs"]] == [2.0, None]  # phase 1 from step 2, after the validation at step 2
    assert result["runs"][0]["label"] == f"cm_gems, {LABEL}"


def test_read_metrics_handles_empty_cells_and_repeated_steps(tmp_path):
    path = tmp_path / "run" / "csv" / "metrics.csv"
    path.parent.mkdir(parents=True)
    path.write_text("epoch,step,train/loss,val/loss\n0,0,8.0,\n0,1,7.5,\n,1,,7.9\n\n0,1,7.4,\n0,2,,\n")
    metrics = read_metrics(path)
    assert metrics["train/loss"][0].tolist() == [0, 1] and metrics["train/loss"][1].tolist() == [8.0, 7.4]
    assert metrics["val/loss"][0].tolist() == [1]
    result = plot_curves([tmp_path / "run"], tmp_path / "one.png")  # no config: the folder name is the label
    assert result["runs"][0]["label"] == "run" and result["panels"] == ["training loss", "validation loss"]


def test_smooth_is_a_trailing_mean():
    np.testing.assert_allclose(smooth(np.array([1.0, 3.0, 5.0, 7.0]), 2), [1.0, 2.0, 4.0, 6.0])
    np.testing.assert_array_equal(smooth(np.array([1.0, 2.0]), 1), [1.0, 2.0])


def test_errors_name_the_folder_or_file(tmp_path):
    empty = tmp_path / "not_a_run"
    empty.mkdir()
    with pytest.raises(GMError, match="not_a_run: no metrics.csv"):
        plot_curves([empty], tmp_path / "x.png")
    sweep = tmp_path / "sweep"
    (sweep / "0").mkdir(parents=True)
    with pytest.raises(GMError, match="sweep: no metrics.csv.*numbered job folders"):
        expand_runs([sweep])
    no_step = tmp_path / "nostep" / "csv" / "metrics.csv"
    no_step.parent.mkdir(parents=True)
    no_step.write_text("epoch,train/loss\n0,1.0\n")
    with pytest.raises(GMError, match=r"nostep/csv/metrics.csv: no 'step' column"):
        plot_curves([tmp_path / "nostep"], tmp_path / "x.png")
    with pytest.raises(GMError, match="no such run folder"):
        plot_curves([tmp_path / "missing"], tmp_path / "x.png")
    header_only = tmp_path / "new" / "csv" / "metrics.csv"
    header_only.parent.mkdir(parents=True)
    header_only.write_text("epoch,step,train/loss\n")
    with pytest.raises(GMError, match="no logged rows"):
        plot_curves([tmp_path / "new"], tmp_path / "x.png")
    with pytest.raises(GMError, match="--smooth"):
        plot_curves([tmp_path / "new"], tmp_path / "x.png", smooth_window=0)
    assert not (tmp_path / "x.png").exists()


def test_folders_without_metrics_are_skipped_with_a_note(runs, tmp_path, capsys):
    """`analyze.py curves logs/pretrain/runs/*`: crashed or wandb-only runs among them are noted, not fatal."""
    from conftest import run_cli

    folders = tmp_path / "runs"
    shutil.copytree(runs["genemask"], folders / "a_genemask")
    (folders / "b_crashed" / ".hydra").mkdir(parents=True)  # a run that died before its first log
    header_only = folders / "c_new" / "csv" / "metrics.csv"
    header_only.parent.mkdir(parents=True)
    header_only.write_text("epoch,step,train/loss\n")
    shutil.copytree(runs["kmer_span"], folders / "d_kmer_span")
    out = tmp_path / "curves.png"
    result = run_cli("analyze.py", ["curves", *sorted(map(str, folders.iterdir())), "--out", str(out)], tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if line.startswith("note: ")]
    assert len(notes) == 2 and "b_crashed: no metrics.csv" in notes[0] and "c_new/csv/metrics.csv: no logged rows" in notes[1]
    assert "Traceback" not in result.stderr and out.stat().st_size > 0
    assert f"genemask, {LABEL}: " in result.stdout and f"kmer_span, {LABEL}: " in result.stdout
    # none with metrics: one clear line
    args = parser().parse_args(["curves", str(folders / "b_crashed"), str(header_only.parent.parent), "--out",
                                str(tmp_path / "none.png")])
    assert run(args) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: none of the 2 paths given has logged metrics (" + str(folders / "b_crashed") + ", "
        + str(header_only) + "); was the run logged with logger=csv?"]
    assert not (tmp_path / "none.png").exists()
