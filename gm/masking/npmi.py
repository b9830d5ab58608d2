"""Pointwise mutual information of k-mers, counted from any genome (spec §3).

Counting uses the tokenizer's 2-bit base codes: every n-gram of length n is a base-4 number in
``[0, 4**n)``, so counting all n-grams of a chunk is one ``np.bincount``. The segmentation PMI of
PMI-Masking (Levine et al. 2021),

    PMI(w) = log p(w) - max over cuts of w into >= 2 contiguous pieces of sum log p(piece),

is a dynamic programme over cut points, run for all 4**k k-mers at once as array operations.
GeneMask's released ranking scores ``PMI * ln f / (ln f + ln 101)`` (f = count, n-grams seen
fewer than 101 times dropped); classical normalised PMI, ``PMI / -log p(w)``, is the other choice.
"""

from __future__ import annotations

import csv
import io
import itertools
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from gm.data.fasta import read_fasta
from gm.data.tokenizer import BASES, INVALID_CODE, NUM_SPECIAL
from gm.utils import GMError, atomic_write_text

log = logging.getLogger(__name__)

_CHUNK = 1 << 24
SCORES = ("discounted", "npmi")

#: the GeneMask authors' ranking of all 4,096 6-mers, shipped with the project
AUTHORS_RANKING = Path(__file__).resolve().parents[2] / "data" / "npmi" / "genemask_6mer_npmi_ranking.csv"


# ------------------------------------------------------------------------------------------ counting
@dataclass
class NgramCounts:
    """``counts[n]``: counts of all n-grams of length n (index = base-4 code in ATCG order)."""

    counts: dict[int, np.ndarray]
    bases: int  # A/C/G/T bases read

    @property
    def k(self) -> int:
        return max(self.counts)

    def total(self, n: int) -> int:
        return int(self.counts[n].sum())


def count_codes(codes: np.ndarray, k: int, out: dict[int, np.ndarray] | None = None) -> dict[int, np.ndarray]:
    """Add the counts of all n-grams (n = 1..k) of one base-code array to ``out``."""
    partial = {n: np.zeros(4**n, dtype=np.int64) for n in range(1, k + 1)}
    _count_starts(np.asarray(codes), len(codes), k, partial)
    full = finish_counts(partial)
    if out is None:
        return full
    for n in full:
        out[n] += full[n]
    return out


def count_ngrams(fasta: str | os.PathLike, k: int = 6, progress: bool = True) -> NgramCounts:
    """Counts of every n-gram of length 1..k in a FASTA file (N windows excluded, case ignored).

    Records are processed in chunks of 16 Mb that overlap by k - 1 bases, so memory stays
    bounded and every window is counted exactly once.
    """
    if not 1 <= k <= 12:
        raise GMError(f"k must be between 1 and 12 for counting, got {k}")
    counts = {n: np.zeros(4**n, dtype=np.int64) for n in range(1, k + 1)}
    bases = 0
    path = Path(fasta)
    bar = tqdm(desc=f"count {path.name}", unit="b", unit_scale=True, disable=not progress)
    with bar:
        for record in read_fasta(path, progress=False):
            codes = record.codes
            bases += int(np.count_nonzero(codes != INVALID_CODE))
            for start in range(0, codes.size, _CHUNK):
                # windows starting in [start, start + _CHUNK) need k - 1 bases beyond the chunk
                piece = codes[start : start + _CHUNK + k - 1]
                _count_starts(piece, min(_CHUNK, codes.size - start), k, counts)
                bar.update(min(_CHUNK, codes.size - start))
    if bases == 0:
        raise GMError(f"{path}: no A/C/G/T bases to count")
    return NgramCounts(finish_counts(counts), bases)


def _count_starts(piece: np.ndarray, n_starts: int, k: int, counts: dict[int, np.ndarray]) -> None:
    """Count the n-grams (n = 1..k) of ``piece`` that start in its first ``n_starts`` positions.

    Only the k-grams are counted with ``bincount``; an n-gram either extends to a valid
    (n+1)-gram, and is then counted by the marginal of the (n+1)-gram counts (see
    :func:`finish_counts`), or is cut short by a non-ACGT base or the end of the record, which
    happens at few positions and is counted directly. Windows containing a non-ACGT base are skipped.
    """
    bad = piece == INVALID_CODE
    clean = np.where(bad, 0, piece).astype(np.int32)
    bad_before = np.concatenate(([0], np.cumsum(bad, dtype=np.int64)))  # bad bases in piece[:i]

    def valid_starts(n: int) -> np.ndarray:  # windows of length n starting at 0 .. kept(n) - 1
        kept = max(min(n_starts, piece.size - n + 1), 0)
        return bad_before[n : n + kept] == bad_before[:kept]

    values = clean
    valid_next = valid_starts(1)
    for n in range(1, k + 1):
        if n > 1:
            values = values[:-1] * 4 + clean[n - 1 :]
        valid = valid_next
        if n == k:
            counts[n] += np.bincount(values[: valid.size][valid], minlength=4**n)
            break
        valid_next = valid_starts(n + 1)
        cut_short = valid.copy()
        cut_short[: valid_next.size] &= ~valid_next
        if cut_short.any():
            counts[n] += np.bincount(values[: valid.size][cut_short], minlength=4**n)


