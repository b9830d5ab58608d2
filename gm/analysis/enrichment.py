"""Task-level k-mer enrichment, and whether GeneMask's NPMI ranking favours the k-mers that separate classes.

``python analyze.py enrichment`` asks, for each few-shot task: which 6-mers occur in more of the
sequences of one class than of the others, and do those class-discriminative 6-mers rank high in
the genome-wide NPMI ranking that decides where GeneMask puts its long (2k-1) spans?

Data (one rule for every task): the union of every shipped file of the task, i.e. all training
files (every shot count, plus Splice-40's dev set) and the shipped test set when there is one
(Prom-core, Splice-40). Prom-300 and Cohn-enh ship no test file; the carved test sets of
:mod:`gm.data.splits` are part of their training files, so the union is again the whole task. The
shot files overlap (and a few rows repeat across files), so sequences are de-duplicated; a
sequence seen with two labels is ambiguous and dropped. This is a description of the task's data,
not a model evaluation, so using the test rows leaks nothing.

Counting: presence per sequence on the forward strand, as the tokenizer reads it: a 6-mer counts
once for a sequence however often it occurs there, and its reverse complement is a different
6-mer (windows containing N are skipped). All sequences are joined with an N between them and
turned into 2-bit codes; every window is one base-4 number, and the distinct (sequence, k-mer)
pairs of ``np.unique`` give, after one ``np.bincount`` over class * 4**k + k-mer, the number of
sequences of each class containing each k-mer.

Statistics, for each class c against the rest and each k-mer seen in the task, with the 2x2
table a = sequences of c containing it, b = of c lacking it, c' = of the rest containing it,
d = of the rest lacking it:

- ``log2_or`` = log2((a + .5)(d + .5) / ((b + .5)(c' + .5))), the odds ratio with a 0.5
  pseudocount (Haldane-Anscombe), finite for k-mers absent from a class;
- ``p``: Fisher's exact test, two-sided, exactly as ``scipy.stats.fisher_exact`` defines it (the
  sum of the probabilities of all tables, margins fixed, no more likely than the observed one),
  vectorised over all tables at once: a is hypergeometric; the observed tail is a
  ``hypergeom.cdf``/``sf``, and the opposite tail starts where the log-pmf falls below the
  observed one, found by a binary search run on all tables together (about 15 array steps);
- ``q``: Benjamini-Hochberg over the k-mers seen in the task, per class (one family per
  class-vs-rest comparison; for a 2-class task both comparisons are the same test mirrored).

NPMI: a k-mer is *discriminative* when some class has q < ``q`` and |log2 OR| >= ``min_log2_or``
(default 1, a two-fold odds change). Its NPMI rank (1 = highest score) is compared with that of
the other k-mers seen in the task by a Mann-Whitney U test (``scipy.stats.mannwhitneyu``,
two-sided, and one-sided for "discriminative k-mers rank higher"); the effect size is the AUC,
P(a discriminative k-mer ranks higher than another one). Composition confounds this: GC-rich
k-mers mark promoters, and CpG-containing k-mers, rare in the genome, sit low in its ranking
(median rank about 3,500 of 4,096 against 1,500 for the others) while marking CpG-island
promoters and enhancers. So the comparison is repeated within strata of equal composition (GC
count 0..6 x contains CpG or not): pooled within-stratum AUC, p from 2,000 label permutations
within strata.
Overlapping 6-mers are not independent, so all these p-values are optimistic; read the effect
sizes first.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from gm.data.labelled import read_examples
from gm.data.tasks import DEFAULT_DATA_DIR, TASKS, get_task
from gm.data.tokenizer import BYTE_TO_CODE, NUM_SPECIAL, KmerTokenizer
from gm.masking.npmi import AUTHORS_RANKING, ngram_strings, read_ranking
from gm.utils import GMError, atomic_write_text

log = logging.getLogger(__name__)

DEFAULT_OUT = Path(__file__).resolve().parents[2] / "outputs" / "enrichment"
PSEUDOCOUNT = 0.5
PERMUTATIONS = 2000
_LOG_TOLERANCE = 1e-7  # relative pmf tolerance for "no more likely than observed" (scipy: 1e-14 on the pmf)


# ------------------------------------------------------------------------------------------ data
@dataclass
class TaskData:
    """The de-duplicated labelled sequences of one task."""

    name: str
    sequences: list[str]
    labels: np.ndarray  # class index per sequence
    label_names: list[str]
    files: list[str]
    rows_read: int
    dropped_conflicts: int


def load_task(task: str, data_dir: str | Path = DEFAULT_DATA_DIR) -> TaskData:
    """Every shipped row of ``task`` (all training files, the dev and test sets), de-duplicated."""
    spec = get_task(task)
    data_dir = Path(data_dir)
    files = list(spec.train_files) + ([spec.test_file] if spec.test_file else [])
    labels_of: dict[str, set[int]] = {}
    rows = 0
    for name in files:
        examples, _ = read_examples(data_dir / name, label_names=spec.label_names)
        rows += len(examples)
        for e in examples:
            labels_of.setdefault(e.sequence, set()).add(e.label)
    sequences = sorted(s for s, ls in labels_of.items() if len(ls) == 1)
    labels = np.array([next(iter(labels_of[s])) for s in sequences], dtype=np.int64)
    return TaskData(spec.name, sequences, labels, spec.label_names, files, rows, len(labels_of) - len(sequences))


# ------------------------------------------------------------------------------------------ counting
def presence_counts(sequences: Sequence[str], labels: np.ndarray, num_classes: int, k: int = 6
                    ) -> tuple[np.ndarray, np.ndarray]:
    """``counts[c, kmer]``: sequences of class c containing the k-mer (forward strand), and ``n[c]``.

    k-mers are indexed by their base-4 code in the tokenizer's ATCG order (``ngram_strings(k)``).
    """
    labels = np.asarray(labels, dtype=np.int64)
    if len(sequences) != labels.size:
        raise GMError(f"{len(sequences)} sequences but {labels.size} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise GMError(f"labels must be class indices 0..{num_classes - 1}")
    n_class = np.bincount(labels, minlength=num_classes)
    if not sequences:
        return np.zeros((num_classes, 4**k), dtype=np.int64), n_class
    joined = "N".join(sequences).encode("ascii", "replace")
    codes = BYTE_TO_CODE[np.frombuffer(joined, dtype=np.uint8)]
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    seq_of = np.repeat(np.arange(len(sequences)), lengths + 1)[: codes.size]
    ids = KmerTokenizer(k).kmer_ids_from_codes(codes)  # [UNK] where a window holds N (incl. the joins)
    if ids.size == 0:
        return np.zeros((num_classes, 4**k), dtype=np.int64), n_class
    valid = ids >= NUM_SPECIAL
    values = ids - NUM_SPECIAL
    pairs = np.sort(seq_of[: ids.size][valid] * 4**k + values[valid])  # distinct (sequence, k-mer) pairs:
    pairs = pairs[np.concatenate(([True], pairs[1:] != pairs[:-1]))]  # sort + diff beats np.unique's hashing
    counts = np.bincount(labels[pairs // 4**k] * 4**k + pairs % 4**k, minlength=num_classes * 4**k)
    return counts.reshape(num_classes, 4**k), n_class


def reverse_complement(kmer: str) -> str:
    return kmer[::-1].translate(str.maketrans("ACGTN", "TGCAN"))


# ------------------------------------------------------------------------------------------ statistics
def log2_odds_ratio(a, b, c, d, pseudocount: float = PSEUDOCOUNT) -> np.ndarray:
    """log2 of the odds ratio of the table [[a, b], [c, d]], ``pseudocount`` added to every cell."""
    a, b, c, d = (np.asarray(x, dtype=float) + pseudocount for x in (a, b, c, d))
    return np.log2(a) + np.log2(d) - np.log2(b) - np.log2(c)


def _log_choose(n: np.ndarray, r: np.ndarray) -> np.ndarray:
    from scipy.special import gammaln

    return gammaln(n + 1) - gammaln(r + 1) - gammaln(n - r + 1)


def fisher_exact_two_sided(a, b, c, d) -> np.ndarray:
    """Two-sided p-values of Fisher's exact test for many 2x2 tables [[a, b], [c, d]] at once.

    Same definition as ``scipy.stats.fisher_exact(table)``: with margins fixed, a is
    hypergeometric (population a+b+c+d, a+b successes, a+c draws); p sums the probabilities of
    every a' whose pmf is no larger than the observed one (relative tolerance 1e-7). The pmf is
    unimodal, so that set is the observed tail plus the opposite tail beyond the point where the
    pmf falls to the observed value; that point is found by a vectorised binary search.
    """
    from scipy.stats import hypergeom

    a, b, c, d = np.broadcast_arrays(*(np.asarray(x, dtype=np.int64) for x in (a, b, c, d)))
    shape = a.shape
    a, b, c, d = (x.ravel() for x in (a, b, c, d))
    if (np.concatenate([a, b, c, d]) < 0).any():
        raise GMError("contingency table cells must be non-negative")
    total = a + b + c + d
    row = a + b  # "successes" in the population
    col = a + c  # draws
    lo_support = np.maximum(0, col - (total - row))
    hi_support = np.minimum(row, col)
    p = np.ones(a.size)
    degenerate = (row == 0) | (row == total) | (col == 0) | (col == total)

    def logpmf(x: np.ndarray, idx: np.ndarray) -> np.ndarray:
        N, K, n = total[idx], row[idx], col[idx]
        inside = (x >= lo_support[idx]) & (x <= hi_support[idx])
        xs = np.clip(x, lo_support[idx], hi_support[idx])
        out = _log_choose(K, xs) + _log_choose(N - K, n - xs) - _log_choose(N, n)
        return np.where(inside, out, -np.inf)

    idx = np.flatnonzero(~degenerate)
    if idx.size == 0:
        return p.reshape(shape)
    mode = (col[idx] + 1) * (row[idx] + 1) // (total[idx] + 2)
    obs = a[idx]
    log_obs = logpmf(obs, idx)
    log_mode = logpmf(mode, idx)
    threshold = log_obs + _LOG_TOLERANCE
    at_mode = (obs == mode) | (np.abs(log_obs - log_mode) <= 1e-12 * np.maximum(1.0, np.abs(log_mode)))
    M, K, n = total[idx], row[idx], col[idx]
    result = np.ones(idx.size)

    # observed below the mode: lower tail cdf(a) + upper tail from the first x > mode with pmf <= observed
    low = np.flatnonzero(~at_mode & (obs < mode))
    if low.size:
        sub = idx[low]
        lo = mode[low] + 1
        hi = hi_support[sub] + 1  # hi_support + 1 stands for "no such x"
        while True:
            active = lo < hi
            if not active.any():
                break
            mid = (lo + hi) // 2
            ok = logpmf(mid, sub) <= threshold[low]
            hi = np.where(active & ok, mid, hi)
            lo = np.where(active & ~ok, mid + 1, lo)
        tail = np.where(lo <= hi_support[sub], hypergeom.sf(lo - 1, M[low], K[low], n[low]), 0.0)
        result[low] = hypergeom.cdf(obs[low], M[low], K[low], n[low]) + tail

    # observed above the mode: upper tail sf(a - 1) + lower tail up to the last x < mode with pmf <= observed
    high = np.flatnonzero(~at_mode & (obs > mode))
    if high.size:
        sub = idx[high]
        lo = lo_support[sub] - 1  # lo_support - 1 stands for "no such x"
        hi = mode[high] - 1
        while True:
            active = lo < hi
            if not active.any():
                break
            mid = (lo + hi + 1) // 2
            ok = logpmf(mid, sub) <= threshold[high]
            lo = np.where(active & ok, mid, lo)
            hi = np.where(active & ~ok, mid - 1, hi)
        tail = np.where(lo >= lo_support[sub], hypergeom.cdf(lo, M[high], K[high], n[high]), 0.0)
        result[high] = hypergeom.sf(obs[high] - 1, M[high], K[high], n[high]) + tail

    p[idx] = np.minimum(result, 1.0)
    return p.reshape(shape)


def bh_qvalues(p) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values) of a 1-D array (NaN stays NaN)."""
    p = np.asarray(p, dtype=float)
    q = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    if m == 0:
        return q
    order = np.argsort(p[ok], kind="stable")
    scaled = p[ok][order] * m / np.arange(1, m + 1)
    scaled = np.minimum.accumulate(scaled[::-1])[::-1]
    q[ok[order]] = np.minimum(scaled, 1.0)
    return q


