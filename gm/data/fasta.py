"""FASTA reading (plain, gzip, bgzip; multi-record) and the compact on-disk genome cache.

The cache stores only runs of unambiguous bases (A/C/G/T, any case), 2 bits a base, because
pretraining windows never cross a run of N: a 3.1 Gb genome becomes ~0.8 GB that every
DataLoader worker memory-maps. It is built once, atomically, checked cheaply at every open, and
rebuilt when the source changes or the cache is damaged.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gzip
import hashlib
import http.client
import json
import logging
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
from tqdm.auto import tqdm

from gm.data.tokenizer import BYTE_TO_CODE, INVALID_CODE
from gm.utils import GMError, atomic_directory, atomic_open, remove_stale_temporaries, write_error

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: the manifest records file sizes and checksums, checked at every open
#: files up to this size are hashed whole to fingerprint them; larger ones are sampled
_WHOLE_HASH_LIMIT = 32 << 20
_SAMPLE_BLOCK, _SAMPLE_BLOCKS = 64 << 10, 65  # an odd count: the middle block is always sampled
_CHUNK = 1 << 24
_NEWLINE, _CR, _GT = 10, 13, ord(">")
#: bytes allowed on sequence lines: letters (IUPAC codes, soft-masking), gaps and whitespace
_SEQUENCE_BYTE = np.zeros(256, dtype=bool)
_SEQUENCE_BYTE[[ord(c) for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-*. \t\r\n"]] = True
_WHITESPACE = np.zeros(256, dtype=bool)
_WHITESPACE[[32, 9, 13, 10]] = True
#: packed byte -> its four 2-bit codes, lowest bits first
_UNPACK = ((np.arange(256, dtype=np.uint16)[:, None] >> (2 * np.arange(4))) & 3).astype(np.uint8)


# ------------------------------------------------------------------------------------------ sources
def is_url(location: str) -> bool:
    return urllib.parse.urlparse(str(location)).scheme in {"http", "https", "ftp", "file"}


def fetch_target(url: str, directory: str | os.PathLike) -> Path:
    """Where :func:`fetch` stores ``url`` in ``directory`` (the URL path's last part, without query)."""
    return Path(directory) / (Path(urllib.parse.urlparse(url).path).name or "genome.fa.gz")


def fetch(url: str, directory: str | os.PathLike) -> Path:
    """Download ``url`` into ``directory`` once (atomically, with a progress bar) and return the path.

    Processes sharing ``directory`` (the nodes of one job) download it once: the others wait for
    the file lock and find the file there.
    """
    target = fetch_target(url, directory)
    downloaded = lambda: target.is_file() and target.stat().st_size > 0  # noqa: E731 (atomic: never a partial file)
    if downloaded():
        return target
    try:
        with _exclusive(target.with_name(f".{target.name}.lock"), f"the download {target}", "downloaded"):
            if downloaded():  # by another process while this one waited
                return target
            remove_stale_temporaries(target.parent)  # a killed download's partial file
            _download(url, target)
    except (OSError, http.client.HTTPException) as err:  # HTTPException: e.g. a connection cut mid-body
        if isinstance(err, OSError) and not isinstance(err, urllib.error.URLError):  # the download folder, not the URL
            hint = "set GM_CACHE_DIR (paths.cache_dir) or data.download_dir to another folder"
            error = write_error(target, err, hint)
            if error is not None:
                raise error from err
        raise GMError(f"{url}: download failed: {err!r}") from err
    return target


def _download(url: str, target: Path) -> None:
    name = target.name
    # atomic_open: a temporary file renamed into place only when complete, removed on any failure
    with urllib.request.urlopen(url) as response, atomic_open(target) as out:  # noqa: S310 (user-given URL)
        total = int(response.headers.get("Content-Length") or 0) or None
        written = 0
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {name}") as bar:
            while block := response.read(1 << 20):
                out.write(block)
                written += len(block)
                bar.update(len(block))
        if total is not None and written != total:
            raise GMError(f"{url}: download incomplete: got {written} of {total} bytes")


def open_fasta(path: str | os.PathLike) -> BinaryIO:
    """Open a FASTA file for binary reading, decompressing gzip/bgzip transparently."""
    path = Path(path)
    if not path.exists():
        raise GMError(f"{path}: FASTA file not found")
    if not path.is_file():
        raise GMError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise GMError(f"{path}: FASTA file is empty")
    with open(path, "rb") as handle:
        magic = handle.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


@dataclass
class Record:
    name: str
    codes: np.ndarray  # uint8 base codes (A=0 T=1 C=2 G=3, 4 = anything else)


def read_fasta(path: str | os.PathLike, chunk_size: int = _CHUNK, progress: bool = True) -> Iterator[Record]:
    """Yield the records of a FASTA file as base-code arrays, parsing in fixed-size chunks.

    Memory is bounded by the largest record (as uint8 codes), never the whole file as text.
    Anything that is not FASTA gets a :class:`GMError` naming the file and line.
    """
    path = Path(path)
    try:
        handle = open_fasta(path)
        size = path.stat().st_size
        with handle, tqdm(total=size, unit="B", unit_scale=True, desc=f"read {path.name}", disable=not progress or size < (64 << 20)) as bar:
            yield from _parse(handle, path, chunk_size, bar)
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise GMError(f"{path}: corrupt or truncated gzip data ({err})") from err


def _parse(handle: BinaryIO, path: Path, chunk_size: int, bar: tqdm) -> Iterator[Record]:
    name: str | None = None
    parts: list[np.ndarray] = []
    line_no = 1  # line number of the first byte of `pending`
    pending = b""
    started = False  # seen the first non-blank byte (which must open a '>' header)
    raw = getattr(handle, "fileobj", None) or handle  # the compressed stream, for the progress bar
    last_pos = 0
    while True:
        chunk = handle.read(chunk_size)
        if hasattr(raw, "tell"):
            pos = raw.tell()
            bar.update(pos - last_pos)
            last_pos = pos
        data = pending + chunk
        if not data:
            break
        if chunk:  # keep an incomplete last line for the next round
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                pending = data
                continue
            data, pending = data[:cut], data[cut:]
        else:
            pending = b""
        buf = np.frombuffer(data, dtype=np.uint8)
        line_starts = np.concatenate(([0], np.flatnonzero(buf == _NEWLINE) + 1))
        line_starts = line_starts[line_starts < buf.size]
        headers = line_starts[buf[line_starts] == _GT]
        if not started:  # leading blank lines are allowed; the first other line must be a header
            content = np.flatnonzero(~_WHITESPACE[buf])
            if content.size == 0:
                line_no += int(np.count_nonzero(buf == _NEWLINE))
                continue
            started = True
            first = int(content[0])
            if buf[first] != _GT:
                line = line_no + int(np.count_nonzero(buf[:first] == _NEWLINE))
                end = data.find(b"\n", first)
                first_line = buf[first:end if end >= 0 else buf.size]
                if _SEQUENCE_BYTE[first_line].all():
                    raise GMError(f"{path}: line {line}: sequence before the first '>' header")
                raise GMError(
                    f"{path}: not a FASTA file: line {line} does not start with '>' (got {data[first:first + 20]!r})"
                )
        seq_start = 0
        for header in list(headers) + [buf.size]:
            block = buf[seq_start:header]
            if block.size:
                bad = ~_SEQUENCE_BYTE[block]
                if bad.any():
                    where = seq_start + int(np.argmax(bad))
                    line = line_no + int(np.count_nonzero(buf[:where] == _NEWLINE))
                    raise GMError(f"{path}: line {line}: byte {data[where:where + 1]!r} is not a sequence character (not a FASTA file?)")
                content = ~_WHITESPACE[block]
                if name is None:  # only blank lines may precede the first header
                    if content.any():
                        where = seq_start + int(np.argmax(content))
                        line = line_no + int(np.count_nonzero(buf[:where] == _NEWLINE))
                        raise GMError(f"{path}: line {line}: sequence before the first '>' header")
                else:
                    parts.append(BYTE_TO_CODE[block[content]])
            if header == buf.size:
                break
            end = data.find(b"\n", header)
            end = len(data) if end < 0 else end
            if name is not None:
                yield Record(name, np.concatenate(parts) if parts else np.zeros(0, np.uint8))
            words = data[header + 1:end].decode("utf-8", "replace").split()
            name = words[0] if words else ""  # a header of only whitespace (or '\r') names nothing
            parts = []
            seq_start = end + 1
        line_no += int(np.count_nonzero(buf == _NEWLINE))
    if name is None:
        raise GMError(f"{path}: no FASTA record (no line starting with '>')")
    yield Record(name, np.concatenate(parts) if parts else np.zeros(0, np.uint8))


# ------------------------------------------------------------------------------------------ cache
def sampled_hash(path: str | os.PathLike, size: int | None = None) -> str:
    """Hash of a file, read whole up to 32 MiB; beyond, of its first and last MiB and 65 blocks of
    64 KiB spread evenly over it (about 6 MiB, whatever the size).

    Cheap enough to run at every open, and an edit that keeps the size (and even the mtime)
    is caught whenever it touches a sampled byte: anywhere in a file up to 32 MiB, and in a large
    one, near its ends or at a sampled block.
    """
    size = Path(path).stat().st_size if size is None else size
    digest = hashlib.blake2b(digest_size=16)
    digest.update(str(size).encode())
    with open(path, "rb") as handle:
        if size <= _WHOLE_HASH_LIMIT:
            while block := handle.read(1 << 20):
                digest.update(block)
            return digest.hexdigest()
        offsets = [0, size - (1 << 20)]
        offsets += np.linspace(0, size - _SAMPLE_BLOCK, _SAMPLE_BLOCKS).astype(np.int64).tolist()
        for offset, length in zip(offsets, [1 << 20, 1 << 20] + [_SAMPLE_BLOCK] * _SAMPLE_BLOCKS):
            handle.seek(offset)
            digest.update(handle.read(length))
    return digest.hexdigest()


def fingerprint(path: str | os.PathLike) -> dict:
    """Identity of a source file: size, mtime and :func:`sampled_hash` of its content."""
    stat = Path(path).stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "hash": sampled_hash(path, stat.st_size)}


