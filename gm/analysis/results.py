"""Few-shot results: collect every fine-tuning run's ``results.json``, aggregate over seeds, report.

``python analyze.py results <folders...>`` is :func:`report`. The steps are public so that notebooks
can reuse them:

- :func:`collect` finds and validates every ``results.json`` under the given folders (recursively;
  sweeps from different days or machines combine) and returns one record (``dict``) per run.
- :func:`aggregate` groups the records by (task, shots, pretrained model label) and returns one
  :class:`ResultRow` per group: mean and sample standard deviation over seeds of each metric. Runs
  repeated with the same seed keep only the newest (by ``finished_at``), with a warning; runs of
  one task name on different data (``data_sha256``) are kept apart as ``<task>@<hash>``.
- :func:`to_markdown`, :func:`write_markdown`, :func:`write_csv` and :func:`write_figures` write
  the table, the CSV and one PNG per metric (``results_<metric>.png``), all atomically.

Test sets carved out of the training files (spec §5: tasks that ship none) are flagged wherever the
results are shown: a footnote in the Markdown, the ``test_source`` column of the CSV, the subplot
titles of the figures.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from gm.models.pretrained import RANDOM_INIT, model_label
from gm.utils import GMError, atomic_write_text

log = logging.getLogger("gm.analysis.results")

#: every metric a results.json may hold, in report order (AUROC is null for 3-class tasks)
METRICS = ("accuracy", "f1_macro", "mcc", "auroc")
#: metrics a results.json must hold (auroc may be absent or null)
REQUIRED_METRICS = ("accuracy", "f1_macro", "mcc")
#: top-level keys a results.json must hold (``pretrained`` may be null: a randomly initialised model)
REQUIRED_KEYS = ("task", "shots", "seed", "pretrained", "test_source", "metrics")
TEST_SOURCES = ("shipped", "carved", "given")  # given: the user's own test file (data=custom)
#: the spec's task order (§5); other tasks follow alphabetically
TASK_ORDER = ("prom_core", "prom_300", "cohn_enh", "splice_40")

CARVED_MARK = "†"
MIXED_MARK = "‡"
#: folders that hold no finished results: atomic_directory's temporaries and replaced copies
_SKIP_DIR = re.compile(r"^\.(tmp|old)-")


# ------------------------------------------------------------------------------------- collect
def collect(paths: Sequence[str | os.PathLike]) -> list[dict]:
    """Every run's record under ``paths`` (folders searched recursively, or ``results.json`` files).

    Each record is the file's JSON object plus ``_path`` (the file it came from), with
    ``pretrained_name`` filled in by :func:`model_label` where the file has none. A file found twice
    (overlapping folders) counts once. Raises :class:`GMError` naming the file for malformed JSON or
    missing/invalid keys, naming the path for one that does not exist, and naming the folders when
    no results are found.
    """
    if not paths:
        raise GMError("no results folders given")
    files: list[Path] = []
    seen: set[Path] = set()
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_file():
            found = [path]
        elif path.is_dir():
            found = sorted(_walk(path))
        else:
            raise GMError(f"{path}: no such file or folder")
        for file in found:
            key = file.resolve()
            if key not in seen:
                seen.add(key)
                files.append(file)
    if not files:
        raise GMError("no results.json found under " + ", ".join(str(Path(p)) for p in paths))
    return [_read_record(file) for file in files]


def _walk(folder: Path) -> Iterable[Path]:
    for root, dirs, names in os.walk(folder):  # does not follow symlinked folders: no loops
        dirs[:] = [d for d in dirs if not _SKIP_DIR.match(d)]
        if "results.json" in names:
            yield Path(root) / "results.json"


def _read_record(path: Path) -> dict:
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise GMError(f"{path}: cannot read: {err}") from None
    except json.JSONDecodeError as err:
        raise GMError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(record, dict):
        raise GMError(f"{path}: expected a JSON object, found {type(record).__name__}")
    missing = [key for key in REQUIRED_KEYS if key not in record]
    if missing:
        raise GMError(f"{path}: missing required key(s) {', '.join(missing)}")

    def bad(key: str, expected: str):
        return GMError(f"{path}: '{key}' should be {expected}, found {record.get(key)!r}")

    if not isinstance(record["task"], str) or not record["task"]:
        raise bad("task", "a task name")
    for key in ("shots", "seed"):
        if not _is_int(record[key]):
            raise bad(key, "an integer")
    if record["shots"] <= 0:
        raise bad("shots", "positive")
    if record["pretrained"] is not None and not isinstance(record["pretrained"], str):
        raise bad("pretrained", "a path, a hub id or null")
    if record["test_source"] not in TEST_SOURCES:
        raise bad("test_source", " or ".join(repr(s) for s in TEST_SOURCES))
    name = record.get("pretrained_name")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise bad("pretrained_name", "a non-empty label or absent")
    metrics = record["metrics"]
    if not isinstance(metrics, dict):
        raise bad("metrics", "an object of metric values")
    missing = [m for m in REQUIRED_METRICS if m not in metrics]
    if missing:
        raise GMError(f"{path}: 'metrics' is missing {', '.join(missing)}")
    for metric in METRICS:
        value = metrics.get(metric)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise GMError(f"{path}: metric '{metric}' should be a number or null, found {value!r}")
    finished = record.get("finished_at")
    if finished is not None:
        try:
            _parse_time(finished)
        except (TypeError, ValueError):
            raise bad("finished_at", "an ISO date-time") from None
    record = dict(record)
    record["pretrained_name"] = name.strip() if name else model_label(record["pretrained"])
    record["_path"] = str(path)
    return record


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_time(value: str) -> datetime:
    if not isinstance(value, str):
        raise TypeError(value)
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.astimezone()  # naive: the local time of the machine


# ------------------------------------------------------------------------------------ aggregate
@dataclass
class ResultRow:
    """One (task, shots, model) group: statistics over its seeds."""

    task: str
    shots: int
    model: str
    seeds: list[int]
    #: "shipped", "carved" or "mixed"
    test_source: str
    #: runs per test source, e.g. {"carved": 2, "shipped": 1} for a mixed group
    sources: dict[str, int]
    #: metric -> mean over the seeds that report it (NaN where none does, e.g. AUROC of a 3-class task)
    mean: dict[str, float] = field(default_factory=dict)
    #: metric -> sample standard deviation (ddof = 1; NaN for a single seed)
    std: dict[str, float] = field(default_factory=dict)
    #: metric -> number of seeds that report it
    count: dict[str, int] = field(default_factory=dict)
    #: number of classes, where every run of the group records the same ``label_names`` (else None)
    n_classes: int | None = None

    @property
    def n_seeds(self) -> int:
        return len(self.seeds)


def deduplicate(records: Sequence[dict]) -> list[dict]:
    """One record per (task, shots, model label, seed): the newest by ``finished_at``, with a warning.

    Runs on different data under one task name are told apart first (:func:`separate_data`).

    Records without ``finished_at`` count as older than any with one; ties go to the file modified
    last, then to the later path.
    """
    groups: dict[tuple, list[dict]] = {}
    for record in separate_data(records):
        groups.setdefault(_run_key(record), []).append(record)
    kept = []
    for key, group in groups.items():
        if len(group) > 1:
            group = sorted(group, key=_age_key)
            newest = group[-1]
            log.warning(
                "warning: %d runs of task %s, %d shots, model %r, seed %d: keeping the newest, %s (finished %s); ignoring %s",
                len(group), *key, _where(newest), newest.get("finished_at", "?"),
                ", ".join(_where(r) for r in group[:-1]),
            )
            kept.append(newest)
        else:
            kept.append(group[0])
    return kept


def separate_data(records: Sequence[dict]) -> list[dict]:
    """Runs of one task name and shot count on different data (``data_sha256``) are never merged.

    Where a (task, shots) holds more than one data hash, each run's task becomes
    ``<task>@<first 8 hex digits>``, with a warning; runs without a hash (older results) keep the
    task name and join the one hash there is, if there is only one.
    """
    hashes: dict[tuple, set[str]] = {}
    for record in records:
        if record.get("data_sha256"):
            hashes.setdefault((record["task"], record["shots"]), set()).add(record["data_sha256"])
    split = {key for key, found in hashes.items() if len(found) > 1}
    out = []
    for record in records:
        if (record["task"], record["shots"]) in split and record.get("data_sha256"):
            record = {**record, "task": f"{record['task']}@{record['data_sha256'][:8]}"}
        out.append(record)
    for task, shots in sorted(split, key=lambda key: (_task_rank(key[0]), key[1])):
        log.warning("warning: task %s, %d shots: runs on %d different data sets (by content hash) are kept apart as %s",
                    task, shots, len(hashes[task, shots]),
                    ", ".join(sorted(f"{task}@{h[:8]}" for h in hashes[task, shots])))
    return out


def _run_key(record: dict) -> tuple:
    return (record["task"], record["shots"], _label(record), record["seed"])


def _label(record: dict) -> str:
    return record.get("pretrained_name") or model_label(record.get("pretrained"))


def _where(record: dict) -> str:
    return record.get("_path", "<record>")


def _age_key(record: dict) -> tuple:
    finished = record.get("finished_at")
    moment = _parse_time(finished).timestamp() if finished else -math.inf
    try:
        mtime = os.stat(record["_path"]).st_mtime if "_path" in record else -math.inf
    except OSError:
        mtime = -math.inf
    return (moment, mtime, _where(record))


def aggregate(records: Sequence[dict], metrics: Sequence[str] = METRICS) -> list[ResultRow]:
    """Mean and sample standard deviation over seeds per (task, shots, model label), sorted.

    Rows come in the spec's task order, then by shots, then by model label ("random init" first).
    Duplicate runs are resolved by :func:`deduplicate`. A metric that is null (or NaN) in some runs
    of a group is averaged over the others (``count`` says how many); null in all of them is NaN.
    """
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise GMError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRICS)}")
    groups: dict[tuple, list[dict]] = {}
    for record in deduplicate(records):
        groups.setdefault((record["task"], record["shots"], _label(record)), []).append(record)
    rows = []
    for (task, shots, model), group in groups.items():
        group.sort(key=lambda r: r["seed"])
        _warn_if_label_is_ambiguous(task, shots, model, group)
        sources: dict[str, int] = {}
        for record in group:
            sources[record["test_source"]] = sources.get(record["test_source"], 0) + 1
        row = ResultRow(
            task=task,
            shots=shots,
            model=model,
            seeds=[r["seed"] for r in group],
            test_source=next(iter(sources)) if len(sources) == 1 else "mixed",
            sources=dict(sorted(sources.items())),
            n_classes=_n_classes(group),
        )
        for metric in metrics:
            values = np.array([r["metrics"].get(metric) for r in group], dtype=float)  # null -> NaN
            values = values[np.isfinite(values)]
            row.count[metric] = len(values)
            row.mean[metric] = float(values.mean()) if len(values) else math.nan
            row.std[metric] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
        rows.append(row)
    if any(row.test_source == "mixed" for row in rows):
        log.warning("warning: some groups mix carved and shipped test sets (marked %s in the table)", MIXED_MARK)
    rows.sort(key=lambda r: (_task_rank(r.task), r.shots, r.model != RANDOM_INIT, r.model))
    return rows


def _warn_if_label_is_ambiguous(task: str, shots: int, model: str, group: list[dict]) -> None:
    for key in ("pretrained", "model", "k"):
        values = {json.dumps(r.get(key), sort_keys=True) for r in group}
        if len(values) > 1:
            log.warning("warning: task %s, %d shots: label %r covers runs with different %s (%s); "
                        "set pretrained_name to tell them apart", task, shots, model, key, ", ".join(sorted(values)))


def _task_rank(task: str) -> tuple:
    return (TASK_ORDER.index(task), "") if task in TASK_ORDER else (len(TASK_ORDER), task)


# -------------------------------------------------------------------------------------- writers
def format_cell(mean: float, std: float, decimals: int = 3) -> str:
    """``'0.812 ± 0.034'``; ``'0.812 ± -'`` for one seed; ``'n/a'`` for a metric no run reports."""
    if math.isnan(mean):
        return "n/a"
    spread = "-" if math.isnan(std) else f"{std:.{decimals}f}"
    return f"{mean:.{decimals}f} ± {spread}"


def _used_metrics(rows: Sequence[ResultRow], metrics: Sequence[str] | None) -> list[str]:
    if metrics is not None:
        return list(metrics)
    return [m for m in METRICS if rows and m in rows[0].mean]


def to_markdown(rows: Sequence[ResultRow], metrics: Sequence[str] | None = None) -> str:
    """A Markdown table, one row per task/shots/model, cells 'mean ± std' (3 decimals), with notes.

    Tasks evaluated on a carved test set carry ``†`` and a footnote; groups that mix carved and
    shipped test sets carry ``‡``.
    """
    metrics = _used_metrics(rows, metrics)
    header = ["task", "shots", "model", "seeds", *metrics]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] * 3 + ["---:"] * (len(header) - 3)) + " |"]
    carved: list[str] = []
    mixed: list[str] = []
    for row in rows:
        mark = ""
        if row.test_source == "carved":
            mark = f" {CARVED_MARK}"
            carved += [row.task] if row.task not in carved else []
        elif row.test_source == "mixed":
            mark = f" {MIXED_MARK}"
            mixed += [f"{row.task} {row.shots} shots {row.model}"]
        cells = [f"{row.task}{mark}", str(row.shots), row.model, str(row.n_seeds)]
        cells += [format_cell(row.mean[m], row.std[m]) for m in metrics]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    notes = [
        "",
        "Mean ± sample standard deviation over seeds; '-': a single seed; n/a: not defined "
        "(AUROC of a 3-class task).",
    ]
    if carved:
        notes += ["", f"{CARVED_MARK} Carved test set ({', '.join(carved)}): the task ships no test set, so a fixed, "
                  "class-balanced, seeded test set was carved out of its shipped files and the training shots drawn "
                  "from the rest. These numbers are not on the published test sets."]
    if mixed:
        notes += ["", f"{MIXED_MARK} Mixed test sets: some seeds were evaluated on a carved test set and others on "
                  f"the shipped one ({'; '.join(mixed)}); their mean mixes two test sets."]
    return "\n".join(lines + notes) + "\n"


def write_markdown(rows: Sequence[ResultRow], path: str | os.PathLike, metrics: Sequence[str] | None = None) -> Path:
    """``results.md``: a title, the table of :func:`to_markdown` and its notes (written atomically)."""
    atomic_write_text(path, "# Few-shot results\n\n" + to_markdown(rows, metrics))
    return Path(path)


def csv_columns(metrics: Sequence[str]) -> list[str]:
    return ["task", "shots", "model", "n_seeds", "seeds", "test_source",
            *[f"{m}_{stat}" for m in metrics for stat in ("mean", "std")]]


def write_csv(rows: Sequence[ResultRow], path: str | os.PathLike, metrics: Sequence[str] | None = None) -> Path:
    """``results.csv``: one row per group; ``<metric>_mean`` and ``<metric>_std`` at full precision.

    ``seeds`` is ``;``-separated; ``test_source`` is shipped, carved or mixed. An undefined value
    (std of one seed, AUROC of a 3-class task) is an empty cell.
    """
    metrics = _used_metrics(rows, metrics)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(csv_columns(metrics))
    for row in rows:
        values = []
        for metric in metrics:
            values += ["" if math.isnan(row.mean[metric]) else repr(row.mean[metric]),
                       "" if math.isnan(row.std[metric]) else repr(row.std[metric])]
        writer.writerow([row.task, row.shots, row.model, row.n_seeds, ";".join(map(str, row.seeds)), row.test_source, *values])
    atomic_write_text(path, buffer.getvalue())
    return Path(path)


def _n_classes(group: Sequence[dict]) -> int | None:
    """The number of classes the runs record (``label_names``), if they all agree; else None."""
    sizes = {len(r["label_names"]) if isinstance(r.get("label_names"), list) else None for r in group}
    return sizes.pop() if len(sizes) == 1 else None


def chance_level(metric: str, rows: Sequence[ResultRow]) -> float | None:
    """The expected score of guessing at random on one task's test set, where it is known; else None.

    MCC 0 and AUROC 0.5 hold for any test set. Accuracy and macro-F1 of uniform guessing are 1/C
    only on a class-balanced test set, and results.json records no test class counts: the carved
    test sets are balanced by construction, so those get 1/C (C from ``label_names``); shipped and
    user-given ones get no line.
    """
    if metric == "mcc":
        return 0.0
    if metric == "auroc":
        return 0.5
    classes = {row.n_classes for row in rows}
    if metric in ("accuracy", "f1_macro") and {row.test_source for row in rows} == {"carved"} and len(classes) == 1:
        (n,) = classes
        return 1.0 / n if n else None
    return None


def write_figures(rows: Sequence[ResultRow], out: str | os.PathLike, metrics: Sequence[str] | None = None) -> list[Path]:
    """One PNG per metric, ``<out>/results_<metric>.png`` (see :func:`gm.analysis.plots.plot_results`).

    A metric no task defines (AUROC of 3-class tasks only) gets no figure, with a note.
    """
    from gm.analysis.plots import plot_results

    written = []
    for metric in _used_metrics(rows, metrics):
        path = plot_results(rows, metric, Path(out) / f"results_{metric}.png")
        if path is None:
            log.warning("note: no results_%s.png: %s is not defined for any task here", metric, metric)
        else:
            written.append(path)
    return written


@dataclass
class PairedComparison:
    """Model ``a`` against model ``b`` on the runs they share (same task, shots and seed, hence the
    same training shots and test set): the seed-by-seed differences of one metric."""

    a: str
    b: str
    metric: str
    cells: list[dict]  # per (task, shots): mean and std of the paired differences, seed spread of a and b
    differences: np.ndarray  # every paired difference a - b
    wins: int
    losses: int
    ties: int
    p_sign: float  # two-sided sign test over the paired runs
    p_wilcoxon: float  # two-sided Wilcoxon signed-rank test

    def to_markdown(self) -> str:
        lines = [
            f"### {self.a} vs {self.b}: {self.metric}, paired by (task, shots, seed)",
            "",
            f"| task | shots | seeds | {self.a} - {self.b} (mean +- std) | seed std of {self.a} | seed std of {self.b} |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for c in self.cells:
            lines.append(f"| {c['task']} | {c['shots']} | {c['n']} | {c['mean']:+.4f} +- {c['std']:.4f} | "
                         f"{c['std_a']:.4f} | {c['std_b']:.4f} |")
        d = self.differences
        lines += [
            "",
            f"Over all {d.size} paired runs: mean difference {d.mean():+.4f} (median {np.median(d):+.4f}); "
            f"{self.a} better in {self.wins}, worse in {self.losses}, tied in {self.ties}; "
            f"sign test p = {self.p_sign:.3g}, Wilcoxon signed-rank p = {self.p_wilcoxon:.3g}.",
            "",
        ]
        return "\n".join(lines)


def paired_comparison(records: Sequence[dict], a: str, b: str, metric: str = "mcc") -> PairedComparison:
    """Seed-by-seed differences of ``metric`` between two model labels, with a sign and a Wilcoxon test.

    Runs of the same (task, shots, seed) see the same training shots and test rows, so the
    difference of a pair is free of the sample's luck that dominates the spread over seeds.
    """
    from scipy.stats import binomtest, wilcoxon

    if metric not in METRICS:
        raise GMError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
    runs: dict[str, dict[tuple, float]] = {a: {}, b: {}}
    for record in deduplicate(records):
        label = _label(record)
        value = record["metrics"].get(metric)
        if label in runs and value is not None and math.isfinite(value):
            runs[label][(record["task"], record["shots"], record["seed"])] = float(value)
    missing = [label for label, found in runs.items() if not found]
    if missing:
        known = sorted({_label(r) for r in records})
        raise GMError(f"no {metric} results for model {', '.join(map(repr, missing))}; models found: {', '.join(known)}")
    shared = sorted(set(runs[a]) & set(runs[b]), key=lambda k: (_task_rank(k[0]), k[1], k[2]))
    if not shared:
        raise GMError(f"models {a!r} and {b!r} share no (task, shots, seed) run to compare")
    cells, differences = [], []
    for task, shots in dict.fromkeys((t, n) for t, n, _ in shared):
        keys = [k for k in shared if k[:2] == (task, shots)]
        va, vb = np.array([runs[a][k] for k in keys]), np.array([runs[b][k] for k in keys])
        diff = va - vb
        differences.extend(diff)
        spread = lambda v: float(v.std(ddof=1)) if v.size > 1 else math.nan  # noqa: E731
        cells.append({"task": task, "shots": shots, "n": len(keys), "mean": float(diff.mean()), "std": spread(diff),
                      "std_a": spread(va), "std_b": spread(vb)})
    d = np.array(differences)
    wins, losses = int((d > 0).sum()), int((d < 0).sum())
    p_sign = binomtest(wins, wins + losses).pvalue if wins + losses else 1.0
    p_wilcoxon = float(wilcoxon(d).pvalue) if np.any(d != 0) else 1.0
    return PairedComparison(a, b, metric, cells, d, wins, losses, int(d.size - wins - losses), float(p_sign), p_wilcoxon)


def report(paths: Sequence[str | os.PathLike], out: str | os.PathLike | None = None,
           metrics: Sequence[str] = METRICS, figures: bool = True, compare: Sequence[Sequence[str]] = ()) -> dict:
    """``python analyze.py results``: collect, aggregate, print the table, write md, csv and PNGs.

    ``out`` defaults to the first path (its folder, if it is a file). Returns the rows and the paths
    written.
    """
    metrics = list(dict.fromkeys(metrics))
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise GMError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRICS)}")
    records = collect(paths)
    rows = aggregate(records, metrics)
    if out is None:
        first = Path(paths[0]).expanduser()
        out = first.parent if first.is_file() else first
    out = Path(out)
    print(to_markdown(rows, metrics), end="")
    written = [write_markdown(rows, out / "results.md", metrics), write_csv(rows, out / "results.csv", metrics)]
    if figures:
        written += write_figures(rows, out, metrics)
    comparisons = []
    for a, b in compare:
        comparisons += [paired_comparison(records, a, b, metric) for metric in metrics if metric in ("accuracy", "mcc")]
    if comparisons:
        text = "\n".join(c.to_markdown() for c in comparisons)
        print("\n" + text, end="")
        atomic_write_text(out / "comparisons.md", text)
        written.append(out / "comparisons.md")
    print(f"\n{len(records)} runs, {len(rows)} groups; wrote " + ", ".join(str(p) for p in written))
    return {"records": records, "rows": rows, "written": written, "comparisons": comparisons}
