"""Issue 25, items 4-6 and a minor one: a full disk, two runs in one experiment folder, names too long
for the filesystem, pickled objects in a checkpoint. Each ends in one line, exit 2, nothing lost.

A full disk is real without filling one: the temporary a write goes to is a symlink to /dev/full,
where every write fails with ENOSPC from the kernel.
"""

import errno
import os
import pickle
import re
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from neurcomp.config.errors import ConfigError, InputError
from neurcomp.data import atomic
from neurcomp.data.atomic import atomic_path, atomic_write_bytes
from neurcomp.training import experiment_lock
from neurcomp.training.checkpoint import atomic_torch_save, read_checkpoint

REPO = Path(__file__).resolve().parents[1]
DEV_FULL = Path("/dev/full")
needs_dev_full = pytest.mark.skipif(not DEV_FULL.exists(), reason="needs /dev/full (Linux)")


def volume(tmp_path) -> Path:
    z, y, x = np.meshgrid(*(np.linspace(0, 1, n) for n in (6, 7, 8)), indexing="ij")
    path = tmp_path / "v.npy"
    np.save(path, (np.sin(3 * x) + y * z).astype(np.float32))
    return path


def training_argv(tmp_path, expname="runs", **extra) -> list:
    opts = {"data": volume(tmp_path), "basedir": tmp_path / "exp", "expname": expname, "features_per_layer": 8,
            "n_layers": 2, "max_pass": 1, "batch_size": 8, "sample_size": 8, "checkpoint_every": 0,
            "tracking": "none", "quiet": True, **extra}
    config = tmp_path / f"{expname}.txt"
    config.write_text("".join(f"{k} = {v}\n" for k, v in opts.items()))
    return ["--config", str(config)]


def run_training(argv, capsys) -> tuple[int, str]:
    """NeurcompTraining.py's main through run_cli, in-process: (exit code, stderr)."""
    from neurcomp.config.cli import run_cli
    from NeurcompTraining import main

    capsys.readouterr()
    code = run_cli(main, argv)
    return code, capsys.readouterr().err.strip()


def one_line(err: str) -> bool:
    return err.startswith("error: ") and "\n" not in err and "Traceback" not in err


# -- item 4: a full disk ----------------------------------------------------------------------------
def temporaries_to_dev_full(monkeypatch, name_prefix=""):
    """Make every temporary of a file named ``name_prefix...`` a symlink to /dev/full."""
    original = atomic._temporary_name

    def full(path, suffix=""):
        tmp = original(path, suffix)
        if path.name.startswith(name_prefix):
            tmp.symlink_to(DEV_FULL)
        return tmp
    monkeypatch.setattr(atomic, "_temporary_name", full)


@needs_dev_full
def test_torch_save_into_a_full_disk_is_one_line_and_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    atomic_torch_save({"old": torch.arange(4.0)}, path)
    old = path.read_bytes()
    temporaries_to_dev_full(monkeypatch)
    with pytest.raises(InputError) as info:
        atomic_torch_save({"new": torch.zeros(100_000)}, path)
    assert str(info.value) == f"{path}: cannot write: no space left on device; checkpoint.pt is kept as it was"
    assert path.read_bytes() == old and [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
    with pytest.raises(InputError, match=r"new.bin: cannot write: no space left on device$"):
        atomic_write_bytes(tmp_path / "new.bin", b"x" * 10_000)  # no previous file: nothing said to be kept
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


@needs_dev_full
def test_torch_writer_error_counts_as_disk_full_only_when_the_disk_is_full(tmp_path, monkeypatch):
    """torch.save given a file name fails in C++ ("unexpected pos", no errno): free space decides."""
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"old")
    temporaries_to_dev_full(monkeypatch)
    with pytest.raises(RuntimeError, match="unexpected pos"), atomic_path(path) as tmp:  # the disk has room
        torch.save({"a": torch.zeros(10_000)}, str(tmp))
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda folder: type("U", (), {"free": 4096})())
    with pytest.raises(InputError, match=r"checkpoint.pt: cannot write: no space left on device; checkpoint.pt is kept"):
        with atomic_path(path) as tmp:
            torch.save({"a": torch.zeros(10_000)}, str(tmp))
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


