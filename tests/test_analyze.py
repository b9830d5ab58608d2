"""`python analyze.py …` end to end: NPMI ranking and the masking figure."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import SAMPLE_FASTA, run_cli, write_fasta
from gm.analysis.cli import main


def test_npmi_command_writes_a_ranking_close_to_the_authors(tmp_path, capsys):
    out = tmp_path / "ranking.csv"
    assert main(["npmi", "--fasta", str(SAMPLE_FASTA), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    rho = float(printed.split("Spearman correlation with the GeneMask authors' ranking: ")[1].split()[0])
    assert rho > 0.8
    rows = list(csv.DictReader(open(out)))
    assert list(rows[0]) == ["ngram", "count", "pmi", "score", "rank"]
    scored = sum(1 for r in rows if r["score"])  # the unscored share the worst rank
    assert len(rows) == 4096 and [int(r["rank"]) for r in rows] == list(range(1, scored + 1)) + [scored + 1] * (4096 - scored)
    scores = [float(r["score"]) for r in rows if r["score"]]
    assert scores == sorted(scores, reverse=True)
    assert all(int(r["count"]) >= 101 for r in rows if r["score"])


def test_npmi_command_other_k_and_score(tmp_path):
    genome = write_fasta(tmp_path / "g.fa", {"a": "".join(np.random.default_rng(0).choice(list("ACGT"), 20000))})
    out = tmp_path / "k4.csv"
    assert main(["npmi", "--fasta", str(genome), "--out", str(out), "--k", "4", "--score", "npmi", "--min-count", "1"]) == 0
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 256 and all(len(r["ngram"]) == 4 for r in rows)


def test_npmi_command_bad_input_is_one_clear_error(tmp_path):
    bad = tmp_path / "notes.fa"
    bad.write_text("these are not sequences\n")
    result = run_cli("analyze.py", ["npmi", "--fasta", str(bad), "--out", str(tmp_path / "x.csv")], tmp_path, timeout=120)
    assert result.returncode == 2
    assert "notes.fa: line 1: sequence before the first '>' header" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "x.csv").exists()


def test_masks_command_writes_a_png(tmp_path):
    out = tmp_path / "masks.png"
    assert main(["masks", "--out", str(out)]) == 0
    image = Image.open(out)
    assert image.size[0] > 1000 and image.size[1] > 300


def test_every_analysis_is_a_command():
    from gm.analysis.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    assert set(commands) == {"npmi", "masks", "results", "motifs", "enrichment", "curves", "efficiency", "features"}


def test_no_command_writes_into_tracked_docs_by_default():
    """Default outputs go to the ignored outputs/ folder (or next to the inputs), never over a tracked figure."""
    from conftest import ROOT
    from gm.analysis.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    for name, sub in commands.items():
        defaults = [a.default for a in sub._actions if a.dest == "out"]
        assert defaults, f"{name} has no --out"
        default = defaults[0]
        assert default is None or Path(default).resolve().is_relative_to(ROOT / "outputs"), (name, default)


@pytest.mark.parametrize("command, out, needle", [
    (["masks"], "{dir}", "is a directory; give a file name"),
    (["masks"], "{file}/masks.png", "is a file, not a folder"),
    (["masks"], "{dir}/masks.txt", "matplotlib cannot write .txt figures"),
    (["curves", "{run}"], "{dir}", "is a directory; give a file name"),
    (["motifs", "--permutations", "0"], "{file}", "is a file; give a folder"),
    (["enrichment", "--tasks", "prom_core"], "{file}/sub", "lies under"),
    (["results", "{dir}"], "{file}", "is a file; give a folder"),
])
def test_an_output_of_the_wrong_kind_is_one_clear_line(tmp_path, capsys, command, out, needle):
    folder = tmp_path / "a folder"
    folder.mkdir()
    file = tmp_path / "a_file"
    file.write_text("keep me\n")
    run = tmp_path / "run" / "csv" / "metrics.csv"
    run.parent.mkdir(parents=True)
    run.write_text("epoch,step,train/loss\n0,1,7.5\n")
    fill = {"dir": folder, "file": file, "run": run.parent.parent}
    argv = [a.format(**fill) for a in command] + ["--out", out.format(**fill)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --out ") and needle in err[0], err
    assert file.read_text() == "keep me\n" and list(folder.iterdir()) == []


def test_a_folder_as_output_file_via_the_cli_gives_no_traceback(tmp_path):
    result = run_cli("analyze.py", ["masks", "--out", str(tmp_path)], tmp_path, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --out {tmp_path} is a directory")


@pytest.mark.parametrize("command", [["efficiency", "some_run"], ["features", "some_model"]])
def test_report_commands_refuse_an_output_folder_that_is_a_file_before_any_work(tmp_path, command):
    blocker = tmp_path / "taken"
    blocker.write_text("a file\n")
    result = run_cli("analyze.py", [*command, "--out", str(blocker)], tmp_path, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr == f"error: --out {blocker} is a file; give a folder (the files are written into it)\n"
