"""Entropy coding of the error bound's corrections (``quantization.bound``): the "ans" section coding.

The corrections are two streams of non-negative integers: position gaps (delta-coded sorted voxel
indices) and zig-zag values of q. Each integer v becomes a symbol: v itself below ``DIRECT``, else
an escape class by its bit length L (Elias-gamma style), followed by its L - 1 low bits stored
verbatim. The symbols are coded with constriction's ANS (Duda et al., PCS 2015; Bamler 2022) under
the stream's own order-0 histogram, stored as counts:

    R = -sum_i log2 p(s_i) + 32 K + extra bits,   p(s) = count(s) / n,

which reaches the streams' empirical entropy where zstd's LZ77 + Huffman of the byte-shuffled
fields does not: measured (``benchmarks/correction_coding_bench.py``, 300-step networks at ratio
100 on nucleon, neghip and viscous fingers) 10-12.5 % below zstd-9 at 1e-2 of the range and
1.7-6 % at 1e-3; a few hundred corrections do not pay for the histograms, so the encoder keeps
whichever of zstd and this is smaller (``bound.encode_section``).

Stream layout, little-endian, deltas first then values: K u8, K counts u32, ANS words (count u32
first) u32, extra bits (byte count u32 first), MSB first.
"""

from __future__ import annotations

import struct

import numpy as np

DIRECT = 32  # integers below this are their own symbol
DIRECT_BITS = DIRECT.bit_length()  # the first escaped bit length (6)
MAX_SYMBOLS = DIRECT + 63 - DIRECT_BITS + 1  # integers below 2^63 (voxel indices, zig-zag values)
_U32 = struct.Struct("<I")


def _symbols(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(symbol per value, bit length per value; 0 where the value is direct)."""
    lengths = np.zeros(v.size, np.int64)
    big = v >= DIRECT
    lengths[big] = np.floor(np.log2(v[big].astype(np.float64))).astype(np.int64) + 1
    # float64 rounds values near a power of two up: correct the bit length exactly
    lengths[big] -= (np.left_shift(np.uint64(1), (lengths[big] - 1).astype(np.uint64)) > v[big]).astype(np.int64)
    symbols = np.where(big, DIRECT + lengths - DIRECT_BITS, v.astype(np.int64))
    return symbols, lengths


def _extra_bits(v: np.ndarray, lengths: np.ndarray) -> bytes:
    """The low L - 1 bits of each escaped value, MSB first, concatenated."""
    esc = lengths > 0
    if not esc.any():
        return b""
    values, widths = v[esc].astype(np.uint64), lengths[esc] - 1
    shifts = np.arange(63, -1, -1, dtype=np.uint64)
    bits = ((values[:, None] >> shifts[None, :]) & np.uint64(1)).astype(np.uint8)
    keep = np.arange(64)[None, :] >= (64 - widths)[:, None]
    return np.packbits(bits[keep]).tobytes()


def encode_stream(v: np.ndarray) -> bytes:
    import constriction

    if v.size and int(v.max()) >= 1 << 63:
        raise ValueError("correction streams hold integers below 2^63")
    symbols, lengths = _symbols(v.astype(np.uint64))
    k = int(symbols.max(initial=0)) + 1
    counts = np.bincount(symbols, minlength=k).astype("<u4")
    parts = [bytes([k]), counts.tobytes()]
    words = np.zeros(0, "<u4")
    if v.size and np.count_nonzero(counts) > 1:  # one symbol: its probability is 1, it costs nothing
        coder = constriction.stream.stack.AnsCoder()
        coder.encode_reverse(symbols.astype(np.int32), _model(counts))
        words = coder.get_compressed().astype("<u4")
    extra = _extra_bits(v.astype(np.uint64), lengths)
    parts += [_U32.pack(words.size), words.tobytes(), _U32.pack(len(extra)), extra]
    return b"".join(parts)


def _model(counts: np.ndarray):
    import constriction

    return constriction.stream.model.Categorical(counts.astype(np.float64) / float(counts.sum()), perfect=False)


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ValueError("the section ends early")
        self.pos += n
        return self.data[self.pos - n:self.pos]


def decode_stream(r: _Reader, count: int) -> np.ndarray:
    import constriction

    k = r.take(1)[0]
    if not 1 <= k <= MAX_SYMBOLS:
        raise ValueError(f"{k} symbols")
    counts = np.frombuffer(r.take(4 * k), "<u4").astype(np.int64)
    if int(counts.sum()) != count:
        raise ValueError(f"the histogram counts {int(counts.sum())} values, the record {count}")
    (n_words,) = _U32.unpack(r.take(4))
    if n_words > count + 2:  # at most 24 bits (constriction's precision) per symbol, plus the state
        raise ValueError(f"{n_words} ANS words for {count} values")
    words = np.frombuffer(r.take(4 * n_words), "<u4").astype(np.uint32)
    if np.count_nonzero(counts) > 1:
        symbols = np.asarray(constriction.stream.stack.AnsCoder(words).decode(_model(counts), count), np.int64)
    else:
        symbols = np.full(count, int(np.argmax(counts)), np.int64)
    if np.bincount(symbols, minlength=k)[:k].tolist() != counts.tolist():
        raise ValueError("the symbols do not match their histogram")
    (n_extra,) = _U32.unpack(r.take(4))
    bits = np.unpackbits(np.frombuffer(r.take(n_extra), np.uint8))
    values = symbols.astype(np.uint64)
    esc = symbols >= DIRECT
    widths = symbols[esc] - DIRECT + DIRECT_BITS - 1
    if int(widths.sum()) > bits.size:
        raise ValueError("the extra bits end early")
    ends = np.cumsum(widths)
    position = np.arange(int(ends[-1]) if ends.size else 0) - np.repeat(ends - widths, widths)
    weights = np.left_shift(np.uint64(1), (np.repeat(widths, widths) - 1 - position).astype(np.uint64))
    low = bits[:weights.size].astype(np.uint64) * weights
    starts = (ends - widths)[widths > 0]
    sums = np.zeros(widths.size, np.uint64)
    if starts.size:
        sums[widths > 0] = np.add.reduceat(low, starts)
    values[esc] = np.left_shift(np.uint64(1), widths.astype(np.uint64)) + sums
    return values


def compress_section(deltas: np.ndarray, zigzag: np.ndarray) -> bytes:
    return encode_stream(deltas) + encode_stream(zigzag)


def decompress_section(stored: bytes, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(position gaps, zig-zag values); ValueError on a stream that does not decode to ``count``."""
    r = _Reader(stored)
    deltas, zigzag = decode_stream(r, count), decode_stream(r, count)
    if r.pos != len(stored):
        raise ValueError(f"{len(stored) - r.pos} bytes after the streams")
    return deltas, zigzag
