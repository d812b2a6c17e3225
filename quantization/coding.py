"""Payload coding shared by the network payload and the correction section (FORMAT.md): none,
zstd or lzma, each decoded with a size cap so a decompression bomb is never held in full."""

from __future__ import annotations

import io
import lzma

COMPRESSIONS = ("none", "zstd", "lzma")

# raw LZMA2 stream (no container); no literal context bits: indices are close to independent
_LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "lc": 0, "lp": 0, "pb": 0,
                  "dict_size": 1 << 24}]


def compress(raw: bytes, method: str, level: int | None = None) -> bytes:
    if method == "none":
        return raw
    if method == "zstd":
        import zstandard
        return zstandard.ZstdCompressor(level=19 if level is None else level).compress(raw)
    if method == "lzma":
        return lzma.compress(raw, format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)
    raise ValueError(f"unknown compression {method!r}")


def decompress(stored: bytes, method: str, raw_size: int) -> bytes:
    """At most ``raw_size + 1`` bytes of the decoded payload: a stream that decodes to more (a
    decompression bomb, or a frame announcing a huge size) is cut there, never held in full."""
    if method == "none":
        return stored
    if method == "zstd":
        import zstandard
        reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(stored), read_across_frames=True)
        parts, have = [], 0
        while have <= raw_size:
            part = reader.read(raw_size + 1 - have)
            if not part:
                break
            parts.append(part)
            have += len(part)
        return b"".join(parts)
    if method == "lzma":
        return lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS).decompress(
            stored, max_length=raw_size + 1)
    raise ValueError(f"unknown compression {method!r}")
