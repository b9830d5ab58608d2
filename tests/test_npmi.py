"""NPMI of k-mers (spec §3): counting against a pure-Python counter, segmentation PMI against
brute force over every cut, the two scores and their ranking, ranking files, and agreement with
the GeneMask authors' ranking on the shipped chr2 sample."""

from __future__ import annotations

import csv
import itertools
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import gm.masking.npmi as npmi
from gm.masking.npmi import (
    AUTHORS_RANKING,
    NgramCounts,
    Ranking,
    count_codes,
    count_ngrams,
    rank_kmers,
    read_ranking,
    segmentation_pmi,
    spearman,
)
from gm.data.tokenizer import sequence_to_codes
from gm.utils import GMError

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_FASTA = ROOT / "data" / "genome" / "hg38_chr2_1-2333275.fa.gz"


# ------------------------------------------------------------------------------------------ helpers
def kmers(n: int) -> list[str]:
    """All n-grams in DNABERT's order (itertools.product("ATCG")), the index of the count arrays."""
    return ["".join(p) for p in itertools.product("ATCG", repeat=n)]


def python_counts(sequences: list[str], k: int) -> dict[int, Counter]:
    """The straightforward counter: every substring of length 1..k of the upper-cased sequence,
    skipping windows that contain anything but A, C, G, T."""
    counts = {n: Counter() for n in range(1, k + 1)}
    for sequence in sequences:
        sequence = sequence.upper()
        for n in range(1, k + 1):
            for i in range(len(sequence) - n + 1):
                window = sequence[i : i + n]
                if set(window) <= set("ACGT"):
                    counts[n][window] += 1
    return counts


def as_arrays(counts: dict[int, Counter]) -> dict[int, np.ndarray]:
    return {n: np.array([c[w] for w in kmers(n)], dtype=np.int64) for n, c in counts.items()}


def random_records(rng: np.random.Generator, n_records: int = 4, max_len: int = 400) -> dict[str, str]:
    """Records with N runs, IUPAC codes, soft-masked (lower-case) stretches, and some shorter than k."""
    records = {}
    for r in range(n_records):
        length = int(rng.choice([0, 2, 5, int(rng.integers(10, max_len))]))
        seq = list(rng.choice(list("ACGT"), length))
        for _ in range(int(rng.integers(0, 4))):  # N runs
            start, run = int(rng.integers(0, max(length, 1))), int(rng.integers(1, 30))
            seq[start : start + run] = ["N"] * len(seq[start : start + run])
        for i in np.flatnonzero(rng.random(length) < 0.01):
            seq[i] = str(rng.choice(list("RYKMSWn")))
        if length > 20:  # soft-masked repeat
            start = int(rng.integers(0, length - 20))
            seq[start : start + 20] = [c.lower() for c in seq[start : start + 20]]
        records[f"rec{r} description"] = "".join(seq)
    return records


def write_fasta(path: Path, records: dict[str, str], width: int = 61) -> Path:
    with open(path, "w") as handle:
        for name, seq in records.items():
            handle.write(f">{name}\n")
            for i in range(0, len(seq), width):
                handle.write(seq[i : i + width] + "\n")
    return path


# ------------------------------------------------------------------------------------------ counting
@pytest.mark.parametrize("k", [3, 6])
@pytest.mark.parametrize("chunk", [None, 7, 1])
@pytest.mark.parametrize("seed", range(4))
def test_count_ngrams_matches_python_counter(tmp_path, monkeypatch, k, chunk, seed):
    if chunk is not None:  # chunks far smaller than a record: windows straddle every boundary
        monkeypatch.setattr(npmi, "_CHUNK", chunk)
    records = random_records(np.random.default_rng(seed))
    records["long"] = "".join(np.random.default_rng(seed + 100).choice(list("ACGTacgt"), 1000))
    path = write_fasta(tmp_path / "g.fa", records, width=[7, 60, 61, 80][seed])
    counts = count_ngrams(path, k=k, progress=False)
    expected = as_arrays(python_counts(list(records.values()), k))
    assert sorted(counts.counts) == list(range(1, k + 1)) and counts.k == k
    for n in range(1, k + 1):
        np.testing.assert_array_equal(counts.counts[n], expected[n], err_msg=f"n={n}")
        assert counts.total(n) == sum(expected[n])
    assert counts.bases == sum(sum(c in "ACGT" for c in s.upper()) for s in records.values())


