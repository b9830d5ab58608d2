"""Part ``padding``: bucketed batches against naive padding."""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from gm.bench.common import BATCH, Measured, PADDING_BATCHES, WARMUP_STEPS, peak_memory, row, side_by_side
from gm.bench.inputs import first_batches, genome_data, real_tokens
from gm.bench.training import _quiet_frameworks, _train_repeats, default_device, model_config, plain_run


def _padding_stats(batches: list[dict]) -> dict[str, Any]:
    masks = [b["attention_mask"] for b in batches]
    real = np.array([int(m.sum()) for m in masks], dtype=np.float64)
    positions = np.array([m.numel() for m in masks], dtype=np.float64)
    lengths = np.concatenate([b["windows"][:, 2].numpy() for b in batches])
    return {
        "padding_share_total": float(1 - real.sum() / positions.sum()),
        "padding_share_mean_per_batch": float(np.mean(1 - real / positions)),
        "batches": len(batches),
        "windows": int(lengths.size),
        "window_bases_mean": float(lengths.mean()),
        "window_bases_quartiles": [float(q) for q in np.percentile(lengths, [25, 50, 75])],
    }


def cut_batches(windows_set, plan) -> list[dict]:
    """Consecutive windows of ``plan`` as batches of 10, tokenised and padded by ``windows_set``'s rules."""
    return [windows_set.make_batch(plan.take(slice(start, start + BATCH)), start // BATCH)
            for start in range(0, len(plan), BATCH)]


def bench_padding(args: argparse.Namespace) -> list[dict]:
    """Length bucketing: padded share over a whole epoch, off (naive batches) against on, and its training gain.

    The gain is measured on the same windows: the first bucketed batches, and the same windows
    in random batches (what naive batching makes of them); a plain training loop runs both, side
    by side, after the same 2 warm-up batches.
    """
    _quiet_frameworks()
    naive = genome_data(bucket_batches=0, pad_to_multiple_of=1, max_kmers=args.max_kmers)
    bucketed = genome_data(bucket_batches=100, pad_to_multiple_of=8, max_kmers=args.max_kmers)
    epochs: dict[str, list[dict]] = {}
    runs: dict[str, Measured] = {}
    for name, data in (("naive", naive), ("bucketed", bucketed)):
        whole_epoch = lambda data=data, name=name: epochs.__setitem__(name, first_batches(data, 10**9))  # noqa: E731
        seconds, peak, delta = peak_memory(whole_epoch)
        runs[name] = Measured(seconds, peak, delta, [seconds])
    stats = {name: _padding_stats(batches) for name, batches in epochs.items()}
    del epochs
    on, off = stats["bucketed"], stats["naive"]
    names = ("bucket_batches=100, pad_to_multiple_of=8", "bucket_batches=0, pad_to_multiple_of=1")
    measure = f"epoch 0, {on['batches']} batches of 10"
    quartiles = f"quartiles {on['window_bases_quartiles']} vs {off['window_bases_quartiles']}"
    per_batch = f"mean per batch {on['padding_share_mean_per_batch']:.3f} vs {off['padding_share_mean_per_batch']:.3f}"
    rows = [
        row("padding", measure, "pad share", on["padding_share_total"], off["padding_share_total"], *names,
            runs["bucketed"], runs["naive"], ours_stats=on, baseline_stats=off, note=per_batch),
        row("padding", measure, "bases/win", on["window_bases_mean"], off["window_bases_mean"], *names,
            runs["bucketed"], runs["naive"], note=f"window length (mean) unchanged; {quartiles}"),
    ]

    device = default_device()
    repeats = _train_repeats(args.repeats)
    plan = bucketed.train_set.plan(0)
    for model in args.models:
        n = args.padding_batches or PADDING_BATCHES.get(model, 8)
        n = min(n, len(plan) // BATCH - WARMUP_STEPS)
        chosen = plan.take(slice(0, n * BATCH))
        shuffled = chosen.take(np.random.default_rng(0).permutation(n * BATCH))
        warm = cut_batches(bucketed.train_set, plan.take(slice(n * BATCH, (n + WARMUP_STEPS) * BATCH)))
        bucketed_batches = cut_batches(bucketed.train_set, chosen)
        naive_batches = cut_batches(naive.train_set, shuffled)
        tokens = real_tokens(bucketed_batches)
        assert tokens == real_tokens(naive_batches), "the two batchings hold different windows"
        encoder = model_config(model)
        t = side_by_side(
            {"bucketed": lambda: plain_run(encoder, warm + bucketed_batches, device),
             "naive": lambda: plain_run(encoder, warm + naive_batches, device)},
            repeats, warmup=False, self_timed=True, device=device,
        )
        positions = {name: sum(b["input_ids"].numel() for b in batches)
                     for name, batches in (("bucketed", bucketed_batches), ("naive", naive_batches))}
        rows.append(row(
            "padding", f"{model}, plain loop, same {n * BATCH} windows", "tokens/s", tokens / t["bucketed"].seconds,
            tokens / t["naive"].seconds, *names, t["bucketed"], t["naive"], model=model, tokens_timed=tokens,
            positions=positions, device=device.type,
            note=f"positions {positions['bucketed']} vs {positions['naive']} (real {tokens})",
        ))
    return rows


