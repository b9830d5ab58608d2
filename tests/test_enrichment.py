"""`python analyze.py enrichment`: class-enriched 6-mers of the few-shot tasks vs the NPMI ranking."""

from __future__ import annotations

import argparse
import csv
import gzip
from collections import Counter

import numpy as np
import pytest
from PIL import Image
from scipy.stats import false_discovery_control, fisher_exact

from gm.analysis.enrichment import (
    add_parser,
    bh_qvalues,
    compare_ranks,
    enrichment,
    fisher_exact_two_sided,
    log2_odds_ratio,
    presence_counts,
    reverse_complement,
    run,
    run_enrichment,
)
from gm.data.tasks import TASKS
from gm.masking.npmi import AUTHORS_RANKING, ngram_strings
from gm.utils import GMError

PLANTED = "GATTCA"  # not its own reverse complement (TGAATC)
COLUMNS = ["kmer", "class", "count_in_class", "count_rest", "n_class", "n_rest", "log2_or", "p", "q", "npmi_rank"]


def synthetic_task(n_per_class: int = 80, length: int = 120, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Random sequences; every class-1 sequence carries PLANTED once, no class-0 sequence has it."""
    rng = np.random.default_rng(seed)
    sequences, labels = [], []
    for label in (0, 1):
        for _ in range(n_per_class):
            while True:
                s = "".join(rng.choice(list("ACGT"), length))
                if PLANTED not in s and reverse_complement(PLANTED) not in s:
                    break
            if label == 1:
                at = int(rng.integers(0, length - 6))
                s = s[:at] + PLANTED + s[at + 6:]
            sequences.append(s)
            labels.append(label)
    return sequences, np.array(labels)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_parser(p.add_subparsers(dest="command"))
    return p


# ------------------------------------------------------------------------------------------ counting
def test_presence_counts_match_a_naive_count():
    rng = np.random.default_rng(1)
    sequences = ["".join(rng.choice(list("ACGTN"), int(rng.integers(3, 40)), p=[0.24, 0.24, 0.24, 0.24, 0.04])) for _ in range(60)]
    sequences += ["AAAAAAAAAA", "ACGTA", "NNNNNNNN"]
    labels = rng.integers(0, 3, len(sequences))
    counts, n = presence_counts(sequences, labels, 3, k=4)
    index = {kmer: i for i, kmer in enumerate(ngram_strings(4))}
    expected = np.zeros((3, 256), dtype=np.int64)
    for s, y in zip(sequences, labels):
        for kmer in {s[i:i + 4] for i in range(len(s) - 3)}:
            if "N" not in kmer:
                expected[y, index[kmer]] += 1
    np.testing.assert_array_equal(counts, expected)
    np.testing.assert_array_equal(n, np.bincount(labels, minlength=3))
    once, _ = presence_counts(["AAAAAAAAAA", "CCCCNAAAAT"], np.array([0, 0]), 1, k=4)
    assert once[0, index["AAAA"]] == 2 and once[0, index["AAAT"]] == 1  # once per sequence, however often
    assert once[0, index["CCCC"]] == 1 and once.sum() == 4  # windows across N skipped


# ------------------------------------------------------------------------------------------ statistics
def test_planted_kmer_is_the_top_enriched_kmer_of_its_class_and_its_reverse_complement_is_not():
    sequences, labels = synthetic_task()
    result = enrichment(sequences, labels, ["0", "1"])
    top = result.enriched(1)
    assert top.size >= 1 and result.kmers[top[0]] == PLANTED
    i = int(np.flatnonzero(result.kmers == PLANTED)[0])
    assert result.count_in_class[1, i] == 80 and result.count_rest[1, i] == 0
    assert result.q[1, i] < 1e-10 and result.log2_or[1, i] > 5
    assert result.log2_or[0, i] == pytest.approx(-result.log2_or[1, i])  # the mirror comparison
    rc = reverse_complement(PLANTED)
    assert rc not in result.kmers  # removed from every sequence, and not created by planting
    # in random sequences the only other enriched k-mers are the planted one's neighbours: they share 5 of its
    # letters (each occurs in about a quarter of class 1), and they rank after it
    others = [str(result.kmers[j]) for j in top[1:]]
    assert all(o[:5] == PLANTED[1:] or o[1:] == PLANTED[:5] for o in others)
    assert all(result.p[1, j] > result.p[1, i] for j in top[1:])
    assert result.enriched(0).size == 0


def test_fisher_p_values_agree_with_scipy():
    rng = np.random.default_rng(2)
    tables = []
    for _ in range(400):
        n1, n2 = rng.integers(1, 400, 2)
        a, c = rng.binomial(n1, rng.random()), rng.binomial(n2, rng.random())
        tables.append((a, n1 - a, c, n2 - c))
    tables += [(5, 5, 5, 5), (0, 10, 10, 0), (10, 0, 0, 10), (0, 0, 3, 4), (3, 7, 7, 3), (0, 5, 0, 5),
               (1000, 1000, 1000, 1000), (999, 1001, 1001, 999), (80, 0, 0, 80), (0, 4554, 3, 4621)]
    t = np.array(tables)
    p = fisher_exact_two_sided(*t.T)
    expected = np.array([fisher_exact([[a, b], [c, d]]).pvalue for a, b, c, d in t])
    np.testing.assert_allclose(p, expected, rtol=1e-6, atol=1e-300)


def test_p_values_of_a_real_task_agree_with_scipy_on_a_sample():
    from gm.analysis.enrichment import load_task

    data = load_task("prom_core")
    result = enrichment(data.sequences, data.labels, data.label_names)
    rng = np.random.default_rng(3)
    for c, i in zip(rng.integers(0, 2, 150), rng.integers(0, result.kmers.size, 150)):
        a, rest = result.count_in_class[c, i], result.count_rest[c, i]
        table = [[a, result.n_class[c] - a], [rest, result.n_rest[c] - rest]]
        assert result.p[c, i] == pytest.approx(fisher_exact(table).pvalue, rel=1e-6, abs=1e-300)
        assert result.log2_or[c, i] == pytest.approx(
            np.log2((a + 0.5) * (table[1][1] + 0.5) / ((table[0][1] + 0.5) * (rest + 0.5))))


def test_bh_q_values_agree_with_scipy():
    rng = np.random.default_rng(4)
    for p in (rng.random(500) ** 4, np.r_[np.zeros(3), rng.random(50), np.ones(4)], np.array([0.03]), np.full(20, 0.5)):
        np.testing.assert_allclose(bh_qvalues(p), false_discovery_control(p, method="bh"), rtol=1e-12, atol=1e-15)
    assert np.isnan(bh_qvalues(np.array([0.1, np.nan]))[1])


def test_log2_odds_ratio_uses_the_pseudocount():
    assert log2_odds_ratio(10, 0, 0, 10) == pytest.approx(np.log2(10.5 * 10.5 / 0.25))
    assert log2_odds_ratio(3, 3, 3, 3) == 0


def test_compare_ranks_detects_a_group_ranked_higher_and_adjusts_for_strata():
    ranks = np.arange(1, 401, dtype=float)
    group = np.zeros(400, bool)
    group[::10] = True
    none = compare_ranks(ranks, group, strata=np.arange(400) % 4)
    assert none["auc"] == pytest.approx(0.5, abs=0.06) and none["p_two_sided"] > 0.05
    group_top = np.zeros(400, bool)
    group_top[:40] = True
    better = compare_ranks(ranks, group_top)
    assert better["auc"] == 1.0 and better["p_higher"] < 1e-10 and better["top_decile_discriminative"] == 1.0
    # a group that ranks higher only because its stratum does: no effect within strata
    strata = (ranks > 200).astype(int)
    rng = np.random.default_rng(0)
    confounded = np.where(strata == 0, rng.random(400) < 0.5, rng.random(400) < 0.05)
    stats = compare_ranks(ranks, confounded, strata)
    assert stats["auc"] > 0.6 and stats["p_two_sided"] < 1e-3
    assert abs(stats["auc_adjusted"] - 0.5) < 0.1 and stats["p_adjusted"] > 0.01


# ------------------------------------------------------------------------------------------ end to end
def test_run_on_prom_core_and_splice_40_writes_every_output(tmp_path):
    result = run_enrichment(["prom_core", "Splice-40"], AUTHORS_RANKING, tmp_path / "out", top=5)
    out = tmp_path / "out"
    assert result["seconds"] < 30
    assert set(result["tasks"]) == {"prom_core", "splice_40"}
    for task, n_classes in (("prom_core", 2), ("splice_40", 3)):
        with open(out / f"enrichment_{task}.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert list(rows[0]) == COLUMNS
        seen = result["tasks"][task]["n_kmers_seen"]
        assert len(rows) == n_classes * seen
        assert Counter(r["class"] for r in rows) == {str(c): seen for c in range(n_classes)}
        first = rows[0]
        assert float(first["q"]) < 0.05 and first["npmi_rank"].isdigit()
        assert int(first["n_class"]) + int(first["n_rest"]) == result["tasks"][task]["n_sequences"]
        summary = result["tasks"][task]
        assert all(len(entries) <= 5 for entries in summary["top"].values())
        assert all(e["q"] < 0.05 and e["log2_or"] > 0 for entries in summary["top"].values() for e in entries)
        m = summary["mannwhitney"]
        assert m["n_discriminative"] + m["n_other"] == seen and 0 <= m["p_two_sided"] <= 1
    # Prom-core: its shipped files overlap, de-duplication keeps each sequence once
    assert result["tasks"]["prom_core"]["n_sequences"] < result["tasks"]["prom_core"]["rows_read"]
    report = (out / "enrichment_report.md").read_text()
    for text in ("## prom_core", "## splice_40", "### class 2", "Mann-Whitney U", "## Reading", "NPMI rank"):
        assert text in report
    with Image.open(out / "enrichment_npmi.png") as image:
        assert image.format == "PNG" and image.size[0] > 500
    assert not list(out.glob(".*.tmp"))


def test_synthetic_task_end_to_end_reports_the_planted_kmer(tmp_path):
    """A task folder laid out like Prom-core, its class 1 marked by the planted 6-mer."""
    sequences, labels = synthetic_task(n_per_class=60, length=70)
    spec = TASKS["prom_core"]
    data = tmp_path / "data"
    files = spec.train_files + [spec.test_file]
    rows = list(zip(sequences, labels))
    for j, name in enumerate(files):
        path = data / name
        path.parent.mkdir(parents=True, exist_ok=True)
        text = "sequence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows[j::len(files)])
        path.write_bytes(gzip.compress(text.encode()))
    result = run_enrichment(["prom_core"], AUTHORS_RANKING, tmp_path / "out", data_dir=data)
    top = result["tasks"]["prom_core"]["top"]["1"]
    assert top[0]["kmer"] == PLANTED and top[0]["count_in_class"] == 60 and top[0]["count_rest"] == 0
    from gm.masking.npmi import read_ranking

    assert top[0]["npmi_rank"] == read_ranking(AUTHORS_RANKING)[PLANTED]
    assert f"`{PLANTED}`" in (tmp_path / "out" / "enrichment_report.md").read_text()


# ------------------------------------------------------------------------------------------ CLI and errors
def test_parser_defaults():
    args = parser().parse_args(["enrichment"])
    assert args.tasks == list(TASKS) and args.ranking == AUTHORS_RANKING and args.top == 20 and args.q == 0.05
    assert args.out.parts[-2:] == ("outputs", "enrichment") and args.func is run


def test_ranking_without_the_columns_is_a_gmerror(tmp_path):
    bad = tmp_path / "ranking.csv"
    bad.write_text("kmer,score\nAAAAAA,1\n")
    with pytest.raises(GMError, match="ngram"):
        run_enrichment(["prom_core"], bad, tmp_path / "out")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(GMError):
        run_enrichment(["prom_core"], empty, tmp_path / "out")
    with pytest.raises(GMError, match="not found"):
        run_enrichment(["prom_core"], tmp_path / "missing.csv", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unknown_task_is_a_gmerror(tmp_path, capsys):
    with pytest.raises(GMError, match="unknown few-shot task"):
        run_enrichment(["prom_core", "prom_9000"], AUTHORS_RANKING, tmp_path / "out")
    args = parser().parse_args(["enrichment", "--tasks", "nope", "--out", str(tmp_path / "out")])
    assert args.func(args) == 2
    assert "unknown few-shot task 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_bad_thresholds_are_gmerrors(tmp_path):
    with pytest.raises(GMError, match="--top"):
        run_enrichment(["prom_core"], AUTHORS_RANKING, tmp_path, top=0)
    with pytest.raises(GMError, match="--q"):
        run_enrichment(["prom_core"], AUTHORS_RANKING, tmp_path, q=0)