@pytest.mark.parametrize("code, full", [(errno.ENOSPC, True), (getattr(errno, "EDQUOT", errno.ENOSPC), True),
                                        (errno.EIO, False)])
def test_a_full_disk_or_quota_at_fsync_is_one_line(tmp_path, monkeypatch, code, full):
    """Network filesystems report a full disk when the data is flushed: fsync fails, not write."""
    path = tmp_path / "info.json"
    path.write_text("old")

    def fsync(fd):
        raise OSError(code, os.strerror(code))
    monkeypatch.setattr(atomic.os, "fsync", fsync)
    with pytest.raises(InputError if full else OSError) as info:
        atomic_write_bytes(path, b"new")
    assert isinstance(info.value, InputError) == full
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["info.json"]


@needs_dev_full
def test_training_into_a_full_disk_through_the_entry_script(tmp_path, capsys):
    """The real NeurcompTraining.py, whose checkpoint write meets ENOSPC: one line, exit 2, the
    checkpoint of the run before byte-identical, no temporary and no lock left behind."""
    argv = training_argv(tmp_path)
    assert run_training(argv, capsys)[0] == 0
    folder = tmp_path / "exp" / "runs"
    before = (folder / "checkpoint.pt").read_bytes()
    code = ("import runpy, sys\n"
            "from neurcomp.data import atomic\n"
            "original = atomic._temporary_name\n"
            "def full(path, suffix=''):\n"
            "    tmp = original(path, suffix)\n"
            "    if path.name == 'checkpoint.pt':\n"
            "        tmp.symlink_to('/dev/full')\n"
            "    return tmp\n"
            "atomic._temporary_name = full\n"
            f"sys.argv = ['NeurcompTraining.py', *{argv!r}]\n"
            "runpy.run_path('NeurcompTraining.py', run_name='__main__')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and one_line(err), err
    assert err == f"error: {folder / 'checkpoint.pt'}: cannot write: no space left on device; checkpoint.pt is kept as it was"
    assert (folder / "checkpoint.pt").read_bytes() == before
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporary, no lock


# -- item 5: one run per experiment folder ----------------------------------------------------------
def write_lock(folder: Path, pid: int, host: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / experiment_lock.LOCK_NAME
    lock.write_text(f"pid={pid}\nhost={host or socket.gethostname()}\ntoken=0123456789abcdef\n")
    return lock


def test_a_second_run_is_refused_while_the_owner_lives_and_takes_over_once_it_is_gone(tmp_path, capsys):
    folder = tmp_path / "exp" / "runs"
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        lock = write_lock(folder, owner.pid)
        code, err = run_training(training_argv(tmp_path), capsys)
        assert code == 2 and one_line(err), err
        assert err.startswith(f"error: {folder} is in use by another run (pid {owner.pid}); "), err
        assert [p.name for p in folder.iterdir()] == [lock.name]  # nothing written, the lock untouched
        assert f"pid={owner.pid}\n" in lock.read_text()
    finally:
        owner.kill()
        owner.wait()
    # the owner is gone (as after kill -9): the lock is stale, the next run takes it over and removes it
    code, err = run_training(training_argv(tmp_path), capsys)
    assert code == 0, err
    assert (folder / "checkpoint.pt").is_file() and not lock.exists()


def test_a_run_in_another_process_is_refused_while_this_one_holds_the_lock(tmp_path):
    from conftest import run_script

    argv = training_argv(tmp_path)
    folder = tmp_path / "exp" / "runs"
    with experiment_lock.held(folder):
        proc = run_script("NeurcompTraining.py", *argv, timeout=300)
        assert proc.returncode == 2 and one_line(proc.stderr.strip()), proc.stderr
        assert f"is in use by another run (pid {os.getpid()})" in proc.stderr
        assert [p.name for p in folder.iterdir()] == [experiment_lock.LOCK_NAME]
    assert not folder.exists()  # the folder the lock made, left empty: removed


def test_of_runs_starting_at_once_exactly_one_takes_the_lock(tmp_path):
    """Four processes reach the lock in the same instant: O_EXCL lets one in, the others are refused."""
    import time

    code = ("import sys, time\n"
            "from pathlib import Path\n"
            "from neurcomp.config.errors import InputError\n"
            "from neurcomp.training import experiment_lock\n"
            "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"
            "try:\n"
            "    with experiment_lock.held(Path(sys.argv[1])):\n"
            "        print('got', flush=True)\n"
            "        time.sleep(3)\n"
            "except InputError as exc:\n"
            "    print(exc)\n")
    start = time.time() + 3
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "exp" / "runs"), str(start)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [proc.communicate(timeout=60) for proc in procs]
    assert all(proc.returncode == 0 and not err for proc, (_, err) in zip(procs, outs)), outs
    said = sorted(out.strip() for out, _ in outs)
    assert said.count("got") == 1 and sum("is in use by another run" in line for line in said) == 3, said
    assert not (tmp_path / "exp" / "runs" / experiment_lock.LOCK_NAME).exists()


def test_a_lock_of_another_host_or_not_ours_is_not_taken_over(tmp_path, capsys):
    folder = tmp_path / "exp" / "runs"
    lock = write_lock(folder, 1, host="other-node")
    code, err = run_training(training_argv(tmp_path), capsys)
    assert code == 2 and one_line(err) and "(pid 1 on host other-node)" in err and f"delete {lock}" in err, err
    lock.write_text("x" * 10_000_000)
    code, err = run_training(training_argv(tmp_path), capsys)
    assert code == 2 and one_line(err) and "not a lock file this program wrote" in err and len(err) < 300, err
    assert [p.name for p in folder.iterdir()] == [lock.name]


def test_the_lock_is_gone_after_a_run_an_error_and_an_interrupt(tmp_path, capsys, monkeypatch):
    from neurcomp.config.options import parse_config
    from neurcomp.training import run

    folder = tmp_path / "exp" / "runs"
    assert run_training(training_argv(tmp_path), capsys)[0] == 0
    assert (folder / "info.json").is_file() and not (folder / experiment_lock.LOCK_NAME).exists()
    # a bad volume: the error is one line, and a run that wrote nothing leaves no folder behind
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"\x93NUMPY")
    code, err = run_training(training_argv(tmp_path, "other") + ["--data", str(bad)], capsys)
    assert code == 2 and one_line(err) and not (tmp_path / "exp" / "other").exists(), err
    for stop in (KeyboardInterrupt, RuntimeError("boom")):  # Ctrl-C and an unexpected error mid-run
        def interrupted(self, phases, stop=stop):
            assert (folder / experiment_lock.LOCK_NAME).is_file()
            raise stop
        monkeypatch.setattr(run.Session, "run", interrupted)
        with pytest.raises(type(stop) if isinstance(stop, Exception) else stop):
            run.train(parse_config(training_argv(tmp_path)), progress=False)
        assert not (folder / experiment_lock.LOCK_NAME).exists() and (folder / "info.json").is_file()


