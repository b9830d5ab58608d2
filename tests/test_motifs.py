"""Motif scoring of k-mers and the top- vs bottom-NPMI tests (gm.analysis.motifs, spec §6)."""

from __future__ import annotations

import argparse
import csv
import itertools
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import fisher_exact, spearmanr

from gm.analysis import motifs as gmm
from gm.analysis.motifs import Motif, load_motifs, log_odds, motif_statistics, read_pfm, relative_score, score_kmers
from gm.masking.npmi import AUTHORS_RANKING, ngram_strings
from gm.utils import GMError

INDEX = {g: i for i, g in enumerate(ngram_strings(6))}
COMPLEMENT = str.maketrans("ACGT", "TGCA")


def revcomp(s: str) -> str:
    return s.translate(COMPLEMENT)[::-1]


def onehot_counts(sequence: str, mass: float = 20.0) -> np.ndarray:
    counts = np.zeros((len(sequence), 4))
    for i, base in enumerate(sequence):
        counts[i, "ACGT".index(base)] = mass
    return counts


def write_pfm(path: Path, motifs: dict[str, np.ndarray]) -> Path:
    text = "# planted motifs\n"
    for name, counts in motifs.items():
        text += f">{name}_{name}.{name.lower()}\n" + "".join("\t".join(f"{c:g}" for c in row) + "\n" for row in counts)
    path.write_text(text)
    return path


def brute_force(motif_list: list[Motif], kmer: str, pseudocount=0.8, background=gmm.HUMAN_BACKGROUND) -> float:
    """Best relative score by plain loops: every motif, strand and placement."""
    code = {b: i for i, b in enumerate("ACGT")}
    best = -1.0
    for motif in motif_list:
        lo = log_odds(motif.counts, pseudocount, background)
        length, k = motif.length, len(kmer)
        for seq in (kmer, revcomp(kmer)):
            if length >= k:
                placements = [(lo[o : o + k], seq) for o in range(length - k + 1)]
            else:
                placements = [(lo, seq[o : o + length]) for o in range(k - length + 1)]
            for cols, piece in placements:
                score = sum(cols[j, code[b]] for j, b in enumerate(piece))
                best = max(best, float(relative_score(score, cols.min(axis=1).sum(), cols.max(axis=1).sum())))
    return best


# ------------------------------------------------------------------------------------------ reading matrices
def test_read_shipped_jaspar_file():
    motifs = read_pfm(gmm.SHIPPED_MOTIFS)
    assert len(motifs) == 838
    first = motifs[0]
    assert (first.id, first.name) == ("MA0004.1", "Arnt")
    assert first.counts.shape == (6, 4)
    assert first.counts[0].tolist() == [4.0, 16.0, 0.0, 0.0]
    assert any(m.name == "Ahr::Arnt" for m in motifs)
    assert len(load_motifs("shipped")) == 838


@pytest.mark.parametrize(
    "body, line, words",
    [
        (">M1_M1.a\n1\t2\t3\t4\n1\t2\t3\n", 3, "3 columns"),
        (">M1_M1.a\n1\t2\t3\t4\n1\tx\t3\t4\n", 3, "numbers"),
        (">M1_M1.a\n1\t2\t3\t4\n1\t-2\t3\t4\n", 3, "negative"),
        ("# c\n>M1_M1.a\n>M2_M2.b\n1\t2\t3\t4\n", 2, "empty"),
        (">M1_M1.a\n1\t2\t3\t4\n>M2_M2.b\n", 3, "empty"),
        ("# c\n1\t2\t3\t4\n>M1_M1.a\n1\t2\t3\t4\n", 2, "before any"),
        (">M1_M1.a\n1\t2\t3\t4\t5\n", 2, "5 columns"),
        (">M1_M1.a\n1\tnan\t3\t4\n", 2, "finite"),
    ],
)
def test_malformed_matrix_is_one_clear_error(tmp_path, body, line, words):
    path = tmp_path / "bad.pfm"
    path.write_text(body)
    with pytest.raises(GMError) as err:
        read_pfm(path)
    message = str(err.value)
    assert str(path) in message and f"line {line}" in message and words in message


def test_missing_or_empty_motif_file(tmp_path):
    with pytest.raises(GMError, match="not found"):
        read_pfm(tmp_path / "nope.pfm")
    (tmp_path / "empty.pfm").write_text("# nothing\n")
    with pytest.raises(GMError, match="no motif"):
        load_motifs(tmp_path / "empty.pfm")


