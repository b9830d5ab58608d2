"""One genome cache folder shared by processes that start at once (ranks, nodes), with real processes and kill -9.

One builds and the others wait, then reuse it; a builder killed mid-build leaves nothing a later
run trusts, and the next one (a waiter, or a later run) builds it afresh and clears the leftovers.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import gm.data.fasta as fasta_mod
from gm.data.fasta import build_or_load_cache, cache_dir_for

ROOT = Path(__file__).resolve().parent.parent
MIN_SEGMENT = 8

#: a process that waits for a go file, then builds or loads the cache; each record read takes
#: ``slow`` seconds, so the build lasts long enough to be overlapped or killed
CHILD = r"""
import json, logging, sys, time
from pathlib import Path

import gm.data.fasta as fasta

fasta_path, root, go, slow, marker = sys.argv[1:6]
events = []

class Note(logging.Handler):
    def emit(self, record):
        message = record.getMessage()
        events.append(message)
        if "being built by" in message:
            Path(marker + ".waiting").touch()

logger = logging.getLogger("gm.data.fasta")
logger.addHandler(Note())
logger.setLevel(logging.INFO)
read_fasta = fasta.read_fasta

def slow_read(*args, **kwargs):
    for record in read_fasta(*args, **kwargs):
        time.sleep(float(slow))
        yield record

fasta.read_fasta = slow_read
Path(marker + ".ready").touch()
while not Path(go).exists():
    time.sleep(0.005)
cache = fasta.build_or_load_cache(fasta_path, root, 8)
print(json.dumps({
    "built": any(m.startswith("building genome cache") for m in events),
    "waited": [m for m in events if "being built by" in m],
    "directory": str(cache.directory),
    "files": cache.meta["files"],
    "segments": cache.meta["segments"],
}))
"""


def write_genome(path: Path, records: int = 8, length: int = 40_000) -> Path:
    rng = np.random.default_rng(5)
    with open(path, "w") as handle:
        for index in range(records):
            seq = "".join(rng.choice(list("ACGTN"), length, p=[0.245, 0.245, 0.245, 0.245, 0.02]))
            handle.write(f">r{index}\n" + "\n".join(seq[i : i + 60] for i in range(0, length, 60)) + "\n")
    return path


def start(tmp_path: Path, fasta: Path, root: Path, name: str, slow: float, go: Path) -> subprocess.Popen:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(script), str(fasta), str(root), str(go), str(slow), str(tmp_path / name)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_for(condition, what: str, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def finish(process: subprocess.Popen) -> dict:
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def entries(root: Path) -> list[str]:
    """The cache root's entries, less the lock files (which hold no data)."""
    return sorted(p.name for p in root.iterdir() if not p.name.endswith(".lock"))


def partial_build(root: Path) -> list[Path]:
    """A builder's temporary folders that already hold some bases."""
    return [p for p in root.glob(".tmp-*") if (p / "bases.2bit").is_file() and (p / "bases.2bit").stat().st_size > 0]


def reference(tmp_path: Path, fasta: Path) -> dict:
    cache = build_or_load_cache(fasta, tmp_path / "reference", MIN_SEGMENT)
    return {"files": cache.meta["files"], "segments": cache.meta["segments"]}


def test_processes_starting_at_once_build_once_and_all_reuse_it(tmp_path: Path) -> None:
    fasta, root, go = write_genome(tmp_path / "g.fa"), tmp_path / "cache", tmp_path / "go"
    children = [start(tmp_path, fasta, root, f"p{i}", 0.2, go) for i in range(4)]
    wait_for(lambda: all((tmp_path / f"p{i}.ready").exists() for i in range(4)), "the processes to start")
    go.touch()  # all four ask for the cache at once
    results = [finish(child) for child in children]
    builders = [(child, r) for child, r in zip(children, results) if r["built"]]
    assert len(builders) == 1, results
    (builder, _), waiters = builders[0], [r for r in results if not r["built"]]
    for waiter in waiters:  # they waited (named the builder) and then reused its cache
        assert len(waiter["waited"]) == 1 and f"pid {builder.pid} " in waiter["waited"][0], waiter
    want = reference(tmp_path, fasta)
    assert all({"files": r["files"], "segments": r["segments"]} == want for r in results)
    assert len({r["directory"] for r in results}) == 1
    assert entries(root) == [Path(results[0]["directory"]).name]


def test_killed_builder_leaves_nothing_trusted_and_the_waiter_builds_it(tmp_path: Path) -> None:
    fasta, root, go = write_genome(tmp_path / "g.fa"), tmp_path / "cache", tmp_path / "go"
    go.touch()
    builder = start(tmp_path, fasta, root, "builder", 0.5, go)  # 8 records: about 4 s
    wait_for(lambda: partial_build(root), "the builder to write some bases")
    waiter = start(tmp_path, fasta, root, "waiter", 0.0, go)
    wait_for(lambda: (tmp_path / "waiter.waiting").exists(), "the second process to wait for the builder")
    assert not cache_dir_for(fasta, root, MIN_SEGMENT).exists()  # mid-build: no cache to find
    os.kill(builder.pid, signal.SIGKILL)
    builder.wait(timeout=30)
    result = finish(waiter)
    assert result["built"] and len(result["waited"]) == 1  # it took over once the builder died
    assert {"files": result["files"], "segments": result["segments"]} == reference(tmp_path, fasta)
    assert entries(root) == [Path(result["directory"]).name]  # the dead builder's half-built folder is gone