def test_the_lock_is_only_removed_by_its_owner_and_only_rank_0_takes_it(tmp_path, monkeypatch):
    folder = tmp_path / "run"
    with experiment_lock.held(folder):
        with pytest.raises(InputError, match=f"is in use by another run \\(pid {os.getpid()}\\)"):
            with experiment_lock.held(folder):
                pass
        lock = folder / experiment_lock.LOCK_NAME
        assert lock.is_file()
        write_lock(folder, os.getpid())  # replaced by another run meanwhile: its lock is not ours to remove
    assert lock.is_file()
    lock.unlink()
    monkeypatch.setenv("RANK", "1")  # torchrun's other ranks are the same run
    with experiment_lock.held(tmp_path / "rank1"):
        assert not (tmp_path / "rank1").exists()


# -- item 6: names too long for the filesystem ------------------------------------------------------
@pytest.mark.parametrize("args, match", [
    (["--expname", "a" * 256], r"expname = 'a+\.\.\. \(258 characters\) is invalid: a folder name holds at most "
                               r"255 bytes, not 256"),
    (["--expname", "\u00e9" * 128], r"expname = .* is invalid: a folder name holds at most 255 bytes, not 256"),
    (["--basedir", "exp/" + "b" * 300 + "/x"], r"basedir = .* is invalid: holds 'b+\.\.\. \(302 characters\): "
                                               r"a folder name holds at most 255 bytes, not 300"),
    (["--Tensorboard_log_dir", "t" * 1000], r"Tensorboard_log_dir = .* is invalid: holds .*not 1000"),
])
def test_names_over_255_bytes_are_refused_before_anything_is_created(tmp_path, capsys, monkeypatch, args, match):
    monkeypatch.chdir(tmp_path)  # a relative basedir lands here, if anything were created
    code, err = run_training(training_argv(tmp_path) + args, capsys)
    assert code == 2 and one_line(err) and re.search(match, err), err
    assert len(err) < 400 and not (tmp_path / "exp").exists()


