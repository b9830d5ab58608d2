"""Benchmarks: our implementation and a baseline, timed side by side in the same process.

    python -m gm.bench [--parts tokenizer data] [--repeats 5] [--json out.json]

Machines are noisy, so each part runs ours and the baseline alternately (interleaved repeats)
and reports medians and their ratio; the ratio is the figure to compare across machines. A part
is a function ``(args) -> list of rows`` registered in :data:`PARTS`; add new ones there.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from gm.fasta import read_fasta
from gm.tokenizer import CODE_TO_BYTE, INVALID_CODE, KmerTokenizer

GENOME = Path(__file__).resolve().parent.parent / "data" / "genome" / "hg38_chr2_1-2333275.fa.gz"
K = 6


# ------------------------------------------------------------------------------------------ helpers
def side_by_side(candidates: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each candidate over ``repeats`` interleaved runs (after one warm-up each)."""
    for fn in candidates.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def row(part: str, measure: str, unit: str, ours: float, baseline: float, ours_name: str, baseline_name: str) -> dict:
    return {
        "part": part, "measure": measure, "unit": unit, "ours": ours, "baseline": baseline,
        "ratio": ours / baseline, "ours_name": ours_name, "baseline_name": baseline_name,
    }


def load_genome() -> np.ndarray:
    """Base codes of the embedded genome's first record."""
    return next(iter(read_fasta(GENOME, progress=False))).codes


def codes_to_str(codes: np.ndarray) -> str:
    return CODE_TO_BYTE[codes].tobytes().decode("ascii")


def seq_to_kmer_text(sequence: str, k: int = K) -> str:
    """DNABERT's ``seq2kmer``: the sequence as space-separated overlapping k-mers."""
    return " ".join(sequence[i : i + k] for i in range(len(sequence) - k + 1))