def test_killed_builder_alone_leaves_only_a_temporary_that_the_next_run_replaces(tmp_path: Path, caplog) -> None:
    fasta, root, go = write_genome(tmp_path / "g.fa"), tmp_path / "cache", tmp_path / "go"
    go.touch()
    builder = start(tmp_path, fasta, root, "builder", 0.5, go)
    wait_for(lambda: partial_build(root), "the builder to write some bases")
    os.kill(builder.pid, signal.SIGKILL)
    builder.wait(timeout=30)
    left = entries(root)
    assert len(left) == 1 and left[0].startswith(".tmp-")  # no cache folder, only the builder's temporary
    assert not cache_dir_for(fasta, root, MIN_SEGMENT).exists()
    with caplog.at_level(logging.INFO, logger="gm.data.fasta"):
        cache = build_or_load_cache(fasta, root, MIN_SEGMENT)  # a later run: builds, does not wait for the dead
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("building genome cache") for m in messages)
    assert not any("being built by" in m for m in messages)
    assert {"files": cache.meta["files"], "segments": cache.meta["segments"]} == reference(tmp_path, fasta)
    assert entries(root) == [cache.directory.name]


def test_file_system_without_locks_still_builds_a_sound_cache(tmp_path: Path, monkeypatch, caplog) -> None:
    """flock() fails with ENOLCK on NFS mounted nolock: warn once, build anyway (publishing is atomic)."""
    fasta, root = write_genome(tmp_path / "g.fa", records=2), tmp_path / "cache"

    def no_locks(handle, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fasta_mod.fcntl, "flock", no_locks)
    with caplog.at_level(logging.WARNING, logger="gm.data.fasta"):
        cache = build_or_load_cache(fasta, root, MIN_SEGMENT)
    (warning,) = [r.getMessage() for r in caplog.records]
    assert warning.startswith(f"{root}: this file system has no file locks (") and "may each make the genome cache" in warning
    monkeypatch.undo()
    assert {"files": cache.meta["files"], "segments": cache.meta["segments"]} == reference(tmp_path, fasta)


@pytest.mark.parametrize("error", [errno.EIO, errno.EBADF])
def test_other_lock_errors_are_not_mistaken_for_missing_locks(tmp_path: Path, monkeypatch, error) -> None:
    fasta = write_genome(tmp_path / "g.fa", records=1)

    def failing(handle, operation):
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(fasta_mod.fcntl, "flock", failing)
    with pytest.raises(Exception) as info:
        build_or_load_cache(fasta, tmp_path / "cache", MIN_SEGMENT)
    assert "no file locks" not in str(info.value)


FETCH_CHILD = r"""
import json, logging, sys, time
from pathlib import Path

import gm.data.fasta as fasta

url, folder, go, marker = sys.argv[1:5]
waited = []
logging.getLogger("gm.data.fasta").addHandler(type("Note", (logging.Handler,), {"emit": lambda self, r: waited.append(r.getMessage())})())
download = fasta._download
downloaded = []

def slow_download(url, target):  # a download that takes a while
    downloaded.append(url)
    time.sleep(2)
    download(url, target)

fasta._download = slow_download
Path(marker + ".ready").touch()
while not Path(go).exists():
    time.sleep(0.005)
path = fasta.fetch(url, folder)
print(json.dumps({"downloaded": bool(downloaded), "waited": waited, "size": path.stat().st_size}))
"""


def test_processes_starting_at_once_download_once(tmp_path: Path) -> None:
    """Nodes sharing a download folder fetch the genome once; the others wait and find it there."""
    source = write_genome(tmp_path / "source.fa", records=2)
    script, go, folder = tmp_path / "fetch_child.py", tmp_path / "go", tmp_path / "downloads"
    script.write_text(FETCH_CHILD)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    children = [subprocess.Popen([sys.executable, str(script), source.as_uri(), str(folder), str(go), str(tmp_path / f"f{i}")],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for i in range(3)]
    wait_for(lambda: all((tmp_path / f"f{i}.ready").exists() for i in range(3)), "the processes to start")
    go.touch()
    results = [finish(child) for child in children]
    assert sum(r["downloaded"] for r in results) == 1, results
    assert sum(bool(r["waited"]) for r in results) == 2 and all(" is being downloaded by host " in m for r in results for m in r["waited"])
    assert {r["size"] for r in results} == {source.stat().st_size}
    assert entries(folder) == ["source.fa"]