@dataclass
class Enrichment:
    """Per (class, k-mer seen in the task) statistics; arrays of shape (classes, kmers)."""

    kmers: np.ndarray  # k-mer strings seen in at least one sequence
    label_names: list[str]
    count_in_class: np.ndarray
    count_rest: np.ndarray
    n_class: np.ndarray  # (classes,)
    n_rest: np.ndarray  # (classes,)
    log2_or: np.ndarray
    p: np.ndarray
    q: np.ndarray

    def discriminative(self, q: float = 0.05, min_log2_or: float = 1.0) -> np.ndarray:
        """Per k-mer: some class has q < ``q`` and |log2 OR| >= ``min_log2_or``."""
        return ((self.q < q) & (np.abs(self.log2_or) >= min_log2_or)).any(axis=0)

    def enriched(self, cls: int, q: float = 0.05, min_log2_or: float = 0.0) -> np.ndarray:
        """Indices of k-mers enriched in class ``cls`` (q below ``q``, log2 OR above ``min_log2_or``
        and positive), most significant first (ties by larger log2 OR, then k-mer)."""
        keep = np.flatnonzero((self.q[cls] < q) & (self.log2_or[cls] > max(min_log2_or, 0.0)))
        order = np.lexsort((self.kmers[keep], -self.log2_or[cls, keep], self.p[cls, keep]))
        return keep[order]


