"""Part ``train``: a training step three ways (Lightning, a plain PyTorch loop, ``transformers.Trainer``)."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Callable

from gm.bench.common import TRAIN_STEPS, WARMUP_STEPS, row, side_by_side
from gm.bench.inputs import first_batches, genome_data, hf_tokenizer, real_tokens
from gm.bench.training import _quiet_frameworks, _train_repeats, check_same_batches, default_device, hf_run, hf_windows, lightning_run, model_config, plain_run
from gm.data.tokenizer import PAD_ID


def bench_train(args: argparse.Namespace) -> list[dict]:
    """A training step three ways, on the same batches and masking: Lightning, a plain loop, HF Trainer.

    Lightning's cost over the plain loop is framework overhead; the HF Trainer row is what
    DNABERT-style code pays (collator masking, prediction head on every position). Runs are
    interleaved (Lightning, plain, HF, repeat); each run's first 2 steps are not timed.
    """
    _quiet_frameworks()
    device = default_device()
    repeats = _train_repeats(args.repeats)
    data = genome_data(max_kmers=args.max_kmers)
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        tokenizer = hf_tokenizer(str(Path(directory) / "tokenizer"))
        assert tokenizer.pad_token_id == PAD_ID

        def pipelines(encoder: dict, batches: list[dict]) -> dict[str, Callable[[], float]]:
            windows = hf_windows(batches)
            check_same_batches(batches, windows, tokenizer)
            return {
                "lightning": lambda: lightning_run(encoder, batches, device, directory),
                "plain": lambda: plain_run(encoder, batches, device),
                "hf": lambda: hf_run(encoder, windows, len(batches), device, tokenizer, directory),
            }

        for fn in pipelines(model_config("tiny"), first_batches(data, WARMUP_STEPS + 1)).values():
            fn()  # one-time costs (lazy imports, first fits) out of the timed runs and their memory
        for model in args.models:
            steps = args.steps or TRAIN_STEPS.get(model, 6)
            batches = first_batches(data, steps)
            steps = len(batches)
            timed = batches[WARMUP_STEPS:]
            tokens = real_tokens(timed)
            t = side_by_side(pipelines(model_config(model), batches), repeats, warmup=False, self_timed=True,
                             device=device)
            lightning, plain, hf = t["lightning"], t["plain"], t["hf"]
            measure = f"{model}, {len(timed)} steps x 10 windows, {device.type}"
            overhead = (lightning.seconds / plain.seconds - 1) * 100
            common = {"model": model, "steps_timed": len(timed), "tokens_timed": tokens, "device": device.type}
            names = ("Lightning Trainer + MLMModule", "plain PyTorch loop, same module")
            note = f"Lightning overhead {overhead:+.1f}%"
            for unit, amount in (("steps/s", len(timed)), ("tokens/s", tokens)):
                rows.append(row("train", measure, unit, amount / lightning.seconds, amount / plain.seconds, *names,
                                lightning, plain, overhead_pct=overhead, note=note, **common))
            hf_names = ("Lightning Trainer + MLMModule", "HF Trainer + MLM collator (head on all)")
            for unit, amount in (("steps/s", len(timed)), ("tokens/s", tokens)):
                rows.append(row("train", measure, unit, amount / lightning.seconds, amount / hf.seconds, *hf_names,
                                lightning, hf, **common))
    return rows


