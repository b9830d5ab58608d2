"""Pretraining curves of several runs in one figure: ``python analyze.py curves <run folders...>``.

A run folder is what ``train.py`` writes: ``csv/metrics.csv`` (Lightning's CSVLogger, with
``logger=csv``) and ``.hydra/config.yaml``. The CSV holds one row per logging event, so different
rows carry different metrics (train rows, validation rows, learning-rate rows) and the other cells
are empty; each metric is read from the rows where it has a value, against ``step``. A step logged
twice (a resumed run repeats a few) keeps its last value.

Labels come from the run's config (``.hydra/config.yaml``, else the resolved copy the CSV logger
keeps in ``csv/hparams.yaml``): the masking strategy from ``masking._target_`` and ``rank_by``
(``bert``, ``kmer_span``, ``genemask``, ``genemask (position)``, ``genemask (released)``,
``random_span``), the model size from ``hidden_size``/``num_hidden_layers`` (``tiny``, ``logo``,
``dnabert`` for the shipped presets, ``L<layers>/H<hidden>`` otherwise) and the ``task_name``
when it is not the default ``pretrain``. Runs that end up with the same label get their folder
name appended; ``--labels`` overrides them all.

A Hydra multirun folder (numbered job folders ``0/``, ``1/`` ...) stands for its jobs, in number order.

Runs logged with the probe (``callbacks=probe``: ``probe/<task>/mcc``) get a panel per task: probe MCC
against step, one line per label (the mean over the runs sharing it, e.g. pretraining seeds of one
strategy and model) with a band from their minimum to their maximum.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from gm.utils import GMError

log = logging.getLogger(__name__)

DEFAULT_OUT = Path(__file__).resolve().parents[2] / "outputs" / "curves.png"

#: (hidden_size, num_hidden_layers) of the shipped model presets
MODEL_SIZES = {(64, 2): "tiny", (256, 2): "logo", (768, 12): "dnabert"}

#: panels: title, [(metric, line style)], y label
PANELS: list[tuple[str, list[tuple[str, str]], str]] = [
    ("training loss", [("train/loss", "-")], "MLM loss"),
    ("masked-token accuracy", [("train/accuracy", "-"), ("val/accuracy", "--")], "accuracy (train solid, val dashed)"),
    ("masked fraction", [("train/masked_fraction", "-"), ("val/masked_fraction", "--")], "share of k-mers masked"),
    ("validation loss", [("val/loss", "-o")], "MLM loss"),
    # masking schedules: CM-STEP's Global-PMI probability, CM-GEMS's 0 -> 1 switch (a dotted line on every panel)
    ("masking phase", [("train/masking_phase", "-")], "0 = first strategy, 1 = second"),
]


@dataclass
class Run:
    """One run's metrics (name -> (steps, values), sorted by step) and its label."""

    folder: Path
    metrics_csv: Path
    metrics: dict[str, tuple[np.ndarray, np.ndarray]]
    config: dict[str, Any] = field(default_factory=dict)
    label: str = ""
    group: str = ""  # the label before a folder name made it unique: runs sharing it form one probe line


# ------------------------------------------------------------------------------------------ finding runs
def _metrics_file(folder: Path) -> Path | None:
    """The run's metrics.csv: ``csv/metrics.csv``, the newest ``csv/version_*/metrics.csv``, or ``metrics.csv``."""
    direct = folder / "csv" / "metrics.csv"
    if direct.is_file():
        return direct
    versions = sorted(folder.glob("csv/version_*/metrics.csv"),
                      key=lambda p: int(m.group(1)) if (m := re.search(r"version_(\d+)$", p.parent.name)) else -1)
    if versions:
        return versions[-1]
    if (folder / "metrics.csv").is_file():
        return folder / "metrics.csv"
    return None