def test_pyjaspar_missing_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyjaspar", None)  # import pyjaspar -> ImportError
    with pytest.raises(GMError, match="pip install pyjaspar"):
        load_motifs("pyjaspar")


# ------------------------------------------------------------------------------------------ scoring
def test_log_odds_by_hand():
    counts = np.array([[10.0, 0, 0, 0], [1, 1, 1, 1]])
    lo = log_odds(counts, pseudocount=0.8, background=(0.25, 0.25, 0.25, 0.25))
    assert lo[0, 0] == pytest.approx(np.log2((10 + 0.2) / 10.8 / 0.25))
    assert lo[0, 1] == pytest.approx(np.log2(0.2 / 10.8 / 0.25))
    assert np.allclose(lo[1], 0.0)
    bg = (0.3, 0.2, 0.2, 0.3)
    lo = log_odds(counts, background=bg)
    assert lo[0, 3] == pytest.approx(np.log2(0.8 * 0.3 / 10.8 / 0.3))
    with pytest.raises(GMError, match="background"):
        log_odds(counts, background=(1, 1, 1))


def test_planted_6mer_scores_one_on_both_strands(tmp_path):
    path = write_pfm(tmp_path / "planted.pfm", {"PLANT": onehot_counts("ACGTTG")})
    motif_list = read_pfm(path)
    best, index, strand, offset = score_kmers(motif_list, 6, progress=False)
    assert best.shape == index.shape == strand.shape == offset.shape == (4096,)
    fwd, rev = INDEX["ACGTTG"], INDEX[revcomp("ACGTTG")]
    assert revcomp("ACGTTG") == "CAACGT"
    assert best[fwd] == 1.0 and strand[fwd] == 1 and offset[fwd] == 0
    assert best[rev] == 1.0 and strand[rev] == -1 and offset[rev] == 0
    others = np.ones(4096, dtype=bool)
    others[[fwd, rev]] = False
    assert best[others].max() < 1.0
    assert ((best >= 0) & (best <= 1)).all()
    # one mismatch costs more than nothing, and a worst sequence scores 0
    assert best[INDEX["ACGTTA"]] < 1.0
    assert best[INDEX[revcomp("ACGTTA")]] == best[INDEX["ACGTTA"]]


def test_longer_motif_gives_one_at_the_right_offset(tmp_path):
    path = write_pfm(tmp_path / "long.pfm", {"DECOY": onehot_counts("GGGGGGG"), "LONG": onehot_counts("TTTACGTTGAA")})
    motif_list = read_pfm(path)
    best, index, strand, offset = score_kmers(motif_list, 6, progress=False)
    i = INDEX["ACGTTG"]
    assert best[i] == 1.0 and index[i] == 1 and strand[i] == 1 and offset[i] == 3
    j = INDEX["CAACGT"]  # reverse complement: same place in the motif's coordinates
    assert best[j] == 1.0 and index[j] == 1 and strand[j] == -1 and offset[j] == 3
    assert best[INDEX["GGGGGG"]] == 1.0 and index[INDEX["GGGGGG"]] == 0 and offset[INDEX["GGGGGG"]] == 0


def test_shorter_motif_slides_over_the_kmer(tmp_path):
    path = write_pfm(tmp_path / "short.pfm", {"GATA": onehot_counts("GATA")})
    best, index, strand, offset = score_kmers(read_pfm(path), 6, progress=False)
    i = INDEX["AGATAC"]  # motif at k-mer position 1 -> k-mer starts 1 before the motif
    assert best[i] == 1.0 and strand[i] == 1 and offset[i] == -1
    j = INDEX["TTATCA"]  # contains TATC = revcomp(GATA) at position 1; revcomp(k-mer) = TGATAA
    assert best[j] == 1.0 and strand[j] == -1 and offset[j] == -1
    assert best[INDEX["CCCCCC"]] < 0.5


def test_scores_match_brute_force_and_are_deterministic():
    rng = np.random.default_rng(7)
    motif_list = [Motif(f"R{i}", f"r{i}", rng.gamma(0.5, 10, size=(length, 4)).round())
                  for i, length in enumerate([3, 5, 6, 7, 9, 12])]
    first = score_kmers(motif_list, 6, progress=False, chunk=5)
    second = score_kmers(motif_list, 6, progress=False)
    for a, b in zip(first, second):
        assert np.array_equal(a, b)
    best = first[0]
    assert ((best >= 0) & (best <= 1)).all()
    kmers = ngram_strings(6)
    for i in rng.choice(4096, 40, replace=False):
        assert best[i] == pytest.approx(brute_force(motif_list, kmers[i]), abs=1e-12)
    # the k-mer that maximises one window scores exactly 1.0 there
    consensus = "".join("ACGT"[c] for c in log_odds(motif_list[2].counts).argmax(axis=1))  # the 6-column motif
    assert best[INDEX[consensus]] == 1.0


