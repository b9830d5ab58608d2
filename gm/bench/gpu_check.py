"""The one-command GPU check: ``bash scripts/gpu_check.sh [out folder]`` (docs/benchmarks.md, "GPU check").

What must hold on a CUDA machine, checked and measured in one go, each step timed and recorded (a
failing step does not stop the others):

1. ``cuda-tests``: every CUDA-parametrised test (``pytest -k cuda``: masking on the device, its
   plan equal to the CPU's, seeded runs repeating);
2. ``no-host-sync``: every masking strategy masks a batch under ``torch.cuda.set_sync_debug_mode("error")``
   with tensor read-backs refused (the ``test_no_masking_strategy_reads_back_to_the_host[cuda-*]`` tests);
3. ``bench-gpu``: ``python -m gm.bench --parts gpu`` (tokens/s, MFU, peak memory; dnabert and logo;
   eager and ``torch.compile``; bf16);
4. ``train-dnabert``: 100 steps of ``train.py model=dnabert trainer=gpu masking=genemask`` on the
   embedded sample (finite losses, tokens/s).

Writes ``gpu_check.json`` and ``gpu_check.md`` into the output folder. Without a CUDA device it
says so in one line and exits 2, before running anything. Sized for under 8 minutes on one modern GPU.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from gm.utils import GMError, atomic_write_text

ROOT = Path(__file__).resolve().parents[2]
#: what a step's command returns: (exit code, combined output)
Runner = Callable[[list[str], float], tuple[int, str]]


@dataclass
class Step:
    name: str
    command: list[str]
    timeout: float  # seconds
    summarise: Callable[[Path, str], dict] = field(default=lambda out, text: {})


def run_subprocess(command: list[str], timeout: float) -> tuple[int, str]:
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                              env=dict(os.environ, PYTHONUNBUFFERED="1"))
    except subprocess.TimeoutExpired as err:
        output = (err.stdout or "") if isinstance(err.stdout, str) else (err.stdout or b"").decode(errors="replace")
        return 124, output + f"\n(stopped after {timeout:.0f} s)"
    return done.returncode, done.stdout + done.stderr


def _pytest_summary(out: Path, text: str) -> dict:
    """The last line pytest prints: '12 passed, 1 skipped in 3.2s'."""
    lines = [line.strip("= ") for line in text.splitlines() if " in " in line and ("passed" in line or "failed" in line)]
    return {"pytest": lines[-1]} if lines else {}


def _bench_summary(out: Path, text: str) -> dict:
    path = out / "bench_gpu.json"
    if not path.is_file():
        return {}
    rows = json.loads(path.read_text()).get("rows", [])
    keep = ("measure", "unit", "ours", "baseline", "ratio", "ours_name", "baseline_name", "skipped")
    return {"rows": [{k: r[k] for k in keep if k in r} for r in rows]}


def _train_summary(out: Path, text: str) -> dict:
    path = out / "train" / "csv" / "metrics.csv"
    if not path.is_file():
        return {}
    with open(path) as handle:
        rows = list(csv.DictReader(handle))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    speeds = [float(r["train/tokens_per_sec"]) for r in rows if r.get("train/tokens_per_sec")]
    return {"steps_logged": len(losses), "last_loss": losses[-1] if losses else None,
            "losses_finite": all(math.isfinite(v) for v in losses) if losses else None,
            "tokens_per_sec_last": speeds[-1] if speeds else None}


def steps(out: Path) -> list[Step]:
    python = sys.executable
    return [
        Step("cuda-tests", [python, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", "-k", "cuda and not reads_back_to_the_host", "tests"],
             300, _pytest_summary),
        Step("no-host-sync", [python, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", "-k", "reads_back_to_the_host and cuda",
                              "tests/test_masking.py"], 120, _pytest_summary),
        Step("bench-gpu", [python, "-m", "gm.bench", "--parts", "gpu", "--repeats", "2", "--json", str(out / "bench_gpu.json")],
             240, _bench_summary),
        Step("train-dnabert", [python, str(ROOT / "train.py"), "model=dnabert", "trainer=gpu", "masking=genemask",
                               "trainer.max_steps=100", "trainer.val_check_interval=50", "trainer.limit_val_batches=5",
                               "trainer.log_every_n_steps=10", "logger=csv", "export_hf=false", "ckpt_path=null",
                               f"hydra.run.dir={out / 'train'}"], 300, _train_summary),
    ]


def run_check(out: Path, runner: Runner = run_subprocess, plan: list[Step] | None = None) -> dict:
    """Run every step (none stops the others) and write gpu_check.json and gpu_check.md; returns the report."""
    out.mkdir(parents=True, exist_ok=True)
    import torch

    report = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
              "torch": torch.__version__, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "steps": []}
    for step in plan if plan is not None else steps(out):
        print(f"gpu check: {step.name} ...", flush=True)
        started = time.perf_counter()
        code, text = runner(step.command, step.timeout)
        record = {"name": step.name, "command": " ".join(step.command), "returncode": code,
                  "ok": code == 0, "seconds": round(time.perf_counter() - started, 1), **step.summarise(out, text)}
        if code != 0:
            record["output_tail"] = text[-2000:]
        (out / f"{step.name}.log").write_text(text)
        report["steps"].append(record)
        print(f"gpu check: {step.name} {'ok' if code == 0 else f'FAILED (exit {code})'} in {record['seconds']} s", flush=True)
    report["ok"] = all(s["ok"] for s in report["steps"])
    atomic_write_text(out / "gpu_check.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out / "gpu_check.md", to_markdown(report))
    return report


def to_markdown(report: dict) -> str:
    lines = [f"GPU check on {report['device']} (torch {report['torch']}, {report['started']})", "",
             "| step | result | seconds | what it measured |", "| --- | --- | ---: | --- |"]
    for s in report["steps"]:
        measured = s.get("pytest") or (f"last loss {s['last_loss']:.3f}, {s['tokens_per_sec_last']:.0f} tokens/s"
                                       if s.get("last_loss") is not None and s.get("tokens_per_sec_last") is not None else "")
        if s.get("rows"):
            measured = "; ".join(f"{r.get('measure')}: {_number(r.get('ours'))} {r.get('unit', '')} "
                                 f"({r.get('ours_name', 'ours')}) vs {_number(r.get('baseline'))} ({r.get('baseline_name', 'baseline')})"
                                 if "ours" in r else f"{r.get('measure')}: {r.get('skipped', '')}" for r in s["rows"])
        lines.append(f"| {s['name']} | {'ok' if s['ok'] else 'FAILED (exit %d)' % s['returncode']} | {s['seconds']} | {measured} |")
    return "\n".join(lines) + "\n"


def _number(value) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else str(value)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0]) if argv else ROOT / "outputs" / "gpu_check" / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    try:
        try:
            import torch
        except ImportError as err:
            raise GMError(f"{sys.executable} cannot import torch ({err}); activate the project's virtual "
                          "environment (README: python3 -m venv .venv && . .venv/bin/activate && "
                          "pip install -r requirements.txt); nothing was run") from err
        if not torch.cuda.is_available():
            raise GMError("no CUDA device: the GPU check needs one (torch "
                          f"{torch.__version__}, CUDA build: {torch.version.cuda or 'none'}); nothing was run")
        report = run_check(out)
    except GMError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"gpu check: {'all steps ok' if report['ok'] else 'some steps FAILED'}; {out / 'gpu_check.md'}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