def finish_counts(partial: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """Full n-gram counts from k-gram counts plus the cut-short n-grams (see :func:`_count_starts`)."""
    k = max(partial)
    full = {k: partial[k].copy()}
    for n in range(k - 1, 0, -1):
        full[n] = partial[n] + full[n + 1].reshape(4**n, 4).sum(axis=1)
    return full


# ------------------------------------------------------------------------------------------ PMI
def ngram_strings(n: int) -> np.ndarray:
    """All n-grams in code order (``itertools.product("ATCG")``, DNABERT's vocabulary order)."""
    return np.array(["".join(p) for p in itertools.product(BASES, repeat=n)])


def segmentation_pmi(counts: NgramCounts, n: int) -> np.ndarray:
    """PMI of every n-gram of length ``n`` (>= 2); NaN where the n-gram was never seen.

    ``best[(i, j)]`` is the largest sum of log-probabilities over segmentations of the piece
    ``w[i:j]`` into one or more parts; PMI compares the whole against the best cut into two or more.
    """
    if n < 2:
        raise GMError("PMI needs n-grams of length 2 or more")
    with np.errstate(divide="ignore"):
        logp = {m: np.log(counts.counts[m] / max(counts.total(m), 1)) for m in range(1, n + 1)}
    codes = np.arange(4**n, dtype=np.int64)

    def piece(i: int, j: int) -> np.ndarray:  # log p of w[i:j] for every n-gram w
        return logp[j - i][(codes >> (2 * (n - j))) & (4 ** (j - i) - 1)]

    best: dict[tuple[int, int], np.ndarray] = {}
    for length in range(1, n):  # pieces shorter than the whole
        for i in range(0, n - length + 1):
            j = i + length
            value = piece(i, j)
            for m in range(i + 1, j):
                value = np.maximum(value, best[(i, m)] + best[(m, j)])
            best[(i, j)] = value
    split = np.full(4**n, -np.inf)
    for m in range(1, n):
        split = np.maximum(split, best[(0, m)] + best[(m, n)])
    whole = logp[n]
    with np.errstate(invalid="ignore"):
        pmi = whole - split
    pmi[~np.isfinite(whole)] = np.nan
    return pmi


@dataclass
class Ranking:
    """k-mers with their count, PMI, score and rank (1 = highest score)."""

    ngram: np.ndarray
    count: np.ndarray
    pmi: np.ndarray
    score: np.ndarray
    rank: np.ndarray
    score_kind: str

    def write_csv(self, path: str | os.PathLike) -> Path:
        """Write the ranking, best first, atomically."""
        order = np.argsort(self.rank, kind="stable")
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["ngram", "count", "pmi", "score", "rank"])
        for i in order:
            writer.writerow([self.ngram[i], int(self.count[i]), _fmt(self.pmi[i]), _fmt(self.score[i]), int(self.rank[i])])
        atomic_write_text(path, buffer.getvalue())
        return Path(path)


def _fmt(value: float) -> str:
    return "" if not np.isfinite(value) else f"{value:.10g}"


def rank_kmers(counts: NgramCounts, k: int | None = None, score: str = "discounted", min_count: int = 101) -> Ranking:
    """Rank all k-mers by ``score``: ``discounted`` (GeneMask's released score) or ``npmi``.

    Scored k-mers get ranks 1..S (ties between scores rank by code). n-grams seen fewer than
    ``min_count`` times get no score and share the worst rank, S + 1: nothing orders them, so no
    order is invented (code order would be one).
    """
    k = k or counts.k
    if score not in SCORES:
        raise GMError(f"unknown NPMI score {score!r}: choose one of {', '.join(SCORES)}")
    pmi = segmentation_pmi(counts, k)
    count = counts.counts[k]
    with np.errstate(divide="ignore", invalid="ignore"):
        if score == "discounted":
            log_f = np.log(count.astype(float))
            value = pmi * log_f / (log_f + math.log(101))
        else:
            value = pmi / -np.log(count / max(counts.total(k), 1))
    value = np.where((count >= min_count) & np.isfinite(value), value, np.nan)
    scored = np.isfinite(value)
    order = np.lexsort((np.arange(value.size), np.where(scored, -value, np.inf)))
    rank = np.empty(value.size, dtype=np.int64)
    rank[order] = np.arange(1, value.size + 1)
    rank[~scored] = int(scored.sum()) + 1
    return Ranking(ngram_strings(k), count, pmi, value, rank, score)