@pytest.mark.parametrize("k", [3, 6])
def test_count_codes_matches_python_counter(k):
    rng = np.random.default_rng(k)
    sequences = list(random_records(rng, n_records=6).values())
    out = None
    for sequence in sequences:  # accumulates into `out`, one record at a time
        out = count_codes(sequence_to_codes(sequence), k, out)
    expected = as_arrays(python_counts(sequences, k))
    for n in range(1, k + 1):
        np.testing.assert_array_equal(out[n], expected[n], err_msg=f"n={n}")
    single = count_codes(sequence_to_codes("ACGTNacgt"), 2)
    assert single[2][kmers(2).index("AC")] == 2 and single[2].sum() == 6 and single[1].sum() == 8


def test_count_ngrams_errors(tmp_path):
    only_n = write_fasta(tmp_path / "n.fa", {"a": "NNNNNN", "b": "nnRY"})
    with pytest.raises(GMError, match=re.escape(str(only_n))):
        count_ngrams(only_n, k=3, progress=False)
    with pytest.raises(GMError, match="k must be"):
        count_ngrams(only_n, k=0, progress=False)


# ------------------------------------------------------------------------------------------ PMI
def cuts(word: str):
    """Every way of cutting ``word`` into two or more contiguous non-empty pieces."""
    n = len(word)
    for r in range(1, n):
        for points in itertools.combinations(range(1, n), r):
            bounds = (0, *points, n)
            yield [word[a:b] for a, b in zip(bounds, bounds[1:])]


def test_cuts_enumerates_compositions():
    assert sorted(cuts("ABC")) == [["A", "B", "C"], ["A", "BC"], ["AB", "C"]]
    assert sum(1 for _ in cuts("ACGTA")) == 2**4 - 1


@pytest.fixture(scope="module")
def small_genome_counts() -> tuple[NgramCounts, dict[int, Counter]]:
    """A small genome holding every base (and a biased composition, so PMIs differ), whose
    5-mers are not all seen."""
    rng = np.random.default_rng(0)
    sequences = ["".join(rng.choice(list("ACGT"), 2500, p=[0.4, 0.1, 0.2, 0.3])), "ACGT" * 20 + "NN" + "TTTAAA" * 10]
    counts = python_counts(sequences, 5)
    ours = NgramCounts(as_arrays(counts), bases=sum(len(s.replace("N", "")) for s in sequences))
    assert all(counts[1][b] for b in "ACGT")
    return ours, counts


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_segmentation_pmi_matches_brute_force(small_genome_counts, n):
    ours, counts = small_genome_counts
    total = {m: sum(counts[m].values()) for m in counts}

    def logp(piece: str) -> float:
        return math.log(counts[len(piece)][piece] / total[len(piece)])

    expected = []
    for word in kmers(n):
        if counts[n][word] == 0:
            expected.append(math.nan)
        else:
            expected.append(logp(word) - max(sum(logp(p) for p in pieces) for pieces in cuts(word)))
    pmi = segmentation_pmi(ours, n)
    assert pmi.shape == (4**n,)
    expected = np.array(expected)
    np.testing.assert_array_equal(np.isnan(pmi), np.isnan(expected))
    np.testing.assert_allclose(pmi, expected, rtol=1e-10, atol=1e-10)
    if n == 5:
        assert np.isnan(pmi).sum() > 10  # unseen 5-mers: NaN, not a number
    # n = 2 has a single cut: PMI(xy) = log p(xy) - log p(x) - log p(y)
    if n == 2:
        i = kmers(2).index("AG")
        assert math.isclose(pmi[i], logp("AG") - logp("A") - logp("G"), rel_tol=1e-12)
    with pytest.raises(GMError):
        segmentation_pmi(ours, 1)