def test_kmer_order_is_npmi_order():
    codes = gmm.kmer_codes(3)
    assert "".join("ACGT"[c] for c in codes[0]) == "AAA"
    assert all("".join("ACGT"[c] for c in codes[i]) == g for i, g in enumerate(ngram_strings(3)))
    assert list(ngram_strings(2)) == ["".join(p) for p in itertools.product("ATCG", repeat=2)]


# ------------------------------------------------------------------------------------------ statistics
def test_statistics_equal_scipy_on_a_small_case():
    kmers = ngram_strings(2)  # 16 2-mers
    rng = np.random.default_rng(1)
    scores = rng.uniform(0.5, 1.0, 16)
    ranks = rng.permutation(16) + 1
    ranking = {g: int(r) for g, r in zip(kmers, ranks)}
    stats = motif_statistics(ranking, scores, threshold=0.8, ns=(3, 5), permutations=500, seed=3)
    rho, p = spearmanr(ranks, scores)
    assert stats["spearman_rho"] == pytest.approx(rho) and stats["spearman_p"] == pytest.approx(p)
    by_rank = scores[np.argsort(ranks)]
    hits = by_rank >= 0.8
    for n in (3, 5):
        top, bottom = int(hits[:n].sum()), int(hits[-n:].sum())
        odds, fp = fisher_exact([[top, n - top], [bottom, n - bottom]], alternative="greater")
        row = stats["by_n"][n]
        assert (row["top_hits"], row["bottom_hits"]) == (top, bottom)
        assert row["fisher_p"] == pytest.approx(fp)
        assert row["fisher_odds_ratio"] == pytest.approx(odds, nan_ok=True)
        assert 0 < row["perm_p"] <= 1 and 0 <= row["perm_fraction"] <= 1
    assert stats["kmers"] == 16 and stats["hits"] == int(hits.sum())


def test_absent_kmers_are_excluded():
    kmers = ngram_strings(2)
    scores = np.linspace(1.0, 0.0, 16)
    ranking = {g: i + 1 for i, g in enumerate(kmers[:10])}
    stats = motif_statistics(ranking, scores, threshold=0.5, ns=(2,), permutations=100)
    rho, _ = spearmanr(np.arange(1, 11), scores[:10])
    assert stats["kmers"] == 10 and stats["spearman_rho"] == pytest.approx(rho)
    with pytest.raises(GMError, match="disjoint"):
        motif_statistics(ranking, scores, ns=(6,))


def test_permutation_p_is_seeded_and_small_for_planted_hits():
    kmers = ngram_strings(6)
    ranking = {g: i + 1 for i, g in enumerate(kmers)}
    rng = np.random.default_rng(0)
    scores = rng.uniform(0.0, 0.85, 4096)
    scores[:50] = 0.95  # the top 50 are planted hits, nothing else is
    a = motif_statistics(ranking, scores, ns=(50, 100), permutations=2000, seed=11)
    b = motif_statistics(ranking, scores, ns=(50, 100), permutations=2000, seed=11)
    assert a == b
    assert a["by_n"][50]["perm_p"] == pytest.approx(1 / 2001)
    assert a["by_n"][50]["fisher_p"] < 1e-20 and a["spearman_rho"] < 0
    # no planted signal: p-values are proper and depend on the seed only
    noise = rng.uniform(0.8, 1.0, 4096)
    c = motif_statistics(ranking, noise, ns=(50,), permutations=2000, seed=1)
    d = motif_statistics(ranking, noise, ns=(50,), permutations=2000, seed=2)
    assert 0 < c["by_n"][50]["perm_p"] <= 1 and 0 < d["by_n"][50]["perm_p"] <= 1
    assert c["by_n"][50]["perm_p"] > 0.01


def test_ranking_without_needed_columns_is_a_clear_error(tmp_path):
    bad = tmp_path / "ranking.csv"
    bad.write_text("kmer,score\nAAAAAA,1\n")
    with pytest.raises(GMError) as err:
        gmm.run_motif_analysis(bad, tmp_path / "out", motifs="shipped", progress=False)
    assert str(bad) in str(err.value)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------ end to end
