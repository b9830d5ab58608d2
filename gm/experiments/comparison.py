"""The paper's comparison in miniature, end to end and resumable (docs/results.md).

    python -m gm.experiments.comparison [--out logs/comparison] [--jobs 2] [--launcher slurm] [--dry-run]

1. pretrain the same model for the same steps with each masking strategy
   (``conf/experiment/comparison_pretrain.yaml``);
2. fine-tune every pretrained model, and a randomly initialised one, on the four tasks at
   10/50/100 shots with 3 seeds (``conf/experiment/comparison_finetune.yaml``);
3. aggregate (``analyze.py results``) and plot the pretraining curves (``analyze.py curves``).

Every stage is a plain ``train.py``/``finetune.py``/``analyze.py`` command (printed before it
runs), so the experiment is what a user would type. Running the script again resumes: a
pretraining run with its model exported is not started again and an interrupted one continues
from its last checkpoint (``ckpt_path=auto``); a fine-tuning job with ``results.json`` is not
re-run (``skip_done``). ``--launcher slurm`` submits each command's jobs with the submitit
launcher instead of running them here. Wall time and device of every command go to
``<out>/compute.json``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

from gm.models.mlm import PRETRAINING_META
from gm.utils import atomic_write_text

ROOT = Path(__file__).resolve().parents[2]
#: the strategies compared by default: the 2023 paper's, its controls, and the 2024 successor's (Global-PMI, CM-STEP, CM-GEMS)
MASKINGS = ("kmer_span", "genemask", "genemask_position", "random_span", "bert", "global_pmi", "cm_step", "cm_gems")
#: any of these can be chosen with --maskings
MASKING_CHOICES = (*MASKINGS, "genemask_released")
TASKS = ("prom_core", "prom_300", "cohn_enh", "splice_40")
RANDOM_INIT = "random_init"
#: the paired comparisons the reading needs: the claim, its two controls, and pretraining at all
COMPARISONS = (
    ("genemask", "kmer_span"),
    ("genemask", "genemask_position"),
    ("genemask", "random_span"),
    ("genemask", "bert"),
    ("cm_gems", "genemask"),  # the successor's claims: its curricula beat GeneMask and DNABERT at the same steps
    ("cm_step", "kmer_span"),
    ("global_pmi", "genemask"),
    ("kmer_span", RANDOM_INIT),
    ("genemask", RANDOM_INIT),
)


def pretrain_dir(out: Path, masking: str) -> Path:
    return out / "pretrain" / masking


def pretrained(out: Path, masking: str) -> bool:
    return (pretrain_dir(out, masking) / "hf" / PRETRAINING_META).is_file()


def pretrain_command(out: Path, masking: str, extra: list[str]) -> list[str]:
    # a one-job multirun, so that hydra/launcher=slurm can submit it; its folder is fixed, so it resumes
    return [
        sys.executable, str(ROOT / "train.py"), "-m", "experiment=comparison_pretrain", f"masking={masking}",
        f"hydra.sweep.dir={pretrain_dir(out, masking)}", "hydra.sweep.subdir=.", *extra,
    ]


def finetune_dir(out: Path, model: str) -> Path:
    return out / "finetune" / model


def finetuned(out: Path, model: str, task: str, shots: list[int], seeds: list[int]) -> bool:
    """Every job of (model, task) has its results (or was skipped: shots the task cannot supply)."""
    folder = finetune_dir(out, model) / task
    return all(
        (folder / f"shots{n}" / f"seed{s}" / "results.json").is_file()
        or (folder / f"shots{n}" / f"seed{s}" / "skipped.json").is_file()
        for n in shots
        for s in seeds
    )


def finetune_command(out: Path, model: str, task: str, shots: list[int], seeds: list[int], extra: list[str]) -> list[str]:
    source = ["pretrained=null", "model=tiny"] if model == RANDOM_INIT else [f"pretrained={pretrain_dir(out, model) / 'hf'}"]
    return [
        sys.executable, str(ROOT / "finetune.py"), "-m", "experiment=comparison_finetune", *source,
        f"pretrained_name={model}", f"data={task}", f"shots={','.join(map(str, shots))}",
        f"seed={','.join(map(str, seeds))}", f"hydra.sweep.dir={finetune_dir(out, model)}", *extra,
    ]


_COMPUTE_LOCK = threading.Lock()  # commands finish on several threads: one read-append-write at a time


def record_compute(out: Path, entry: dict) -> None:
    """Append one command's wall time to ``compute.json`` (rewritten atomically)."""
    path = out / "compute.json"
    with _COMPUTE_LOCK:
        entries = json.loads(path.read_text()) if path.is_file() else []
        entries.append(entry)
        atomic_write_text(path, json.dumps(entries, indent=2) + "\n")