def _jobs(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


def expand_runs(paths: Sequence[str | Path]) -> list[tuple[Path, Path]]:
    """(run folder, metrics.csv) for every path: a run folder, a metrics.csv, or a multirun folder of jobs.

    A path with no metrics (a crashed run, one logged without ``logger=csv``: common in a glob such
    as ``logs/pretrain/runs/*``) is skipped with a one-line note; only when no path has metrics is it
    an error, naming the path (or how many there were) and what was looked for. A path that does not
    exist is always an error (a typo, not a run without metrics).
    """
    runs, skipped = _expand(paths)
    _skip_or_fail(runs, skipped)
    return runs


def _expand(paths: Sequence[str | Path]) -> tuple[list[tuple[Path, Path]], list[tuple[Path, str]]]:
    """:func:`expand_runs`'s work: the runs found and the paths without metrics (path, why)."""
    if not paths:
        raise GMError("no run folders given")
    runs: list[tuple[Path, Path]] = []
    skipped: list[tuple[Path, str]] = []
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            if path.suffix != ".csv":
                skipped.append((path, "not a run folder or a metrics.csv"))
                continue
            folder = path.parent.parent if path.parent.name == "csv" else path.parent
            runs.append((folder, path))
            continue
        if not path.is_dir():
            raise GMError(f"{path}: no such run folder")
        metrics = _metrics_file(path)
        if metrics is not None:
            runs.append((path, metrics))
            continue
        jobs = _jobs(path)
        found = [(job, m) for job in jobs if (m := _metrics_file(job)) is not None]
        if not found:
            what = (f"nor in any of its {len(jobs)} numbered job folders" if jobs else "and no numbered multirun job folders")
            skipped.append((path, "no metrics.csv (looked for csv/metrics.csv, csv/version_*/metrics.csv and metrics.csv, "
                                  f"{what})"))
            continue
        missing = [job.name for job in jobs if _metrics_file(job) is None]
        if missing:
            log.warning("note: %s: job(s) %s have no metrics.csv and are left out", path, ", ".join(missing))
        runs.extend(found)
    return runs, skipped


def _skip_or_fail(kept: Sequence, skipped: list[tuple[Path, str]]) -> None:
    """A note per skipped path while something is left to plot; one clear error when nothing is."""
    if kept:
        for path, why in skipped:
            log.warning("note: %s: %s; skipped", path, why)
        return
    hint = "; was the run logged with logger=csv?" if any(why.startswith("no metrics.csv") for _, why in skipped) else ""
    if len(skipped) == 1:
        path, why = skipped[0]
        raise GMError(f"{path}: {why}{hint}")
    raise GMError(f"none of the {len(skipped)} paths given has logged metrics (" + ", ".join(str(p) for p, _ in skipped[:5])
                  + (", ..." if len(skipped) > 5 else "") + f"){hint}")


# ------------------------------------------------------------------------------------------ reading
class NoRowsError(GMError):
    """A metrics.csv with a header and no logged rows yet (a run that stopped before its first log)."""


def read_metrics(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """metric -> (steps, values) from a Lightning CSVLogger file; empty cells skipped, last value per step kept."""
    path = Path(path)
    try:
        handle = open(path, newline="")
    except OSError as err:
        raise GMError(f"{path}: cannot read ({err.strerror})") from None
    with handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if not header:
            raise GMError(f"{path}: empty file (expected a CSVLogger header with a 'step' column)")
        header = [h.strip() for h in header]
        if "step" not in header:
            raise GMError(f"{path}: no 'step' column (columns: {', '.join(header)}); not a Lightning CSVLogger metrics file")
        step_col = header.index("step")
        columns = [(i, name) for i, name in enumerate(header) if name not in ("step", "epoch") and name]
        points: dict[str, dict[int, float]] = {name: {} for _, name in columns}
        rows = 0
        for row in reader:
            if not row or all(not cell.strip() for cell in row):
                continue
            rows += 1
            cell = row[step_col].strip() if step_col < len(row) else ""
            if not cell:
                continue
            try:
                step = int(float(cell))
            except ValueError:
                raise GMError(f"{path}:{reader.line_num}: step {cell!r} is not a number") from None
            for i, name in columns:
                value = row[i].strip() if i < len(row) else ""
                if not value:
                    continue
                try:
                    points[name][step] = float(value)
                except ValueError:
                    raise GMError(f"{path}:{reader.line_num}: {name} = {value!r} is not a number") from None
    if rows == 0:
        raise NoRowsError(f"{path}: no logged rows yet (only the header)")
    out = {}
    for name, by_step in points.items():
        if by_step:
            steps = np.array(sorted(by_step), dtype=np.int64)
            out[name] = (steps, np.array([by_step[s] for s in steps.tolist()], dtype=float))
    return out


def read_config(folder: Path) -> dict[str, Any]:
    """The run's config as plain data (unresolved): ``.hydra/config.yaml``, else ``csv/hparams.yaml``; {} if neither."""
    import yaml

    for candidate in (folder / ".hydra" / "config.yaml", folder / "csv" / "hparams.yaml", folder / "hparams.yaml"):
        if candidate.is_file():
            try:
                data = yaml.safe_load(candidate.read_text())
            except yaml.YAMLError as err:
                raise GMError(f"{candidate}: not valid YAML ({err})") from None
            if isinstance(data, dict):
                return data
    return {}


def strategy_name(masking: dict[str, Any] | None) -> str | None:
    """Short name of a masking config: bert, kmer_span, genemask (+ variant), random_span."""
    if not isinstance(masking, dict) or not masking.get("_target_"):
        return None
    cls = str(masking["_target_"]).rsplit(".", 1)[-1]
    names = {"BertMasking": "bert", "KmerSpanMasking": "kmer_span", "RandomSpanMasking": "random_span",
             "StepCurriculum": "cm_step", "PlateauSwitch": "cm_gems"}
    if cls in names:
        return names[cls]
    if cls == "GeneMaskMasking":
        rank_by = str(masking.get("rank_by", "token"))
        all_high = masking.get("all_high_if_fewer_than") or 0
        if rank_by == "position" and _number(all_high) > 0:
            return "genemask (released)"
        return "genemask" if rank_by == "token" else f"genemask ({rank_by})"
    if cls == "GlobalPMIMasking":
        rank_by = str(masking.get("rank_by", "token"))
        return "global_pmi" if rank_by == "token" else f"global_pmi ({rank_by})"
    snake = re.sub(r"(?<=[a-z])(?=[A-Z])", "_", cls.removesuffix("Masking")).lower()
    return snake or cls


def switch_step(run: Run) -> float | None:
    """The step at which a CM-GEMS run's ``train/masking_phase`` jumps to 1 (None: no such jump)."""
    if "train/masking_phase" not in run.metrics:
        return None
    steps, phase = run.metrics["train/masking_phase"]
    jumps = np.flatnonzero((phase[1:] >= 1) & (phase[1:] - phase[:-1] > 0.5))
    return float(steps[jumps[0] + 1]) if jumps.size else None


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def model_size(model: dict[str, Any] | None) -> str | None:
    """``tiny``/``logo``/``dnabert`` for the presets' sizes, else ``L<layers>/H<hidden>``."""
    if not isinstance(model, dict):
        return None
    hidden, layers = _number(model.get("hidden_size")), _number(model.get("num_hidden_layers"))
    if not (math.isfinite(hidden) and math.isfinite(layers)):
        return None
    return MODEL_SIZES.get((int(hidden), int(layers)), f"L{int(layers)}/H{int(hidden)}")


def run_label(folder: Path, config: dict[str, Any]) -> str:
    parts = [p for p in (strategy_name(config.get("masking")), model_size(config.get("model"))) if p]
    task = config.get("task_name")
    if task and task != "pretrain":
        parts.append(str(task))
    return ", ".join(parts) if parts else folder.name


def load_runs(paths: Sequence[str | Path], labels: Sequence[str] | None = None) -> list[Run]:
    """Every run behind ``paths`` (multirun folders expanded), read and labelled."""
    found, skipped = _expand(paths)
    runs = []
    for folder, metrics in found:
        try:
            values = read_metrics(metrics)
        except NoRowsError as err:
            skipped.append((metrics, str(err).removeprefix(f"{metrics}: ")))
            continue
        config = read_config(folder)
        runs.append(Run(folder, metrics, values, config, run_label(folder, config)))
    _skip_or_fail(runs, skipped)
    if labels is not None and len(labels) != len(runs):
        raise GMError(f"--labels gives {len(labels)} label(s) for {len(runs)} run(s): "
                      + ", ".join(str(run.folder) for run in runs))
    if labels is not None:
        for run, label in zip(runs, labels):
            run.label = label
    for run in runs:
        run.group = run.label
    if labels is None:
        counts: dict[str, int] = {}
        for run in runs:
            counts[run.label] = counts.get(run.label, 0) + 1
        for run in runs:
            if counts[run.label] > 1:
                run.label = f"{run.label} [{_short_name(run.folder)}]"
    return runs


def _short_name(folder: Path) -> str:
    """The folder's name, with its parent's for numbered multirun jobs (``2025-01-01_10-00-00/3``)."""
    return f"{folder.parent.name}/{folder.name}" if folder.name.isdigit() else folder.name


# ------------------------------------------------------------------------------------------ plotting
def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average over ``window`` points (shorter at the start); window <= 1 returns the input."""
    values = np.asarray(values, dtype=float)
    if window <= 1 or values.size < 2:
        return values
    cumulative = np.concatenate(([0.0], np.cumsum(values)))
    idx = np.arange(1, values.size + 1)
    start = np.maximum(idx - window, 0)
    return (cumulative[idx] - cumulative[start]) / (idx - start)


def probe_tasks(runs: Sequence[Run]) -> list[str]:
    """The tasks any run has probe MCC for (``probe/<task>/mcc``), in first-seen order."""
    found = [m.split("/")[1] for r in runs for m in r.metrics if m.startswith("probe/") and m.endswith("/mcc")]
    return list(dict.fromkeys(found))


def seed_band(runs: Sequence[Run], metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(steps, mean, min, max) of ``metric`` over ``runs`` at every step any of them logged it (those that did)."""
    by_step: dict[int, list[float]] = {}
    for run in runs:
        if metric in run.metrics:
            for step, value in zip(*run.metrics[metric]):
                by_step.setdefault(int(step), []).append(float(value))
    steps = np.array(sorted(by_step), dtype=np.int64)
    values = [by_step[s] for s in steps.tolist()]
    return (steps, np.array([np.mean(v) for v in values]), np.array([min(v) for v in values]),
            np.array([max(v) for v in values]))


def plot_curves(paths: Sequence[str | Path], out: str | Path = DEFAULT_OUT, labels: Sequence[str] | None = None,
                smooth_window: int = 1, title: str = "") -> dict:
    """One PNG, a panel per metric present in any run, one line per run, against step; one colour per label.

    Probe panels (one per task with ``probe/<task>/mcc``) draw one line per label instead: the mean
    over the runs sharing it (pretraining seeds), with a band from their minimum to their maximum,
    in the colour of its first run. Training series are smoothed with a trailing mean of ``smooth_window`` logged points (the raw
    series is drawn faintly behind); validation points are never smoothed.
    """
    from gm.analysis.plots import check_figure_path, pyplot, save_figure

    if smooth_window < 1:
        raise GMError(f"--smooth must be at least 1 (1 = no smoothing), got {smooth_window}")
    check_figure_path(out)
    runs = load_runs(paths, labels)
    panels = [(t, [(m, s) for m, s in metrics if any(m in r.metrics for r in runs)], y) for t, metrics, y in PANELS]
    panels = [p for p in panels if p[1]]
    tasks = probe_tasks(runs)
    panels += [(f"probe MCC: {task}", [(f"probe/{task}/mcc", "-o")], "MCC (mean over runs; band: min-max)") for task in tasks]
    if not panels:
        found = sorted({m for r in runs for m in r.metrics})
        raise GMError("none of " + ", ".join(str(r.metrics_csv) for r in runs) + " logs train/loss, train/accuracy, "
                      f"train/masked_fraction, val/accuracy, val/loss or probe/<task>/mcc (found: {', '.join(found) or 'nothing'})")
    plt = pyplot()
    ncols = 1 if len(panels) == 1 else 2
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.6 * ncols, 3.6 * nrows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    # one colour per legend label: runs given the same --labels (pretraining seeds) share it in every panel
    label_colour = {label: colours[i % len(colours)] for i, label in enumerate(dict.fromkeys(r.label for r in runs))}
    colour_of = lambda run: label_colour[run.label]  # noqa: E731
    handles: dict[str, Any] = {}
    groups = list(dict.fromkeys(r.group for r in runs))
    for ax, (panel_title, metrics, ylabel) in zip(axes.flat, panels):
        if panel_title.startswith("probe MCC: "):  # one line per label, mean over its runs, band min-max
            for group in groups:
                members = [r for r in runs if r.group == group]
                steps, mean, low, high = seed_band(members, metrics[0][0])
                if not steps.size:
                    continue
                colour = colour_of(members[0])  # its first run's colour
                if len(members) > 1:
                    ax.fill_between(steps, low, high, color=colour, alpha=0.2, linewidth=0)
                (line,) = ax.plot(steps, mean, "-", color=colour, linewidth=1.5, marker="o", markersize=3.5)
                handles.setdefault(group if len(members) > 1 else members[0].label, line)
            ax.set_title(panel_title, fontsize=10)
            ax.set_xlabel("step")
            ax.set_ylabel(ylabel, fontsize=8)
            ax.grid(True, alpha=0.3)
            continue
        for run in runs:
            colour = colour_of(run)
            for metric, style in metrics:
                if metric not in run.metrics:
                    continue
                steps, values = run.metrics[metric]
                is_train = metric.startswith("train/")
                if is_train and smooth_window > 1:
                    ax.plot(steps, values, style.replace("o", ""), color=colour, alpha=0.25, linewidth=0.8)
                    values = smooth(values, smooth_window)
                marker = "o" if (not is_train and steps.size <= 50) or steps.size == 1 else None
                (line,) = ax.plot(steps, values, style.replace("o", ""), color=colour, linewidth=1.5,
                                  marker=marker, markersize=3.5)
                handles.setdefault(run.label, line)
        for run in runs:  # where a CM-GEMS run switched to its second strategy
            switched = switch_step(run)
            if switched is not None:
                ax.axvline(switched, color=colour_of(run), linestyle=":", linewidth=1.2)
        ax.set_title(panel_title, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel, fontsize=8)
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    note = f" (train series: trailing mean of {smooth_window} points)" if smooth_window > 1 else ""
    if any(switch_step(r) is not None for r in runs):
        note += "; dotted: a masking switch"
    fig.suptitle((title or "pretraining curves") + note, fontsize=11)
    fig.tight_layout()
    # below the panels; save_figure's tight bounding box keeps it in the PNG
    fig.legend(list(handles.values()), list(handles), loc="upper center", ncol=min(len(handles), 3) or 1,
               fontsize=9, frameon=False, bbox_to_anchor=(0.5, 0.0))
    path = save_figure(fig, out)
    plt.close(fig)
    return {"out": str(path), "runs": [{"folder": str(r.folder), "metrics_csv": str(r.metrics_csv), "label": r.label,
                                        "metrics": sorted(r.metrics), "switch_step": switch_step(r),
                                        "last_step": max((int(s[-1]) for s, _ in r.metrics.values()), default=None),
                                        "group": r.group, "colour": colour_of(r)}
                                       for r in runs],
            "probe_tasks": tasks,
            "panels": [t for t, _, _ in panels]}


# ------------------------------------------------------------------------------------------ CLI
def add_parser(subparsers) -> argparse.ArgumentParser:
    """The ``curves`` subcommand of ``analyze.py``."""
    p = subparsers.add_parser("curves", help="plot pretraining curves (loss, accuracy, masked fraction) of runs against step",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("runs", type=Path, nargs="+", help="run folders (with csv/metrics.csv), metrics.csv files or multirun folders")
    p.add_argument("--labels", nargs="+", default=None, help="one legend label per run (after multirun folders are expanded)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output PNG (default: outputs/curves.png)")
    p.add_argument("--smooth", type=int, default=1, help="trailing mean over this many logged points for train series (default 1: none)")
    p.add_argument("--title", default="", help="figure title")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run the ``curves`` subcommand; returns the exit status (2 on a GMError)."""
    import sys

    try:
        result = plot_curves(args.runs, args.out, args.labels, getattr(args, "smooth", 1), getattr(args, "title", ""))
    except GMError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for r in result["runs"]:
        print(f"{r['label']}: {r['metrics_csv']} (last step {r['last_step']})")
    print(f"wrote {result['out']}")
    return 0
