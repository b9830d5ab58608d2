"""Part ``scale``: the data path on whole genomes, 0.1 to 3.1 Gb, each stage in its own process on one core.

For every size it writes a synthetic genome with hg38's structure (:mod:`gm.bench.synthetic`) in
a temporary folder and runs each stage in a fresh Python process pinned to one CPU, so its wall
time and peak RSS (VmHWM) are its own:

- ``cache``: the genome cache build that ``prepare_data`` runs, from each format (plain, gzip, bgzip);
- ``data``: opening the built cache and ``setup``; the epoch plan on one rank and as rank 0 of 8
  (build time, peak memory and what the plan keeps); time to the first training batch; steady
  throughput of the training loader (``num_workers=0``, after 10 batches);
- ``npmi``: counting every 1..6-gram of the gzip file and ranking the 6-mers, as ``analyze.py npmi`` does.

The ``growth`` rows divide each stage's time at the largest size by its time at the next one,
against the ratio of sizes: linear growth gives equal ratios. Targets (for 3.1 Gb): a cache build
within 10 minutes, NPMI within 5, peak RSS within 4 GiB at every stage.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gm.bench.common import MIB, Measured, _reset_peak_rss, _status_mib, row

TARGET_SECONDS = {"cache": 600.0, "npmi": 300.0}  # at 3.1 Gb, one core
TARGET_PEAK_MIB = 4096.0
TARGET_SIZE_GB = 3.1
#: temporary disk per Gb of the largest size: plain + gzip + bgzip text (1.7 GB), two caches (0.5 GB), slack
SCALE_DISK_BYTES_PER_GB = 2.4e9
_ENV_ONE_CORE = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


# ------------------------------------------------------------------------------------------ in the child process
def _reset_peak() -> float:
    """Reset the peak RSS to the current RSS (Linux); return the current RSS in MiB."""
    _reset_peak_rss()
    return _status_mib("VmRSS")


def _folder_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / MIB


def _stage_cache(fasta: Path, cache_dir: Path, min_bases: int) -> dict:
    from gm.data.fasta import build_or_load_cache, cache_dir_for

    before = _reset_peak()
    start = time.perf_counter()
    cache = build_or_load_cache(fasta, cache_dir, min_bases)
    seconds = time.perf_counter() - start
    directory = cache_dir_for(fasta, cache_dir, min_bases)
    return {"seconds": seconds, "rss_before_mib": before, "peak_rss_mib": _status_mib("VmHWM"),
            "cache_mib": _folder_mib(directory), "bases": cache.total_bases, "segments": int(cache.seg_length.size)}


def _stage_data(fasta: Path, cache_dir: Path, world: int, batches: int) -> dict:
    from gm.data.genome import GenomeDataModule

    out: dict = {}
    before = _reset_peak()
    start = time.perf_counter()
    data = GenomeDataModule(str(fasta), cache_dir=str(cache_dir))
    data.prepare_data()  # the cache exists: its checks only
    out["open_seconds"] = time.perf_counter() - start
    data.setup("fit")  # rank 0 of 1: split, both plans of epoch 0
    loader = data.train_dataloader()
    iterator = iter(loader)
    first = next(iterator)
    out["first_batch_seconds"] = time.perf_counter() - start
    out["setup_peak_rss_mib"], out["rss_before_mib"] = _status_mib("VmHWM"), before
    # steady throughput: after 10 batches, `batches` more
    for _ in range(9):
        next(iterator)
    windows = bases = tokens = 0
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(iterator)
        windows += int(batch["input_ids"].shape[0])
        bases += int(batch["windows"][:, 2].sum())
        tokens += int(batch["attention_mask"].sum())
    seconds = time.perf_counter() - start
    del first, batch, iterator
    out.update(steady_seconds=seconds, steady_windows=windows, steady_bases=bases, steady_tokens=tokens,
               loader_peak_rss_mib=_status_mib("VmHWM"))
    # the epoch plan, built afresh, on one rank and as rank 0 of `world`
    for ranks in (1, world):
        windows_of_rank = data.windows("train", 0, ranks)
        before = _reset_peak()
        start = time.perf_counter()
        plan = windows_of_rank.plan(0)
        out[f"plan{ranks}_seconds"] = time.perf_counter() - start
        out[f"plan{ranks}_peak_rss_mib"] = _status_mib("VmHWM")
        out[f"plan{ranks}_delta_mib"] = out[f"plan{ranks}_peak_rss_mib"] - before
        out[f"plan{ranks}_kept_mib"] = sum(a.nbytes for a in (plan.region, plan.start, plan.length, plan.reverse)) / MIB
        out[f"plan{ranks}_windows"] = len(plan)
        del windows_of_rank, plan
    out["train_bases"] = data.train_regions.bases
    return out


def _stage_npmi(fasta: Path) -> dict:
    from gm.masking.npmi import count_ngrams, rank_kmers

    before = _reset_peak()
    start = time.perf_counter()
    counts = count_ngrams(fasta, 6, progress=False)
    counted = time.perf_counter() - start
    rank_kmers(counts, 6)
    return {"seconds": time.perf_counter() - start, "count_seconds": counted, "rss_before_mib": before,
            "peak_rss_mib": _status_mib("VmHWM"), "bases": counts.bases}


def stage_main(argv: list[str]) -> int:
    """``python -m gm.bench.scale STAGE FASTA CACHE_DIR [MIN_BASES | WORLD BATCHES]``: one stage; prints its JSON line."""
    started = time.perf_counter()
    stage, fasta, cache_dir = argv[0], Path(argv[1]), Path(argv[2])
    import torch

    torch.set_num_threads(1)
    imported = time.perf_counter() - started
    if stage == "cache":
        result = _stage_cache(fasta, cache_dir, int(argv[3]))
    elif stage == "data":
        result = _stage_data(fasta, cache_dir, int(argv[3]), int(argv[4]))
    elif stage == "npmi":
        result = _stage_npmi(fasta)
    else:
        raise SystemExit(f"unknown stage {stage!r}")
    result["import_seconds"] = imported
    result["cpu_affinity"] = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    print("RESULT " + json.dumps(result), flush=True)
    return 0


# ------------------------------------------------------------------------------------------ in the benchmark
def _one_core(cpu: int | None):
    """A preexec_fn pinning the child to one CPU (the last one this process may use, unless told)."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    chosen = allowed[-1] if cpu is None else cpu
    return lambda: os.sched_setaffinity(0, {chosen})