def enrichment(sequences: Sequence[str], labels, label_names: Sequence[str], k: int = 6) -> Enrichment:
    """Class-vs-rest presence enrichment of every k-mer seen in ``sequences``."""
    label_names = [str(x) for x in label_names]
    num_classes = len(label_names)
    if num_classes < 2:
        raise GMError("enrichment needs at least two classes")
    counts, n_class = presence_counts(sequences, labels, num_classes, k)
    seen = np.flatnonzero(counts.sum(axis=0) > 0)
    counts = counts[:, seen]
    total = counts.sum(axis=0, keepdims=True)
    a = counts
    rest = total - counts
    n = n_class[:, None]
    n_rest = n_class.sum() - n_class
    b = n - a
    d = n_rest[:, None] - rest
    lor = log2_odds_ratio(a, b, rest, d)
    p = fisher_exact_two_sided(a, b, rest, d)
    q = np.vstack([bh_qvalues(row) for row in p]) if seen.size else p.copy()
    return Enrichment(ngram_strings(k)[seen], label_names, a, rest, n_class, n_rest, lor, p, q)


# ------------------------------------------------------------------------------------------ NPMI comparison
def gc_count(kmers: Sequence[str]) -> np.ndarray:
    return np.array([s.count("G") + s.count("C") for s in kmers], dtype=np.int64)


