"""``python analyze.py efficiency``: pretraining steps each masking strategy needs to reach a probe score.

The papers' headline is sample efficiency (GeneMask at 10k steps against DNABERT at 120k). With the
probe callback (``callbacks=probe``) every pretraining run logs ``probe/<task>/mcc`` against step;
this reads those curves and reports, per strategy and task, the first step at which a run reaches
``fraction`` (0.9) of the reference strategy's (``kmer_span``, DNABERT's masking) final probe MCC,
averaged over the reference's pretraining seeds. Runs of one strategy are its pretraining seeds:
the table gives their mean, their range and a 95% t-interval. A run that never reaches the
threshold is *censored*: it is counted and shown as ``> last step``, never given a made-up number,
and a strategy with a censored seed gets no mean.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from gm.analysis.curves import load_runs, strategy_name
from gm.utils import GMError

PREFIX = "probe/"


@dataclass
class Reached:
    """One strategy on one task: the step each pretraining seed first reached the threshold (None: never)."""

    strategy: str
    task: str
    threshold: float | None  # None: the reference strategy ended at chance on this task
    steps: list[int | None] = field(default_factory=list)
    last_steps: list[int] = field(default_factory=list)
    final: list[float] = field(default_factory=list)  # each run's last probe value

    @property
    def reached(self) -> list[int]:
        return [s for s in self.steps if s is not None]

    def summary(self) -> dict:
        n, reached = len(self.steps), self.reached
        out = {"strategy": self.strategy, "task": self.task, "threshold": self.threshold, "runs": n,
               "reached": len(reached), "steps": self.steps, "final_mean": float(np.mean(self.final)) if self.final else None,
               "mean": None, "min": None, "max": None, "ci95": None}
        if reached:
            out["min"], out["max"] = min(reached), max(reached)
        if self.threshold is not None and n and len(reached) == n:  # a mean only when no seed is censored
            out["mean"] = float(np.mean(reached))
            if n >= 2:
                from scipy.stats import t

                half = float(t.ppf(0.975, n - 1) * np.std(reached, ddof=1) / math.sqrt(n))
                out["ci95"] = [out["mean"] - half, out["mean"] + half]
        return out


def tasks_of(runs) -> list[str]:
    return sorted({m[len(PREFIX):].rsplit("/", 1)[0] for r in runs for m in r.metrics if m.startswith(PREFIX) and m.endswith("/mcc")})


def steps_to_threshold(paths: Sequence[str | Path], reference: str = "kmer_span", fraction: float = 0.9,
                       metric: str = "mcc", labels: Sequence[str] | None = None) -> list[Reached]:
    """Per (strategy, task): the first step each run's ``probe/<task>/<metric>`` reaches ``fraction`` x the
    reference strategy's mean final value."""
    if not 0 < fraction <= 1:
        raise GMError(f"--fraction must be in (0, 1], got {fraction}")
    runs = load_runs(paths, labels)
    if labels is None:  # group by strategy: the seeds of one strategy share it
        for run in runs:
            run.label = strategy_name(run.config.get("masking")) or run.label
    tasks = tasks_of(runs)
    if not tasks:
        raise GMError("none of the runs logs probe/<task>/mcc: pretrain with callbacks=probe")
    strategies = sorted({r.label for r in runs})
    if reference not in strategies:
        raise GMError(f"--reference {reference}: no such strategy among the runs ({', '.join(strategies)})")
    out = []
    for task in tasks:
        key = f"{PREFIX}{task}/{metric}"
        finals = [float(r.metrics[key][1][-1]) for r in runs if r.label == reference and key in r.metrics]
        finals = [v for v in finals if math.isfinite(v)]
        # the reference at chance (MCC <= 0) sets no bar: the task's rows say so instead of a number
        threshold = fraction * float(np.mean(finals)) if finals and np.mean(finals) > 0 else None
        for strategy in strategies:
            row = Reached(strategy, task, threshold)
            for run in (r for r in runs if r.label == strategy and key in r.metrics):
                steps, values = run.metrics[key]
                hit = np.flatnonzero(np.nan_to_num(values, nan=-np.inf) >= threshold) if threshold is not None else np.array([])
                row.steps.append(int(steps[hit[0]]) if hit.size else None)
                row.last_steps.append(int(steps[-1]))
                row.final.append(float(values[-1]))
            if row.steps:
                out.append(row)
    return out


def to_markdown(rows: Sequence[Reached], reference: str, fraction: float) -> str:
    lines = [f"Steps to reach {fraction:.0%} of `{reference}`'s final probe MCC (mean over its seeds); per strategy "
             "the mean over pretraining seeds, [95% t-interval], (range); `>N`: a seed never reached it by its last step N.", "",
             "| task | threshold | strategy | seeds reached | steps: mean [95% CI] (range) | final probe MCC |",
             "| --- | ---: | --- | ---: | --- | ---: |"]
    for row in rows:
        s = row.summary()
        if row.threshold is None:
            lines.append(f"| {row.task} | - | {row.strategy} | - | no threshold: `{reference}` ends at chance | {s['final_mean']:.3f} |")
            continue
        if s["mean"] is not None:
            cell = f"{s['mean']:.0f}"
            if s["ci95"]:
                cell += f" [{s['ci95'][0]:.0f}, {s['ci95'][1]:.0f}]"
            cell += f" ({s['min']}-{s['max']})"
        else:
            cell = ", ".join(str(v) if v is not None else f">{last}" for v, last in zip(row.steps, row.last_steps))
        lines.append(f"| {row.task} | {row.threshold:.3f} | {row.strategy} | {s['reached']}/{s['runs']} | {cell} | {s['final_mean']:.3f} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ CLI
def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("efficiency", help="pretraining steps to reach a share of the reference strategy's final probe MCC",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("runs", type=Path, nargs="+", help="pretraining run folders logged with callbacks=probe (multirun folders expanded)")
    p.add_argument("--reference", default="kmer_span", help="the strategy whose final probe MCC sets the bar (default kmer_span)")
    p.add_argument("--fraction", type=float, default=0.9, help="share of the reference's final probe MCC (default 0.9)")
    p.add_argument("--out", type=Path, default=None, help="folder for efficiency.md and efficiency.json (default: print only)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """The ``efficiency`` command (errors: :func:`gm.analysis.cli.main`'s one-line boundary)."""
    from gm.analysis.cli import check_output_folder, write_report

    if args.out is not None:
        check_output_folder(args.out)
    rows = steps_to_threshold(args.runs, args.reference, args.fraction)
    text = to_markdown(rows, args.reference, args.fraction)
    print(text, end="")
    if args.out is not None:
        write_report(args.out, "efficiency", text, [r.summary() for r in rows])
    return 0
