"""Part ``gpu``: tokens/s and MFU on a GPU (skipped without CUDA), eager and compiled."""

from __future__ import annotations

import argparse

import torch

from gm.bench.common import GPU_BATCH, VOCAB_SIZE, WARMUP_STEPS, row, side_by_side
from gm.bench.masking import _real_batch
from gm.bench.training import _train_repeats, model_config, plain_run


def bench_gpu(args: argparse.Namespace) -> list[dict]:
    """bf16 training steps on full-length batches on a GPU: eager against ``torch.compile`` of the encoder, with MFU.

    Plain loop (no framework), bf16 autocast, fused AdamW, SDPA attention, the same masking. MFU
    is achieved model FLOP/s (gm.models.flops, head on the masked share) over the GPU's dense bf16 peak.
    """
    if not torch.cuda.is_available():
        return [{"part": "gpu", "measure": "skipped", "skipped": "no CUDA device"}]
    return compile_rows(args, torch.device("cuda"), torch.cuda.get_device_name())


def compile_rows(args: argparse.Namespace, device: torch.device, device_name: str) -> list[dict]:
    """The gpu part's measurements on ``device`` (any device: a CPU run checks the code path)."""
    from gm.masking.strategies import KmerSpanMasking
    from gm.models.flops import mfu, peak_flops, training_flops_per_token

    peak = peak_flops(device_name)
    repeats = _train_repeats(args.repeats)
    rows = []
    for model in args.gpu_models:
        encoder = model_config(model)
        length = int(encoder.get("max_position_embeddings", 512))
        batch_size = args.gpu_batch or GPU_BATCH.get(model, 32)
        ids = _real_batch(batch_size, length)
        on_device = ids.to(device)  # copied once: a pageable host-to-device copy per step would sync the stream
        batches = [{"input_ids": on_device, "attention_mask": torch.ones_like(on_device)}] * args.gpu_steps
        masked_fraction = float(KmerSpanMasking()(ids, torch.Generator().manual_seed(0)).masked.float().mean())
        flops = training_flops_per_token(encoder, length, VOCAB_SIZE, masked_fraction)
        timed_steps = args.gpu_steps - WARMUP_STEPS
        t = side_by_side(
            {"compiled": lambda: plain_run(encoder, batches, device, compile_encoder=True),
             "eager": lambda: plain_run(encoder, batches, device)},
            repeats, warmup=False, self_timed=True, device=device,
        )
        tokens = timed_steps * ids.numel()
        compiled, eager = t["compiled"], t["eager"]
        precision = "bf16" if device.type == "cuda" else "fp32"
        names = (f"torch.compile(encoder), {precision}", f"eager, {precision}")
        common = {"model": model, "batch": batch_size, "seq_len": length, "device_name": device_name,
                  "peak_bf16_flops": peak, "flops_per_token": flops, "masked_fraction": masked_fraction}
        measure = f"{model}, {batch_size} x {length}, {timed_steps} steps, {device.type}"
        mfu_compiled, mfu_eager = mfu(tokens / compiled.seconds, flops, peak), mfu(tokens / eager.seconds, flops, peak)
        note = f"MFU {mfu_compiled:.1%} vs {mfu_eager:.1%}"
        rows.append(row("gpu", measure, "steps/s", timed_steps / compiled.seconds, timed_steps / eager.seconds, *names,
                        compiled, eager, **common, note=note))
        rows.append(row("gpu", measure, "tokens/s", tokens / compiled.seconds, tokens / eager.seconds, *names,
                        compiled, eager, **common, note=note))
        rows.append(row("gpu", measure, "MFU", mfu_compiled, mfu_eager, *names, compiled, eager, **common))
    return rows


