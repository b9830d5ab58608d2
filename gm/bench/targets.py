"""Part ``targets``: is the data pipeline fast enough to feed dnabert on an H100?"""

from __future__ import annotations

import argparse

from gm.bench.common import VOCAB_SIZE, row
from gm.bench.data import bench_data
from gm.bench.training import model_config


def bench_targets(args: argparse.Namespace) -> list[dict]:
    """Data-pipeline target: tokens/s of the best worker count >= 10x what dnabert consumes on one H100.

    Consumption = 0.4 (MFU) x 989e12 (H100 SXM dense bf16) / training FLOPs per token of dnabert
    at 512 positions (gm.models.flops). Uses this run's ``data`` rows, or measures them.
    """
    from gm.models.flops import PEAK_BF16_FLOPS, training_flops_per_token

    data_rows = [r for r in getattr(args, "completed_rows", []) if r["part"] == "data" and r["unit"] == "tokens/s"]
    if not data_rows:
        data_rows = [r for r in bench_data(args) if r["unit"] == "tokens/s"]
    best = max(data_rows, key=lambda r: r["ours"])
    mfu_target, peak, target = 0.4, PEAK_BF16_FLOPS["H100"], 10.0
    flops = training_flops_per_token(model_config("dnabert"), 512, VOCAB_SIZE)
    consumption = mfu_target * peak / flops
    ratio = best["ours"] / consumption
    how = (f"dnabert consumes {mfu_target} x {peak:.3g} / {flops:.4g} FLOP/token = {consumption:.3g} tokens/s; "
           f"target >= {target:g}x: {'met' if ratio >= target else 'NOT met'}")
    result = row("targets", "data tokens/s / dnabert on H100 at 40% MFU", "tokens/s", best["ours"], consumption,
                 best["ours_name"], "dnabert, 1 H100 SXM, 40% MFU", flops_per_token=flops, mfu=mfu_target,
                 peak_flops=peak, target_ratio=target, met=bool(ratio >= target), note=how)
    result.update({key: best[key] for key in ("ours_peak_mib", "ours_delta_mib")})  # the loader's: nothing ran here
    return [result]