# ------------------------------------------------------------------------------------------ scores and ranks
@pytest.fixture(scope="module")
def biased_counts() -> NgramCounts:
    """4-mer counts spread around the default min_count (101): a biased 40 kb genome."""
    rng = np.random.default_rng(1)
    codes = rng.choice(4, 40_000, p=[0.45, 0.3, 0.15, 0.1]).astype(np.uint8)  # A T C G codes
    return NgramCounts(count_codes(codes, 4), bases=codes.size)


def check_ranks(ranking: Ranking, min_count: int) -> None:
    n = ranking.rank.size
    scored = np.isfinite(ranking.score)
    n_scored = int(scored.sum())
    # the scored k-mers rank 1..S; the unscored share the worst rank, S + 1 (as analyze.py npmi --help says)
    assert sorted(ranking.rank[scored].tolist()) == list(range(1, n_scored + 1))
    assert (ranking.rank[~scored] == n_scored + 1).all()
    assert not scored[ranking.count < min_count].any()  # dropped
    assert scored[ranking.count >= min_count].all()
    # every scored k-mer before every dropped one; among the scored, higher score first
    assert ranking.rank[scored].max(initial=0) < ranking.rank[~scored].min(initial=n + 1)
    order = np.argsort(ranking.rank)
    scores = ranking.score[order][: scored.sum()]
    assert (np.diff(scores) <= 0).all()
    assert ranking.rank[np.nanargmax(ranking.score)] == 1


@pytest.mark.parametrize("min_count", [101, 400, 1])
def test_rank_kmers_discounted(biased_counts, min_count):
    ranking = rank_kmers(biased_counts, score="discounted", min_count=min_count)
    count = biased_counts.counts[4]
    assert ranking.score_kind == "discounted" and list(ranking.ngram) == kmers(4)
    np.testing.assert_array_equal(ranking.count, count)
    pmi = segmentation_pmi(biased_counts, 4)
    np.testing.assert_allclose(ranking.pmi, pmi, equal_nan=True)
    keep = count >= min_count
    f = count[keep].astype(float)
    np.testing.assert_allclose(ranking.score[keep], pmi[keep] * np.log(f) / (np.log(f) + math.log(101)), rtol=1e-12)
    assert np.isnan(ranking.score[~keep]).all()
    if min_count == 101:
        assert (~keep).sum() > 20 and keep.sum() > 20  # the fixture really straddles the threshold
    check_ranks(ranking, min_count)


def test_rank_kmers_npmi(biased_counts):
    ranking = rank_kmers(biased_counts, score="npmi", min_count=101)
    count = biased_counts.counts[4]
    keep = count >= 101
    p = count[keep] / count.sum()
    np.testing.assert_allclose(ranking.score[keep], ranking.pmi[keep] / -np.log(p), rtol=1e-12)
    assert np.isnan(ranking.score[~keep]).all()
    check_ranks(ranking, 101)
    assert ranking.score_kind == "npmi"


def test_rank_kmers_unknown_score(biased_counts):
    with pytest.raises(GMError, match="bogus"):
        rank_kmers(biased_counts, score="bogus")


# ------------------------------------------------------------------------------------------ ranking files
def test_write_csv_and_read_back(tmp_path, biased_counts):
    ranking = rank_kmers(biased_counts, min_count=101)
    out = tmp_path / "out"
    out.mkdir()
    path = ranking.write_csv(out / "ranking.csv")
    assert path == out / "ranking.csv"
    assert [p.name for p in out.iterdir()] == ["ranking.csv"]  # atomic: no temporary file left
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
        assert list(rows[0]) == ["ngram", "count", "pmi", "score", "rank"]
    n_scored = int(np.isfinite(ranking.score).sum())
    assert 0 < n_scored < 256
    assert [int(r["rank"]) for r in rows] == list(range(1, n_scored + 1)) + [n_scored + 1] * (256 - n_scored)  # best first
    top = int(np.argmin(ranking.rank))
    assert rows[0]["ngram"] == ranking.ngram[top] and int(rows[0]["count"]) == ranking.count[top]
    assert math.isclose(float(rows[0]["score"]), ranking.score[top], rel_tol=1e-9)
    assert all(r["score"] == "" for r in rows if int(r["count"]) < 101)  # dropped: no score
    back = read_ranking(path, k=4)
    assert back == {w: int(r) for w, r in zip(ranking.ngram, ranking.rank)}
    ranking.write_csv(path)  # overwriting is atomic too
    assert [p.name for p in out.iterdir()] == ["ranking.csv"]