def has_cpg(kmers: Sequence[str]) -> np.ndarray:
    return np.array(["CG" in s for s in kmers], dtype=bool)


def composition_strata(kmers: Sequence[str]) -> np.ndarray:
    """Stratum of each k-mer: GC count x (contains a CpG dinucleotide)."""
    return gc_count(kmers) * 2 + has_cpg(kmers)


def compare_ranks(ranks: np.ndarray, group: np.ndarray, strata: np.ndarray | None = None,
                  permutations: int = PERMUTATIONS, seed: int = 0) -> dict:
    """Do the k-mers in ``group`` have better (smaller) NPMI ranks than the others?

    Mann-Whitney U (two-sided and one-sided ``less``), AUC = P(group k-mer ranks better than
    another), medians, the share in the NPMI top decile of the ranked k-mers; with ``strata``, the
    pooled within-stratum AUC and its permutation p-value (labels shuffled within strata).
    """
    from scipy.stats import mannwhitneyu, rankdata

    ranks = np.asarray(ranks, dtype=float)
    group = np.asarray(group, dtype=bool)
    x, y = ranks[group], ranks[~group]
    out: dict = {"n_discriminative": int(x.size), "n_other": int(y.size),
                 "median_rank_discriminative": float(np.median(x)) if x.size else float("nan"),
                 "median_rank_other": float(np.median(y)) if y.size else float("nan")}
    decile = np.nanmax(ranks) / 10 if ranks.size else 0
    out["top_decile_discriminative"] = float((x <= decile).mean()) if x.size else float("nan")
    out["top_decile_other"] = float((y <= decile).mean()) if y.size else float("nan")
    if x.size == 0 or y.size == 0:
        out.update(U=float("nan"), auc=float("nan"), p_two_sided=float("nan"), p_higher=float("nan"),
                   auc_adjusted=float("nan"), p_adjusted=float("nan"))
        return out
    two = mannwhitneyu(x, y, alternative="two-sided")
    less = mannwhitneyu(x, y, alternative="less")
    # scipy's U is for x: the number of pairs with x > y (+ half ties); "ranks better" = smaller rank
    out["U"] = float(two.statistic)
    out["auc"] = 1.0 - float(two.statistic) / (x.size * y.size)
    out["p_two_sided"] = float(two.pvalue)
    out["p_higher"] = float(less.pvalue)
    out["auc_adjusted"], out["p_adjusted"] = float("nan"), float("nan")
    if strata is not None:
        strata = np.asarray(strata)
        rng = np.random.default_rng(seed)
        observed = expected = pairs = 0.0
        null = np.zeros(permutations)
        for s in np.unique(strata):
            members = strata == s
            g = group[members]
            n1, n2 = int(g.sum()), int((~g).sum())
            if n1 == 0 or n2 == 0:
                continue
            r = rankdata(-ranks[members])  # larger = better NPMI rank
            # U_s for "group ranks better" = sum of group's midranks - n1 (n1 + 1) / 2
            observed += r[g].sum() - n1 * (n1 + 1) / 2
            expected += n1 * n2 / 2
            pairs += n1 * n2
            shuffled = rng.permuted(np.broadcast_to(r, (permutations, r.size)), axis=1)
            null += shuffled[:, :n1].sum(axis=1) - n1 * (n1 + 1) / 2
        if pairs:
            out["auc_adjusted"] = observed / pairs
            extreme = np.abs(null - expected) >= abs(observed - expected) - 1e-9
            out["p_adjusted"] = float((1 + extreme.sum()) / (permutations + 1))
    return out


# ------------------------------------------------------------------------------------------ outputs
def _fmt(value: float) -> str:
    return "" if not np.isfinite(value) else f"{value:.6g}"


