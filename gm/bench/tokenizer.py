"""Part ``tokenizer``: our k-mer tokenizer against ``BertTokenizerFast``."""

from __future__ import annotations

import argparse
import tempfile

import numpy as np
import torch

from gm.bench.common import K, row, side_by_side
from gm.bench.inputs import codes_to_str, hf_tokenizer, load_genome, seq_to_kmer_text
from gm.data.tokenizer import INVALID_CODE, KmerTokenizer


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
    measure, baseline = f"{len(sequences)} x 515 bases", bases / t["hf"].seconds
    hf_name = "BertTokenizerFast(k-mer text)"
    return [
        row("tokenizer", measure, "bases/s", bases / t["encode"].seconds, baseline, "KmerTokenizer.encode(raw)",
            hf_name, t["encode"], t["hf"]),
        row("tokenizer", measure, "bases/s", bases / t["encode_kmer_text"].seconds, baseline,
            "KmerTokenizer.encode_kmer_text", hf_name, t["encode_kmer_text"], t["hf"]),
    ]


