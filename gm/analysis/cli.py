"""The command line behind ``python analyze.py <command>``: the parser, and each command sent to its module.

npmi (:mod:`gm.analysis.ranking`), masks (:mod:`gm.analysis.masks`) and results
(:mod:`gm.analysis.results`) take their options here; motifs, enrichment and curves add their own
(``MODULE_COMMANDS``). Also the output checks and default folders the analyses share.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

from gm.masking.npmi import SCORES
from gm.utils import GMError, atomic_write_text

log = logging.getLogger("gm.analysis.cli")

ROOT = Path(__file__).resolve().parents[2]
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


def write_report(out: Path, stem: str, markdown: str, data: Any) -> None:
    """``<stem>.md`` and ``<stem>.json`` into the folder ``out``, each written atomically."""
    atomic_write_text(out / f"{stem}.md", markdown)
    atomic_write_text(out / f"{stem}.json", json.dumps(data, indent=2) + "\n")


# ------------------------------------------------------------------------------------------ CLI
#: analyses that live in a module of their own, which provides ``add_parser(subparsers)`` and ``run(args)``
MODULE_COMMANDS = {"motifs": "gm.analysis.motifs", "enrichment": "gm.analysis.enrichment", "curves": "gm.analysis.curves",
                   "efficiency": "gm.analysis.efficiency", "features": "gm.analysis.features"}


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
    try:
        if args.command in MODULE_COMMANDS:  # the same one-line error boundary as the commands below
            return importlib.import_module(MODULE_COMMANDS[args.command]).run(args)
        if args.command == "npmi":
            out = args.out or ROOT / "outputs" / "npmi" / f"{args.fasta.name.split('.')[0]}.k{args.k}.{args.score}.csv"
            from gm.analysis.ranking import npmi

            npmi(args.fasta, out, args.k, args.score, args.min_count, args.top)
        elif args.command == "masks":
            from gm.analysis.masks import masks

            masks(args.out, start=args.start, n_kmers=args.length, seed=args.seed)
        elif args.command == "results":
            from gm.analysis.results import report

            if args.out is not None:
                check_output_folder(args.out)
            report(args.folders, args.out, args.metrics, compare=args.compare)
    except GMError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
