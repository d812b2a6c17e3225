"""Driving a codec parameter (error bound, bit rate) to a target compression ratio."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from neurcomp.compressors.base import compression_ratio


@dataclass
class Trial:
    param: float
    num_bytes: int
    ratio: float


def select_trial(trials: list[Trial], target: float, rel_tol: float) -> tuple[Trial, str]:
    """Closest trial within ``rel_tol`` ("matched"); else nearest at or above the target ("above");
    else the largest ratio reached ("unreachable": the codec cannot compress this volume so far)."""
    within = [t for t in trials if abs(t.ratio / target - 1.0) <= rel_tol]
    if within:
        return min(within, key=lambda t: (abs(math.log(t.ratio / target)), -t.ratio)), "matched"
    above = [t for t in trials if t.ratio >= target]
    if above:
        return min(above, key=lambda t: t.ratio), "above"
    return max(trials, key=lambda t: t.ratio), "unreachable"


def search_log_scale(size_of: Callable[[float], int], num_voxels: int, target: float, scale: float, *,
                      stop_tol: float, max_evals: int, min_factor: float = 1e-10,
                      max_factor: float = 4.0) -> list[Trial]:
    """Try error bounds on a log scale until the ratio is within ``stop_tol`` of ``target``.

    ``size_of(bound)`` returns the compressed size in bytes; the ratio is assumed to grow with the
    bound, but only roughly (SZ3 is noisy): the search keeps a bracket [lo: ratio < target,
    hi: ratio >= target], steps by log-log interpolation inside it (bisection when one side stalls)
    and returns every trial, so the caller selects among all of them.
    """
    trials: list[Trial] = []

    def run(bound: float) -> Trial:
        nbytes = int(size_of(bound))
        trial = Trial(bound, nbytes, compression_ratio(num_voxels, nbytes))
        trials.append(trial)
        return trial

    lo: Trial | None = None
    hi: Trial | None = None
    bound = scale * 1e-2
    while len(trials) < max_evals:  # bracket the target by factors of 10
        trial = run(bound)
        if trial.ratio >= target:
            hi = trial
            if lo is not None or bound <= scale * min_factor:
                break
            bound /= 10.0
        else:
            lo = trial
            if hi is not None or bound >= scale * max_factor:
                break
            bound = min(bound * 10.0, scale * max_factor)
    if lo is None or hi is None:
        return trials

    last_sides: list[str] = []
    log_t = math.log(target)
    while len(trials) < max_evals:
        if min(abs(math.log(t.ratio / target)) for t in trials) <= math.log1p(stop_tol):
            break
        x_lo, x_hi = math.log(lo.param), math.log(hi.param)
        if x_hi - x_lo < 1e-6 * max(1.0, abs(x_lo)):
            break  # the ratio jumps across the target here; the caller picks the nearest side
        r_lo, r_hi = math.log(lo.ratio), math.log(hi.ratio)
        if len(last_sides) >= 2 and last_sides[-1] == last_sides[-2] or r_hi <= r_lo:
            frac = 0.5
        else:
            frac = min(max((log_t - r_lo) / (r_hi - r_lo), 0.05), 0.95)
        trial = run(math.exp(x_lo + frac * (x_hi - x_lo)))
        if trial.ratio >= target:
            hi = trial
            last_sides.append("hi")
        else:
            lo = trial
            last_sides.append("lo")
    return trials


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def library_version(package: str) -> str:
    """"<package> <version>" for the record (results differ between library versions)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"{package} {version(package)}"
    except PackageNotFoundError:
        return package


def bound_scale(values: np.ndarray) -> float:
    """A positive magnitude to scale error bounds by: the value range, else the largest |value|."""
    vrange = float(values.max()) - float(values.min())
    if vrange > 0:
        return vrange
    peak = float(np.abs(values).max())
    return peak if peak > 0 else 1.0


def finite_or_none(x: float):
    return x if math.isfinite(x) else None
