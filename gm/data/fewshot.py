"""Few-shot classification data (spec §5): the four GeneMask tasks, custom files, splits, batches.

The shipped files (``data/fewshot/<Task>/<shots>/train.tsv.gz``) store sequences as space-separated
overlapping 6-mers; everything here works on raw bases instead, so any k can be used downstream
and k-mer files, raw files, TSV and CSV all look the same once read.

Split policy (one rule for every task, custom ones included):

- Task with a test set: the training shots are the shipped file for that shot count (the paper's
  exact split, its few train/test duplicates reported in ``train_test_overlap``, never dropped),
  or, when there is none or ``resample=True``, ``shots`` per class drawn with ``seed`` from the
  union of the task's training files, de-duplicated, minus every test sequence.
- Task without a test set (Prom-300, Cohn-enh): a class-balanced test set is carved with
  ``carve_seed`` alone (never the run seed or the shot count, so every run of a sweep is scored
  on the same rows) from the de-duplicated union of all shipped files; the shots are always drawn
  from the rest, so no sequence is in both.
- A shot count the data cannot supply is an error (:class:`ShotsUnavailableError`), never a
  silent shrink. Draws are nested: for one seed the 10-shot sample is part of the 50-shot one.
"""

from __future__ import annotations

import csv
import functools
import gzip
import hashlib
import io
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from gm.data.tokenizer import KmerTokenizer
from gm.utils import GMError

log = logging.getLogger(__name__)

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "data" / "fewshot"

#: Carved test size of custom data without a test file when test_per_class is not given:
#: this share of the smallest class's distinct sequences, per class.
CUSTOM_TEST_FRACTION = 0.2
# Independent random streams: the same seed must not couple the carve, the draw and the val split.
_CARVE_STREAM, _DRAW_STREAM, _VAL_STREAM = 1, 2, 3
_ALLOWED = np.zeros(256, dtype=bool)
_ALLOWED[np.frombuffer(b"ACGTN", dtype=np.uint8)] = True


class ShotsUnavailableError(GMError):
    """The data cannot supply the requested shots per class (sweeps may skip such jobs)."""

    def __init__(self, message: str, available: int) -> None:
        super().__init__(message)
        self.available = available


# ------------------------------------------------------------------------------------------ tasks
@dataclass(frozen=True)
class TaskSpec:
    """One benchmark task; file paths are relative to the few-shot data directory."""

    name: str
    folder: str
    num_classes: int
    bases: int  # nominal sequence length
    shot_files: dict[int, str]  # shots per class -> shipped training file
    test_file: str | None = None
    extra_files: tuple[str, ...] = ()  # more labelled rows for the pool (Splice-40's dev set)
    test_per_class: int | None = None  # size of the carved test set when no test file is shipped

    @property
    def label_names(self) -> list[str]:
        return [str(i) for i in range(self.num_classes)]

    @property
    def train_files(self) -> list[str]:
        return [self.shot_files[n] for n in sorted(self.shot_files)] + list(self.extra_files)


def _shots(folder: str, counts: Sequence[int], scale: int = 1) -> dict[int, str]:
    return {n * scale: f"{folder}/{n}/train.tsv.gz" for n in counts}


#: The paper's four tasks. Carved test sizes: Prom-300's union holds 1,626 / 1,634 distinct
#: sequences per class, so 500 per class leaves 1,126 for its largest file (1,000 shots).
#: Cohn-enh's holds 653 / 647 (a few rows repeat across its files), so 147 per class is the
#: largest test set that still leaves the 500 shots of its largest file (150 would leave 497).
TASKS: dict[str, TaskSpec] = {
    "prom_core": TaskSpec("prom_core", "Prom-core", 2, 70, _shots("Prom-core", (10, 50, 100, 500, 1000)),
                          test_file="Prom-core/test.tsv.gz"),
    "prom_300": TaskSpec("prom_300", "Prom-300", 2, 300, _shots("Prom-300", (10, 50, 100, 500, 1000)),
                         test_per_class=500),
    "cohn_enh": TaskSpec("cohn_enh", "Cohn-enh", 2, 500, _shots("Cohn-enh", (10, 50, 100, 500)),
                         test_per_class=147),
    # Splice-40's folder N holds 10*N sequences per class.
    "splice_40": TaskSpec("splice_40", "Splice-40", 3, 40, _shots("Splice-40", (10, 50, 100, 500), scale=10),
                          test_file="Splice-40/test.tsv.gz", extra_files=("Splice-40/dev.tsv.gz",)),
}


