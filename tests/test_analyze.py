"""`python analyze.py …` end to end: NPMI ranking and the masking figure."""

from __future__ import annotations

import csv

import numpy as np
from PIL import Image

from conftest import SAMPLE_FASTA, run_cli, write_fasta
from gm.analyze import main


def test_npmi_command_writes_a_ranking_close_to_the_authors(tmp_path, capsys):
    out = tmp_path / "ranking.csv"
    assert main(["npmi", "--fasta", str(SAMPLE_FASTA), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    rho = float(printed.split("Spearman correlation with the GeneMask authors' ranking: ")[1].split()[0])
    assert rho > 0.8
    rows = list(csv.DictReader(open(out)))
    assert list(rows[0]) == ["ngram", "count", "pmi", "score", "rank"]
    assert len(rows) == 4096 and [int(r["rank"]) for r in rows] == list(range(1, 4097))
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
    from gm.analyze import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    assert set(commands) == {"npmi", "masks", "results", "motifs", "enrichment", "curves"}