def _csv_text(result: Enrichment, npmi: np.ndarray) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["kmer", "class", "count_in_class", "count_rest", "n_class", "n_rest", "log2_or", "p", "q", "npmi_rank"])
    for c, name in enumerate(result.label_names):
        order = np.lexsort((result.kmers, -result.log2_or[c], result.p[c]))
        for i in order:
            writer.writerow([result.kmers[i], name, int(result.count_in_class[c, i]), int(result.count_rest[c, i]),
                             int(result.n_class[c]), int(result.n_rest[c]), f"{result.log2_or[c, i]:.4f}",
                             _fmt(result.p[c, i]), _fmt(result.q[c, i]),
                             "" if not np.isfinite(npmi[i]) else int(npmi[i])])
    return buffer.getvalue()


def _p(value: float) -> str:
    if not np.isfinite(value):
        return "n/a"
    return f"{value:.2g}" if value >= 1e-300 else "< 1e-300"


def _side(auc: float, p: float, alpha: float = 0.05) -> str:
    if not (np.isfinite(auc) and np.isfinite(p)):
        return "untested"
    return "none" if p >= alpha else "higher" if auc > 0.5 else "lower"


def _verdict(stats: dict, alpha: float = 0.05) -> str:
    raw = _side(stats["auc"], stats["p_two_sided"], alpha)
    adjusted = _side(stats["auc_adjusted"], stats["p_adjusted"], alpha)
    words = {"higher": "rank higher by NPMI", "lower": "rank lower by NPMI", "none": "show no detectable difference",
             "untested": "cannot be tested (one group is empty)"}
    text = words[raw]
    if raw == "untested":
        return text
    if adjusted == raw:
        return text + ", also at equal GC/CpG composition"
    if adjusted == "none":
        return text + ", but not at equal GC/CpG composition (a composition effect)"
    return text + f"; at equal GC/CpG composition they {words[adjusted].replace('show ', '')}"


def _report(summaries: dict, ranking: Path, top: int, q: float, min_log2_or: float, seconds: float) -> str:
    lines = [
        "# k-mer enrichment of the few-shot tasks vs GeneMask's NPMI ranking",
        "",
        f"Ranking: `{ranking}` (rank 1 = highest NPMI). Data: every shipped row of each task (all training "
        "files, dev and test sets), de-duplicated; presence per sequence, forward strand. Per class vs the rest: "
        f"log2 odds ratio (pseudocount {PSEUDOCOUNT}), two-sided Fisher exact p, Benjamini-Hochberg q per class. "
        f"Discriminative k-mer: some class has q < {q} and |log2 OR| >= {min_log2_or}. Mann-Whitney U on NPMI rank, "
        "discriminative vs the other k-mers seen in the task; AUC = P(a discriminative k-mer ranks higher), 0.5 = no "
        "preference. Composition-adjusted: the same AUC within strata of equal GC count and CpG presence, p from "
        f"{PERMUTATIONS} within-stratum permutations. Overlapping k-mers are not independent, so p-values are optimistic.",
        "",
        f"Run time: {seconds:.1f} s.",
        "",
    ]
    for task, s in summaries.items():
        sizes = ", ".join(f"class {c}: {n:,}" for c, n in zip(s["label_names"], s["n_per_class"]))
        lines += [f"## {task}", "",
                  f"{s['n_sequences']:,} distinct sequences ({sizes}) from {s['rows_read']:,} rows of "
                  f"{len(s['files'])} files" + (f"; {s['dropped_conflicts']} with conflicting labels dropped" if s["dropped_conflicts"] else "")
                  + f". {s['n_kmers_seen']:,} of {4**6:,} 6-mers seen.", ""]
        for name in s["label_names"]:
            entries = s["top"][name]
            lines += [f"### class {name}: top enriched 6-mers (q < {q}; {s['n_enriched'][name]} in all)", ""]
            if not entries:
                lines += [f"No 6-mer is enriched in class {name} at q < {q}.", ""]
                continue
            lines += ["| # | k-mer | in class | in rest | log2 OR | q | NPMI rank |", "|---|---|---|---|---|---|---|"]
            for i, e in enumerate(entries, 1):
                lines.append(f"| {i} | `{e['kmer']}` | {e['count_in_class']}/{e['n_class']} | {e['count_rest']}/{e['n_rest']} "
                             f"| {e['log2_or']:+.2f} | {_p(e['q'])} | {e['npmi_rank'] if e['npmi_rank'] is not None else '-'} |")
            ranks = [e["npmi_rank"] for e in entries if e["npmi_rank"] is not None]
            if ranks:
                lines += ["", f"Median NPMI rank of these {len(ranks)}: {np.median(ranks):.0f} (of {s['ranked']:,})."]
            lines.append("")
        m = s["mannwhitney"]
        lines += ["### NPMI rank: discriminative vs other 6-mers", "",
                  "| | discriminative | other |", "|---|---|---|",
                  f"| k-mers | {m['n_discriminative']:,} | {m['n_other']:,} |",
                  f"| median NPMI rank | {m['median_rank_discriminative']:.0f} | {m['median_rank_other']:.0f} |",
                  f"| share in NPMI top 10% | {m['top_decile_discriminative']:.1%} | {m['top_decile_other']:.1%} |",
                  f"| share containing CpG | {s['cpg_share_discriminative']:.1%} | {s['cpg_share_other']:.1%} |", "",
                  f"Mann-Whitney U = {m['U']:.0f}, AUC = {m['auc']:.3f}, p (two-sided) = {_p(m['p_two_sided'])}, "
                  f"p (discriminative rank higher, one-sided) = {_p(m['p_higher'])}; composition-adjusted AUC = "
                  f"{m['auc_adjusted']:.3f}, permutation p = {_p(m['p_adjusted'])}. Discriminative 6-mers {_verdict(m)}.", "",
                  f"By class: the 6-mers enriched in one class (q < {q}, log2 OR >= {min_log2_or}) vs the "
                  f"{m['n_other']:,} not discriminative ones.", "",
                  "| class | k-mers | median NPMI rank | AUC | p | composition-adjusted AUC | p |", "|---|---|---|---|---|---|---|"]
        for name, c in s["per_class"].items():
            lines.append(f"| {name} | {c['n_discriminative']} | {c['median_rank_discriminative']:.0f} | {c['auc']:.3f} | "
                         f"{_p(c['p_two_sided'])} | {c['auc_adjusted']:.3f} | {_p(c['p_adjusted'])} |")
        lines.append("")
    lines += ["## Reading", "", _reading(summaries), ""]
    return "\n".join(lines)


