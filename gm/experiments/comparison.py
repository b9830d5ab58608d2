"""The masking comparison, end to end and resumable (docs/results.md).

    python -m gm.comparison [--design sample_efficiency|paper] [--out logs/<design>] [--gpu] [--launcher slurm] [--dry-run]

1. pretrain the same model for the same steps with each masking strategy and each pretraining
   seed (``conf/experiment/sample_efficiency_pretrain.yaml``, with the probe callback logging
   few-shot probe scores against step; ``--design paper``: ``comparison_pretrain.yaml``, one seed);
2. fine-tune every pretrained model, and a randomly initialised one, on the design's tasks, shots
   and seeds (``sample_efficiency_finetune.yaml`` and, beside it, the paper's protocol
   ``comparison_finetune.yaml``); fine-tuning seeds are numbered on from one pretraining seed to
   the next, so runs pair by seed across strategies (same pretraining seed, same shots);
3. aggregate (``analyze.py results``), plot the pretraining and probe curves (``analyze.py
   curves``), measure steps to a probe score (``analyze.py efficiency``) and the frozen features'
   geometry on the first task (``analyze.py features``, random initialisation beside).

Every stage is a plain ``train.py``/``finetune.py``/``analyze.py`` command (printed before it
runs), so the experiment is what a user would type. Running the script again resumes: a
pretraining run with its model exported is not started again and an interrupted one continues
from its last checkpoint (``ckpt_path=auto``); a fine-tuning job with ``results.json`` is not
re-run (``skip_done``). ``--launcher slurm`` submits each command's jobs with the submitit
launcher instead of running them here; ``--gpu`` uses the GPU-sized pretraining config and
``trainer=gpu``. Wall time and device of every command go to ``<out>/compute.json``.
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
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Design:
    """What an experiment pretrains and fine-tunes (the defaults of the command-line options)."""

    pretrain: str  # conf/experiment/<pretrain>.yaml (``<pretrain>_gpu`` with --gpu)
    pretrain_args: tuple[str, ...]  # overrides every pretraining command gets
    pretrain_seeds: tuple[int, ...]
    finetune: tuple[tuple[str, str], ...]  # (folder under --out, conf/experiment/<name>.yaml)
    tasks: tuple[str, ...]
    shots: tuple[int, ...]
    seeds: tuple[int, ...]  # fine-tuning seeds per pretraining seed
    random_init_model: tuple[str, ...]  # the architecture of random initialisation (as pretrained)


DESIGNS = {
    # issue 15: past the trivial phase, probe curves over steps, 3 pretraining seeds; the paper's
    # fine-tuning protocol beside settings chosen for the model size (on validation shots)
    "sample_efficiency": Design("sample_efficiency_pretrain", ("callbacks=probe",), (0, 1, 2),
                                (("finetune", "sample_efficiency_finetune"), ("finetune_paper", "comparison_finetune")),
                                ("prom_core", "prom_300"), (10, 100), (0, 1, 2),
                                ("model=tiny", "model.hidden_size=128", "model.intermediate_size=512")),  # as sample_efficiency_pretrain
    # the first run (docs/results.md, "the paper's protocol in miniature"): 1,500 steps, one seed
    "paper": Design("comparison_pretrain", (), (0,), (("finetune", "comparison_finetune"),), TASKS, (10, 50, 100),
                    (0, 1, 2), ("model=tiny",)),
}


def pretrain_dir(out: Path, masking: str, seed: int = 0) -> Path:
    return out / "pretrain" / masking / f"seed{seed}"


def pretrained(out: Path, masking: str, seed: int = 0) -> bool:
    return (pretrain_dir(out, masking, seed) / "hf" / PRETRAINING_META).is_file()


def pretrain_command(out: Path, masking: str, seed: int, experiment: str, extra: list[str]) -> list[str]:
    # a one-job multirun, so that hydra/launcher=slurm can submit it; its folder is fixed, so it resumes
    return [
        sys.executable, str(ROOT / "train.py"), "-m", f"experiment={experiment}", f"masking={masking}", f"seed={seed}",
        f"hydra.sweep.dir={pretrain_dir(out, masking, seed)}", "hydra.sweep.subdir=.", *extra,
    ]


def finetune_seeds(seeds: list[int], index: int) -> list[int]:
    """The fine-tuning seeds of the ``index``-th pretraining seed: numbered on, so every (model, seed) pair is unique."""
    return [index * (max(seeds) + 1) + s for s in seeds]


def finetune_dir(out: Path, model: str, seed: int | None = None, folder: str = "finetune") -> Path:
    return out / folder / model / (f"seed{seed}" if seed is not None else "")


def finetuned(out: Path, model: str, task: str, shots: list[int], seeds: list[int], pretrain_seed: int | None = None,
              folder: str = "finetune") -> bool:
    """Every job of (model, pretraining seed, task) has its results (or was skipped: shots the task cannot supply)."""
    base = finetune_dir(out, model, pretrain_seed, folder) / task
    return all(
        (base / f"shots{n}" / f"seed{s}" / "results.json").is_file()
        or (base / f"shots{n}" / f"seed{s}" / "skipped.json").is_file()
        for n in shots
        for s in seeds
    )


def finetune_command(out: Path, model: str, task: str, shots: list[int], seeds: list[int], extra: list[str],
                     pretrain_seed: int | None = None, folder: str = "finetune", experiment: str = "comparison_finetune",
                     random_init_model: tuple[str, ...] = ("model=tiny",)) -> list[str]:
    if model == RANDOM_INIT:
        source = ["pretrained=null", *random_init_model]
    else:
        source = [f"pretrained={pretrain_dir(out, model, pretrain_seed or 0) / 'hf'}"]
    return [
        sys.executable, str(ROOT / "finetune.py"), "-m", f"experiment={experiment}", *source,
        f"pretrained_name={model}", f"data={task}", f"shots={','.join(map(str, shots))}",
        f"seed={','.join(map(str, seeds))}", f"hydra.sweep.dir={finetune_dir(out, model, pretrain_seed, folder)}", *extra,
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
    print("$ " + shlex.join(command) + "\n", end="", flush=True)  # one write: lines of parallel commands never interleave
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
    parser = argparse.ArgumentParser(prog="python -m gm.comparison", description=__doc__.split("\n\n")[0])
    parser.add_argument("--design", choices=list(DESIGNS), default="sample_efficiency",
                        help="sample_efficiency (issue 15, the default) or paper (the first, 1,500-step run)")
    parser.add_argument("--out", type=Path, default=None, help="the experiment's folder (default logs/<design>; logs/comparison for paper)")
    parser.add_argument("--maskings", nargs="+", default=list(MASKINGS), choices=list(MASKING_CHOICES))
    parser.add_argument("--pretrain-seeds", nargs="+", type=int, default=None, help="pretraining seeds (default: the design's)")
    parser.add_argument("--tasks", nargs="+", default=None, choices=list(TASKS), help="fine-tuning tasks (default: the design's)")
    parser.add_argument("--shots", nargs="+", type=int, default=None)
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="fine-tuning seeds per pretraining seed")
    parser.add_argument("--jobs", type=int, default=2, help="commands run at once (threads are split between them)")
    parser.add_argument("--launcher", choices=["local", "slurm"], default="local")
    parser.add_argument("--gpu", action="store_true", help="the GPU-sized pretraining (<design>_gpu config) and trainer=gpu")
    parser.add_argument("--pretrain-args", nargs="*", default=[], help="extra train.py overrides, e.g. model=logo trainer=gpu")
    parser.add_argument("--finetune-args", nargs="*", default=[], help="extra finetune.py overrides")
    parser.add_argument("--stages", nargs="+", default=["pretrain", "finetune", "analyze"], choices=["pretrain", "finetune", "analyze"])
    parser.add_argument("--dry-run", action="store_true", help="print the commands still to run (each ready to paste into a shell), run nothing")
    args = parser.parse_args(argv)
    design = DESIGNS[args.design]
    pretrain_seeds = list(args.pretrain_seeds if args.pretrain_seeds is not None else design.pretrain_seeds)
    tasks = list(args.tasks or design.tasks)
    shots = list(args.shots or design.shots)
    seeds = list(args.seeds if args.seeds is not None else design.seeds)
    out = (args.out or ROOT / "logs" / ("comparison" if args.design == "paper" else args.design)).resolve()
    out.mkdir(parents=True, exist_ok=True)
    slurm = ["hydra/launcher=slurm"] if args.launcher == "slurm" else []
    gpu = ["trainer=gpu"] if args.gpu else []
    experiment = design.pretrain + ("_gpu" if args.gpu else "")
    runs = [(m, p) for m in args.maskings for p in pretrain_seeds]

    if "pretrain" in args.stages:
        todo = [(f"{m}-seed{p}", pretrain_command(out, m, p, experiment, [*design.pretrain_args, *slurm, *args.pretrain_args]))
                for m, p in runs if not pretrained(out, m, p)]
        print(f"pretraining: {len(runs) - len(todo)} done, {len(todo)} to run", flush=True)
        if not run_all(todo, out, "pretrain", args.jobs, args.dry_run):
            return 1

    if "finetune" in args.stages:
        done = [(m, p) for m, p in runs if pretrained(out, m, p) or args.dry_run]
        todo = []
        for folder, config in design.finetune:
            extra = [*slurm, *gpu, *args.finetune_args]
            for task in tasks:
                for m, p in done:
                    job_seeds = finetune_seeds(seeds, pretrain_seeds.index(p))
                    if not finetuned(out, m, task, shots, job_seeds, p, folder):
                        todo.append((f"{folder}-{m}-seed{p}-{task}",
                                     finetune_command(out, m, task, shots, job_seeds, extra, p, folder, config, design.random_init_model)))
                every_seed = [s for i in range(len(pretrain_seeds)) for s in finetune_seeds(seeds, i)]  # paired with each pretraining seed's
                if not finetuned(out, RANDOM_INIT, task, shots, every_seed, None, folder):
                    todo.append((f"{folder}-{RANDOM_INIT}-{task}", finetune_command(
                        out, RANDOM_INIT, task, shots, every_seed, extra, None, folder, config, design.random_init_model)))
        print(f"fine-tuning: {len(todo)} sweeps to run", flush=True)
        if not run_all(todo, out, "finetune", args.jobs, args.dry_run):
            return 1

    if "analyze" in args.stages:
        done = [(m, p) for m, p in runs if pretrained(out, m, p)]
        names = {m for m, _ in done}
        pairs = [(a, b) for a, b in COMPARISONS if {a, b} <= {*names, RANDOM_INIT}]
        compare = [arg for a, b in pairs for arg in ("--compare", a, b)]
        commands = []
        for folder, _ in design.finetune:
            if (out / folder).is_dir() or args.dry_run:
                commands.append((f"results-{folder}", [sys.executable, str(ROOT / "analyze.py"), "results", str(out / folder), "--out",
                                                       str(out / "analysis" / folder), "--metrics", "accuracy", "f1_macro", "mcc", "auroc", *compare]))
        if done:
            folders = [str(pretrain_dir(out, m, p)) for m, p in done]
            commands.append(("curves", [sys.executable, str(ROOT / "analyze.py"), "curves", *folders, "--labels", *[m for m, _ in done],
                                        "--smooth", "5", "--title", f"Pretraining curves ({args.design})",
                                        "--out", str(out / "analysis" / "curves.png")]))
            if "callbacks=probe" in design.pretrain_args and "kmer_span" in names:
                commands.append(("efficiency", [sys.executable, str(ROOT / "analyze.py"), "efficiency", *folders,
                                                "--reference", "kmer_span", "--out", str(out / "analysis")]))
            if "callbacks=probe" in design.pretrain_args:  # frozen-feature geometry on the first task (issue 15's Prom-core question)
                commands.append(("features", [sys.executable, str(ROOT / "analyze.py"), "features",
                                              *[f"{m}-seed{p}={pretrain_dir(out, m, p)}" for m, p in done], "--random-init",
                                              "--task", tasks[0], "--out", str(out / "analysis" / "features")]))
        if not run_all(commands, out, "analyze", 1, args.dry_run):
            return 1
        if not args.dry_run:
            print(f"results: {out / 'analysis'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
