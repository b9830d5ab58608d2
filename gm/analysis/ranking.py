"""``python analyze.py npmi``: count a genome's n-grams, rank its k-mers by PMI, write the ranking and compare it with the authors'."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from gm.masking.npmi import AUTHORS_RANKING, count_ngrams, rank_kmers, read_ranking, spearman
from gm.utils import GMError, check_output_path, writing


#: fewer scored k-mers than this and a rank correlation with the authors' ranking means nothing
MIN_SPEARMAN_KMERS = 100


def npmi(fasta: Path, out: Path, k: int = 6, score: str = "discounted", min_count: int = 101, top: int = 20) -> dict:
    """Count the n-grams of ``fasta``, rank its k-mers by PMI and write the ranking CSV.

    A genome in which no k-mer is seen ``min_count`` times ranks nothing and is refused. For
    k = 6 the scored k-mers' ranks are compared with the GeneMask authors' (Spearman), when at
    least ``MIN_SPEARMAN_KMERS`` are scored; unscored k-mers share the worst rank and are left
    out of the comparison (their tie says nothing about either ranking).
    """
    check_output_path(out)
    start = time.perf_counter()
    counts = count_ngrams(fasta, k)
    seconds = time.perf_counter() - start
    ranking = rank_kmers(counts, k, score=score, min_count=min_count)
    scored = np.isfinite(ranking.score)
    n_scored = int(scored.sum())
    if n_scored == 0:
        raise GMError(
            f"{fasta}: no {k}-mer is seen {min_count} times or more in its {counts.bases:,} bases, so none can be "
            f"ranked; use a larger genome or lower --min-count"
        )
    with writing(out):
        ranking.write_csv(out)
    order = np.argsort(ranking.rank, kind="stable")
    summary = {
        "fasta": str(fasta),
        "out": str(out),
        "bases": counts.bases,
        "count_seconds": round(seconds, 3),
        "bases_per_second": counts.bases / seconds,
        "scored_kmers": n_scored,
        "spearman_vs_authors": None,
    }
    print(f"counted {counts.bases:,} bases in {seconds:.2f} s ({counts.bases / seconds / 1e6:.1f} Mb/s); "
          f"{n_scored:,} of {4**k:,} {k}-mers seen at least {min_count} times")
    if n_scored < 4**k:
        print(f"the other {4**k - n_scored:,} have no score and share the worst rank, {n_scored + 1:,}")
    print(f"top {min(top, n_scored)} {k}-mers by {score} PMI:")
    for i in order[: min(top, n_scored)]:
        print(f"  {ranking.rank[i]:>5}  {ranking.ngram[i]}  count {ranking.count[i]:>9,}  pmi {ranking.pmi[i]:7.3f}  score {ranking.score[i]:7.3f}")
    if k == 6 and n_scored >= MIN_SPEARMAN_KMERS:
        authors = read_ranking(AUTHORS_RANKING, 6)
        theirs = np.array([authors[g] for g in ranking.ngram[scored]])
        rho = spearman(ranking.rank[scored], theirs)
        summary["spearman_vs_authors"] = rho
        print(f"Spearman correlation with the GeneMask authors' ranking: {rho:.3f} (over the {n_scored:,} scored 6-mers)")
    elif k == 6:
        print(f"no comparison with the GeneMask authors' ranking: {n_scored} scored 6-mers are too few "
              f"(at least {MIN_SPEARMAN_KMERS} needed)")
    print(f"wrote {out}")
    return summary
