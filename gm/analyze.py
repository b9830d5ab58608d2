"""Analyses behind ``python analyze.py <command>``: npmi, masks, results here; motifs, enrichment and
curves in their own modules (``MODULE_COMMANDS``); argparse glue at the end."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import time
from pathlib import Path

import numpy as np

from gm.npmi import AUTHORS_RANKING, SCORES, count_ngrams, rank_kmers, read_ranking, spearman
from gm.utils import GMError

log = logging.getLogger("gm.analyze")

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_FASTA = ROOT / "data" / "genome" / "hg38_chr2_1-2333275.fa.gz"


# ------------------------------------------------------------------------------------------ npmi
def npmi(fasta: Path, out: Path, k: int = 6, score: str = "discounted", min_count: int = 101, top: int = 20) -> dict:
    """Count the n-grams of ``fasta``, rank its k-mers by PMI and write the ranking CSV.

    For k = 6 the ranking is compared with the GeneMask authors' (Spearman correlation).
    """
    start = time.perf_counter()
    counts = count_ngrams(fasta, k)
    seconds = time.perf_counter() - start
    ranking = rank_kmers(counts, k, score=score, min_count=min_count)
    ranking.write_csv(out)
    order = np.argsort(ranking.rank)
    summary = {
        "fasta": str(fasta),
        "out": str(out),
        "bases": counts.bases,
        "count_seconds": round(seconds, 3),
        "bases_per_second": counts.bases / seconds,
        "scored_kmers": int(np.isfinite(ranking.score).sum()),
    }
    print(f"counted {counts.bases:,} bases in {seconds:.2f} s ({counts.bases / seconds / 1e6:.1f} Mb/s); "
          f"{summary['scored_kmers']} of {4**k} {k}-mers seen at least {min_count} times")
    print(f"top {top} {k}-mers by {score} PMI:")
    for i in order[:top]:
        print(f"  {ranking.rank[i]:>5}  {ranking.ngram[i]}  count {ranking.count[i]:>9,}  pmi {ranking.pmi[i]:7.3f}  score {ranking.score[i]:7.3f}")
    if k == 6:
        authors = read_ranking(AUTHORS_RANKING, 6)
        rho = spearman(ranking.rank, np.array([authors[g] for g in ranking.ngram]))
        summary["spearman_vs_authors"] = rho
        print(f"Spearman correlation with the GeneMask authors' ranking: {rho:.3f}")
    print(f"wrote {out}")
    return summary


# ------------------------------------------------------------------------------------------ masks
def masks(out: Path, fasta: Path = SAMPLE_FASTA, start: int = 1_000_000, n_kmers: int = 96, seed: int = 3) -> Path:
    """Draw one real sequence masked by every strategy, spans coloured, as a PNG (for the README)."""
    from gm.fasta import read_fasta
    from gm.plots import plot_masks
    from gm.tokenizer import CODE_TO_BYTE, KmerTokenizer

    tokenizer = KmerTokenizer(6)
    codes = next(iter(read_fasta(fasta, progress=False))).codes
    window = codes[start : start + n_kmers + 5]
    if (window == 4).any():
        raise GMError(f"{fasta}: the window at {start} contains N; choose another --start")
    sequence = CODE_TO_BYTE[window].tobytes().decode()
    path = plot_masks(tokenizer.encode(sequence).input_ids, out, seed=seed, title=f"chr2:{start + 1:,}-{start + len(sequence):,}")
    print(f"wrote {path}")
    return path


# ------------------------------------------------------------------------------------------ CLI
#: analyses that live in a module of their own, which provides ``add_parser(subparsers)`` and ``run(args)``
MODULE_COMMANDS = {"motifs": "gm.motifs", "enrichment": "gm.enrichment", "curves": "gm.curves"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python analyze.py", description="GeneMask analyses.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")

    p = commands.add_parser("npmi", help="rank the k-mers of a genome by (normalised) PMI and write a CSV")
    p.add_argument("--fasta", type=Path, default=SAMPLE_FASTA, help="FASTA, plain/gzip/bgzip (default: the embedded chr2 sample)")
    p.add_argument("--out", type=Path, default=None, help="output CSV (default: outputs/npmi/<fasta name>.k<k>.<score>.csv)")
    p.add_argument("--k", type=int, default=6, help="k-mer length (n-grams of length 1..k are counted)")
    p.add_argument("--score", choices=SCORES, default="discounted",
                   help="discounted: PMI * ln f / (ln f + ln 101), the released ranking's; npmi: PMI / -log p")
    p.add_argument("--min-count", type=int, default=101, help="k-mers seen fewer times are unranked (get the worst rank)")
    p.add_argument("--top", type=int, default=20, help="how many top k-mers to print")

    p = commands.add_parser("masks", help="PNG of one real sequence masked by every strategy")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "figures" / "masks.png")
    p.add_argument("--start", type=int, default=1_000_000, help="0-based start in the embedded chr2 sample")
    p.add_argument("--length", type=int, default=96, help="k-mers shown")
    p.add_argument("--seed", type=int, default=3)

    p = commands.add_parser("results", help="aggregate fine-tuning results.json files: Markdown table, CSV, one PNG per metric")
    p.add_argument("folders", type=Path, nargs="+", help="folders searched recursively for results.json (or results.json files)")
    p.add_argument("--out", type=Path, default=None,
                   help="where results.md, results.csv and results_<metric>.png go (default: the first folder)")
    p.add_argument("--metrics", nargs="+", default=["accuracy", "f1_macro", "mcc", "auroc"],
                   choices=["accuracy", "f1_macro", "mcc", "auroc"], help="metrics to report (default: all four)")
    p.add_argument("--compare", nargs=2, action="append", default=[], metavar=("A", "B"),
                   help="paired comparison of model A against B (accuracy and MCC, seed by seed, sign and Wilcoxon "
                        "tests) into comparisons.md; repeatable")

    for module in MODULE_COMMANDS.values():
        importlib.import_module(module).add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    if args.command in MODULE_COMMANDS:
        return importlib.import_module(MODULE_COMMANDS[args.command]).run(args)
    try:
        if args.command == "npmi":
            out = args.out or ROOT / "outputs" / "npmi" / f"{args.fasta.name.split('.')[0]}.k{args.k}.{args.score}.csv"
            npmi(args.fasta, out, args.k, args.score, args.min_count, args.top)
        elif args.command == "masks":
            masks(args.out, start=args.start, n_kmers=args.length, seed=args.seed)
        elif args.command == "results":
            from gm.results import report

            report(args.folders, args.out, args.metrics, compare=args.compare)
    except GMError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
