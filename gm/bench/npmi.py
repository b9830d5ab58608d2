"""Part ``npmi``: n-gram counting for the NPMI ranking against a Python counter."""

from __future__ import annotations

import argparse

from gm.bench.common import GENOME, K, row, side_by_side
from gm.bench.inputs import codes_to_str, load_genome
from gm.data.tokenizer import INVALID_CODE


def bench_npmi(args: argparse.Namespace) -> list[dict]:
    """Counting every n-gram (n = 1..6): ours against a straightforward pure-Python counter."""
    import collections

    from gm.masking.npmi import count_codes, count_ngrams

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
    genome_rate = clean.size / whole.seconds
    rows = [
        row("npmi", f"count n=1..6, {bases / 1e3:.0f} kb", "bases/s", bases / t["ours"].seconds,
            bases / t["python"].seconds, "gm.masking.npmi.count_codes", "collections.Counter over substrings", t["ours"],
            t["python"]),
        row("npmi", "count_ngrams(chr2 sample .fa.gz)", "bases/s", genome_rate, float("nan"),
            "read + 2-bit codes + count, end to end", "-", whole),
    ]
    rows[-1]["extrapolated_3.1Gb_minutes"] = 3.1e9 / genome_rate / 60
    return rows