def test_read_authors_ranking():
    ranks = read_ranking(AUTHORS_RANKING)
    assert len(ranks) == 4096 and sorted(ranks.values()) == list(range(1, 4097))
    assert ranks["CCTCCC"] == 1 and ranks["GGGAGG"] == 2


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("kmer,rank\nAAA,1\n", r"columns 'ngram' and 'rank'"),
        ("ngram,score\nAAA,1\n", r"columns 'ngram' and 'rank'"),
        ("", r"columns 'ngram' and 'rank'"),
        ("ngram,rank\nAAA,1\nACN,2\n", r"line 3: 'ACN' is not a 3-mer of A/C/G/T"),
        ("ngram,rank\nAAA,1\nACG,two\n", r"line 3: rank 'two' is not a number"),
        ("ngram,rank\nAAA,1\nACG,\n", r"line 3: rank '' is not a number"),
        ("ngram,rank\nAAA,1\nACG\n", r"line 3: rank None is not a number"),
        ("ngram,rank\nAAA,inf\n", r"line 2: rank 'inf' is not a number"),
        ("ngram,rank\n", r"no 3-mers"),
        # another k, a k-mer of other letters, an empty cell: errors, never rows silently skipped
        ("ngram,rank\nAAAA,1\n", r"line 2: 'AAAA' is not a 3-mer of A/C/G/T \(a ranking of 4-mers; k=3 needs 3-mers"),
        ("ngram,rank\nAAA,1\nAC,2\n", r"line 3: 'AC' is not a 3-mer"),
        ("ngram,rank\nAAA,1\n,2\n", r"line 3: '' is not a 3-mer"),
        ("ngram,rank\nAAA,1\nAXG,2\n", r"line 3: 'AXG' is not a 3-mer"),
        # the same k-mer twice (case ignored): the last row used to win
        ("ngram,rank\nAAA,1\nCCC,2\naaa,4000\n", r"line 4: AAA is ranked twice \(first on line 2\)"),
        # impossible ranks
        ("ngram,rank\nAAA,1\nCCC,-3\n", r"line 3: rank '-3' is impossible: ranks start at 1"),
        ("ngram,rank\nAAA,0\n", r"line 2: rank '0' is impossible: ranks start at 1"),
        ("ngram,rank\nAAA,1\nCCC,2.5\n", r"line 3: rank '2.5' is not a whole number"),
        ("ngram,rank\nAAA,nan\n", r"line 2: rank 'nan' is not a number"),
        ("ngram,rank\nAAA,1e30\n", r"line 2: rank '1e30' is too large"),
    ],
)
def test_read_ranking_errors_name_file_and_line(tmp_path, text, pattern):
    path = tmp_path / "ranking.csv"
    path.write_text(text)
    with pytest.raises(GMError, match=re.escape(str(path)) + ".*" + pattern):
        read_ranking(path, k=3)


def test_read_ranking_accepts_whole_floats_ties_and_case(tmp_path):
    path = tmp_path / "ranking.csv"
    path.write_text("ngram,rank\n" + "".join(f"{g.lower()},{1 + i // 2}.0\n" for i, g in enumerate(kmers(3))))
    assert read_ranking(path, k=3) == {g: 1 + i // 2 for i, g in enumerate(kmers(3))}


def test_partial_ranking_warns_with_the_share_ranked(tmp_path, caplog):
    path = tmp_path / "ranking.csv"
    path.write_text("ngram,rank\n" + "".join(f"{g},{i + 1}\n" for i, g in enumerate(kmers(6)[:10])))
    with caplog.at_level("WARNING", logger="gm.masking.npmi"):
        ranks = read_ranking(path, k=6)
    assert len(ranks) == 10
    assert f"{path}: a partial ranking: it ranks 10 of the 4,096 6-mers (0.2%); the 4,086 it leaves out are unranked" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="gm.masking.npmi"):
        read_ranking(AUTHORS_RANKING)  # complete: no warning
    assert caplog.text == ""


