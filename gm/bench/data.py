"""Part ``data``: the genome data pipeline with 0/1/2 workers against string slicing + ``seq2kmer`` + ``BertTokenizerFast``."""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from typing import Callable

import numpy as np

from gm.bench.common import BATCH, row, side_by_side, time_call
from gm.bench.inputs import _children_pss_mib, codes_to_str, first_batches, genome_data, hf_tokenizer, load_genome, real_tokens, seq_to_kmer_text


def bench_data(args: argparse.Namespace) -> list[dict]:
    """Training batches (10 windows) with 0, 1 and 2 DataLoader workers against a DNABERT-style pipeline.

    Ours is timed in steady state: ``--data-batches`` batches, from the arrival of the 10th to
    the last, so worker start-up is not counted (it is paid once per epoch). The baseline is
    timed over ``--windows`` windows with the lengths ours produced.
    """
    skip = 10
    reference_data = genome_data()
    n_batches = min(max(args.data_batches, skip + 2), reference_data.train_set.num_batches(0))
    reference = first_batches(reference_data, n_batches)
    steady = reference[skip:]
    windows = sum(int(b["input_ids"].shape[0]) for b in steady)
    tokens = real_tokens(steady)
    worker_pss: dict[int, float] = {}

    def steady_state(workers: int) -> Callable[[], float]:
        loader = genome_data(num_workers=workers).train_dataloader()

        def run() -> float:
            loader.load_state_dict({"epoch": 0, "batches": 0})  # the same batches every repeat
            iterator = iter(loader)
            try:
                for index, _ in enumerate(itertools.islice(iterator, n_batches)):
                    if index == skip - 1:
                        start = time.perf_counter()
                end = time.perf_counter()
                if workers:
                    worker_pss[workers] = max(worker_pss.get(workers, 0.0), _children_pss_mib())
            finally:
                iterator.close()
            return end - start

        return run

    n_base = max(1, min(args.windows // BATCH, len(reference)))
    base_batches = reference[:n_base]
    lengths = np.concatenate([b["windows"][:, 2].numpy() for b in base_batches])  # bases per window
    base_tokens = real_tokens(base_batches)
    genome = codes_to_str(load_genome())  # DNABERT-style: the genome as one Python string
    with tempfile.TemporaryDirectory() as directory:
        hf = hf_tokenizer(directory)
        starts = np.random.default_rng(0).integers(0, len(genome) - lengths.max(), lengths.size).tolist()
        spans = list(zip(starts, lengths.tolist()))

        def baseline() -> list[dict]:
            out = []
            for i in range(0, len(spans), BATCH):
                texts = [seq_to_kmer_text(genome[s : s + n]) for s, n in spans[i : i + BATCH]]
                out.append(hf(texts, padding=True, return_tensors="pt"))
            return out

        assert int(sum(b["attention_mask"].sum() for b in baseline())) == base_tokens, "baseline and ours disagree"
        candidates: dict[str, Callable[[], object]] = {f"workers={w}": steady_state(w) for w in (0, 1, 2)}
        candidates["baseline"] = lambda: time_call(baseline)
        t = side_by_side(candidates, args.repeats, self_timed=True)
    base = t["baseline"]
    base_name = "str slice + seq2kmer + BertTokenizerFast"
    rows = []
    for workers in (0, 1, 2):
        ours = t[f"workers={workers}"]
        name = f"train_dataloader, num_workers={workers}"
        pss = worker_pss.get(workers, float("nan")) if workers else 0.0
        extra = {"num_workers": workers, "ours_workers_pss_mib": pss}
        if workers:
            extra["note"] = f"workers' PSS {pss:.0f} MiB"
        measure = f"{windows} windows after 10 batches, batch 10"
        rows.append(row("data", measure, "windows/s", windows / ours.seconds, lengths.size / base.seconds, name,
                        base_name, ours, base, **extra))
        rows.append(row("data", measure, "tokens/s", tokens / ours.seconds, base_tokens / base.seconds, name,
                        base_name, ours, base, **extra))
    return rows


