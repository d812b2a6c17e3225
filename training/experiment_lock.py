"""One run per experiment folder: ``<basedir>/<expname>/.run.lock`` holds the owner's pid and host.

Two runs writing the same folder at once would each replace the other's checkpoint and outputs, and
both would exit 0 (issue 25). The lock file is created atomically (O_CREAT | O_EXCL); a second run is
refused in one line while the owner's pid is alive on this host, and takes the lock over when the owner
is gone (killed with kill -9, or the machine rebooted). A lock of another host is never taken over: its
pid cannot be checked from here, so the message names the file to delete once that run is gone.

``held(folder)`` is a context manager: the lock is removed when the run ends, by an error or Ctrl-C
too. Folders it had to create are removed again if the run left them empty (a run refused before
writing anything leaves nothing behind). Under torchrun only rank 0 takes it: the ranks are one run.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import socket
import time
from pathlib import Path

from neurcomp.config.errors import InputError
from neurcomp.data.atomic import _pid_alive, check_output_folder

LOCK_NAME = ".run.lock"
OPTION = "basedir/expname"


def _read(lock: Path) -> dict | None:
    """The lock's fields (pid, host, token), {} for a file that is not a lock we wrote, None if it is gone."""
    try:
        text = lock.read_text(encoding="utf-8", errors="replace")[:1000]
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    return fields if fields.get("pid", "").isdigit() else {}


def _empty(lock: Path) -> bool:
    try:
        return lock.stat().st_size == 0
    except OSError:
        return False


def _stale(owner: dict) -> bool:
    """Whether the owner is certainly gone: a run of this host whose pid is not running."""
    return owner.get("host") == socket.gethostname() and not _pid_alive(int(owner["pid"]))


def _create_folders(folder: Path) -> list[Path]:
    """Make ``folder`` and its missing parents; returns the ones made, deepest first."""
    check_output_folder(folder, OPTION)
    made = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{OPTION} {folder}: cannot create the folder ({exc.strerror or exc})") from None
    return made


def acquire(folder: Path) -> str:
    """Take the lock of ``folder`` (which exists) for this process; returns the lock's token."""
    lock = folder / LOCK_NAME
    token = secrets.token_hex(8)
    content = f"pid={os.getpid()}\nhost={socket.gethostname()}\ntoken={token}\n".encode()
    for attempt in range(20):  # a stale lock taken over, another run's lock gone or still being written
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            owner = _read(lock)
            if owner is None:
                continue
            if owner == {} and attempt < 19 and _empty(lock):  # created by a run that has not written it yet
                time.sleep(0.05)
                continue
            if not owner or not _stale(owner):
                raise InputError(_in_use(folder, lock, owner)) from None
            if _read(lock) == owner:  # the same stale lock still: no other run took it over meanwhile
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()
            continue
        except OSError as exc:
            raise InputError(f"{OPTION} {folder}: cannot create its lock file {LOCK_NAME} "
                             f"({exc.strerror or exc})") from None
        try:
            os.write(fd, content)
        except OSError as exc:  # a full disk
            lock.unlink()
            raise InputError(f"{OPTION} {folder}: cannot write its lock file {LOCK_NAME} "
                             f"({exc.strerror or exc})") from None
        finally:
            os.close(fd)
        return token
    raise InputError(f"{folder}: could not take its lock {lock}: other runs keep taking it over")


def _in_use(folder: Path, lock: Path, owner: dict) -> str:
    if not owner:
        return f"{folder} is locked by {lock}, which is not a lock file this program wrote; delete it if no run uses the folder"
    where = "" if owner.get("host") == socket.gethostname() else f" on host {owner.get('host', '?')[:60]}"
    text = f"{folder} is in use by another run (pid {owner['pid']}{where}); wait for it to end or choose another expname"
    return text + (f"; if that run is gone, delete {lock}" if where else "")


def release(folder: Path, token: str) -> None:
    """Remove the lock of ``folder`` if it is still this run's."""
    lock = folder / LOCK_NAME
    if (_read(lock) or {}).get("token") == token:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()


def _is_main_rank() -> bool:
    return os.environ.get("RANK", "0") == "0"  # torchrun sets RANK before the process group exists


@contextlib.contextmanager
def held(folder):
    """Hold the lock of the experiment folder ``folder`` (created if needed) while the block runs."""
    if not _is_main_rank():
        yield
        return
    folder = Path(folder)
    made = _create_folders(folder)
    try:
        token = acquire(folder)
        try:
            yield
        finally:
            release(folder, token)
    finally:
        for path in made:  # deepest first; a folder another run or this one filled stays
            try:
                path.rmdir()
            except OSError:
                break


def locking(train):
    """Decorate ``train(cfg, ...)``: the run holds the lock of ``cfg.experiment_dir`` throughout."""
    @functools.wraps(train)
    def locked(cfg, *args, **kwargs):
        with held(cfg.experiment_dir):
            return train(cfg, *args, **kwargs)
    return locked