def _reading(summaries: dict) -> str:
    """One honest paragraph, assembled from the measured effects (not written in advance)."""
    sides = {t: (_side(s["mannwhitney"]["auc"], s["mannwhitney"]["p_two_sided"]),
                 _side(s["mannwhitney"]["auc_adjusted"], s["mannwhitney"]["p_adjusted"])) for t, s in summaries.items()}

    def tasks_where(raw: str, *adjusted: str) -> list[str]:
        return [t for t, (r, a) in sides.items() if r == raw and (not adjusted or a in adjusted)]

    real_higher = tasks_where("higher", "higher")
    class_higher = []
    for t, s in summaries.items():
        for name, c in s.get("per_class", {}).items():
            if _side(c["auc"], c["p_two_sided"]) == "higher" and _side(c["auc_adjusted"], c["p_adjusted"]) == "higher":
                class_higher.append(f"{t} class {name} (n={c['n_discriminative']}, AUC {c['auc']:.2f}, adjusted {c['auc_adjusted']:.2f})")
    text = "Does GeneMask focus its long spans where the classes differ? "
    if real_higher:
        text += (f"Partly: in {', '.join(real_higher)} the class-discriminative 6-mers rank higher by NPMI than the other "
                 "6-mers, also at equal GC/CpG composition, so a GeneMask centre near them is more likely to put its long span there. ")
    elif class_higher:
        text += ("Not as a rule. Taken together, the class-discriminative 6-mers rank higher by NPMI in no task; only the "
                 "6-mers enriched in " + "; ".join(class_higher) + " do, also at equal GC/CpG composition, so there the "
                 "long spans favour one class's markers, not the difference between the classes as such. ")
    else:
        text += ("No: in no task do the class-discriminative 6-mers, or those of any one class, rank higher by NPMI "
                 "than the rest at equal GC/CpG composition. ")
    composition_only = tasks_where("lower", "none", "higher")
    cpg_rich = [t for t in composition_only if summaries[t]["cpg_share_discriminative"] > summaries[t]["cpg_share_other"]]
    groups = [
        (tasks_where("higher", "none", "lower"), "the higher NPMI ranks of discriminative 6-mers vanish at equal GC/CpG composition"),
        (tasks_where("lower", "lower"), "discriminative 6-mers rank lower by NPMI, also at equal GC/CpG composition: "
                                        "GeneMask's long spans tend to go elsewhere"),
        (cpg_rich, "discriminative 6-mers rank lower, but not at equal GC/CpG composition: they more often contain CpG ("
                   + ", ".join(f"{summaries[t]['cpg_share_discriminative']:.0%} vs {summaries[t]['cpg_share_other']:.0%}" for t in cpg_rich)
                   + "), which is rare in the genome and hence low in its ranking"),
        ([t for t in composition_only if t not in cpg_rich], "discriminative 6-mers rank lower, but not at equal GC/CpG composition"),
        (tasks_where("none", "higher"), "there is no detectable difference overall, but at equal GC/CpG composition "
                                        "the discriminative 6-mers rank higher"),
        (tasks_where("none", "none", "lower"), "there is no detectable difference overall"),
    ]
    for names, sentence in groups:
        if names:
            text += f"In {', '.join(names)} {sentence}. "
    text += ("Overall AUC, P(a discriminative 6-mer ranks higher), 0.5 = no preference: "
             + "; ".join(f"{t} {s['mannwhitney']['auc']:.2f} (adjusted {s['mannwhitney']['auc_adjusted']:.2f})" for t, s in summaries.items())
             + ". The ranking is a genome-wide, task-agnostic statistic; nothing in it targets class-specific words. "
             "The p-values treat overlapping 6-mers as independent and are optimistic; presence is counted on one strand; "
             "and a rank only matters relative to the other k-mers in each centre's window, so these data cannot say "
             "whether GeneMask helps fine-tuning.")
    return text


