"""The smallest file over a one-dimensional ladder of encoder settings (network sizes, index bits).

An error-bounded file is the network plus the corrections of the voxels it misses by more than the
bound (``quantization.bound``). A larger network (a lower ratio r, more bits B) costs bytes and
saves corrections, so the total size T is, in practice, unimodal along the ladder: falling while the
network's bytes buy more than they cost, then rising. ``downhill`` walks it from a start, one rung
at a time, in whichever direction T falls first, and stops at the first rise: a few evaluations
instead of the whole ladder, each evaluation an encode (or a short training) that is not cheap.
"""

from __future__ import annotations

import math
from typing import Callable


def downhill(evaluate: Callable[[int], float | None], lo: int, hi: int, start: int = 0,
             patience: int = 0) -> tuple[int, dict]:
    """Walk rungs ``lo <= k <= hi`` from ``start`` towards the smaller ``evaluate(k)`` (a size; None:
    that rung is impossible, e.g. a network too small to build) and stop where it rises again, after
    looking ``patience`` rungs past the rise (a ladder with a bump: a smaller size further on is
    walked to; an impossible rung ends the look). Returns (best rung, {rung: size or None for every
    rung evaluated})."""
    if not lo <= start <= hi:
        raise ValueError(f"start rung {start} outside [{lo}, {hi}]")
    seen: dict[int, float | None] = {}

    def size(k: int) -> float:
        if k not in seen:
            seen[k] = evaluate(k)
        value = seen[k]
        return math.inf if value is None else value

    def lower_ahead(k: int, direction: int) -> int | None:
        """The first rung within patience + 1 of k, that way, smaller than k's; None if none is."""
        for j in range(k + direction, k + direction * (patience + 2), direction):
            if not lo <= j <= hi or math.isinf(size(j)):
                return None
            if size(j) < size(k):
                return j
        return None

    best = start
    for direction in (+1, -1):
        k = start
        while (j := lower_ahead(k, direction)) is not None:
            k = j
        if size(k) < size(best):
            best = k
        if k != start:  # it fell this way: the other way rises from the start (unimodal), no need to look
            break
    if math.isinf(size(best)):
        raise ValueError("no rung of the ladder could be evaluated")
    return best, seen