def test_names_at_the_limit_pass_and_a_huge_config_line_is_cut(tmp_path):
    from neurcomp.config.options import parse_config

    assert parse_config(["--data", "x.npy", "--expname", "\u00e9" * 127 + "a"]).expname.startswith("\u00e9")
    config = tmp_path / "huge.txt"
    config.write_text("expname = " + "x" * 10_000_000 + "\n")
    with pytest.raises(ConfigError) as info:
        parse_config(["--config", str(config), "--data", "x.npy"])
    assert len(str(info.value)) < 300 and "not 10000000" in str(info.value)
    with pytest.raises(ConfigError, match="NUL"):
        parse_config(["--data", "x.npy", "--expname", "a\0b"])


# -- minor: a checkpoint holding pickled objects -----------------------------------------------------
class Code:
    """Unpickling it would make a folder: the proof that nothing was unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def test_pickled_objects_are_named_as_such_and_never_run(tmp_path, capsys):
    marker = tmp_path / "ran"
    for legacy in (False, True):  # the zip format and torch.save's format before 1.6
        path = tmp_path / f"code_{legacy}.pt"
        torch.save({"architecture": {}, "model_state": Code(marker), "volume": {}}, path,
                   _use_new_zipfile_serialization=not legacy)
        with pytest.raises(InputError) as info:
            read_checkpoint(path)
        message = str(info.value)
        assert message.startswith(f"{path}: holds Python objects besides tensors and plain values "), message
        assert re.search(r"\((posix|nt)\.mkdir\): a torch\.save file, but a weights-only load refuses pickled "
                         r"objects \(code\); not loaded", message), message
        assert not marker.exists()
    code, err = run_training(training_argv(tmp_path) + ["--resume", str(tmp_path / "code_False.pt")], capsys)
    assert code == 2 and one_line(err) and "a torch.save file, but a weights-only load refuses" in err, err
    assert not marker.exists()


def test_a_file_that_is_not_a_torch_save_file_says_so(tmp_path):
    plain = tmp_path / "plain.pt"
    plain.write_bytes(pickle.dumps({"model_state": Code(tmp_path / "ran")}, protocol=4))
    text = tmp_path / "text.pt"
    text.write_text("hello world")
    with warnings.catch_warnings(record=True) as seen:  # torch's protocol warning would be a second line
        warnings.simplefilter("always")
        with pytest.raises(InputError) as info:
            read_checkpoint(plain)
    assert not seen and str(info.value) == (f"{plain}: not a torch.save file (a plain pickle? not loaded, since "
                                            "unpickling it could run code)")
    with pytest.raises(InputError, match=r"text.pt: not a readable checkpoint \(not a torch.save file\)$"):
        read_checkpoint(text)
    assert not (tmp_path / "ran").exists()
