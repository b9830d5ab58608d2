"""Atomic writes: a failure mid-write leaves the old file whole and no temporary behind."""

import pytest

from gm.utils import atomic_directory, atomic_open, atomic_write_text


def test_atomic_open_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "last.ckpt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_open(target) as handle:
            handle.write(b"half of the new")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    with atomic_open(target) as handle:
        handle.write(b"new")
    assert target.read_text() == "new"


def test_atomic_directory_replaces_only_on_success(tmp_path):
    final = tmp_path / "cache"
    with atomic_directory(final) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(ValueError):
        with atomic_directory(final) as tmp:
            (tmp / "a").write_text("2")
            raise ValueError
    assert (final / "a").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]
