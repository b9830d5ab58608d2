"""Benchmarks: our implementation and a baseline, timed side by side in the same process.

    python -m gm.bench [--parts tokenizer data npmi masking step train padding gpu targets probe scale]
                       [--repeats 5] [--json out.json] [--models tiny logo] [--steps N] ...

Machines are noisy, so each part runs ours and the baseline alternately (interleaved repeats)
and reports medians and their ratio; the ratio is the figure to compare across machines. Every
candidate's peak memory is recorded too (peak RSS of the process on CPU, peak allocated CUDA
memory on a GPU). A part is a function ``(args) -> list of rows`` registered in :data:`PARTS`;
add new ones there. ``targets`` is added automatically when ``data`` runs; ``scale`` (whole genomes,
most of an hour) runs only when named.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from gm.bench.common import GPU_BATCH, PADDING_BATCHES, ROOT, TRAIN_STEPS, WARMUP_STEPS
from gm.bench.data import bench_data
from gm.bench.gpu import bench_gpu
from gm.bench.masking import bench_masking, bench_step_share
from gm.bench.npmi import bench_npmi
from gm.bench.padding import bench_padding
from gm.bench.probe import bench_probe
from gm.bench.scale import SCALE_DISK_BYTES_PER_GB, bench_scale
from gm.bench.targets import bench_targets
from gm.bench.tokenizer import bench_tokenizer
from gm.bench.train import bench_train

PARTS: dict[str, Callable[[argparse.Namespace], list[dict]]] = {
    "tokenizer": bench_tokenizer,
    "data": bench_data,
    "npmi": bench_npmi,
    "masking": bench_masking,
    "step": bench_step_share,
    "train": bench_train,
    "padding": bench_padding,
    "gpu": bench_gpu,
    "targets": bench_targets,
    "probe": bench_probe,
    "scale": bench_scale,
}
#: parts run only when asked for: ``scale`` writes genomes of up to 3.1 Gb and takes most of an hour
OPT_IN = {"scale"}


# ------------------------------------------------------------------------------------------ entry point
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            return next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine() -> dict:
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    with contextlib.suppress(OSError, ValueError):
        info["load_average"] = list(os.getloadavg())
    return info


def format_row(r: dict) -> str:
    """One table line: rates, ratio, peak memory and increase (ours/baseline, MiB), candidates."""
    if "skipped" in r:
        return f"{r['part']}: skipped ({r['skipped']})"
    memory = (f"{r['ours_peak_mib']:>6.0f}/{r['baseline_peak_mib']:<6.0f} "
              f"{r['ours_delta_mib']:>6.0f}/{r['baseline_delta_mib']:<6.0f}")
    note = f"  [{r['note']}]" if r.get("note") else ""
    if r["baseline"] == r["baseline"]:  # not NaN: a side-by-side comparison
        return (f"{r['part']:<9} {r['measure']:<44} {r['unit']:<9} {r['ours']:>10.4g} {r['baseline']:>10.4g} "
                f"{r['ratio']:>7.3g}x {memory}  {r['ours_name']} vs {r['baseline_name']}{note}")
    extra = {k: round(v, 4) for k, v in r.items() if k.endswith(("minutes", "seconds")) and k != "part_seconds"}
    return (f"{r['part']:<9} {r['measure']:<44} {r['unit']:<9} {r['ours']:>10.4g} {'':>10} {'':>8} {memory}  "
            f"{r['ours_name']} {extra or ''}{note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gm.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", choices=list(PARTS), default=[p for p in PARTS if p not in OPT_IN],
                        help=f"default: all but {', '.join(sorted(OPT_IN))}")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timed runs per candidate (median); "
                        "training parts use max(2, repeats // 2)")
    parser.add_argument("--windows", type=int, default=1000, help="windows per timed run (tokenizer; data baseline)")
    parser.add_argument("--data-batches", type=int, default=200,
                        help="batches per data-loader run, timed after the 10th")
    parser.add_argument("--npmi-bases", type=int, default=300_000, help="bases counted side by side in the npmi part")
    parser.add_argument("--models", nargs="+", default=["tiny", "logo"],
                        help="conf/model configs for the train and padding parts")
    parser.add_argument("--steps", type=int, help=f"training steps per run in the train part (default {TRAIN_STEPS})")
    parser.add_argument("--max-kmers", type=int, default=510, help="longest window (k-mers) in the train and padding "
                        "parts; the data module's default 510 is a full 512-position row")
    parser.add_argument("--padding-batches", type=int,
                        help=f"timed batches in the padding part (default {PADDING_BATCHES})")
    parser.add_argument("--gpu-models", nargs="+", default=["dnabert", "logo"],
                        help="conf/model configs for the gpu part")
    parser.add_argument("--gpu-batch", type=int,
                        help=f"batch size (full 512-position rows) in the gpu part (default {GPU_BATCH})")
    parser.add_argument("--gpu-steps", type=int, default=20, help="training steps per run in the gpu part")
    parser.add_argument("--probe-every", type=int, default=1000, help="training steps between two probes in the probe part")
    parser.add_argument("--probe-tasks", nargs="+", default=["prom_core", "prom_300", "cohn_enh", "splice_40"],
                        help="few-shot tasks of the probe part")
    parser.add_argument("--probe-shots", type=int, default=100, help="shots per class in the probe part")
    parser.add_argument("--probe-draws", type=int, default=3, help="draws of the shots in the probe part")
    parser.add_argument("--probe-test-size", type=int, default=1000, help="test rows per task in the probe part")
    parser.add_argument("--scale-sizes", nargs="+", type=float, default=[0.1, 1.0, 3.1],
                        help="genome sizes (Gb) of the scale part")
    parser.add_argument("--scale-formats", nargs="+", choices=["plain", "gzip", "bgzip"],
                        help="FASTA variants whose cache build the scale part times (default: all three)")
    parser.add_argument("--scale-dir", type=Path, help="where the scale part writes its genomes (default: the "
                        "system's temporary folder; 3.1 Gb needs about 7 GB free)")
    parser.add_argument("--scale-cpu", type=int, help="the CPU the scale part's stages are pinned to (default: the last)")
    parser.add_argument("--scale-batches", type=int, default=2000, help="batches timed for the scale part's loader rate")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    load_at_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    for name in {*args.models, *args.gpu_models}:
        if not (ROOT / "conf" / "model" / f"{name}.yaml").is_file():
            parser.error(f"no model config conf/model/{name}.yaml")
    if args.steps is not None and args.steps <= WARMUP_STEPS:
        parser.error(f"--steps must exceed the {WARMUP_STEPS} warm-up steps")
    if args.gpu_steps <= WARMUP_STEPS:
        parser.error(f"--gpu-steps must exceed the {WARMUP_STEPS} warm-up steps")
    if any(size <= 0 or size > 10 for size in args.scale_sizes):
        parser.error("--scale-sizes must be in (0, 10] Gb")
    if args.scale_dir is not None and not args.scale_dir.is_dir():
        parser.error(f"--scale-dir {args.scale_dir}: not a folder")
    if args.scale_cpu is not None and hasattr(os, "sched_getaffinity") and args.scale_cpu not in os.sched_getaffinity(0):
        parser.error(f"--scale-cpu {args.scale_cpu}: not one of this process's CPUs {sorted(os.sched_getaffinity(0))}")
    if args.scale_batches < 1:
        parser.error("--scale-batches must be at least 1")
    if "scale" in args.parts:
        folder = args.scale_dir or Path(tempfile.gettempdir())
        free, need = shutil.disk_usage(folder).free, max(args.scale_sizes) * SCALE_DISK_BYTES_PER_GB
        if free < need:
            parser.error(f"{folder}: {free / 1e9:.1f} GB free, but the {max(args.scale_sizes):g} Gb genome of the "
                         f"scale part needs about {need / 1e9:.1f} GB (choose another --scale-dir)")
    parts = list(dict.fromkeys(args.parts))
    if "data" in parts and "targets" not in parts:
        parts.append("targets")
    logging.basicConfig(level=logging.WARNING)

    header = (f"{'part':<9} {'measure':<44} {'unit':<9} {'ours':>10} {'baseline':>10} {'ratio':>8} "
              f"{'peak MiB o/b':>13} {'+MiB o/b':>13}  candidates")
    print(header)
    print("-" * len(header))
    rows: list[dict] = []
    args.completed_rows = rows
    for name in parts:
        start = time.perf_counter()
        part_rows = PARTS[name](args)
        seconds = round(time.perf_counter() - start, 1)
        for r in part_rows:
            r["part_seconds"] = seconds
            print(format_row(r), flush=True)
        rows.extend(part_rows)
    if args.json:
        options = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "completed_rows"}
        report = {"command": "python -m gm.bench " + " ".join(argv if argv is not None else sys.argv[1:]),
                  "machine": {**machine(), "load_average_at_start": load_at_start}, "repeats": args.repeats,
                  "windows": args.windows, "options": options, "rows": rows}
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0

