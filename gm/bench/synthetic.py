"""Synthetic genomes with a human genome's structure, for the ``scale`` part: any size up to 3.1 Gb.

The 24 records have hg38's chromosome lengths scaled to the requested size and its layout of
unknown sequence: 10 kb of N at both ends (telomeres), a few internal gaps, the short arms of
the five acrocentric chromosomes (13, 14, 15, 21, 22) as one long N run, a chrY that is mostly N,
and scattered IUPAC codes. Bases are drawn independently with human composition (A = T = 29.5%,
C = G = 20.5%); about half of the sequence is soft-masked (lower case) in runs of a few hundred
bases, as RepeatMasker leaves it; lines are 50 bases, as in UCSC's hg38.fa.gz. The same seed
gives the same genome; plain, gzip and bgzip (BGZF blocks, as ``bgzip`` writes) variants are
written in one pass, the compressors running in threads (zlib releases the GIL).

"""

from __future__ import annotations

import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np

#: hg38 primary chromosomes and their lengths (UCSC hg38.chrom.sizes); 3,088,269,832 bases
HG38_CHROMOSOMES: tuple[tuple[str, int], ...] = (
    ("chr1", 248_956_422), ("chr2", 242_193_529), ("chr3", 198_295_559), ("chr4", 190_214_555),
    ("chr5", 181_538_259), ("chr6", 170_805_979), ("chr7", 159_345_973), ("chr8", 145_138_636),
    ("chr9", 138_394_717), ("chr10", 133_797_422), ("chr11", 135_086_622), ("chr12", 133_275_309),
    ("chr13", 114_364_328), ("chr14", 107_043_718), ("chr15", 101_991_189), ("chr16", 90_338_345),
    ("chr17", 83_257_441), ("chr18", 80_373_285), ("chr19", 58_617_616), ("chr20", 64_444_167),
    ("chr21", 46_709_983), ("chr22", 50_818_468), ("chrX", 156_040_895), ("chrY", 57_227_415),
)
HG38_BASES = sum(length for _, length in HG38_CHROMOSOMES)
ACROCENTRIC = {"chr13", "chr14", "chr15", "chr21", "chr22"}
FORMATS = ("plain", "gzip", "bgzip")
SUFFIX = {"plain": ".fa", "gzip": ".fa.gz", "bgzip": ".bgz.fa.gz"}

LINE = 50  # bases per line (UCSC)
_CHUNK_LINES = 1 << 19  # 26 Mb of sequence per generated chunk
_TELOMERE = 10_000  # N at each end of an hg38 chromosome
_ACROCENTRIC_ARM = 0.14  # fraction of an acrocentric chromosome that is its unsequenced short arm
_Y_UNKNOWN = (0.20, 0.80)  # chrY: N from 20% to 80% of its length ("mostly N")
_GAPS_PER_RECORD = 4
_IUPAC_EVERY = 1_000_000  # one isolated ambiguity code per this many bases
_SOFT_MASK_RUN = 350  # mean length of upper- and lower-case runs
#: 200 draws: 59 A, 59 T, 41 C, 41 G (human composition)
_COMPOSITION = np.repeat(np.frombuffer(b"ATCG", dtype=np.uint8), [59, 59, 41, 41])
_BGZF_BLOCK = 65280  # input bytes per BGZF block (bgzip's)
_BGZF_EOF = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")


@dataclass
class RecordLayout:
    """One record: its length, its runs of N (sorted, disjoint half-open intervals) and where its isolated IUPAC codes are."""

    name: str
    length: int
    unknown: list[tuple[int, int]]
    iupac: np.ndarray


