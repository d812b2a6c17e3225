"""A guaranteed maximum error: outlier corrections on top of the network (format version 2).

After quantizing, the encoder decodes the file exactly as the decoder will, and stores a
correction for every voxel whose error exceeds ``MARGIN`` x the bound, as in SPERR's outlier
coding (Li, Lindstrom, Clyne, IPDPS 2023): the correction is the integer multiple ``q`` of a
step ``s = 2 MARGIN E`` nearest the residual, so the corrected error is at most ``s / 2 =
MARGIN E``. The margin (10 % of E) absorbs inference that differs in the last bits on another
device, BLAS or chunking. Positions (flat Z, Y, X indices, sorted) are delta-coded, positions and
values byte-shuffled and zstd-coded at level 9 (FORMAT.md): on 2 million corrections (hydrogen
atom, 1e-3) it came within 1.2 % of lzma's size in 1/65 of the time; level 19 was larger and slower.
The two streams are also coded with ANS under their own histograms (``correction_coding``) and the
smaller of the two codings is stored.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np

from neurcomp.quantization import correction_coding, entropy
from neurcomp.quantization.coding import COMPRESSIONS, compress, decompress

F32_MAX = float(np.finfo(np.float32).max)  # corrections land in a float32 volume
SECTION_LEVEL = 9  # zstd level: measured on 2M corrections, 1 % above lzma at 1/65 of its time
MARGIN = 0.9  # corrections bring every voxel within MARGIN x the bound
MODES = ("abs", "rel")  # stored as 1, 2 (0 would mean "no bound")
RECORD = struct.Struct("<BBdddQQQI")  # mode, coding, requested, max_abs_error, step, count, stored, raw, CRC-32
ENTRY_BYTES = 12  # u64 position delta + u32 zig-zag value per correction
SECTION_CODINGS = COMPRESSIONS + ("ans",)  # 3: order-0 ANS streams (quantization.correction_coding)


@dataclass
class ErrorBound:
    """The bound and its corrections: decoded value = network value + q x step at ``positions``."""

    mode: str  # "abs": requested is E in physical units; "rel": a fraction of vmax - vmin
    requested: float
    max_abs_error: float  # E, physical units
    step: float
    positions: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # flat C-order (Z, Y, X)
    values: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # q, never 0
    coding: str = "auto"

    def describe(self) -> dict:
        return {"mode": self.mode, "requested": self.requested, "max_abs_error": self.max_abs_error,
                "step": self.step, "corrections": int(self.positions.size)}


def absolute_bound(mode: str, requested: float, vmin: float, vmax: float) -> float:
    """E in physical units: ``requested`` itself, or that fraction of the value range."""
    return float(requested) if mode == "abs" else float(requested) * (float(vmax) - float(vmin))


def corrections_for(truth, decoded: np.ndarray, mode: str, requested: float, max_abs_error: float,
                    coding: str = "auto", slab: int = 64) -> ErrorBound:
    """The corrections that bring ``decoded`` (the file's own reconstruction) within MARGIN x E of
    ``truth`` ((Z, Y, X), any array-like: read ``slab`` z-slices at a time, in float64)."""
    target = MARGIN * max_abs_error
    step = 2.0 * target
    plane = int(decoded.shape[1]) * int(decoded.shape[2])
    positions, values = [], []
    for z in range(0, decoded.shape[0], slab):
        residual = (np.asarray(truth[z:z + slab], np.float64) - decoded[z:z + slab].astype(np.float64)).reshape(-1)
        where = np.flatnonzero(np.abs(residual) > target)
        positions.append(where + z * plane)
        values.append(np.rint(residual[where] / step).astype(np.int64))
    return ErrorBound(mode, float(requested), float(max_abs_error), step, np.concatenate(positions).astype(np.int64),
                      np.concatenate(values), coding)


def apply(bound: ErrorBound | None, values: np.ndarray, shape_zyx, box=None) -> np.ndarray:
    """Add the corrections inside ``box`` ((x0, x1), (y0, y1), (z0, z1), half-open; None: the whole
    grid) to ``values``, the box's (Z, Y, X) float32 reconstruction, in place (sums in float64)."""
    if bound is None or bound.positions.size == 0:
        return values
    nz, ny, nx = (int(n) for n in shape_zyx)
    (x0, x1), (y0, y1), (z0, z1) = box or ((0, nx), (0, ny), (0, nz))
    pos = bound.positions
    lo, hi = np.searchsorted(pos, [z0 * ny * nx, z1 * ny * nx])  # sorted: only the box's slabs
    pos, q = pos[lo:hi], bound.values[lo:hi]
    z, y, x = pos // (ny * nx), (pos // nx) % ny, pos % nx
    keep = (y >= y0) & (y < y1) & (x >= x0) & (x < x1)
    z, y, x, q = z[keep] - z0, y[keep] - y0, x[keep] - x0, q[keep]
    values[z, y, x] = (values[z, y, x].astype(np.float64) + q * bound.step).astype(np.float32)
    return values


def _shuffle(a: np.ndarray) -> bytes:
    """Byte planes (all first bytes, then all second bytes ...): the zero high bytes form long runs."""
    return np.ascontiguousarray(a.view(np.uint8).reshape(a.size, a.itemsize).T).tobytes()


def _unshuffle(buf: bytes, dtype, count: int) -> np.ndarray:
    dt = np.dtype(dtype)
    return np.frombuffer(buf, np.uint8).reshape(dt.itemsize, count).T.copy().view(dt).reshape(count)


def _streams(bound: ErrorBound) -> tuple[np.ndarray, np.ndarray]:
    """(position gaps u64, zig-zag values u32): what every section coding stores."""
    deltas = np.diff(bound.positions, prepend=0).astype("<u8")
    q = bound.values.astype(np.int64)
    return deltas, ((q << 1) ^ (q >> 63)).astype("<u4")


def raw_section(bound: ErrorBound) -> bytes:
    deltas, zigzag = _streams(bound)
    return _shuffle(deltas) + _shuffle(zigzag)


def encode_section(bound: ErrorBound) -> tuple[bytes, bytes]:
    """(header record, stored section). Coding "auto": zstd (level SECTION_LEVEL), or lzma without
    the zstandard package; "none" when coding would not make it smaller."""
    raw = raw_section(bound)
    method = bound.coding
    if method == "auto":
        try:
            import zstandard  # noqa: F401
            method = "zstd"
        except ImportError:
            method = "lzma"
    if method == "ans" and not entropy.available():
        method = "zstd"
    stored = compress(raw, method, SECTION_LEVEL if method == "zstd" else None) if method != "ans" else None
    if bound.coding in ("auto", "ans") and entropy.available():  # the order-0 ANS streams, where smaller
        ans = correction_coding.compress_section(*_streams(bound))
        if stored is None or len(ans) < len(stored):
            stored, method = ans, "ans"
    if bound.coding == "auto" and len(stored) >= len(raw):
        stored, method = raw, "none"
    record = RECORD.pack(MODES.index(bound.mode) + 1, SECTION_CODINGS.index(method), bound.requested,
                         bound.max_abs_error, bound.step, bound.positions.size, len(stored), len(raw),
                         zlib.crc32(stored))
    return record, stored


def read_record(fields: tuple, num_voxels: int) -> tuple[dict, str | None]:
    """The header record as a dict, and what is wrong with it (None if nothing)."""
    mode, coding, requested, max_abs, step, count, stored, raw, crc = fields
    rec = {"mode": MODES[mode - 1] if 1 <= mode <= len(MODES) else None, "coding": coding,
           "requested": requested, "max_abs_error": max_abs, "step": step, "count": count,
           "stored_size": stored, "raw_size": raw, "crc": crc}
    if rec["mode"] is None or coding >= len(SECTION_CODINGS):
        return rec, f"bad error-bound record (mode {mode}, coding {coding})"
    if not all(math.isfinite(v) and v > 0 for v in (requested, max_abs, step)) or step > 2 * max_abs \
            or max(max_abs, step) > F32_MAX:
        return rec, (f"bad error bound {max_abs} / step {step} (must be positive, finite in float32, "
                     f"step <= 2 x bound)")
    if count > num_voxels or raw != ENTRY_BYTES * count:
        return rec, f"correction section of {count} corrections and {raw} bytes does not fit {num_voxels} voxels"
    return rec, None


def decode_section(rec: dict, stored: bytes, num_voxels: int) -> tuple[ErrorBound | None, str | None]:
    """The corrections from the stored section, or what is wrong with it (its CRC first)."""
    if zlib.crc32(stored) != rec["crc"]:
        return None, "correction section checksum mismatch (file corrupted)"
    count, method = rec["count"], SECTION_CODINGS[rec["coding"]]
    if method == "ans":
        if not entropy.available():
            return None, ("the correction section is entropy-coded but the 'constriction' package is not "
                          "installed (pip install constriction)")
        try:
            deltas, zigzag = correction_coding.decompress_section(stored, count)
        except ValueError as exc:
            return None, f"cannot decode the ans correction section ({exc})"
        zigzag = zigzag.astype(np.int64)
    else:
        try:
            raw = decompress(stored, method, rec["raw_size"])
        except Exception as exc:  # a corrupt stream that matched its CRC
            return None, f"cannot decompress the {method} correction section ({exc})"
        if len(raw) != rec["raw_size"]:
            return None, f"correction section decodes to {len(raw)} bytes, header says {rec['raw_size']}"
        deltas = _unshuffle(raw[:8 * count], "<u8", count)
        zigzag = _unshuffle(raw[8 * count:], "<u4", count).astype(np.int64)
    positions = np.cumsum(deltas, dtype=np.uint64)
    if count and (np.any(deltas[1:] == 0) or np.any(deltas >= num_voxels) or int(positions[-1]) >= num_voxels
                  or np.any(positions[1:] <= positions[:-1])):
        return None, "correction positions are not increasing voxel indices inside the volume"
    values = (zigzag >> 1) ^ -(zigzag & 1)
    if np.any(values == 0):
        return None, "a correction of zero"
    largest = float(np.max(np.abs(values), initial=0)) * float(rec["step"])
    if largest > F32_MAX:  # q x step itself overflows the float32 voxel it corrects
        return None, f"a correction of {largest:.3g} (q x step) overflows float32"
    return ErrorBound(rec["mode"], rec["requested"], rec["max_abs_error"], rec["step"],
                      positions.astype(np.int64), values, method), None
