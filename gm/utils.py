"""Small shared helpers: the project's user-facing error, atomic file writes, and their leftovers."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import socket
from pathlib import Path
from typing import BinaryIO, Iterator


class GMError(Exception):
    """A problem with the user's input or configuration.

    Entry points print its message (which names the file, line or value) without a traceback
    and exit non-zero; anything else is a bug and keeps its traceback.
    """


def _host() -> str:
    """This machine's name as it may appear in a temporary name (no dots or dashes: they separate fields)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:40] or "host"


def _owner_tag() -> str:
    """``<host>~<pid>~<random>``: who writes a temporary, so a later run can tell a dead writer's leftovers."""
    return f"{_host()}~{os.getpid()}~{secrets.token_hex(3)}"


#: temporaries of atomic_open (``.<name>.<owner>.tmp``) and atomic_directory (``.tmp-<name>.<owner>``,
#: ``.old-<name>.<owner>``), with their writer's host and pid
_TEMPORARY = re.compile(r"^\.(?:(?:tmp|old)-.+\.|.+\.)(?P<host>\w+)~(?P<pid>\d+)~[0-9a-f]+(?:\.tmp)?$")


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file handle whose content replaces ``path`` only once the block succeeds.

    Readers see the old file or the whole new one, never a torn file; on error the temporary
    file is removed. The file gets the mode any new file gets (0666 less the umask), and its
    temporary name carries the writer's host and pid for :func:`remove_stale_temporaries`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{_owner_tag()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)  # umask applies
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    with atomic_open(path) as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


@contextlib.contextmanager
def atomic_directory(final: str | os.PathLike) -> Iterator[Path]:
    """Build a directory under a temporary name and rename it into place only on success.

    A crash leaves at most a ``.tmp-*`` sibling that no reader ever mistakes for the result (and
    that :func:`remove_stale_temporaries` removes once its writer is dead); an existing ``final``
    is replaced. The directory gets the mode any new directory gets (0777 less the umask).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    owner = _owner_tag()
    tmp = final.with_name(f".tmp-{final.name}.{owner}")
    tmp.mkdir(0o777)  # umask applies
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".old-{final.name}.{owner}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs; a zombie (killed, not yet reaped by its parent) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            state = handle.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):  # no /proc (not Linux): trust kill()
        return True
    return state not in (b"Z", b"X")


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove what a killed writer left in ``folder``: temporaries of atomic writes whose process is gone.

    Only temporaries written on this host by a process that no longer exists are removed, so a
    live writer's (another run, another rank, another node on a shared filesystem) is never
    touched. Cleaning is best effort: a folder that cannot be written is left as it is (the write
    that follows reports it). Returns what was removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    host, removed = _host(), []
    try:
        entries = list(folder.iterdir())
    except OSError:  # unreadable: nothing to clean that we could see
        return []
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if match is None or match["host"] != host or _alive(int(match["pid"])):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            try:
                entry.unlink()
            except FileNotFoundError:
                pass
            except OSError:  # read-only or not ours to remove
                continue
        removed.append(entry)
    return removed


# ------------------------------------------------------------------------------------------ output paths
#: OSErrors that mean "this path cannot be written here", in the words a user needs
_WRITE_ERRORS = {
    errno.ENOSPC: "no space left on device",  # names no file
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EISDIR: "it is a directory",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EFBIG: "file too large",
}


def check_output_path(path: str | os.PathLike, option: str = "--out") -> Path:
    """Refuse an output *file* path that can never be written, before any work is done.

    A directory, or a path under an existing file, would otherwise fail at the very end (after
    minutes of work) with a traceback.
    """
    path = Path(path)
    if path.is_dir():
        raise GMError(f"{option} {path} is a directory; give a file name (e.g. {path / 'name'})")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise GMError(f"{option} {path}: {parent} is a file, not a folder")
    return path


def write_error(path: str | os.PathLike, err: OSError, hint: str = "") -> GMError | None:
    """One line for an OSError met while writing ``path``, or None if it is no write error.

    A full disk's error names no file and a read-only folder's names a temporary one, so the
    line names ``path``, what the user asked to write.
    """
    reason = _WRITE_ERRORS.get(err.errno or 0)
    if reason is None:
        return None
    where = f" ({err.filename})" if err.filename and str(err.filename) != str(path) else ""
    return GMError(f"cannot write {path}: {reason}{where}" + (f"; {hint}" if hint else ""))


@contextlib.contextmanager
def writing(path: str | os.PathLike, hint: str = "") -> Iterator[None]:
    """Run a block that writes ``path``: a full disk, read-only folder and the like become a
    :class:`GMError` naming ``path`` (any other OSError keeps its traceback)."""
    try:
        yield
    except OSError as err:
        error = write_error(path, err, hint)
        if error is None:
            raise
        raise error from err