# ------------------------------------------------------------------------------------------ tables for masking
#: ranks must fit the int64 tables built from them (only their order matters)
_MAX_RANK = 1 << 62


def _parse_rank(text: str | None) -> int | str:
    """The rank in a CSV cell, or why it is not one (ranks are whole numbers from 1, the best)."""
    try:
        value = float(text)  # type: ignore[arg-type]  (None: a short row)
    except (TypeError, ValueError):
        return "is not a number"
    if not math.isfinite(value):
        return "is not a number"
    if not value.is_integer():
        return "is not a whole number"
    if value < 1:
        return "is impossible: ranks start at 1 (the best)"
    if value > _MAX_RANK:
        return "is too large"
    return int(value)


def read_ranking(path: str | os.PathLike, k: int = 6) -> dict[str, int]:
    """k-mer -> rank from a ranking CSV: ours (``ngram``, ``rank``) or the authors' (``norm_pmi_rank_rel``).

    Every row must hold a k-mer of A/C/G/T (any case) with a whole rank >= 1, each k-mer once: a
    wrong row is an error naming the file and line, since a silently dropped or overwritten row
    would change which spans GeneMask masks. Ties are allowed. A ranking that leaves k-mers out is
    accepted with a warning giving the share it ranks.
    """
    path = Path(path)
    if not path.is_file():
        raise GMError(f"{path}: ranking file not found")
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        fields = reader.fieldnames or []
        rank_column = "rank" if "rank" in fields else "norm_pmi_rank_rel" if "norm_pmi_rank_rel" in fields else None
        if "ngram" not in fields or rank_column is None:
            raise GMError(f"{path}: a ranking needs columns 'ngram' and 'rank' (found: {', '.join(fields) or 'none'})")
        ranks: dict[str, int] = {}
        seen_on: dict[str, int] = {}
        for line, row in enumerate(reader, start=2):
            text = (row["ngram"] or "").strip()
            ngram = text.upper()
            if len(ngram) != k or set(ngram) - set(BASES):
                hint = ""
                if ngram and not set(ngram) - set(BASES):
                    hint = f" (a ranking of {len(ngram)}-mers; k={k} needs {k}-mers: python analyze.py npmi --k {k})"
                raise GMError(f"{path}: line {line}: {text!r} is not a {k}-mer of A/C/G/T{hint}")
            if ngram in seen_on:
                raise GMError(
                    f"{path}: line {line}: {ngram} is ranked twice (first on line {seen_on[ngram]}); "
                    "list each k-mer once"
                )
            rank = _parse_rank(row[rank_column])
            if isinstance(rank, str):
                raise GMError(f"{path}: line {line}: rank {row[rank_column]!r} {rank}")
            ranks[ngram], seen_on[ngram] = rank, line
    if not ranks:
        raise GMError(f"{path}: no {k}-mers in the ranking")
    if len(ranks) < 4**k:
        log.warning(
            "%s: a partial ranking: it ranks %s of the %s %d-mers (%.1f%%); the %s it leaves out are unranked",
            path, f"{len(ranks):,}", f"{4**k:,}", k, 100 * len(ranks) / 4**k, f"{4**k - len(ranks):,}",
        )
    return ranks


def rank_table(path: str | os.PathLike | None, k: int = 6) -> np.ndarray:
    """``table[token_id]`` = NPMI rank (1 = best) for DNABERT's vocabulary of k-mers.

    Special tokens and k-mers absent from the ranking get the worst rank: one past both the largest
    rank and the number of k-mers ranked.
    """
    ranks = read_ranking(path or AUTHORS_RANKING, k)
    worst = max(max(ranks.values()), len(ranks)) + 1
    table = np.full(4**k + NUM_SPECIAL, worst, dtype=np.int64)
    for i, kmer in enumerate(ngram_strings(k)):
        table[NUM_SPECIAL + i] = ranks.get(kmer, worst)
    return table


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)