def run(command: list[str], out: Path, stage: str, name: str, threads: int, dry_run: bool) -> int:
    # the whole command, interpreter included and shell-quoted, so that it can be pasted into a shell
    print("$ " + shlex.join(command), flush=True)
    if dry_run:
        return 0
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    env.setdefault("GM_LOG_DIR", str(out / "logs"))
    started = time.time()
    log_path = out / "console" / f"{stage}-{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log:
        code = subprocess.call(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    record_compute(out, {
        "stage": stage, "name": name, "returncode": code, "wall_seconds": round(time.time() - started, 1),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started)), "threads": threads,
        "device": f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores",
    })
    print(f"  {stage} {name}: exit {code} in {time.time() - started:.0f} s (log: {log_path})", flush=True)
    return code


def run_all(commands: list[tuple[str, list[str]]], out: Path, stage: str, jobs: int, dry_run: bool) -> bool:
    """Run ``(name, command)`` pairs, ``jobs`` at a time; False (after saying which) if any failed."""
    threads = max(1, (os.cpu_count() or 1) // max(1, jobs))
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        codes = list(pool.map(lambda item: run(item[1], out, stage, item[0], threads, dry_run), commands))
    failed = [name for (name, _), code in zip(commands, codes) if code != 0]
    if failed:
        print(f"error: {stage} failed for {failed}; see {out / 'console'}", file=sys.stderr)
    return not failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gm.experiments.comparison", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "logs" / "comparison", help="the experiment's folder")
    parser.add_argument("--maskings", nargs="+", default=list(MASKINGS), choices=list(MASKING_CHOICES))
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--shots", nargs="+", type=int, default=[10, 50, 100])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="commands run at once (threads are split between them)")
    parser.add_argument("--launcher", choices=["local", "slurm"], default="local")
    parser.add_argument("--pretrain-args", nargs="*", default=[], help="extra train.py overrides, e.g. model=logo trainer=gpu")
    parser.add_argument("--finetune-args", nargs="*", default=[], help="extra finetune.py overrides")
    parser.add_argument("--stages", nargs="+", default=["pretrain", "finetune", "analyze"], choices=["pretrain", "finetune", "analyze"])
    parser.add_argument("--dry-run", action="store_true", help="print the commands still to run (each ready to paste into a shell), run nothing")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    slurm = ["hydra/launcher=slurm"] if args.launcher == "slurm" else []

    if "pretrain" in args.stages:
        todo = [(m, pretrain_command(out, m, slurm + args.pretrain_args)) for m in args.maskings if not pretrained(out, m)]
        print(f"pretraining: {len(args.maskings) - len(todo)} done, {len(todo)} to run", flush=True)
        if not run_all(todo, out, "pretrain", args.jobs, args.dry_run):
            return 1

    if "finetune" in args.stages:
        models = [m for m in args.maskings if pretrained(out, m) or args.dry_run] + [RANDOM_INIT]
        todo = [
            (f"{model}-{task}", finetune_command(out, model, task, args.shots, args.seeds, slurm + args.finetune_args))
            for task in args.tasks
            for model in models
            if not finetuned(out, model, task, args.shots, args.seeds)
        ]
        print(f"fine-tuning: {len(models) * len(args.tasks) - len(todo)} (model, task) sweeps done, {len(todo)} to run", flush=True)
        if not run_all(todo, out, "finetune", args.jobs, args.dry_run):
            return 1

    if "analyze" in args.stages:
        done = [m for m in args.maskings if pretrained(out, m)]
        pairs = [(a, b) for a, b in COMPARISONS if {a, b} <= {*done, RANDOM_INIT}]
        compare = [arg for a, b in pairs for arg in ("--compare", a, b)]
        commands = [
            ("results", [sys.executable, str(ROOT / "analyze.py"), "results", str(out / "finetune"), "--out",
                         str(out / "analysis"), "--metrics", "accuracy", "f1_macro", "mcc", "auroc", *compare]),
        ]
        if done:
            commands.append(("curves", [sys.executable, str(ROOT / "analyze.py"), "curves",
                                        *[str(pretrain_dir(out, m)) for m in done], "--labels", *done, "--smooth", "5",
                                        "--title", "Pretraining curves (comparison)", "--out", str(out / "analysis" / "curves.png")]))
        if not run_all(commands, out, "analyze", 1, args.dry_run):
            return 1
        if not args.dry_run:
            print(f"results: {out / 'analysis' / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
