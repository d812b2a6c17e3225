"""What a search keeps on disk between runs: ``search.json`` (its trial records) and Ax's snapshot.

Both are rewritten after every trial, so a stopped search resumes where it was. Every file the
search writes goes through ``data.atomic`` (a temporary next to the file, fsynced and
renamed on success), so a stop mid-write never leaves half a file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from neurcomp.data.atomic import atomic_path
from neurcomp.data.atomic import atomic_write_text as atomic_write
from neurcomp.search.runner import TrialResult

AX_STATE = "ax_state.json"
SEARCH_STATE = "search.json"


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
