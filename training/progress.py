"""Progress of a phase: a tqdm bar on a terminal, a log line every ``LOG_EVERY_S`` seconds elsewhere.

A batch job's log is not a terminal: tqdm's redraws there are thousands of carriage returns (50
short passes wrote 38 KB), so output that is not a terminal gets plain lines instead, one at most
every ``LOG_EVERY_S`` seconds and one at the end of the phase.
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

LOG_EVERY_S = 30.0


class LogLines:
    """The part of tqdm's interface the trainer uses, writing a line at most every ``every`` seconds."""

    def __init__(self, total: int, initial: int, desc: str, every: float = LOG_EVERY_S, file=None):
        self.total, self.n, self.desc, self.every = total, initial, desc, every
        self.file = file or sys.stderr
        self.postfix = ""
        self._last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self._last >= self.every:
            self._line()

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k.rstrip('_')} {v}" for k, v in values.items())

    def write(self, message: str, file=None) -> None:
        print(message, file=file or self.file, flush=True)

    def close(self) -> None:
        self._line()

    def _line(self) -> None:
        self._last = time.monotonic()
        tail = f", {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: step {self.n}/{self.total}{tail}", file=self.file, flush=True)


def phase_progress(total: int, initial: int, desc: str, enabled: bool):
    """A bar (terminal), log lines (not a terminal), or a silent tqdm (``enabled`` false: quiet, or
    not rank 0)."""
    if enabled and not sys.stderr.isatty():
        return LogLines(total, initial, desc)
    return tqdm(total=total, initial=initial, desc=desc, unit="step", disable=not enabled, dynamic_ncols=True)
