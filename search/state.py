"""What a search keeps on disk between runs: ``search.json`` (its trial records) and Ax's snapshot.

Both are rewritten after every trial, so a stopped search resumes where it was. Every file the
search writes goes through ``atomic_path`` / ``atomic_write`` (a temporary next to the file,
renamed on success), so a stop mid-write never leaves half a file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

from search.runner import TrialResult

AX_STATE = "ax_state.json"
SEARCH_STATE = "search.json"


@contextlib.contextmanager
def atomic_path(path: Path, suffix: str = ""):
    """A temporary path next to ``path`` (``suffix`` keeps an extension a writer needs), renamed onto
    ``path`` on success and removed on failure."""
    tmp = path.with_name(path.name + ".tmp" + suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def atomic_write(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class SearchState:
    """search.json: what the search was started with, and one record per finished trial."""

    def __init__(self, path: Path, data: dict):
        self.path = path
        self.data = data

    @property
    def records(self) -> dict[int, dict]:
        return {int(k): v for k, v in self.data.setdefault("trials", {}).items()}

    def record(self, result: TrialResult) -> None:
        self.data.setdefault("trials", {})[str(result.index)] = result.to_dict()

    def save(self) -> None:
        atomic_write(self.path, json.dumps(self.data, indent=2, default=str) + "\n")


def save(client, state: SearchState, out: Path) -> None:
    """Save the records, then Ax's state."""
    # Records first: a trial that Ax still calls RUNNING but has a record is settled from it on resume.
    state.save()
    with atomic_path(out / AX_STATE) as tmp:
        client.save_to_json_file(str(tmp))