def test_end_to_end_on_shipped_data_via_the_cli(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    gmm.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["motifs", "--out", str(tmp_path / "out"), "--permutations", "2000"])
    assert args.ranking == AUTHORS_RANKING and args.n == [50, 100, 200] and args.motifs == "shipped"
    start = time.perf_counter()
    assert gmm.run(args) == 0
    assert time.perf_counter() - start < 120
    printed = capsys.readouterr().out
    assert "Spearman" in printed and "N=  50" in printed
    out = tmp_path / "out"
    for name in ("motif_report.md", "kmer_motif_scores.csv", "motif_score_vs_rank.png", "motif_information.png"):
        assert (out / name).stat().st_size > 0
    assert (out / "motif_score_vs_rank.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(out / "kmer_motif_scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4096
    assert list(rows[0]) == ["ngram", "rank", "best_motif_id", "best_motif_name", "best_score", "strand", "offset",
                             "hit_information_bits", "hit_motif_id", "hit_motif_name"]
    assert rows[0]["ngram"] == "CCTCCC" and rows[0]["rank"] == "1"
    assert all(0.0 <= float(r["best_score"]) <= 1.0 and r["strand"] in "+-" for r in rows)
    report = (out / "motif_report.md").read_text()
    assert "## Statistics" in report and "## Reading" in report and "CCTCCC" in report
    assert "## Hit share by --min-information" in report and not (out / "top20_kmers_motifs.png").exists()


def test_cli_error_returns_2(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    gmm.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["motifs", "--out", str(tmp_path), "--motifs", str(tmp_path / "none.pfm")])
    assert gmm.run(args) == 2
    assert "none.pfm" in capsys.readouterr().err


def test_hit_information_gives_the_hit_share_of_every_min_information():
    """One pass gives what a run at each --min-information X would count: a k-mer is a hit at X bits exactly
    when the most informative window it hits carries >= X bits (and those bits are a real hitting window's)."""
    motif_list = read_pfm(gmm.SHIPPED_MOTIFS)[:40]
    best, _, _, _, hit_bits, hit_motif = gmm._score(motif_list, 6, gmm.DEFAULT_PSEUDOCOUNT, gmm.HUMAN_BACKGROUND, 0.0,
                                                    gmm.DEFAULT_THRESHOLD, progress=False)
    assert np.array_equal(best, score_kmers(motif_list, 6, progress=False)[0])
    levels = (0.0, 6.0, 8.0, 9.5, 11.0)
    counts = []
    for level in levels:
        at_level = score_kmers(motif_list, 6, min_information=level, progress=False)[0] >= gmm.DEFAULT_THRESHOLD
        np.testing.assert_array_equal(at_level, np.nan_to_num(hit_bits, nan=-1) >= level)
        counts.append(int(at_level.sum()))
    assert counts[0] > counts[-1] > 0 and counts == sorted(counts, reverse=True)  # the levels do select
    # a run with --min-information still sees every window for the hit information (the shares below its level)
    filtered = gmm._score(motif_list, 6, gmm.DEFAULT_PSEUDOCOUNT, gmm.HUMAN_BACKGROUND, 9.5, gmm.DEFAULT_THRESHOLD,
                          progress=False)
    np.testing.assert_array_equal(filtered[4], hit_bits)
    np.testing.assert_array_equal(filtered[0], score_kmers(motif_list, 6, min_information=9.5, progress=False)[0])
    ranking = {g: i + 1 for i, g in enumerate(ngram_strings(6))}
    shares = gmm.hit_shares(ranking, hit_bits, ns=[10], levels=levels)
    assert [round(r["all"] * 4096) for r in shares] == counts
    assert shares[2]["top10"] == np.mean(np.nan_to_num(hit_bits[:10], nan=-1) >= 8.0)
    # the bits are those of a window of the named motif that the k-mer hits
    i = int(np.nanargmax(hit_bits))
    kmer = str(ngram_strings(6)[i])
    motif = motif_list[hit_motif[i]]
    info = gmm.information(motif.counts)
    windows = [(o, info[o : o + 6].sum()) for o in range(motif.length - 5)] or [(0, info.sum())]
    assert any(abs(bits - hit_bits[i]) < 1e-9 and brute_force([Motif("w", "w", motif.counts[o : o + 6])], kmer) >= 0.9
               for o, bits in windows)