def test_read_ranking_missing_file(tmp_path):
    with pytest.raises(GMError, match=re.escape(str(tmp_path / "nope.csv"))):
        read_ranking(tmp_path / "nope.csv")


# ------------------------------------------------------------------------------------------ real data
def test_chr2_sample_agrees_with_authors_ranking():
    counts = count_ngrams(SAMPLE_FASTA, k=6, progress=False)
    assert counts.bases == 2_323_275  # 2,333,275 bases, of which 10,000 N
    ranking = rank_kmers(counts, score="discounted")
    authors = read_ranking(AUTHORS_RANKING)
    ours = dict(zip(ranking.ngram, ranking.rank))
    rho = spearman(np.array([authors[w] for w in kmers(6)]), np.array([ours[w] for w in kmers(6)]))
    print(f"Spearman correlation with the authors' 6-mer ranking on the chr2 sample: {rho:.4f}")
    assert rho > 0.8


# ------------------------------------------------------------------------------------------ analyze.py npmi
def test_npmi_refuses_a_genome_that_scores_no_kmer(tmp_path):
    """Used to rank all 4,096 6-mers in code order and print a Spearman of 0.037."""
    from conftest import run_cli, write_fasta

    genome = write_fasta(tmp_path / "small.fa", {"a": "".join(np.random.default_rng(0).choice(list("ACGT"), 20_000))})
    out = tmp_path / "r.csv"
    result = run_cli("analyze.py", ["npmi", "--fasta", str(genome), "--out", str(out)], tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == (
        f"error: {genome}: no 6-mer is seen 101 times or more in its 20,000 bases, so none can be ranked; "
        "use a larger genome or lower --min-count"
    )
    assert "Traceback" not in result.stderr and "Spearman" not in result.stdout
    assert not out.exists()


def test_npmi_prints_no_spearman_for_a_handful_of_scored_kmers(tmp_path, capsys):
    from conftest import write_fasta
    from gm.analysis.ranking import npmi as npmi_command

    genome = write_fasta(tmp_path / "repeat.fa", {"a": "ACGTTG" * 500})  # 6 distinct 6-mers, ~500 times each
    out = tmp_path / "r.csv"
    summary = npmi_command(genome, out)
    printed = capsys.readouterr().out
    assert summary["scored_kmers"] == 6 and summary["spearman_vs_authors"] is None
    assert "Spearman" not in printed and "6 scored 6-mers are too few (at least 100 needed)" in printed
    rows = list(csv.DictReader(open(out)))
    assert [int(r["rank"]) for r in rows] == [1, 2, 3, 4, 5, 6] + [7] * 4090  # the rest share the worst rank


def test_npmi_out_that_cannot_be_a_file(tmp_path, capsys):
    """Refused before counting, in one line (a directory used to end in IsADirectoryError)."""
    from gm.analysis.cli import main

    folder = tmp_path / "outputs"
    folder.mkdir()
    assert main(["npmi", "--out", str(folder)]) == 2
    assert capsys.readouterr().err.strip() == f"error: --out {folder} is a directory; give a file name (e.g. {folder / 'name'})"
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["npmi", "--out", str(afile / "r.csv")]) == 2
    assert capsys.readouterr().err.strip() == f"error: --out {afile / 'r.csv'}: {afile} is a file, not a folder"


def full_disk(monkeypatch) -> None:
    """Make every file that gm.utils.atomic_open writes fail as a full disk does: OSError 28,
    naming no file."""
    import os

    from conftest import FullDiskFile

    real_fdopen = os.fdopen

    monkeypatch.setattr(os, "fdopen", lambda fd, *args, **kwargs: FullDiskFile(real_fdopen(fd, *args, **kwargs)))


def test_npmi_full_disk_names_the_output(tmp_path, monkeypatch, capsys):
    from conftest import write_fasta
    from gm.analysis.cli import main

    genome = write_fasta(tmp_path / "repeat.fa", {"a": "ACGTTG" * 500})
    out = tmp_path / "deep" / "r.csv"
    full_disk(monkeypatch)
    assert main(["npmi", "--fasta", str(genome), "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: cannot write {out}: no space left on device"
    assert list(out.parent.iterdir()) == []  # no torn file, no temporary left