def _plot(summaries: dict, details: dict, out: Path) -> Path:
    from gm.analysis.plots import pyplot, save_figure

    plt = pyplot()
    tasks = list(summaries)
    ncols = 1 if len(tasks) == 1 else 2
    nrows = -(-len(tasks) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.4 * ncols, 3.9 * nrows), squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        ranks, groups = details[task]
        for label, values, style in groups:
            values = np.sort(values[np.isfinite(values)])
            if values.size == 0:
                continue
            ax.step(values, np.arange(1, values.size + 1) / values.size, where="post", label=f"{label} (n={values.size})", **style)
        m = summaries[task]["mannwhitney"]
        ax.set_title(f"{task}: AUC {m['auc']:.2f} (MWU p {_p(m['p_two_sided'])}), composition-adj. {m['auc_adjusted']:.2f}", fontsize=9)
        ax.set_xlabel("NPMI rank (1 = highest)")
        ax.set_ylabel("cumulative share of k-mers")
        ax.set_xlim(0, np.nanmax(ranks) if np.isfinite(ranks).any() else 1)
        ax.set_ylim(0, 1.02)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    for ax in list(axes.flat)[len(tasks):]:
        ax.set_visible(False)
    fig.suptitle("NPMI rank of class-enriched vs other 6-mers (curve above grey = ranks higher)", fontsize=11)
    fig.tight_layout()
    path = save_figure(fig, out)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------ driver
