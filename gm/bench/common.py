"""Timing and memory, side by side: the helpers every benchmark part uses, and the shared settings.

:func:`side_by_side` runs candidates alternately (interleaved repeats) and keeps each one's median
time and peak memory (:func:`peak_memory`: peak RSS on CPU, peak allocated CUDA memory on a GPU);
:func:`row` makes a result row of ours against a baseline; :class:`StepClock` times training steps
after warm-up.
"""

from __future__ import annotations

import ctypes
import gc
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[2]
GENOME = ROOT / "data" / "genome" / "hg38_chr2_1-2333275.fa.gz"
K = 6
VOCAB_SIZE = 4**K + 5
BATCH = 10  # the data module's default batch size (GeneMask's)
WARMUP_STEPS = 2  # training steps at the start of every run that are not timed
TRAIN_STEPS = {"tiny": 40, "logo": 8, "dnabert": 8}  # steps per run in the train part (~6 and ~10 s)
PADDING_BATCHES = {"tiny": 30, "logo": 8, "dnabert": 8}  # timed batches per run in the padding part
GPU_BATCH = {"dnabert": 32, "logo": 64}
MIB = 2**20


# ------------------------------------------------------------------------------------------ timing and memory
@dataclass
class Measured:
    """One candidate: median seconds of its timed runs, and the peak memory and increase of one more run."""

    seconds: float
    peak_mib: float
    delta_mib: float
    runs: list[float]


_LIBC: Any = None


def _release_memory(cuda: bool) -> None:
    """Give freed memory back (to the OS, or CUDA's cache) so the next run's increase is its own."""
    global _LIBC
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        return
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


def _status_mib(field: str, pid: str = "self") -> float:
    """A ``VmRSS``/``VmHWM``-style field of /proc/<pid>/status in MiB (NaN where unreadable)."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return float("nan")


def _reset_peak_rss() -> bool:
    """Reset VmHWM (the process's peak RSS) to the current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_memory(fn: Callable[[], object], device: torch.device | str | None = None) -> tuple[float, float, float]:
    """``(seconds, peak_mib, delta_mib)`` of one call: wall time, peak memory, increase over before.

    On CPU the peak is the process's peak RSS (VmHWM, reset through /proc/self/clear_refs) and
    the increase is over the RSS just before the call; DataLoader workers are other processes
    and not included. On CUDA it is ``torch.cuda.max_memory_allocated`` and the increase over
    ``memory_allocated`` before. NaN where neither can be read.
    """
    cuda = device is not None and torch.device(device).type == "cuda"
    _release_memory(cuda)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / MIB
    else:
        before = _status_mib("VmRSS") if _reset_peak_rss() else float("nan")
    start = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if cuda:
        peak = torch.cuda.max_memory_allocated() / MIB
    else:
        peak = _status_mib("VmHWM") if before == before else float("nan")
    return seconds, peak, peak - before


def side_by_side(
    candidates: dict[str, Callable[[], object]],
    repeats: int,
    *,
    warmup: bool = True,
    self_timed: bool = False,
    device: torch.device | str | None = None,
) -> dict[str, Measured]:
    """Each candidate over ``repeats`` interleaved runs (after one untimed warm-up each, if ``warmup``).

    ``self_timed`` candidates return their own seconds (a steady-state interval, say), used
    instead of the call's wall time. Memory is measured in one more run of each candidate after
    the timed ones: resetting the peak (and handing freed memory back to the OS first) would
    otherwise add page faults to short timed runs.
    """
    if warmup:
        for fn in candidates.values():
            fn()
    runs: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            if device is not None and torch.device(device).type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            returned = fn()
            if device is not None and torch.device(device).type == "cuda":
                torch.cuda.synchronize()
            runs[name].append(float(returned) if self_timed else time.perf_counter() - start)  # type: ignore[arg-type]
    memory = {name: peak_memory(fn, device) for name, fn in candidates.items()}
    return {
        name: Measured(seconds=statistics.median(times), peak_mib=memory[name][1], delta_mib=memory[name][2], runs=times)
        for name, times in runs.items()
    }


def row(
    part: str,
    measure: str,
    unit: str,
    ours: float,
    baseline: float,
    ours_name: str,
    baseline_name: str,
    ours_run: Measured | None = None,
    baseline_run: Measured | None = None,
    **extra: Any,
) -> dict:
    nan = float("nan")
    return {
        "part": part, "measure": measure, "unit": unit, "ours": ours, "baseline": baseline,
        "ratio": ours / baseline if baseline else nan, "ours_name": ours_name, "baseline_name": baseline_name,
        "ours_peak_mib": ours_run.peak_mib if ours_run else nan,
        "ours_delta_mib": ours_run.delta_mib if ours_run else nan,
        "baseline_peak_mib": baseline_run.peak_mib if baseline_run else nan,
        "baseline_delta_mib": baseline_run.delta_mib if baseline_run else nan,
        "ours_runs_s": ours_run.runs if ours_run else [],  # every timed run, to judge the noise
        "baseline_runs_s": baseline_run.runs if baseline_run else [],
        **extra,
    }


def time_call(fn: Callable[[], object]) -> float:
    """Wall seconds of one call (for a self-timed candidate that has no steady state to find)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class StepClock:
    """Seconds of the steps after the warm-up: from the end of step ``warmup - 1`` to the end of the last.

    Step ends are taken back to back, so data loading and framework work between steps count.
    On CUDA it synchronises at those two ends only, leaving the steps in between asynchronous.
    """

    def __init__(self, device: torch.device, steps: int, warmup: int = WARMUP_STEPS) -> None:
        if not 1 <= warmup < steps:
            raise ValueError(f"need 1 <= warm-up steps ({warmup}) < steps ({steps})")
        self.cuda, self.steps, self.warmup = device.type == "cuda", steps, warmup
        self.start = self.end = float("nan")

    def tick(self, step: int) -> None:
        """Call at the end of step ``step`` (0-based)."""
        if step in (self.warmup - 1, self.steps - 1):
            if self.cuda:
                torch.cuda.synchronize()
            if step == self.warmup - 1:
                self.start = time.perf_counter()
            else:
                self.end = time.perf_counter()

    @property
    def seconds(self) -> float:
        return self.end - self.start


