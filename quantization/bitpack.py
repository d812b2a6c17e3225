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


# index layouts of a codebook record (FORMAT.md): "packed" or "planes"

def index_size(count: int, bits: int, layout: str) -> int:
    if layout == "packed":
        return packed_size(count, bits)
    return count + (packed_size(count, bits - 8) if bits > 8 else 0)


def index_bytes(indices: np.ndarray, bits: int, layout: str) -> bytes:
    """"packed": one little-endian B-bit stream (bitpack). "planes": the low 8 bits of every index
    as one byte each, then (B > 8) the high B-8 bits as a packed stream: byte-aligned symbols
    that a general-purpose compressor's literal coder can model."""
    if layout == "packed":
        return pack_bits(indices, bits)
    idx = np.asarray(indices).reshape(-1).astype(np.uint16)
    low = (idx & 0xFF).astype(np.uint8).tobytes()
    return low + (pack_bits(idx >> 8, bits - 8) if bits > 8 else b"")


def indices_from(buf: memoryview, count: int, bits: int, layout: str) -> np.ndarray:
    if layout == "packed":
        return unpack_bits(buf, count, bits)
    idx = np.frombuffer(buf[:count], dtype=np.uint8).astype(np.uint16)
    if bits > 8:
        idx |= unpack_bits(buf[count:], count, bits - 8) << 8
    return idx