def run_enrichment(tasks: Sequence[str] | None = None, ranking_csv: str | Path | None = AUTHORS_RANKING,
                   out_dir: str | Path = DEFAULT_OUT, top: int = 20, q: float = 0.05, min_log2_or: float = 1.0,
                   data_dir: str | Path = DEFAULT_DATA_DIR) -> dict:
    """Enrichment of every task in ``tasks`` (default: all four) and its relation to the NPMI ranking.

    Writes ``enrichment_<task>.csv``, ``enrichment_report.md`` and ``enrichment_npmi.png`` under
    ``out_dir`` (each atomically) and returns a summary per task plus the paths written.
    """
    start = time.perf_counter()
    tasks = list(tasks) if tasks else list(TASKS)
    names = [get_task(t).name for t in tasks]  # unknown task -> GMError before any work
    if top < 1:
        raise GMError(f"--top must be at least 1, got {top}")
    if not 0 < q <= 1:
        raise GMError(f"--q must be in (0, 1], got {q}")
    from gm.analysis.cli import check_output_folder

    out_dir = check_output_folder(out_dir)
    ranking_csv = Path(ranking_csv or AUTHORS_RANKING)
    ranking = read_ranking(ranking_csv, 6)
    ranked = len(ranking)
    summaries: dict = {}
    details: dict = {}
    csv_paths: dict = {}
    for task in dict.fromkeys(names):
        t0 = time.perf_counter()
        data = load_task(task, data_dir)
        result = enrichment(data.sequences, data.labels, data.label_names)
        npmi = np.array([ranking.get(kmer, np.nan) for kmer in result.kmers], dtype=float)
        path = out_dir / f"enrichment_{task}.csv"
        atomic_write_text(path, _csv_text(result, npmi))
        csv_paths[task] = str(path)
        disc = result.discriminative(q, min_log2_or)
        known = np.isfinite(npmi)
        stats = compare_ranks(npmi[known], disc[known], composition_strata(result.kmers[known]))
        cpg = has_cpg(result.kmers)
        top_lists = {}
        groups = []
        per_class = {}
        strata = composition_strata(result.kmers)
        for c, name in enumerate(result.label_names):
            entries = []
            for i in result.enriched(c, q)[:top]:
                entries.append({"kmer": str(result.kmers[i]), "count_in_class": int(result.count_in_class[c, i]),
                                "count_rest": int(result.count_rest[c, i]), "n_class": int(result.n_class[c]),
                                "n_rest": int(result.n_rest[c]), "log2_or": float(result.log2_or[c, i]),
                                "p": float(result.p[c, i]), "q": float(result.q[c, i]),
                                "npmi_rank": int(npmi[i]) if np.isfinite(npmi[i]) else None})
            top_lists[name] = entries
            chosen = (result.q[c] < q) & (result.log2_or[c] >= min_log2_or)
            pick = known & (chosen | ~disc)  # enriched in this class vs not discriminative at all
            per_class[name] = compare_ranks(npmi[pick], chosen[pick], strata[pick])
            groups.append((f"enriched in class {name}", npmi[chosen], {"linewidth": 1.5}))
        groups.append(("not discriminative", npmi[~disc], {"color": "grey", "linewidth": 1.5, "linestyle": "--"}))
        details[task] = (npmi, groups)
        summaries[task] = {
            "label_names": data.label_names,
            "n_sequences": len(data.sequences),
            "n_per_class": np.bincount(data.labels, minlength=len(data.label_names)).tolist(),
            "rows_read": data.rows_read,
            "dropped_conflicts": data.dropped_conflicts,
            "files": data.files,
            "n_kmers_seen": int(result.kmers.size),
            "ranked": ranked,
            "n_enriched": {name: int(result.enriched(c, q).size) for c, name in enumerate(result.label_names)},
            "cpg_share_discriminative": float(cpg[disc].mean()) if disc.any() else float("nan"),
            "cpg_share_other": float(cpg[~disc].mean()) if (~disc).any() else float("nan"),
            "top": top_lists,
            "mannwhitney": stats,
            "per_class": per_class,
            "csv": str(path),
            "seconds": time.perf_counter() - t0,
        }
        log.info("%s: %d sequences, %d discriminative 6-mers, MWU p %.3g (%.2f s)", task, len(data.sequences),
                 stats["n_discriminative"], stats["p_two_sided"], summaries[task]["seconds"])
    figure = _plot(summaries, details, out_dir / "enrichment_npmi.png")
    seconds = time.perf_counter() - start
    report = out_dir / "enrichment_report.md"
    atomic_write_text(report, _report(summaries, ranking_csv, top, q, min_log2_or, seconds))
    return {"tasks": summaries, "csv": csv_paths, "report": str(report), "figure": str(figure),
            "seconds": time.perf_counter() - start}


# ------------------------------------------------------------------------------------------ CLI
def add_parser(subparsers) -> argparse.ArgumentParser:
    """The ``enrichment`` subcommand of ``analyze.py``."""
    p = subparsers.add_parser("enrichment", help="class-enriched 6-mers of the few-shot tasks and their NPMI ranks",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", default=list(TASKS), metavar="TASK",
                   help=f"few-shot tasks (default: all: {', '.join(TASKS)})")
    p.add_argument("--ranking", type=Path, default=AUTHORS_RANKING, help="ranking CSV (default: the GeneMask authors')")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: outputs/enrichment)")
    p.add_argument("--top", type=int, default=20, help="enriched k-mers listed per class (default 20)")
    p.add_argument("--q", type=float, default=0.05, help="Benjamini-Hochberg q threshold (default 0.05)")
    p.add_argument("--min-log2-or", type=float, default=1.0,
                   help="|log2 odds ratio| a discriminative k-mer needs, besides q (default 1)")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="few-shot data folder")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run the ``enrichment`` subcommand; prints a summary, returns the exit status (2 on a GMError)."""
    import sys

    try:
        result = run_enrichment(args.tasks, args.ranking, args.out, top=args.top, q=args.q,
                                min_log2_or=getattr(args, "min_log2_or", 1.0),
                                data_dir=getattr(args, "data_dir", DEFAULT_DATA_DIR))
    except GMError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for task, s in result["tasks"].items():
        m = s["mannwhitney"]
        print(f"{task}: {s['n_sequences']:,} sequences; discriminative 6-mers {m['n_discriminative']} "
              f"(median NPMI rank {m['median_rank_discriminative']:.0f} vs {m['median_rank_other']:.0f}), "
              f"AUC {m['auc']:.3f}, Mann-Whitney p {_p(m['p_two_sided'])}, composition-adjusted AUC {m['auc_adjusted']:.3f} (p {_p(m['p_adjusted'])})")
        for name, entries in s["top"].items():
            shown = ", ".join(f"{e['kmer']}({e['npmi_rank']})" for e in entries[:5])
            print(f"  class {name} top enriched (NPMI rank): {shown or 'none'}")
    print(f"wrote {result['report']}, {result['figure']} and {len(result['csv'])} CSV file(s) in {result['seconds']:.1f} s")
    return 0
