"""Reading labelled sequences: the shipped files, tables (.tsv/.csv, raw bases or k-mers) and per-class
FASTA or one-sequence-per-line files, cached by file identity.

The shipped files (``data/fewshot/<Task>/<shots>/train.tsv.gz``) store sequences as space-separated
overlapping 6-mers; everything here works on raw bases instead, so any k can be used downstream
and k-mer files, raw files, TSV and CSV all look the same once read.
"""

from __future__ import annotations

import csv
import functools
import gzip
import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from gm.utils import GMError

_ALLOWED = np.zeros(256, dtype=bool)
_ALLOWED[np.frombuffer(b"ACGTN", dtype=np.uint8)] = True


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
