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
from gm.utils import GMError, check_output_path, writing

log = logging.getLogger("gm.analyze")

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_FASTA = ROOT / "data" / "genome" / "hg38_chr2_1-2333275.fa.gz"
#: where analyses write by default: ignored by git, so a default run never overwrites a tracked figure
OUTPUTS = ROOT / "outputs"


def check_output_folder(path: str | Path, option: str = "--out") -> Path:
    """Refuse an output *folder* that is a file (or lies under one) before any work is done."""
    path = Path(path)
    blocker = next((p for p in (path, *path.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        where = "is a file" if blocker == path else f"lies under {blocker}, a file"
        raise GMError(f"{option} {path} {where}; give a folder (the files are written into it)")
    return path


# ------------------------------------------------------------------------------------------ npmi
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


# ------------------------------------------------------------------------------------------ masks
def masks(out: Path, fasta: Path = SAMPLE_FASTA, start: int = 1_000_000, n_kmers: int = 96, seed: int = 3) -> Path:
    """Draw one real sequence masked by every strategy, spans coloured, as a PNG (the README's figure:
    ``python analyze.py masks --out docs/figures/masks.png``)."""
    from gm.fasta import read_fasta
    from gm.plots import check_figure_path, plot_masks
    from gm.tokenizer import CODE_TO_BYTE, KmerTokenizer

    check_figure_path(out)
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
    p.add_argument("--min-count", type=int, default=101,
                   help="k-mers seen fewer times get no score and share the worst rank (one past the scored ones)")
    p.add_argument("--top", type=int, default=20, help="how many top k-mers to print")

    p = commands.add_parser("masks", help="PNG of one real sequence masked by every strategy")
    p.add_argument("--out", type=Path, default=OUTPUTS / "figures" / "masks.png",
                   help="output PNG (default: outputs/figures/masks.png; the README's: docs/figures/masks.png)")
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

            if args.out is not None:
                check_output_folder(args.out)
            report(args.folders, args.out, args.metrics, compare=args.compare)
    except GMError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
