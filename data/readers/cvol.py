"""fV-SRN / pyrenderer `.cvol`: legacy `cvol` (one density feature) or `CVOL` (named features),
raw or LZ4-compressed; see ../shared/datasets/CVOL_FORMAT.md. Read whole (the stream is compressed).

Every header value is checked against the file's size before anything is allocated: a damaged
header cannot make the reader allocate terabytes or loop over a billion features.
"""

from __future__ import annotations

import struct
from pathlib import Path

import lz4.block
import numpy as np

from neurcomp.config.errors import InputError
from neurcomp.data.readers.base import Request, Source, need_bytes

EXTENSIONS = (".cvol",)

_DTYPES = {0: np.dtype("uint8"), 1: np.dtype("<u2"), 2: np.dtype("<f4")}
_LZ4_CHUNK = 65536  # the writer's MAX_CHUNK_SIZE and LZ4's back-reference window
_LZ4_MAX_RATIO = 255  # an LZ4 block never expands more than this (one length byte per 255 bytes)
_FEATURE_HEADER = 36  # name length (4) + dims (24) + channels, type (8), with an empty name


def _dtype(path, dtype_id) -> np.dtype:
    if dtype_id not in _DTYPES:
        raise InputError(f"{path}: unknown cvol data type {dtype_id} (0=uchar, 1=ushort, 2=float)")
    return _DTYPES[dtype_id]


def _check_body(path, what, nbytes, compressed, available) -> None:
    """A body of `nbytes` must fit in what is left of the file (compressed: at LZ4's best ratio)."""
    if compressed:
        chunks = -(-nbytes // _LZ4_CHUNK)
        need_bytes(path, f"{what} ({nbytes} bytes, LZ4)", max(5 * chunks, nbytes // _LZ4_MAX_RATIO), available)
    else:
        need_bytes(path, f"{what} ({nbytes} bytes)", nbytes, available)


def _body(path, buf, pos, nbytes, compressed, history, decode=True):
    """Decode (or, with decode=False, only walk) one feature body at `pos`: (bytes, position after).

    `history` is the decoded output before this body: fV-SRN shares one LZ4 stream across
    features, so the first chunk may reference up to 64 KiB of the previous feature.
    """
    if not compressed:
        if len(buf) - pos < nbytes:
            raise InputError(f"{path}: truncated: body needs {nbytes} bytes, {len(buf) - pos} left")
        return (bytes(buf[pos:pos + nbytes]) if decode else b""), pos + nbytes
    chunks, written = [], 0
    while written < nbytes:
        if pos + 4 > len(buf):
            raise InputError(f"{path}: truncated: LZ4 stream ends after {written} of {nbytes} bytes")
        (csize,) = struct.unpack_from("<i", buf, pos)
        if csize <= 0 or pos + 4 + csize > len(buf):
            raise InputError(f"{path}: truncated or corrupt LZ4 chunk at byte {pos} (size {csize}), "
                             f"after {written} of {nbytes} bytes")
        size = min(_LZ4_CHUNK, nbytes - written)
        if decode:
            window = chunks[-1] if chunks else bytes(history[-_LZ4_CHUNK:])  # chunks before the last are full
            try:
                chunk = lz4.block.decompress(buf[pos + 4:pos + 4 + csize], uncompressed_size=size, dict=window)
            except lz4.block.LZ4BlockError as exc:
                raise InputError(f"{path}: corrupt LZ4 chunk at byte {pos} ({exc})") from None
            if len(chunk) != size:
                raise InputError(f"{path}: corrupt LZ4 chunk at byte {pos}: {len(chunk)} bytes, expected {size}")
            chunks.append(chunk)
        written += size
        pos += 4 + csize
    return b"".join(chunks), pos


def _legacy(path, buf, request: Request) -> Source:
    need_bytes(path, "header", 64, len(buf))
    sx, sy, sz, vx, vy, vz, dtype_id, compressed = struct.unpack_from("<3Q3dIB", buf, 4)
    if request.data_key not in (None, "density"):
        raise InputError(f"{path}: no feature {request.data_key!r}; a legacy cvol has only 'density'")
    dtype = _dtype(path, dtype_id)
    nbytes = sx * sy * sz * dtype.itemsize
    _check_body(path, f"{sx}x{sy}x{sz} {dtype.name} volume", nbytes, compressed, len(buf) - 64)
    body, _ = _body(path, buf, 64, nbytes, compressed, b"")
    return Source(np.frombuffer(body, dtype=dtype).reshape(sz, sy, sx), spacing=(vx, vy, vz))


def _features(path, buf, request: Request) -> Source:
    need_bytes(path, "header", 32, len(buf))
    version, wx, wy, wz, num_features, flags = struct.unpack_from("<i3fii", buf, 4)
    if version != 1:
        raise InputError(f"{path}: unsupported CVOL version {version} (expected 1)")
    if num_features < 1:
        raise InputError(f"{path}: corrupt header: {num_features} features")
    need_bytes(path, f"{num_features} feature headers", 32 + num_features * _FEATURE_HEADER, len(buf))
    compressed = bool(flags & 1)
    pos, history, names, found = 32, b"", [], None
    for _ in range(num_features):
        need_bytes(path, f"feature header at byte {pos}", pos + 4, len(buf))
        (len_name,) = struct.unpack_from("<i", buf, pos)
        if len_name < 0:
            raise InputError(f"{path}: corrupt feature header at byte {pos}: name length {len_name}")
        need_bytes(path, f"feature header at byte {pos}", pos + 4 + len_name + 32, len(buf))
        name = bytes(buf[pos + 4:pos + 4 + len_name]).decode("utf-8", "replace")
        pos += 4 + len_name
        sx, sy, sz, num_channels, dtype_id = struct.unpack_from("<3Q2i", buf, pos)
        pos += 32
        if num_channels < 1 or min(sx, sy, sz) < 1:
            raise InputError(f"{path}: corrupt header of feature {name!r}: {sx}x{sy}x{sz}, {num_channels} channels")
        dtype = _dtype(path, dtype_id)
        nbytes = sx * sy * sz * num_channels * dtype.itemsize
        _check_body(path, f"feature {name!r}", nbytes, compressed, len(buf) - pos)
        names.append(f"{name} ({sx}x{sy}x{sz}, {num_channels} ch, {dtype.name})")
        wanted = found is None and (name == request.data_key if request.data_key is not None else len(names) == 1)
        # bodies before the wanted one are decoded for the LZ4 history, the rest only walked
        body, pos = _body(path, buf, pos, nbytes, compressed, history, decode=found is None and (wanted or compressed))
        if wanted:
            array = np.frombuffer(body, dtype=dtype).reshape(sz, sy, sx, num_channels)
            found = Source(array[..., 0] if num_channels == 1 else array, spacing=(wx / sx, wy / sy, wz / sz),
                           name=name)
        elif found is None:
            history = (history + body)[-_LZ4_CHUNK:]
    if pos != len(buf):
        raise InputError(f"{path}: corrupt: {len(buf) - pos} bytes after the last of {num_features} features")
    if found is None:
        raise InputError(f"{path}: no feature {request.data_key!r}; features: {', '.join(names)}")
    return found


def open_array(path, request: Request) -> Source:
    buf = memoryview(Path(path).read_bytes())
    magic = bytes(buf[:4])
    if magic == b"cvol":
        return _legacy(path, buf, request)
    if magic == b"CVOL":
        return _features(path, buf, request)
    raise InputError(f"{path}: not a cvol file (magic {magic!r}, expected b'cvol' or b'CVOL')")