def run_stage(*argv: str, cpu: int | None = None) -> dict:
    """Run one stage in a fresh process on one core and return what it measured."""
    env = {**os.environ, **_ENV_ONE_CORE}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "gm.bench.scale", *argv], env=env, capture_output=True, text=True,
                          preexec_fn=_one_core(cpu))
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"scale stage {argv[0]} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    result["process_seconds"] = time.perf_counter() - started
    return result


def _measured(seconds: float, peak: float, before: float) -> Measured:
    return Measured(seconds=seconds, peak_mib=peak, delta_mib=peak - before, runs=[seconds])


def _gb(bases: int) -> str:
    return f"{bases / 1e9:.3g} Gb"


def bench_scale(args: argparse.Namespace) -> list[dict]:
    """Every stage of the data path at each of ``--scale-sizes`` (Gb), in ``--scale-dir`` or a temporary folder."""
    from gm.bench.synthetic import FORMATS, layout, unknown_bases, write_genome
    from gm.data.genome import GenomeDataModule

    sizes = sorted(args.scale_sizes)
    formats = tuple(args.scale_formats or FORMATS)
    npmi_format = "gzip" if "gzip" in formats else formats[0]
    root = Path(tempfile.mkdtemp(prefix="gm-scale-", dir=args.scale_dir))
    rows: list[dict] = []
    nan = float("nan")
    timings: dict[tuple[str, float], float] = {}
    try:
        for size in sizes:
            total = round(size * 1e9)
            folder = root / f"{size:g}Gb"
            start = time.perf_counter()
            paths = write_genome(folder, total, formats=formats, level=1)
            generated = time.perf_counter() - start
            records = layout(total)
            common = {"size_gb": size, "bases": total, "records": len(records), "unknown_bases": unknown_bases(records),
                      "generate_seconds": generated, "file_mib": {f: p.stat().st_size / MIB for f, p in paths.items()}}
            print(f"# scale {size:g} Gb: genome written in {generated:.0f} s "
                  f"({', '.join(f'{f} {m:.0f} MiB' for f, m in common['file_mib'].items())})", file=sys.stderr, flush=True)
            kept_cache: Path | None = None
            min_bases = GenomeDataModule(str(paths[formats[0]])).min_bases  # the data config's default
            for fmt in formats:
                cache_dir = folder / f"cache-{fmt}"
                got = run_stage("cache", str(paths[fmt]), str(cache_dir), str(min_bases), cpu=args.scale_cpu)
                timings[(f"cache {fmt}", size)] = got["seconds"]
                met = _met(size, got["seconds"], TARGET_SECONDS["cache"], got["peak_rss_mib"])
                rows.append(row("scale", f"cache build, {size:g} Gb {fmt}", "Mb/s", total / 1e6 / got["seconds"], nan,
                                "build_or_load_cache (prepare_data)", "-",
                                _measured(got["seconds"], got["peak_rss_mib"], got["rss_before_mib"]),
                                stage="cache", format=fmt, seconds=got["seconds"], cache_mib=got["cache_mib"],
                                cache_bases=got["bases"], segments=got["segments"], **met, **common))
                if kept_cache is None:
                    kept_cache, kept_fasta = cache_dir, paths[fmt]
                else:
                    shutil.rmtree(cache_dir, ignore_errors=True)
            got = run_stage("data", str(kept_fasta), str(kept_cache), "8", str(args.scale_batches), cpu=args.scale_cpu)
            peak = max(got["setup_peak_rss_mib"], got["loader_peak_rss_mib"], got["plan1_peak_rss_mib"], got["plan8_peak_rss_mib"])
            timings[("first batch", size)] = got["first_batch_seconds"]
            rows.append(row("scale", f"open + setup + first batch, {size:g} Gb", "seconds", got["first_batch_seconds"],
                            nan, "prepare_data (built) + setup + next(iter(train_dataloader))", "-",
                            _measured(got["first_batch_seconds"], got["setup_peak_rss_mib"], got["rss_before_mib"]),
                            stage="first batch", open_seconds=got["open_seconds"], **_met(size, None, None, peak), **common))
            rows.append(row("scale", f"steady training loader, {size:g} Gb", "Mb/s",
                            got["steady_bases"] / 1e6 / got["steady_seconds"], nan,
                            f"train_dataloader, num_workers=0, {args.scale_batches} batches after 10", "-",
                            _measured(got["steady_seconds"], got["loader_peak_rss_mib"], got["rss_before_mib"]),
                            stage="loader", windows_per_s=got["steady_windows"] / got["steady_seconds"],
                            tokens_per_s=got["steady_tokens"] / got["steady_seconds"], **common))
            for ranks in (1, 8):
                timings[(f"plan {ranks}", size)] = got[f"plan{ranks}_seconds"]
                rows.append(row("scale", f"epoch plan, rank 0 of {ranks}, {size:g} Gb", "seconds", got[f"plan{ranks}_seconds"],
                                nan, "GenomeWindows.plan(0)", "-",
                                Measured(got[f"plan{ranks}_seconds"], got[f"plan{ranks}_peak_rss_mib"],
                                         got[f"plan{ranks}_delta_mib"], [got[f"plan{ranks}_seconds"]]),
                                stage=f"plan {ranks}", world_size=ranks, plan_windows=got[f"plan{ranks}_windows"],
                                plan_kept_mib=got[f"plan{ranks}_kept_mib"], train_bases=got["train_bases"], **common))
            shutil.rmtree(kept_cache, ignore_errors=True)
            got = run_stage("npmi", str(paths[npmi_format]), str(folder), cpu=args.scale_cpu)
            timings[("npmi", size)] = got["seconds"]
            rows.append(row("scale", f"NPMI count + rank, {size:g} Gb {npmi_format}", "Mb/s", total / 1e6 / got["seconds"],
                            nan, "count_ngrams(k=6) + rank_kmers", "-",
                            _measured(got["seconds"], got["peak_rss_mib"], got["rss_before_mib"]),
                            stage="npmi", format=npmi_format, seconds=got["seconds"], count_seconds=got["count_seconds"],
                            **_met(size, got["seconds"], TARGET_SECONDS["npmi"], got["peak_rss_mib"]), **common))
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rows.extend(_growth_rows(timings, sizes))
    return rows


