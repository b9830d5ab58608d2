"""The inputs the parts share: the embedded genome sample, its windows and batches, a Hugging Face tokenizer."""

from __future__ import annotations

import itertools
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from gm.bench.common import BATCH, GENOME, K
from gm.data.fasta import read_fasta
from gm.data.tokenizer import CODE_TO_BYTE, KmerTokenizer


# ------------------------------------------------------------------------------------------ data helpers
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


_CACHE_DIR: tempfile.TemporaryDirectory | None = None


def genome_data(**options: Any):
    """A set-up ``GenomeDataModule`` on the embedded genome; one temporary 2-bit cache per process."""
    from gm.data.genome import GenomeDataModule

    global _CACHE_DIR
    if _CACHE_DIR is None:
        _CACHE_DIR = tempfile.TemporaryDirectory(prefix="gm-bench-")  # removed at exit
    options = {"batch_size": BATCH, "num_workers": 0, **options}
    data = GenomeDataModule(str(GENOME), k=K, cache_dir=_CACHE_DIR.name, **options)
    data.prepare_data()
    data.setup("fit")
    return data


def first_batches(data, n: int) -> list[dict]:
    """The first ``n`` training batches of epoch 0 (the same ones every call)."""
    loader = data.train_dataloader()
    loader.load_state_dict({"epoch": 0, "batches": 0})
    iterator = iter(loader)
    try:
        return list(itertools.islice(iterator, n))
    finally:
        iterator.close()


def real_tokens(batches: list[dict]) -> int:
    """Non-padding positions ([CLS], k-mers, [SEP])."""
    return int(sum(int(b["attention_mask"].sum()) for b in batches))


def _children_pss_mib() -> float:
    """Proportional set size of this process's children (DataLoader workers), shared pages split fairly."""
    total, found = 0.0, False
    for children in Path("/proc/self/task").glob("*/children"):
        try:
            pids = children.read_text().split()
        except OSError:
            continue
        for pid in pids:
            try:
                for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                    if line.startswith("Pss:"):
                        total, found = total + int(line.split()[1]) / 1024, True
            except (OSError, ValueError, IndexError):
                continue
    return total if found else float("nan")