def pack(codes: np.ndarray) -> np.ndarray:
    """2-bit pack base codes 0-3, four to a byte, lowest bits first (padded with A)."""
    padded = np.zeros(-(-codes.size // 4) * 4, dtype=np.uint8)
    padded[: codes.size] = codes
    quads = padded.reshape(-1, 4)
    return quads[:, 0] | (quads[:, 1] << 2) | (quads[:, 2] << 4) | (quads[:, 3] << 6)


def unpack(packed: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Base codes at ``positions`` (in bases) of a packed array."""
    return _UNPACK[packed[positions >> 2], positions & 3]


@dataclass
class GenomeCache:
    """A built cache: packed bases plus one row per segment (a maximal run of A/C/G/T)."""

    directory: Path
    meta: dict
    seg_record: np.ndarray  # record index of each segment
    seg_start: np.ndarray  # start of the segment in its record (0-based)
    seg_length: np.ndarray  # bases
    seg_offset: np.ndarray  # start of the segment in the packed array, in bases (multiple of 4)

    @property
    def record_names(self) -> list[str]:
        return self.meta["records"]

    @property
    def total_bases(self) -> int:
        return int(self.seg_length.sum())

    def packed(self) -> np.ndarray:
        return np.memmap(self.directory / "bases.2bit", dtype=np.uint8, mode="r")

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "GenomeCache":
        directory = Path(directory)
        meta = json.loads((directory / "meta.json").read_text())
        seg = np.load(directory / "segments.npy")
        return cls(directory, meta, seg[:, 0], seg[:, 1], seg[:, 2], seg[:, 3])


def cache_dir_for(fasta: Path, cache_root: str | os.PathLike, min_segment: int) -> Path:
    key = hashlib.blake2b(f"{fasta.resolve()}|{min_segment}".encode(), digest_size=6).hexdigest()
    return Path(cache_root) / f"{fasta.name}.{key}"


def _cache_files(directory: Path) -> dict:
    """What the manifest records of the cache's data files: exact sizes and checksums."""
    bases, segments = directory / "bases.2bit", directory / "segments.npy"
    return {
        "bases.2bit": {"size": bases.stat().st_size, "hash": sampled_hash(bases)},
        "segments.npy": {"size": segments.stat().st_size, "hash": sampled_hash(segments)},
    }


def _why_not_current(directory: Path, source: dict) -> str | None:
    """Why the cache in ``directory`` cannot be used for ``source`` (None: it can).

    Checks that it was built by this version from this exact source, and that its data files
    are the ones it was built with (sizes and checksums from its manifest): a truncated or
    overwritten ``bases.2bit`` would otherwise be read out of bounds at every later run.
    """
    try:
        meta = json.loads((directory / "meta.json").read_text())
    except (ValueError, OSError) as err:
        return f"its manifest meta.json is unreadable ({err.__class__.__name__})"
    if not isinstance(meta, dict) or meta.get("version") != CACHE_VERSION:
        return f"it was built by another version of the cache format (not {CACHE_VERSION})"
    built_from = meta.get("source") or {}
    if built_from != source:
        changed = [key for key in ("size", "mtime_ns", "hash") if built_from.get(key) != source[key]]
        return f"the source file changed since it was built ({', '.join(changed)} differ)"
    try:
        files = _cache_files(directory)
    except OSError as err:
        return f"a data file is missing or unreadable ({err.strerror}: {err.filename})"
    for name, expected in (meta.get("files") or {}).items():
        got = files.get(name)
        if got is None or got["size"] != expected["size"]:
            size = got["size"] if got else "missing"
            return f"{name} is {size} bytes, not the {expected['size']} it was built with (damaged)"
        if got["hash"] != expected["hash"]:
            return f"{name} does not match its checksum (damaged)"
    if set(meta.get("files") or {}) != set(files):
        return "its manifest does not list its data files"
    return None


def _load_if_current(directory: Path, source: dict, say_why: bool = False) -> GenomeCache | None:
    """The cache in ``directory`` if it is sound and was built by this code version from this
    exact source; otherwise None (with ``say_why``, and a log line saying why it is rebuilt)."""
    if not (directory / "meta.json").is_file():
        return None
    why = _why_not_current(directory, source)
    if why is None:
        cache = GenomeCache.load(directory)
        last = int(np.argmax(cache.seg_offset)) if cache.seg_offset.size else None
        end = int(cache.seg_offset[last] + cache.seg_length[last]) if last is not None else 0
        if cache.seg_record.size == cache.meta.get("segments") and end <= 4 * cache.meta["files"]["bases.2bit"]["size"]:
            return cache
        why = "its segments do not fit its bases (damaged)"
    if say_why:
        log.warning("genome cache %s: %s; rebuilding it", directory, why)
    return None


#: errors of flock() on file systems without file locks (NFS mounted with nolock, Lustre without flock)
_NO_FILE_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


@contextlib.contextmanager
def _exclusive(lock_path: Path, what: str, doing: str = "built") -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path``, shared by every process (ranks, nodes) that uses the folder.

    While another process holds it, say once who (the holder writes its host, pid and start time
    into the file) and wait; the kernel releases the lock of a process that dies, however it
    dies, so a waiter never waits for a dead builder. Where the file system has no file locks,
    go on without one, with a warning: each cache is still published by one rename and checked
    at every open, so concurrent builders cost time, never correctness.
    """
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as handle:
        locked = True
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = ""
            for _ in range(40):  # the holder writes who it is just after taking the lock
                handle.seek(0)
                holder = handle.read().strip()
                if holder:
                    break
                time.sleep(0.025)
            holder = holder or "another process"
            log.warning("%s is being %s by %s; waiting for it to finish", what, doing, holder)
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError as err:
            if err.errno not in _NO_FILE_LOCKS:
                raise
            log.warning(
                "%s: this file system has no file locks (%s), so processes starting together may each make %s",
                lock_path.parent, os.strerror(err.errno), what,
            )
            locked = False
        if not locked:  # outside the except clause: the body's own errors are not chained to flock's
            yield
            return
        try:
            handle.truncate(0)
            handle.write(f"host {socket.gethostname()} pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n")
            handle.flush()
            yield
        finally:
            with contextlib.suppress(OSError):
                handle.truncate(0)
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_or_load_cache(fasta: str | os.PathLike, cache_root: str | os.PathLike, min_segment: int) -> GenomeCache:
    """Return the cache for ``fasta``, (re)building it when missing, stale or of another version.

    Builders take a file lock and look again once they hold it, so concurrent processes (ranks,
    nodes on a shared filesystem) build the cache once and all read the same one. A builder
    builds in a temporary folder renamed into place when complete, so one that is killed leaves
    nothing a later run trusts; the next builder (a waiter, or a later run) starts afresh and
    removes the dead one's leftovers.
    """
    fasta = Path(fasta)
    open_fasta(fasta).close()  # clear errors for missing/empty files before anything else
    directory = cache_dir_for(fasta, cache_root, min_segment)
    remove_stale_temporaries(directory.parent)  # a killed build's .tmp-* folder (a whole genome: ~0.8 GB)
    source = fingerprint(fasta)
    cached = _load_if_current(directory, source)
    if cached is not None:
        return cached
    try:
        with _exclusive(directory.with_name(f".{directory.name}.lock"), f"the genome cache {directory}"):
            cached = _load_if_current(directory, source, say_why=True)
            if cached is not None:  # built by another process while this one waited
                return cached
            remove_stale_temporaries(directory.parent)  # what a builder killed while this one waited left
            return _build_cache(fasta, directory, source, min_segment)
    except OSError as err:
        hint = (
            "free some space, or set GM_CACHE_DIR (paths.cache_dir) to a folder on another disk"
            if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
            else "set GM_CACHE_DIR (paths.cache_dir) to a folder you can write"
        )
        error = write_error(f"the genome cache {directory}", err, hint)
        if error is None or err.filename == str(fasta):
            raise
        raise error from err


def acgt_runs(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Starts and ends (half-open) of the maximal runs of A/C/G/T in base codes.

    Boolean arrays only: a byte per base, where an integer diff of the mask took 16 and made
    a 249 Mb chromosome cost 6 GB.
    """
    valid = codes != INVALID_CODE
    if valid.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    rises = valid[1:] & ~valid[:-1]  # a run starts at i + 1
    falls = valid[:-1] & ~valid[1:]  # a run ends at i + 1
    starts = np.flatnonzero(rises) + 1
    ends = np.flatnonzero(falls) + 1
    if valid[0]:
        starts = np.concatenate((np.zeros(1, dtype=starts.dtype), starts))
    if valid[-1]:
        ends = np.concatenate((ends, np.full(1, valid.size, dtype=ends.dtype)))
    return starts, ends


def _build_cache(fasta: Path, directory: Path, source: dict, min_segment: int) -> GenomeCache:
    log.info("building genome cache for %s in %s", fasta, directory)
    with atomic_directory(directory) as tmp:
        rows: list[tuple[int, int, int, int]] = []
        names: list[str] = []
        lengths: list[int] = []
        offset = 0
        with open(tmp / "bases.2bit", "wb") as out:
            for index, record in enumerate(read_fasta(fasta)):
                names.append(record.name)
                lengths.append(int(record.codes.size))
                starts, ends = acgt_runs(record.codes)
                for start, end in zip(starts.tolist(), ends.tolist()):
                    if end - start < min_segment:
                        continue
                    out.write(pack(record.codes[start:end]).tobytes())
                    rows.append((index, start, end - start, offset))
                    offset += -(-(end - start) // 4) * 4
        if not rows:
            raise GMError(
                f"{fasta}: no usable sequence: no run of A/C/G/T of at least {min_segment} bases "
                f"in {len(names)} record(s)"
            )
        np.save(tmp / "segments.npy", np.asarray(rows, dtype=np.int64))
        meta = {
            "version": CACHE_VERSION,
            "source_path": str(fasta.resolve()),
            "source": source,
            "min_segment": min_segment,
            "records": names,
            "record_lengths": lengths,
            "segments": len(rows),
            "bases": int(sum(r[2] for r in rows)),
        }
        meta["files"] = _cache_files(tmp)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    return GenomeCache.load(directory)