def _met(size: float, seconds: float | None, target_seconds: float | None, peak_mib: float) -> dict:
    """Whether a stage meets its targets: peak RSS always; time at 3.1 Gb (scaled linearly to 3.1 Gb from other sizes)."""
    out = {"peak_target_mib": TARGET_PEAK_MIB, "peak_met": bool(peak_mib <= TARGET_PEAK_MIB)}
    if seconds is not None and target_seconds is not None:
        out["seconds_per_gb"] = seconds / size
        out["target_seconds_at_3.1Gb"] = target_seconds
        out["time_met" if math.isclose(size, TARGET_SIZE_GB) else "time_met_if_linear"] = bool(
            seconds / size * TARGET_SIZE_GB <= target_seconds)
    return out


def _growth_rows(timings: dict[tuple[str, float], float], sizes: list[float]) -> list[dict]:
    """Time ratio between the two largest sizes, for each stage, against their size ratio (linear: equal)."""
    if len(sizes) < 2:
        return []
    small, large = sizes[-2], sizes[-1]
    rows = []
    for stage in dict.fromkeys(name for name, _ in timings):
        if (stage, small) in timings and (stage, large) in timings and timings[(stage, small)] > 0:
            ratio = timings[(stage, large)] / timings[(stage, small)]
            rows.append(row("scale", f"growth {stage}, {small:g} -> {large:g} Gb", "x time", ratio, large / small,
                            "time ratio", "size ratio", stage=stage, note="linear: ratio 1x"))
    return rows


if __name__ == "__main__":
    sys.exit(stage_main(sys.argv[1:]))