def hf_tokenizer(directory: str):
    """transformers' fast BERT tokenizer over our exported vocabulary (local files only)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    from transformers import BertTokenizerFast

    KmerTokenizer(k=K).save_pretrained(directory)
    return BertTokenizerFast.from_pretrained(directory, local_files_only=True)


# ------------------------------------------------------------------------------------------ parts
def bench_tokenizer(args: argparse.Namespace) -> list[dict]:
    """Encoding N random N-free windows of 515 bases (510 6-mers, a full 512-position row)."""
    tok = KmerTokenizer(k=K)
    codes = load_genome()
    rng = np.random.default_rng(0)
    bad = np.concatenate(([0], np.cumsum(codes == INVALID_CODE)))
    starts = rng.integers(0, codes.size - tok.max_bases, args.windows * 4)
    starts = starts[bad[starts + tok.max_bases] == bad[starts]][: args.windows]
    sequences = [codes_to_str(codes[s : s + tok.max_bases]) for s in starts]
    texts = [seq_to_kmer_text(s) for s in sequences]  # not timed: the baseline's input format
    bases = sum(map(len, sequences))
    with tempfile.TemporaryDirectory() as directory:
        hf = hf_tokenizer(directory)
        check = hf(texts[:2], padding=True, return_tensors="pt")["input_ids"]
        assert torch.equal(check, tok.encode(sequences[:2]).input_ids), "baseline and ours disagree"
        t = side_by_side(
            {
                "encode": lambda: tok.encode(sequences),
                "encode_kmer_text": lambda: tok.encode_kmer_text(texts),
                "hf": lambda: hf(texts, padding=True, return_tensors="pt"),
            },
            args.repeats,
        )
    measure, baseline = f"{len(sequences)} x 515 bases", bases / t["hf"]
    hf_name = "BertTokenizerFast(k-mer text)"
    return [
        row("tokenizer", measure, "bases/s", bases / t["encode"], baseline, "KmerTokenizer.encode(raw)", hf_name),
        row("tokenizer", measure, "bases/s", bases / t["encode_kmer_text"], baseline,
            "KmerTokenizer.encode_kmer_text", hf_name),
    ]


def bench_data(args: argparse.Namespace) -> list[dict]:
    """Training batches (10 windows, num_workers=0) from the embedded genome."""
    from gm.genome import GenomeDataModule

    n_batches = max(1, args.windows // 10)
    with tempfile.TemporaryDirectory() as directory:
        data = GenomeDataModule(str(GENOME), k=K, batch_size=10, num_workers=0, cache_dir=directory)
        data.prepare_data()
        data.setup("fit")
        loader = data.train_dataloader()

        def ours() -> list[dict]:
            loader.load_state_dict({"epoch": 0, "batches": 0})  # the same batches every repeat
            return list(itertools.islice(iter(loader), n_batches))

        batches = ours()
        lengths = np.concatenate([b["windows"][:, 2].numpy() for b in batches])  # bases per window
        tokens = int(sum(b["attention_mask"].sum() for b in batches))

        genome = codes_to_str(load_genome())  # DNABERT-style: the genome as one Python string
        hf = hf_tokenizer(str(Path(directory) / "hf"))
        starts = np.random.default_rng(0).integers(0, len(genome) - lengths.max(), lengths.size).tolist()
        spans = list(zip(starts, lengths.tolist()))

        def baseline() -> list[dict]:
            out = []
            for i in range(0, len(spans), 10):
                texts = [seq_to_kmer_text(genome[s : s + n]) for s, n in spans[i : i + 10]]
                out.append(hf(texts, padding=True, return_tensors="pt"))
            return out

        assert int(sum(b["attention_mask"].sum() for b in baseline())) == tokens
        t = side_by_side({"ours": ours, "baseline": baseline}, args.repeats)
    windows = int(lengths.size)
    names = ("GenomeDataModule.train_dataloader", "str slice + seq2kmer + BertTokenizerFast")
    return [
        row("data", f"{windows} windows, batch 10", "windows/s", windows / t["ours"], windows / t["baseline"], *names),
        row("data", f"{windows} windows, batch 10", "tokens/s", tokens / t["ours"], tokens / t["baseline"], *names),
    ]


def bench_npmi(args: argparse.Namespace) -> list[dict]:
    """Counting every n-gram (n = 1..6): ours against a straightforward pure-Python counter."""
    import collections

    from gm.npmi import count_codes, count_ngrams

    codes = load_genome()
    clean = codes[codes != INVALID_CODE]
    piece = codes[10_000 : 10_000 + args.npmi_bases]  # after the leading N run; Ns inside are skipped by both
    text = codes_to_str(piece)

    def python_counter() -> dict:
        counts = {}
        for n in range(1, K + 1):
            counts[n] = collections.Counter(text[i : i + n] for i in range(len(text) - n + 1) if "N" not in text[i : i + n])
        return counts

    ours_counts = count_codes(piece, K)
    assert sum(python_counter()[K].values()) == int(ours_counts[K].sum()), "counters disagree"
    t = side_by_side({"ours": lambda: count_codes(piece, K), "python": python_counter}, args.repeats)
    bases = piece.size
    whole = side_by_side({"end_to_end": lambda: count_ngrams(GENOME, K, progress=False)}, args.repeats)["end_to_end"]
    genome_rate = clean.size / whole
    rows = [
        row("npmi", f"count n=1..6, {bases / 1e3:.0f} kb", "bases/s", bases / t["ours"], bases / t["python"],
            "gm.npmi.count_codes", "collections.Counter over substrings"),
        row("npmi", "count_ngrams(chr2 sample .fa.gz)", "bases/s", genome_rate, float("nan"),
            "read + 2-bit codes + count, end to end", "-"),
    ]
    rows[-1]["extrapolated_3.1Gb_minutes"] = 3.1e9 / genome_rate / 60
    return rows


def _masking_strategies() -> dict[str, object]:
    from gm.masking import BertMasking, GeneMaskMasking, KmerSpanMasking, RandomSpanMasking

    return {
        "bert": BertMasking(),
        "kmer_span": KmerSpanMasking(),
        "genemask": GeneMaskMasking(),
        "genemask_position": GeneMaskMasking(rank_by="position"),
        "random_span": RandomSpanMasking(),
        "genemask_span_replace": GeneMaskMasking(replace="span"),
    }


def _real_batch(batch: int, length: int = 512) -> torch.Tensor:
    """``batch`` full-length rows of real k-mers from the embedded genome."""
    tok = KmerTokenizer(k=K, max_length=length)
    codes = load_genome()
    rng = np.random.default_rng(1)
    bad = np.concatenate(([0], np.cumsum(codes == INVALID_CODE)))
    starts = rng.integers(0, codes.size - tok.max_bases, batch * 4)
    starts = starts[bad[starts + tok.max_bases] == bad[starts]][:batch]
    return tok.encode([codes_to_str(codes[s : s + tok.max_bases]) for s in starts]).input_ids


def bench_masking(args: argparse.Namespace) -> list[dict]:
    """Masking a 64 x 512 batch on one CPU thread: every strategy, and the plain-loop reference."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.masking_reference import loop_masking  # the tests' oracle: plain Python loops

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ids = _real_batch(64)
        generator = torch.Generator().manual_seed(0)
        strategies = _masking_strategies()
        candidates = {name: (lambda s=s: s(ids, generator)) for name, s in strategies.items()}
        loop_ids = ids.tolist()
        loops = {name: (lambda s=s: loop_masking(s, loop_ids, seed=0)) for name, s in strategies.items()}
        t = side_by_side(candidates, args.repeats)
        t_loop = side_by_side(loops, max(1, args.repeats // 2))
    finally:
        torch.set_num_threads(threads)
    tokens = ids.numel()
    return [
        row("masking", f"{name}, 64 x 512, 1 thread", "tokens/s", tokens / t[name], tokens / t_loop[name],
            f"gm.masking ({name})", "plain Python loop reference")
        for name in strategies
    ]


def bench_step_share(args: argparse.Namespace) -> list[dict]:
    """Share of a training step (forward, backward, AdamW) that masking takes, tiny and logo models."""
    import yaml

    from gm.mlm import MLMModule

    rows = []
    ids = _real_batch(10)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    generator = torch.Generator().manual_seed(0)
    for model in ("tiny", "logo"):
        encoder = yaml.safe_load((Path(__file__).resolve().parent.parent / "conf" / "model" / f"{model}.yaml").read_text())
        for name, strategy in _masking_strategies().items():
            if name not in ("kmer_span", "genemask"):
                continue
            module = MLMModule(encoder, strategy)
            optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4)

            def step() -> None:
                masked = module.mask(batch, generator)
                module.mlm_loss(masked, batch["attention_mask"])["loss"].backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

            t = side_by_side({"mask": lambda: module.mask(batch, generator), "step": step}, max(2, args.repeats // 2))
            r = row("step", f"{model}, batch 10 x 512, {name}", "share", t["mask"] / t["step"], float("nan"),
                    "masking / whole training step", "-")
            r["step_seconds"], r["mask_seconds"] = t["step"], t["mask"]
            rows.append(r)
    return rows


PARTS: dict[str, Callable[[argparse.Namespace], list[dict]]] = {
    "tokenizer": bench_tokenizer,
    "data": bench_data,
    "npmi": bench_npmi,
    "masking": bench_masking,
    "step": bench_step_share,
}


# ------------------------------------------------------------------------------------------ entry point
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            return next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gm.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS))
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timed runs per candidate (median)")
    parser.add_argument("--windows", type=int, default=1000, help="windows per timed run")
    parser.add_argument("--npmi-bases", type=int, default=300_000, help="bases counted side by side in the npmi part")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    header = f"{'part':<10} {'measure':<36} {'unit':<10} {'ours':>12} {'baseline':>12} {'ratio':>7}"
    print(header)
    print("-" * len(header))
    rows = []
    for name in args.parts:
        start = time.perf_counter()
        part_rows = PARTS[name](args)
        seconds = round(time.perf_counter() - start, 1)
        for r in part_rows:
            r["part_seconds"] = seconds
            if r["baseline"] == r["baseline"]:  # not NaN: a side-by-side comparison
                print(f"{r['part']:<10} {r['measure']:<36} {r['unit']:<10} {r['ours']:>12.4g} {r['baseline']:>12.4g} "
                      f"{r['ratio']:>6.1f}x  {r['ours_name']} vs {r['baseline_name']}")
            else:
                extra = {k: round(v, 4) for k, v in r.items() if k.endswith(("minutes", "seconds")) and k != "part_seconds"}
                print(f"{r['part']:<10} {r['measure']:<36} {r['unit']:<10} {r['ours']:>12.4g} {'':>12} {'':>7}  "
                      f"{r['ours_name']} {extra or ''}")
        rows.extend(part_rows)
    if args.json:
        report = {"command": "python -m gm.bench " + " ".join(argv if argv is not None else sys.argv[1:]),
                  "machine": machine(), "repeats": args.repeats, "windows": args.windows, "rows": rows}
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
