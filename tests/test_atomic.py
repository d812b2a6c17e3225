"""data.atomic: the one atomic writer (unique temporaries, nothing half-written, stale ones removed)."""

import os
import subprocess
import sys

import pytest

from neurcomp.data import atomic
from neurcomp.data.atomic import atomic_path, atomic_write_bytes, atomic_write_text, remove_stale_temporaries


def test_write_replaces_and_leaves_only_the_file(tmp_path):
    path = tmp_path / "sub" / "out.json"
    atomic_write_text(path, "one")
    atomic_write_bytes(path, b"two")
    assert path.read_bytes() == b"two"
    assert [p.name for p in path.parent.iterdir()] == ["out.json"]


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_temporaries_are_unique_and_in_the_same_folder(tmp_path):
    with atomic_path(tmp_path / "a.png", suffix=".png") as first, atomic_path(tmp_path / "a.png", suffix=".png") as second:
        assert first != second and first.parent == tmp_path and first.suffix == ".png"
        assert f".{os.getpid()}." in first.name
        first.write_text("1")
        second.write_text("2")
    assert (tmp_path / "a.png").read_text() == "1"  # the first to finish is replaced by the outer one
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]


def test_remove_stale_temporaries_only_takes_dead_writers(tmp_path, monkeypatch):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".checkpoint.pt.{dead_pid}.0123abcd.tmp"
    stale_png = tmp_path / f".slices.png.{dead_pid}.89abcdef.tmp.png"
    alive = tmp_path / f".checkpoint.pt.{os.getpid()}.0123abcd.tmp"
    others = [tmp_path / "checkpoint.pt.tmp", tmp_path / "notes.tmp", tmp_path / f".x.{dead_pid}.tmp"]
    for p in [stale, stale_png, alive, *others]:
        p.write_text("x")
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(removed) == sorted([stale, stale_png])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in [alive, *others])
    assert remove_stale_temporaries(tmp_path / "missing") == []


def test_kill_during_write_does_not_accumulate(tmp_path):
    """A writer killed mid-write leaves one temporary; the next start removes it."""
    code = ("import os, sys; from data.atomic import atomic_path\n"
            f"with atomic_path({str(tmp_path / 'checkpoint.pt')!r}) as tmp:\n"
            "    tmp.write_text('partial'); os._exit(9)\n")
    for _ in range(2):
        subprocess.run([sys.executable, "-c", code], cwd=os.path.dirname(os.path.dirname(atomic.__file__)))
    assert len(list(tmp_path.iterdir())) == 2 and not (tmp_path / "checkpoint.pt").exists()
    assert len(remove_stale_temporaries(tmp_path)) == 2 and not list(tmp_path.iterdir())


def test_fsyncs_file_and_folder(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    atomic_write_text(tmp_path / "f.txt", "x")
    assert len(synced) >= 2  # the data and the folder entry
