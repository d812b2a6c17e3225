"""Pack and unpack B-bit unsigned integers (B = 1..16) into a little-endian bit stream.

Index i occupies bits [i*B, (i+1)*B) of the stream, least significant bit first; the stream is
``np.packbits(..., bitorder="little")``, so bit k of the stream is bit (k % 8) of byte k // 8.
The last byte is zero-padded. Everything is vectorised: a (n, B) bit matrix, no Python loop.
"""

from __future__ import annotations

import numpy as np

MAX_BITS = 16


def packed_size(count: int, bits: int) -> int:
    """Bytes holding ``count`` values of ``bits`` bits."""
    return (int(count) * int(bits) + 7) // 8


def _check_bits(bits: int) -> None:
    if not 1 <= int(bits) <= MAX_BITS:
        raise ValueError(f"bits must be in 1..{MAX_BITS}, got {bits}")


def pack_bits(values: np.ndarray, bits: int) -> bytes:
    """Pack non-negative integers < 2**bits into ``packed_size(len(values), bits)`` bytes."""
    _check_bits(bits)
    v = np.asarray(values).reshape(-1)
    if v.size and (v.min() < 0 or int(v.max()) >= (1 << bits)):
        raise ValueError(f"values out of range for {bits} bits")
    v16 = v.astype("<u2")
    # (n, 16) bits of each value, LSB first; keep the low ``bits`` columns
    bit_matrix = np.unpackbits(v16.view(np.uint8).reshape(-1, 2), axis=1, bitorder="little")
    return np.packbits(bit_matrix[:, :bits].reshape(-1), bitorder="little").tobytes()


def unpack_bits(data: bytes | np.ndarray, count: int, bits: int) -> np.ndarray:
    """Inverse of ``pack_bits``: ``count`` values as uint16 (int64-safe callers may ``astype``)."""
    _check_bits(bits)
    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.view(np.uint8)
    need = packed_size(count, bits)
    if buf.size < need:
        raise ValueError(f"need {need} bytes for {count} values of {bits} bits, got {buf.size}")
    stream = np.unpackbits(buf[:need], count=count * bits, bitorder="little").reshape(count, bits)
    full = np.zeros((count, 16), dtype=np.uint8)
    full[:, :bits] = stream
    return np.packbits(full, axis=1, bitorder="little").reshape(-1).view("<u2").astype(np.uint16)