def layout(total_bases: int, seed: int = 0) -> list[RecordLayout]:
    """hg38's 24 chromosomes scaled to ``total_bases`` (each at least 1 kb), with their runs of N."""
    rng = np.random.default_rng([seed, 1])
    scale = total_bases / HG38_BASES
    records = []
    for name, hg38_length in HG38_CHROMOSOMES:
        length = max(1000, round(hg38_length * scale))
        end_run = max(10, min(_TELOMERE, length // 100))
        unknown = [(0, end_run), (length - end_run, length)]
        if name in ACROCENTRIC:
            unknown[0] = (0, int(length * _ACROCENTRIC_ARM))
        if name == "chrY":
            unknown.append((int(length * _Y_UNKNOWN[0]), int(length * _Y_UNKNOWN[1])))
        else:  # gaps of 0.01-0.1% of the record, at random places between the ends
            for _ in range(_GAPS_PER_RECORD):
                gap = int(length * rng.uniform(1e-4, 1e-3)) + 1
                start = int(rng.integers(unknown[0][1] + 1, max(unknown[0][1] + 2, length - end_run - gap - 1)))
                unknown.append((start, start + gap))
        unknown = _merge(unknown, length)
        iupac = np.sort(rng.integers(0, length, max(1, length // _IUPAC_EVERY)))
        records.append(RecordLayout(name, length, unknown, iupac))
    return records


def _merge(intervals: list[tuple[int, int]], length: int) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted((max(0, s), min(length, e)) for s, e in intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        elif end > start:
            merged.append((start, end))
    return merged


def unknown_bases(records: list[RecordLayout]) -> int:
    """Bases in runs of N (isolated IUPAC codes not counted)."""
    return sum(end - start for record in records for start, end in record.unknown)


def _sequence_chunk(record: RecordLayout, start: int, end: int, rng: np.random.Generator, lower: np.ndarray) -> np.ndarray:
    """Bytes of ``record[start:end]``: bases, soft-masking (``lower``: the record's case-run boundaries), N runs, IUPAC codes."""
    n = end - start
    sequence = _COMPOSITION[rng.integers(0, _COMPOSITION.size, n, dtype=np.uint8)]
    # case: runs alternate upper/lower at the boundaries in `lower`; parity of boundaries passed
    first = int(np.searchsorted(lower, start, side="right"))
    inside = lower[first : int(np.searchsorted(lower, end, side="left"))]
    toggles = np.zeros(n, dtype=np.uint8)
    toggles[inside - start] = 1
    parity = (np.cumsum(toggles, dtype=np.uint8) + np.uint8(first & 1)) & 1  # uint8 wraps at 256: parity kept
    sequence |= parity << 5  # ASCII lower case is upper case + 32
    for gap_start, gap_end in record.unknown:
        if gap_start < end and gap_end > start:
            sequence[max(gap_start, start) - start : min(gap_end, end) - start] = ord("N")
    codes = record.iupac[(record.iupac >= start) & (record.iupac < end)] - start
    sequence[codes] = np.frombuffer(b"NRYKMSWn", dtype=np.uint8)[rng.integers(0, 8, codes.size)]
    return sequence


def _as_lines(sequence: np.ndarray) -> bytes:
    full = sequence.size // LINE
    lines = np.empty((full, LINE + 1), dtype=np.uint8)
    lines[:, :LINE] = sequence[: full * LINE].reshape(full, LINE)
    lines[:, LINE] = ord("\n")
    tail = sequence[full * LINE :].tobytes()
    return lines.tobytes() + (tail + b"\n" if tail else b"")


class _Bgzf:
    """A BGZF writer: independent gzip members of <= 64 KiB with the 'BC' extra field, then the EOF block."""

    def __init__(self, handle: BinaryIO, level: int) -> None:
        self.handle, self.level, self.pending = handle, level, b""

    def write(self, data: bytes) -> None:
        data = self.pending + data
        cut = len(data) - len(data) % _BGZF_BLOCK
        for offset in range(0, cut, _BGZF_BLOCK):
            self._block(data[offset : offset + _BGZF_BLOCK])
        self.pending = data[cut:]

    def close(self) -> None:
        if self.pending:
            self._block(self.pending)
        self.handle.write(_BGZF_EOF)

    def _block(self, data: bytes) -> None:
        compressor = zlib.compressobj(self.level, zlib.DEFLATED, -15)
        deflated = compressor.compress(data) + compressor.flush()
        header = b"\x1f\x8b\x08\x04\x00\x00\x00\x00\x00\xff\x06\x00BC\x02\x00"
        self.handle.write(header + struct.pack("<H", len(header) + 2 + len(deflated) + 8 - 1) + deflated
                          + struct.pack("<II", zlib.crc32(data), len(data)))


class _Gzip:
    def __init__(self, handle: BinaryIO, level: int) -> None:
        self.handle, self.compressor = handle, zlib.compressobj(level, zlib.DEFLATED, 31)  # 31: a gzip header

    def write(self, data: bytes) -> None:
        self.handle.write(self.compressor.compress(data))

    def close(self) -> None:
        self.handle.write(self.compressor.flush())


class _Plain:
    def __init__(self, handle: BinaryIO, level: int) -> None:
        self.handle = handle

    def write(self, data: bytes) -> None:
        self.handle.write(data)

    def close(self) -> None:
        pass


_WRITERS: dict[str, Callable[[BinaryIO, int], _Plain | _Gzip | _Bgzf]] = {"plain": _Plain, "gzip": _Gzip, "bgzip": _Bgzf}


def write_genome(
    directory: str | Path,
    total_bases: int,
    *,
    formats: tuple[str, ...] = FORMATS,
    seed: int = 0,
    level: int = 1,
    name: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Path]:
    """Write the synthetic genome of ``total_bases`` into ``directory`` once per format; return the paths.

    ``level`` 1 keeps the compressors as fast as the generator (level 6, gzip's default, is ten times
    slower on DNA and shrinks the files by a tenth); decompression, which is what the benchmark
    times, runs at about the same speed at any level. ``progress`` is called with the bases
    written after each chunk.
    """
    unknown_formats = sorted(set(formats) - set(FORMATS))
    if unknown_formats:
        raise ValueError(f"unknown formats {unknown_formats}; choose from {FORMATS}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stem = name or f"synthetic_{total_bases / 1e9:g}Gb"
    paths = {fmt: directory / f"{stem}{SUFFIX[fmt]}" for fmt in formats}
    handles = {fmt: open(path, "wb") for fmt, path in paths.items()}
    writers = {fmt: _WRITERS[fmt](handles[fmt], level) for fmt in formats}
    try:
        with ThreadPoolExecutor(max_workers=len(writers)) as pool:
            def write_all(data: bytes) -> None:
                for future in [pool.submit(writer.write, data) for writer in writers.values()]:
                    future.result()

            for index, record in enumerate(layout(total_bases, seed)):
                rng = np.random.default_rng([seed, 2, index])
                runs = rng.exponential(_SOFT_MASK_RUN, record.length // _SOFT_MASK_RUN * 2 + 16).astype(np.int64) + 1
                lower = np.cumsum(runs)
                lower = lower[lower < record.length]
                write_all(f">{record.name}\n".encode())
                step = _CHUNK_LINES * LINE
                for start in range(0, record.length, step):
                    end = min(record.length, start + step)
                    write_all(_as_lines(_sequence_chunk(record, start, end, rng, lower)))
                    if progress is not None:
                        progress(end - start)
        for writer in writers.values():
            writer.close()
    except BaseException:
        for handle in handles.values():
            handle.close()
        for path in paths.values():
            path.unlink(missing_ok=True)
        raise
    for handle in handles.values():
        handle.close()
    return paths