def get_task(task: str | TaskSpec) -> TaskSpec:
    """A task by key or folder name, in any case (``prom_core``, ``Prom-core``)."""
    if isinstance(task, TaskSpec):
        return task
    key = str(task).strip().lower().replace("-", "_")
    if key not in TASKS:
        raise GMError(f"unknown few-shot task {task!r}: choose one of {', '.join(TASKS)} or custom")
    return TASKS[key]


# ------------------------------------------------------------------------------------------ reading
@dataclass(frozen=True)
class Example:
    """One labelled sequence: upper-case raw bases, class index, and where it came from."""

    sequence: str
    label: int
    source: str  # "file:line"


def _open_text(path: Path) -> io.TextIOBase:
    with open(path, "rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"
    raw = gzip.open(path, "rb") if gzipped else open(path, "rb")
    return io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")


def _delimiter(path: Path, sample: str) -> str:
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    if suffixes and suffixes[-1] in (".tsv", ".tab"):
        return "\t"
    if suffixes and suffixes[-1] == ".csv":
        return ","
    try:
        return csv.Sniffer().sniff(sample, delimiters="\t,;").delimiter
    except csv.Error:
        return "\t" if "\t" in sample else ","


def _kmers_to_bases(text: str, where: str) -> str:
    """Raw bases behind one row of space-separated k-mers, checking that neighbours overlap by k-1."""
    kmers = text.split()
    k = len(kmers[0])
    for i, (a, b) in enumerate(zip(kmers, kmers[1:]), start=2):
        if len(b) != k:
            raise GMError(f"{where}: k-mer {i} {b!r} has {len(b)} letters, the first has {k}")
        if a[1:] != b[:-1]:
            raise GMError(f"{where}: k-mers do not overlap: k-mer {i} {b!r} does not continue {a!r}")
    return "".join((kmers[0], *(kmer[-1] for kmer in kmers[1:])))


def _kmer_texts_to_bases(texts: list[str], wheres: list[str]) -> list[str]:
    """Raw bases of many k-mer rows at once (one numpy pass per k-mer length).

    With single spaces a row of n k-mers is n*(k+1)-1 characters, so the rows of one k reshape
    into a (k-mers, k+1) byte matrix whose last column is the separator; neighbours overlap when
    row j's letters 1..k-1 equal row j+1's letters 0..k-2. Any row that fails (or is not plain
    ASCII) goes through the per-row reader, which says exactly what is wrong.
    """
    norm = [" ".join(t.split()) for t in texts]
    ks = np.fromiter((t.find(" ") for t in norm), dtype=np.int64, count=len(norm))
    sizes = np.fromiter((len(t) for t in norm), dtype=np.int64, count=len(norm))
    n = (sizes + 1) // (ks + 1)
    spaces = np.fromiter((t.count(" ") for t in norm), dtype=np.int64, count=len(norm))
    ok = ((sizes + 1) == n * (ks + 1)) & (spaces == n - 1) & np.fromiter((t.isascii() for t in norm), bool, len(norm))
    out: list[str | None] = [None] * len(norm)
    for k in np.unique(ks[ok]).tolist():
        rows = np.flatnonzero(ok & (ks == k))
        buf = np.frombuffer((" ".join(norm[i] for i in rows) + " ").encode("ascii"), dtype=np.uint8).reshape(-1, k + 1)
        counts = n[rows]
        token_row = np.repeat(np.arange(rows.size), counts)
        first = np.cumsum(counts) - counts
        same_row = token_row[:-1] == token_row[1:]
        overlap = (buf[:-1, 1:k] == buf[1:, : k - 1]).all(axis=1)
        bad_rows = np.zeros(rows.size, dtype=bool)
        bad_rows[token_row[:-1][same_row & ~overlap]] = True
        bad_rows[token_row[buf[:, k] != ord(" ")]] = True
        keep = np.zeros(buf.shape, dtype=bool)
        keep[:, k - 1] = True
        keep[first, :k] = True
        raw = buf[keep].tobytes().decode("ascii")
        ends = np.cumsum(counts + k - 1).tolist()
        starts = [0, *ends[:-1]]
        for j, (row, a, b) in enumerate(zip(rows.tolist(), starts, ends)):
            if not bad_rows[j]:
                out[row] = raw[a:b]
    return [s if s is not None else _kmers_to_bases(t, w) for s, t, w in zip(out, norm, wheres)]


def _label_order(labels: Sequence[str]) -> list[str]:
    """Sorted distinct labels; numerically when all are integers (so 0..C-1 map to themselves)."""
    distinct = set(labels)
    try:
        return sorted(distinct, key=int)
    except ValueError:
        return sorted(distinct)


def read_examples(
    path: str | os.PathLike,
    sequence_column: str = "sequence",
    label_column: str = "label",
    label_names: list[str] | None = None,
) -> tuple[list[Example], list[str]]:
    """Labelled sequences of a .tsv/.csv file (optionally gzipped, quoted or not) and the label names.

    Each row's sequence may be raw bases (any case) or space-separated overlapping k-mers.
    Labels map to their index in ``label_names`` (default: the file's sorted distinct labels);
    any problem is a :class:`GMError` naming the file and line.
    """
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as err:
        raise GMError(f"{path}: cannot read few-shot data ({err.strerror})") from None
    names = tuple(label_names) if label_names is not None else None
    examples, found = _read_cached(str(path.resolve()), stat.st_mtime_ns, stat.st_size, str(path),
                                   sequence_column, label_column, names)
    return list(examples), list(found)


@functools.lru_cache(maxsize=64)
def _read_cached(
    resolved: str, mtime: int, size: int, shown: str, sequence_column: str, label_column: str,
    label_names: tuple[str, ...] | None,
) -> tuple[tuple[Example, ...], tuple[str, ...]]:
    """Reads once per file version: sweeps build many splits of the same files in one process."""
    path = Path(resolved)
    with _open_text(path) as handle:
        sample = handle.read(16384)
        handle.seek(0)
        reader = csv.reader(handle, delimiter=_delimiter(path, sample))
        header = next(reader, None)
        if header is None:
            raise GMError(f"{shown}: empty file (expected a header with {sequence_column!r} and {label_column!r})")
        header = [h.strip() for h in header]
        columns = []
        for wanted in (sequence_column, label_column):
            matches = [i for i, h in enumerate(header) if h == wanted] or [
                i for i, h in enumerate(header) if h.lower() == wanted.lower()]
            if not matches:
                if header and header[0].startswith(">") or len(header) == 1 and _looks_like_bases(header[0]):
                    kind = "a FASTA file" if header[0].startswith(">") else "a headerless one-sequence-per-line file"
                    raise GMError(f"{shown}: {kind} has no labels, but this slot takes a table with {sequence_column!r} "
                                  f"and {label_column!r} columns; give one such file per class instead: "
                                  "data.custom_train='{label_a: a.fa, label_b: b.fa}' (see README)")
                raise GMError(f"{shown}: no column {wanted!r} (columns found: {', '.join(map(repr, header))})")
            columns.append(matches[0])
        seq_col, lab_col = columns
        need = max(columns) + 1
        sequences: list[str] = []
        labels: list[str] = []
        lines: list[int] = []
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line
            if len(row) < need:
                raise GMError(f"{shown}:{reader.line_num}: {len(row)} field(s), expected {len(header)} "
                              f"({', '.join(header)})")
            text = row[seq_col].strip()
            if not text:
                raise GMError(f"{shown}:{reader.line_num}: empty sequence")
            sequences.append(text.upper())
            labels.append(row[lab_col].strip())
            lines.append(reader.line_num)
    kmer_rows = [i for i, text in enumerate(sequences) if " " in text or "\t" in text]
    if kmer_rows:
        bases = _kmer_texts_to_bases([sequences[i] for i in kmer_rows], [f"{shown}:{lines[i]}" for i in kmer_rows])
        for i, sequence in zip(kmer_rows, bases):
            sequences[i] = sequence
    if not sequences:
        raise GMError(f"{shown}: no rows after the header")
    _check_bases(sequences, lines, shown)
    names = list(label_names) if label_names is not None else _label_order(labels)
    index = {name: i for i, name in enumerate(names)}
    ints = [index.get(label, -1) for label in labels]
    if -1 in ints:
        bad = ints.index(-1)
        raise GMError(f"{shown}:{lines[bad]}: label {labels[bad]!r} is not one of {', '.join(names)}")
    examples = tuple(Example(s, y, f"{shown}:{n}") for s, y, n in zip(sequences, ints, lines))
    return examples, tuple(names)


def _check_bases(sequences: list[str], lines: list[int], shown: str) -> None:
    """All sequences at once: only A, C, G, T, N (after upper-casing) may appear."""
    joined = "".join(sequences).encode("utf-8")
    if len(joined) == sum(map(len, sequences)):  # pure ASCII: byte offsets are character offsets
        bad = np.flatnonzero(~_ALLOWED[np.frombuffer(joined, dtype=np.uint8)])
        if bad.size == 0:
            return
        ends = np.cumsum([len(s) for s in sequences])
        row = int(np.searchsorted(ends, bad[0], side="right"))
    else:
        row = next(i for i, s in enumerate(sequences) if not s.isascii())
    char = next(c for c in sequences[row] if c not in "ACGTN")
    raise GMError(f"{shown}:{lines[row]}: character {char!r} in the sequence (only A, C, G, T, N are allowed)")


def _looks_like_bases(text: str) -> bool:
    """A line of bases or space-separated k-mers (not a column name)."""
    letters = text.replace(" ", "").upper()
    return len(letters) >= 8 and set(letters) <= set("ACGTN")


def read_sequences(path: str | os.PathLike, label: int) -> list[Example]:
    """The sequences of one class's file: FASTA (records may span lines) or one sequence per line.

    Raw bases in any case or space-separated k-mers; gzipped or not. A table (a line with a tab
    or a comma) is not a per-class file: that is a :class:`GMError` saying where tables go.
    """
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as err:
        raise GMError(f"{path}: cannot read few-shot data ({err.strerror})") from None
    return [Example(s, label, where) for s, where in _read_sequences_cached(str(path.resolve()), stat.st_mtime_ns, stat.st_size, str(path))]


@functools.lru_cache(maxsize=64)
def _read_sequences_cached(resolved: str, mtime: int, size: int, shown: str) -> tuple[tuple[str, str], ...]:
    texts: list[str] = []
    lines: list[int] = []
    with _open_text(Path(resolved)) as handle:
        fasta = None
        for number, line in enumerate(handle, start=1):
            line = line.strip()
            if not line:
                continue
            if fasta is None:
                fasta = line.startswith(">")
                if not fasta and ("\t" in line or "," in line):
                    raise GMError(f"{shown}:{number}: a table, but a per-class file holds FASTA records or one sequence "
                                  "per line; give a table (with sequence and label columns) as data.custom_train=<file>")
            if fasta and line.startswith(">"):
                texts.append("")
                lines.append(number)
            elif fasta:
                texts[-1] += line
            else:
                texts.append(line)
                lines.append(number)
    if not texts:
        raise GMError(f"{shown}: no sequences")
    empty = next((i for i, t in enumerate(texts) if not t), None)
    if empty is not None:
        raise GMError(f"{shown}:{lines[empty]}: FASTA record without a sequence")
    texts = [t.upper() for t in texts]
    kmer_rows = [i for i, t in enumerate(texts) if " " in t]
    if kmer_rows:
        bases = _kmer_texts_to_bases([texts[i] for i in kmer_rows], [f"{shown}:{lines[i]}" for i in kmer_rows])
        for i, sequence in zip(kmer_rows, bases):
            texts[i] = sequence
    _check_bases(texts, lines, shown)
    return tuple((t, f"{shown}:{n}") for t, n in zip(texts, lines))


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes: which data a run saw, whatever the file is called or where it lies."""
    path = Path(path)
    stat = path.stat()
    return _sha256_cached(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=256)
def _sha256_cached(resolved: str, mtime: int, size: int) -> str:
    digest = hashlib.sha256()
    with open(resolved, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_record(role: str, path: Path, label: str | None = None) -> dict[str, Any]:
    return {"role": role, "path": str(path), **({"label": label} if label is not None else {}), "sha256": file_sha256(path)}


# ------------------------------------------------------------------------------------------ splits
@dataclass
class FewShotSplit:
    """Train / validation / test examples of one run, with where they came from."""

    task: str
    shots: int  # n: training examples per class asked for (before any move to val)
    seed: int
    train: list[Example]
    val: list[Example]
    test: list[Example]
    label_names: list[str]
    test_source: str  # "shipped" or "carved"
    train_source: str  # "shipped" or "resampled"
    train_test_overlap: int  # training sequences also in the test set (the shipped files have a few)
    note: str = ""
    pool_size: dict[int, int] = field(default_factory=dict)  # distinct sequences per class the shots could come from
    files: list[dict[str, Any]] = field(default_factory=list)  # every file read: role, path, label, sha256

    @property
    def data_sha256(self) -> str:
        """One hash of the data the run saw (roles, labels and content of its files, not their paths)."""
        parts = sorted(f"{f['role']}:{f.get('label', '')}:{f['sha256']}" for f in self.files)
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def class_counts(self, part: str = "train") -> list[int]:
        """Examples per class in ``train``, ``val`` or ``test``."""
        counts = Counter(e.label for e in getattr(self, part))
        return [counts.get(c, 0) for c in range(self.num_classes)]


def _rng(seed: int, stream: int) -> np.random.Generator:
    if int(seed) < 0:
        raise GMError(f"seeds must be non-negative integers, got {seed}")
    return np.random.default_rng([int(seed), stream])


def _dedupe(examples: list[Example]) -> tuple[list[Example], int]:
    """Distinct sequences (first occurrence kept), sorted by (label, sequence) so file order never matters.

    A sequence seen with two labels is ambiguous and dropped. Returns (pool, number dropped so).
    """
    labels: dict[str, set[int]] = {}
    first: dict[str, Example] = {}
    for e in examples:
        labels.setdefault(e.sequence, set()).add(e.label)
        first.setdefault(e.sequence, e)
    conflicts = {s for s, ls in labels.items() if len(ls) > 1}
    pool = sorted((e for s, e in first.items() if s not in conflicts), key=lambda e: (e.label, e.sequence))
    return pool, len(conflicts)


def _by_class(pool: list[Example], num_classes: int) -> list[list[Example]]:
    groups: list[list[Example]] = [[] for _ in range(num_classes)]
    for e in pool:
        groups[e.label].append(e)
    return groups


def _draw(pool: list[Example], per_class: int, num_classes: int, rng: np.random.Generator, what: str,
          label_names: Sequence[str]) -> tuple[list[Example], list[Example]]:
    """``per_class`` examples of each class (a seeded permutation's prefix, hence nested) and the rest."""
    groups = _by_class(pool, num_classes)
    sizes = [len(g) for g in groups]
    if min(sizes) < per_class:
        detail = ", ".join(f"class {name}: {n}" for name, n in zip(label_names, sizes))
        raise ShotsUnavailableError(f"{what}: {per_class} per class asked, but only {min(sizes)} per class are "
                                    f"available ({detail})", available=min(sizes))
    taken: list[Example] = []
    rest: list[Example] = []
    for group in groups:
        order = rng.permutation(len(group))
        taken.extend(group[i] for i in order[:per_class])
        rest.extend(group[i] for i in np.sort(order[per_class:]))
    return taken, rest


def _split_val(train: list[Example], fraction: float, num_classes: int, rng: np.random.Generator
               ) -> tuple[list[Example], list[Example]]:
    """Move ``fraction`` of each class to validation (at least one when fraction > 0, never all)."""
    if fraction == 0:
        return train, []
    kept: list[Example] = []
    val: list[Example] = []
    for c, group in enumerate(_by_class(train, num_classes)):
        n_val = max(1, int(round(fraction * len(group)))) if group else 0
        if group and n_val >= len(group):
            raise GMError(f"val_fraction={fraction} of the {len(group)} training examples of class {c} "
                          "leaves none for training")
        moved = set(rng.permutation(len(group))[:n_val].tolist())
        for i, e in enumerate(group):
            (val if i in moved else kept).append(e)
    return kept, val


def _read_many(paths: list[Path], **kwargs: Any) -> list[Example]:
    return [e for p in paths for e in read_examples(p, **kwargs)[0]]


def make_split(
    task: str | TaskSpec | None,
    shots: int,
    seed: int,
    data_dir: str | os.PathLike = DEFAULT_DATA_DIR,
    resample: bool = False,
    val_fraction: float = 0.0,
    carve_seed: int = 0,
    custom: Mapping[str, Any] | None = None,
) -> FewShotSplit:
    """The train/val/test split of one run (spec §5; policy in the module docstring).

    ``custom`` = {"train", "test" (or None), "sequence_column", "label_column", "test_per_class",
    "label_names"} uses the user's files instead of a shipped task (see :func:`_custom_task` for
    the forms a file slot takes); there are no shot files, so the shots are always drawn; the test
    set is carved from the training data when no test file is given (``test_per_class`` per class;
    default ``CUSTOM_TEST_FRACTION`` of the smallest class). ``task`` names a custom task (None or
    ``custom``: derived from the training file names). Same arguments, same split.
    """
    shots = int(shots)
    if shots < 1:
        raise GMError(f"shots must be a positive number of examples per class, got {shots}")
    if not 0.0 <= float(val_fraction) < 1.0:
        raise GMError(f"val_fraction must be in [0, 1), got {val_fraction}")
    data_dir = Path(data_dir)
    if custom is not None:
        spec, label_names, pool_examples, test, files = _custom_task(task, custom)
        train_files = [f for f in files if f["role"] == "train"]
        test_files = [f for f in files if f["role"] == "test"]
        read_pool = lambda: pool_examples  # noqa: E731
        test_name = ", ".join(Path(f["path"]).name for f in test_files)
    else:
        spec = get_task(task)
        label_names = spec.label_names
        train_paths = [data_dir / f for f in spec.train_files]
        read_pool = lambda: _read_many(train_paths, label_names=label_names)  # noqa: E731
        train_files = [_file_record("train", path) for path in train_paths]
        test_files = [_file_record("test", data_dir / spec.test_file)] if spec.test_file else []
        test = read_examples(data_dir / spec.test_file, label_names=label_names)[0] if spec.test_file else None
        test_name = Path(spec.test_file).name if spec.test_file else ""
    name = spec.name

    if test is not None:
        _check_test_classes(test, label_names, test_name)
        test_sequences = {e.sequence for e in test}
        shipped = spec.shot_files.get(shots)
        if shipped is not None and not resample:
            train, _ = read_examples(data_dir / shipped, label_names=label_names)
            train_files = [_file_record("train", data_dir / shipped)]
            train_source, pool_size = "shipped", {}
            origin = f"from the shipped file {shipped}"
        else:
            pool, conflicts = _dedupe(read_pool())
            pool = [e for e in pool if e.sequence not in test_sequences]
            pool_size = dict(enumerate(len(g) for g in _by_class(pool, len(label_names))))
            train, _ = _draw(pool, shots, len(label_names), _rng(seed, _DRAW_STREAM),
                             f"{name} {shots} shots", label_names)
            train_source = "resampled"
            origin = (f"drawn with seed {seed} from {sum(pool_size.values())} distinct training sequences "
                      f"not in the test set" + (f" ({conflicts} with conflicting labels dropped)" if conflicts else ""))
        test_source = "given" if custom is not None else "shipped"
        test_note = f"{'the test file' if custom is not None else 'shipped test set'} {test_name} ({len(test)} rows)"
    else:
        pool, conflicts = _dedupe(read_pool())
        per_class = spec.test_per_class
        if per_class is None:  # custom data: a share of the smallest class, so most rows stay for shots
            per_class = max(1, int(CUSTOM_TEST_FRACTION * min(len(g) for g in _by_class(pool, len(label_names)))))
        if int(per_class) < 1:
            raise GMError(f"{name}: test_per_class must be a positive count, got {per_class}")
        test, rest = _draw(pool, int(per_class), len(label_names), _rng(carve_seed, _CARVE_STREAM),
                           f"{name} carved test set", label_names)
        test_sequences = {e.sequence for e in test}
        pool_size = dict(enumerate(len(g) for g in _by_class(rest, len(label_names))))
        train, _ = _draw(rest, shots, len(label_names), _rng(seed, _DRAW_STREAM),
                         f"{name} {shots} shots (after carving a test set of {per_class} per class)", label_names)
        train_source, test_source = "resampled", "carved"
        origin = f"drawn with seed {seed} from the {len(rest)} sequences left"
        test_note = (f"no test set is shipped: a fixed test set of {per_class} per class was carved (carve_seed "
                     f"{carve_seed}) from the {len(pool)} distinct sequences of "
                     + ("the training data" if custom is not None else "the shipped files; not the paper's test set"))
        if conflicts:
            test_note += f" ({conflicts} sequences with conflicting labels dropped)"

    overlap = sum(e.sequence in test_sequences for e in train)
    train, val = _split_val(train, float(val_fraction), len(label_names), _rng(seed, _VAL_STREAM))
    note = f"{name}, {shots} shots per class {origin}; {test_note}"
    if overlap:
        note += f"; {overlap} training sequence(s) also in the test set (kept: the shipped split is used as is)"
    if val:
        note += f"; {len(val)} training examples moved to validation"
    return FewShotSplit(name, shots, int(seed), train, val, test, list(label_names), test_source, train_source,
                        overlap, note, pool_size, train_files + test_files)


def _check_test_classes(test: list[Example], label_names: Sequence[str], where: str) -> None:
    """A test set must hold every class: on one lacking some, MCC, macro-F1 and AUROC mean nothing."""
    counts = Counter(e.label for e in test)
    absent = [name for i, name in enumerate(label_names) if not counts.get(i)]
    if absent:
        found = ", ".join(f"{label_names[i]!r} ({n} rows)" for i, n in sorted(counts.items()))
        raise GMError(f"{where}: the test set holds only {found}; class(es) {', '.join(map(repr, absent))} of the "
                      "training data are absent, so MCC, F1 and AUROC would be undefined: give a test set with every class")


def _custom_slot(value: Any, what: str) -> list[tuple[str | None, Path]]:
    """A file slot of custom data as (label, path) pairs: one table (label None), or one file per class.

    Per-class files come as a mapping ``{label: file}`` or a list of files whose names (up to the
    first dot) are the labels.
    """
    if hasattr(value, "items"):  # dict or OmegaConf DictConfig
        pairs = [(str(label), Path(str(path))) for label, path in value.items()]
    elif isinstance(value, (str, os.PathLike)):
        return [(None, Path(str(value)))]
    else:
        pairs = [(Path(str(path)).name.split(".")[0], Path(str(path))) for path in value]
    labels = [label for label, _ in pairs]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise GMError(f"{what}: label {repeated[0]!r} names two files; give one file per class, "
                      f"e.g. {what}='{{label_a: a.fa, label_b: b.fa}}'")
    return pairs


def _read_slot(pairs: list[tuple[str | None, Path]], role: str, read_kwargs: dict[str, Any],
               label_names: list[str] | None) -> tuple[list[Example], list[str], list[dict[str, Any]]]:
    """The examples, label names and file records of one slot (train or test)."""
    if pairs[0][0] is None:
        examples, names = read_examples(pairs[0][1], **read_kwargs, label_names=label_names)
        return examples, names, [_file_record(role, pairs[0][1])]
    names = label_names if label_names is not None else [label for label, _ in pairs]
    unknown = [label for label, _ in pairs if label not in names]
    if unknown:
        raise GMError(f"{role} file for label {unknown[0]!r}: not one of the training labels {', '.join(names)}")
    examples = [e for label, path in pairs for e in read_sequences(path, names.index(label))]
    return examples, names, [_file_record(role, path, label) for label, path in pairs]


def _custom_task(
    task: str | TaskSpec | None, custom: Mapping[str, Any]
) -> tuple[TaskSpec, list[str], list[Example], list[Example] | None, list[dict[str, Any]]]:
    """The TaskSpec, label names, training examples, test examples (None: carve) and file records of
    a user's data. Label names come from the training data (or ``label_names``)."""
    if not custom.get("train"):
        raise GMError("a custom few-shot task needs data.custom_train: a .tsv/.csv table with a header, or one "
                      "FASTA or one-sequence-per-line file per class ('{label_a: a.fa, label_b: b.fa}')")
    read_kwargs: dict[str, Any] = {
        "sequence_column": str(custom.get("sequence_column") or "sequence"),
        "label_column": str(custom.get("label_column") or "label"),
    }
    given = custom.get("label_names")
    train_pairs = _custom_slot(custom["train"], "data.custom_train")
    train, label_names, files = _read_slot(train_pairs, "train", read_kwargs, list(map(str, given)) if given else None)
    if len(label_names) < 2:
        where = ", ".join(str(path) for _, path in train_pairs)
        raise GMError(f"{where}: only one label found ({label_names[0] if label_names else 'none'!r}); a classifier "
                      "needs at least two classes")
    test = None
    if custom.get("test"):
        test, _, test_files = _read_slot(_custom_slot(custom["test"], "data.custom_test"), "test", read_kwargs, label_names)
        files += test_files
    if isinstance(task, TaskSpec):
        name = task.name
    elif task not in (None, "", "custom"):
        name = str(task)
    else:  # derived from the training data: the table's name, or the per-class files' names
        name = "+".join(path.name.split(".")[0] for _, path in train_pairs)
    per_class = custom.get("test_per_class")
    spec = TaskSpec(name, train_pairs[0][1].parent.name, len(label_names), 0, {}, test_file=None,
                    test_per_class=int(per_class) if per_class is not None else None)
    return spec, label_names, train, test, files


# ------------------------------------------------------------------------------------------ batches
class _Encoded(Dataset):
    """A split part tokenised once: padded ids, lengths (positions incl. CLS/SEP) and labels."""

    def __init__(self, input_ids: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor) -> None:
        self.input_ids, self.lengths, self.labels = input_ids, lengths, labels

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int) -> int:
        return i  # the collate gathers whole batches from the tensors at once


class _Collate:
    """Gathers a batch of indices and trims the padding to the batch's longest row."""

    def __init__(self, data: _Encoded) -> None:
        self.data = data

    def __call__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        width = int(self.data.lengths[index].max())
        ids = self.data.input_ids[index, :width]
        mask = (torch.arange(width)[None, :] < self.data.lengths[index][:, None]).long()
        return {"input_ids": ids, "attention_mask": mask, "labels": self.data.labels[index], "index": index}


class FewShotDataModule(pl.LightningDataModule):
    """A few-shot task's split, tokenised for a k-mer model.

    Training batches are shuffled with a generator seeded by ``seed``. Validation and test
    batches run longest-first (padding is minimal and an out-of-memory shows on the first
    batch); each batch's ``index`` holds the rows' positions in ``split.val`` / ``split.test``.
    """

    def __init__(
        self,
        task: str | None = "prom_core",
        shots: int = 10,
        seed: int = 0,
        data_dir: str | os.PathLike = DEFAULT_DATA_DIR,
        batch_size: int = 5,
        eval_batch_size: int = 256,
        k: int = 6,
        max_length: int = 512,
        resample: bool = False,
        val_fraction: float = 0.0,
        carve_seed: int = 0,
        custom_train: Any = None,  # a table, or per-class files: {label: file} or [files] (see make_split)
        custom_test: Any = None,
        custom_sequence_column: str = "sequence",
        custom_label_column: str = "label",
        custom_test_per_class: int | None = None,
        custom_label_names: list[str] | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.task, self.shots, self.seed, self.data_dir = task, int(shots), int(seed), Path(data_dir)
        self.batch_size, self.eval_batch_size, self.num_workers = int(batch_size), int(eval_batch_size), int(num_workers)
        self.k, self.max_length = int(k), int(max_length)
        self.resample, self.val_fraction, self.carve_seed = bool(resample), float(val_fraction), int(carve_seed)
        self.custom: dict[str, Any] | None = None
        if custom_train is not None:
            from omegaconf import DictConfig, ListConfig, OmegaConf

            plain = lambda v: OmegaConf.to_container(v) if isinstance(v, (DictConfig, ListConfig)) else v  # noqa: E731
            self.custom = {"train": plain(custom_train), "test": plain(custom_test), "sequence_column": custom_sequence_column,
                           "label_column": custom_label_column, "test_per_class": custom_test_per_class,
                           "label_names": list(custom_label_names) if custom_label_names else None}
        elif task is None or str(task).lower() == "custom":
            raise GMError("data=custom needs data.custom_train: a .tsv/.csv table with a header, or one FASTA or "
                          "one-sequence-per-line file per class ('{label_a: a.fa, label_b: b.fa}')")
        self.split: FewShotSplit | None = None
        self._data: dict[str, _Encoded] = {}

    @property
    def task_name(self) -> str:
        return self.split.task if self.split else (str(self.task or "custom") if self.custom else get_task(self.task).name)

    @property
    def label_names(self) -> list[str]:
        if self.split is None:
            if self.custom:
                raise GMError("call setup() first: a custom task's labels come from its file")
            return get_task(self.task).label_names
        return self.split.label_names

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def setup(self, stage: str | None = None) -> None:
        if self.split is not None:
            return
        split = make_split(self.task, self.shots, self.seed, self.data_dir, resample=self.resample,
                           val_fraction=self.val_fraction, carve_seed=self.carve_seed, custom=self.custom)
        tokenizer = KmerTokenizer(self.k, self.max_length)
        self._data = {part: self._encode(getattr(split, part), tokenizer, split.task)
                      for part in ("train", "val", "test")}
        self.split = split
        log.info("%s: %d train / %d val / %d test (%s)", split.task, len(split.train), len(split.val),
                 len(split.test), split.note)

    def _encode(self, examples: list[Example], tokenizer: KmerTokenizer, task: str) -> _Encoded:
        lengths = np.fromiter((len(e.sequence) for e in examples), dtype=np.int64, count=len(examples))
        if lengths.size:
            n_kmers = lengths - self.k + 1
            worst = int(np.argmax(n_kmers))
            if n_kmers[worst] > tokenizer.max_kmers:
                raise GMError(f"{task}: {examples[worst].source} has {lengths[worst]} bases = {n_kmers[worst]} "
                              f"{self.k}-mers, more than the {tokenizer.max_kmers} that "
                              f"max_length={self.max_length} holds")
            short = int(np.argmin(n_kmers))
            if n_kmers[short] < 1:
                raise GMError(f"{task}: {examples[short].source} has {lengths[short]} bases, fewer than k={self.k}")
        encoding = tokenizer.encode([e.sequence for e in examples])
        labels = torch.as_tensor([e.label for e in examples], dtype=torch.long)
        return _Encoded(encoding.input_ids, encoding.attention_mask.sum(1), labels)

    def _loader(self, part: str, batch_size: int, **kwargs: Any) -> DataLoader:
        if self.split is None:
            self.setup()
        data = self._data[part]
        return DataLoader(data, batch_size=batch_size, collate_fn=_Collate(data), num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, **kwargs)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True, generator=torch.Generator().manual_seed(self.seed))

    def _eval_loader(self, part: str) -> DataLoader | list:
        if self.split is None:
            self.setup()
        data = self._data[part]
        if len(data) == 0:
            return []  # no validation split: Lightning skips validation
        order = torch.argsort(data.lengths, descending=True, stable=True).tolist()
        return self._loader(part, self.eval_batch_size, sampler=order)

    def val_dataloader(self) -> DataLoader | list:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader | list:
        return self._eval_loader("test")
