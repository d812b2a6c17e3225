"""The one way this project writes files: a unique temporary in the same folder, then `os.replace`.

A reader never sees a half-written file and an interrupted write never destroys the previous one.
Temporaries are named `.<name>.<pid>.<random>.tmp`, so concurrent writers do not collide and a
process killed mid-write (kill -9) leaves a temporary that `remove_stale_temporaries` can recognise
by its dead pid and delete. A write that fails because the disk (or the user's quota) is full is one
InputError naming the file; the temporary is removed and the previous file, if any, stays as it was.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
from pathlib import Path

from neurcomp.config.errors import InputError

_TEMPORARY = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{8}\.tmp(\.\w+)?$")
_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}  # disk full, quota exceeded
# a C++ writer given a file name (torch.save's PyTorchFileWriter) reports a failed write without errno
_WRITE_FAILED = re.compile(r"unexpected pos|failed writing|write failed|fwrite", re.IGNORECASE)
_LOW_SPACE = 16 * 2 ** 20  # bytes still free for an unprivileged writer: below it, a failed write is a full disk


def _temporary_name(path: Path, suffix: str = "") -> Path:
    """`suffix` keeps an extension that a library insists on (matplotlib picks its format by it)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp{suffix}")


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable; some systems cannot open folders, which is then not fatal."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as file:
        os.fsync(file.fileno())


@contextlib.contextmanager
def atomic_path(path, suffix: str = ""):
    """Yield a temporary path next to `path` for a writer that needs a filename (torch.save, VTK,
    matplotlib); on success it is fsynced and renamed onto `path`, on failure removed.

    `suffix`: appended to the temporary name, for libraries that choose the format by extension
    (e.g. ".png") or append one themselves (a writer that adds ".vti": pass suffix=".vti" and give it the
    path without it, i.e. `str(tmp)[:-4]`).
    """
    path = Path(path)
    tmp = _temporary_name(path, suffix)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        if not _no_space(exc, path.parent):
            raise
        with contextlib.suppress(OSError):  # free what it wrote before telling the user
            os.remove(tmp)
        kept = f"; {path.name} is kept as it was" if path.exists() else ""
        raise InputError(f"{path}: cannot write: no space left on device{kept}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
    _fsync_folder(path.parent)


def _no_space(exc: BaseException, folder: Path) -> bool:
    """Whether `exc` is a write that failed on a full disk or quota: ENOSPC / EDQUOT, or a library's
    write error (torch's "unexpected pos") while the folder's filesystem has (almost) no space left."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.errno in _NO_SPACE
    if not _WRITE_FAILED.search(str(exc)):
        return False
    try:
        return shutil.disk_usage(folder).free < _LOW_SPACE
    except OSError:
        return False


def atomic_write_bytes(path, data: bytes) -> None:
    """Write `data` to `path` atomically (write, flush, fsync, rename, fsync the folder)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as file:
        file.write(data)
        file.flush()


def atomic_write_text(path, text: str, encoding: str = "utf-8") -> None:
    atomic_write_bytes(path, text.encode(encoding))


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists but belongs to someone else
    return True


def remove_stale_temporaries(folder) -> list[Path]:
    """Delete the temporaries in `folder` that a dead process left (only names of our pattern whose
    pid is not running); returns the removed paths. Safe to call while other writers are active."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        match = _TEMPORARY.match(entry.name)
        if match is None or _pid_alive(int(match.group(1))):
            continue
        with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
            entry.unlink()
            removed.append(entry)
    return removed


# -- output paths a user names: refused in one line before any work -----------------------------
def check_output_file(path, option: str) -> Path:
    """`path` as a file to write, or an InputError naming `option` if it is a folder or lies below a file."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{option} {path}: is a folder, not a file name")
    _check_parents(path, option)
    return path


def check_output_folder(path, option: str) -> Path:
    """`path` as a folder to write into, or an InputError naming `option` if it (or a parent) is a file."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{option} {path}: is a file, not a folder")
    _check_parents(path, option)
    return path


def make_output_folder(path, option: str) -> Path:
    """Create the folder `path` (and its parents), or an InputError naming `option`."""
    path = check_output_folder(path, option)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{option} {path}: cannot create the folder ({exc.strerror or exc})") from None
    return path


def _check_parents(path: Path, option: str) -> None:
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"{option} {path}: {parent} is a file, not a folder")
            return
