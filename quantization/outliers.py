"""Spending a small share of a target file size on the worst voxels: outlier corrections.

A network's error is not spread evenly over a volume. On hydrogen_atom 128^3 the nucleus, a
one-voxel spike of 250 among neighbours of 141 to 145 that no smooth network of 20 to 80 KB
follows, holds 28 to 36 % of the whole squared error in its ten worst voxels (a 56-wide network
reaches 123 there, a 114-wide one 115): which width wins is decided by a handful of voxels. SPERR
codes such outliers separately from its wavelet coefficients (Li, Lindstrom, Clyne, IPDPS 2023);
we do the same with a budget.

With ``target_file_ratio``, ``outlier_share`` of the target (default 0.01) is kept back
when the network is sized, if that is at least ``MIN_RESERVE_BYTES`` (less holds only a few
corrections beside the 54-byte record; small volumes' networks keep every byte). After training,
what the network's file leaves of the target goes to corrections (``quantization.bound``'s
section, format version 2), worst voxel first, as many as fit. A correction adds ``q s`` to the decoded value, q an integer:

- an integer source whose file snaps to integers (``quantization.snap``): ``s = 1``, and every
  corrected voxel is exact;
- otherwise ``s = 2 MARGIN t``, with ``t`` the largest error left uncorrected, so every corrected
  voxel ends within ``MARGIN t``.

Either way the file's bound record states ``t``, the largest error of any voxel of the decoded
file (checked on its decoded values): a guaranteed maximum error comes with the file for free.

Measured on the hydrogen files of ``docs/rate_distortion.md`` (ratios 100 / 200 / 400), the
corrections of 1 % of the file gave +1.8 / +2.1 / +1.5 dB; on the walnut CT scan, whose error is
spread over the whole volume, +0.04 / +0.03 / +0.02 dB.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from neurcomp.quantization.bound import MARGIN, RECORD, ErrorBound, apply, encode_section
from neurcomp.quantization.format import FLAG_SNAP_TO_INTEGERS, CompressedNetwork, parse, serialize

MIN_RESERVE_BYTES = 128  # below this, keep no reserve


def reserve_bytes(target_bytes: float, share: float) -> float:
    """Bytes of a ``target_bytes`` file kept back for corrections: ``share`` of it, or none when that
    is under ``MIN_RESERVE_BYTES``."""
    reserve = share * target_bytes
    return reserve if reserve >= MIN_RESERVE_BYTES else 0.0


def worst_voxels(truth, decoded: np.ndarray, count: int, slab: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(flat indices, residuals truth - decoded) of the ``count`` voxels with the largest |residual|,
    largest first (ties: lower index first); read ``slab`` z-slices at a time, so a large volume
    needs no full-size float64 copy."""
    plane = int(np.prod(decoded.shape[1:]))
    keep_pos, keep_res = np.zeros(0, np.int64), np.zeros(0, np.float64)
    for z in range(0, decoded.shape[0], slab):
        res = (np.asarray(truth[z:z + slab], np.float64) - decoded[z:z + slab].astype(np.float64)).reshape(-1)
        if count < res.size:
            top = np.argpartition(-np.abs(res), count - 1)[:count]
        else:
            top = np.arange(res.size)
        keep_pos = np.concatenate([keep_pos, top + z * plane])
        keep_res = np.concatenate([keep_res, res[top]])
        order = np.lexsort((keep_pos, -np.abs(keep_res)))[:count]
        keep_pos, keep_res = keep_pos[order], keep_res[order]
    return keep_pos, keep_res


def corrections(positions: np.ndarray, residuals: np.ndarray, k: int, exact_integers: bool) -> ErrorBound | None:
    """The bound that corrects the first ``k`` of the candidates (``worst_voxels``: largest
    |residual| first, and no other voxel's error above the last one's); None when nothing is left
    to correct."""
    k = min(k, positions.size)
    left = float(abs(residuals[k])) if k < positions.size else 0.0  # the largest error left uncorrected
    pos, res = positions[:k], residuals[:k]
    pos, res = pos[res != 0], res[res != 0]
    if pos.size == 0:
        return None
    if exact_integers:
        step = 1.0
        values = np.rint(res).astype(np.int64)
        bound = max(left, step / 2)  # the record needs step <= 2 x bound
    else:
        bound = max(left, float(np.abs(res).min()) * 1e-3)  # left = 0: every error is corrected, to a tiny step
        step = 2.0 * MARGIN * bound
        values = np.rint(res / step).astype(np.int64)
    order = np.argsort(pos)
    pos, values = pos[order].astype(np.int64), values[order]
    return ErrorBound("abs", bound, bound, step, pos[values != 0], values[values != 0])


def section_bytes(bound: ErrorBound | None) -> int:
    """What ``bound`` adds to a file: its header record and its coded correction section."""
    return 0 if bound is None else RECORD.size + len(encode_section(bound)[1])


def fit_corrections(truth, decoded: np.ndarray, budget: float, exact_integers: bool) -> ErrorBound | None:
    """The corrections of the worst voxels that fit in ``budget`` bytes (record included), as many
    as fit, found by bisection on their number; None when not even one fits."""
    if budget <= RECORD.size:
        return None
    most = int(budget - RECORD.size)  # a correction codes to at least about one byte
    positions, residuals = worst_voxels(truth, decoded, most + 1)
    lo, hi, best = 1, min(most, positions.size), None
    while lo <= hi:
        k = (lo + hi) // 2
        bound = corrections(positions, residuals, k, exact_integers)
        if section_bytes(bound) <= budget:
            best, lo = bound, k + 1
        else:
            hi = k - 1
    return best


def add_corrections(data: bytes, truth, decoded: np.ndarray, budget: float,
                    source: str = "<encoder>") -> tuple[bytes, ErrorBound | None]:
    """``data`` (a file without a bound) with the corrections of its worst voxels that fit in
    ``budget`` bytes; ``decoded`` is its decoded volume (as the decoder gives it: snapped if the file
    says so), corrected in place. Returns (bytes, the bound or None)."""
    net: CompressedNetwork = parse(data, source)
    if net.bound is not None:
        raise ValueError("the file already has an error bound")
    # a file snaps only for an integer source (quantization.snap): decoded and truth are whole numbers,
    # so corrections of step 1 are exact (and a stray fraction would stay within the bound's 1/2)
    bound = fit_corrections(truth, decoded, budget, bool(net.flags & FLAG_SNAP_TO_INTEGERS))
    if bound is None:
        return data, None
    apply(bound, decoded, decoded.shape)
    return serialize(replace(net, bound=bound)), bound
