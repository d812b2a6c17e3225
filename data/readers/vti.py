"""VTK XML ImageData (`.vti`) point data, parsed natively: ascii, inline base64 or appended
(raw or base64) arrays, uncompressed or compressed with zlib, LZ4 or LZMA (the compressors of
ParaView's save dialog, `vtkXMLImageDataWriter.SetCompressorTypeTo*`). Read whole.

Geometry: the origin returned is that of voxel 0 of the piece, `Origin + extent start * Spacing`,
so a cropped export stays where it was. A rotated grid (non-identity `Direction`) is refused.
"""

from __future__ import annotations

import base64
import lzma
import re
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import lz4.block
import numpy as np

from neurcomp.config.errors import InputError
from neurcomp.data.readers.base import Request, Source, need_bytes

EXTENSIONS = (".vti",)

_VTK_TYPES = {
    "int8": "i1", "uint8": "u1", "int16": "i2", "uint16": "u2", "int32": "i4", "uint32": "u4",
    "int64": "i8", "uint64": "u8", "float32": "f4", "float64": "f8",
}
_COMPRESSORS = {"vtkZLibDataCompressor": "zlib", "vtkLZ4DataCompressor": "lz4", "vtkLZMADataCompressor": "lzma"}


def _numbers(path, element, name, count, kind, default=None):
    """The `count` numbers of attribute `name` (a one-line InputError when missing or malformed)."""
    text = element.get(name, default)
    try:
        values = [kind(v) for v in (text or "").split()]
    except ValueError:
        values = []
    if len(values) != count:
        raise InputError(f"{path}: {name}={text!r}: expected {count} numbers")
    return values


def _decompress(path, method: str, block: bytes, size: int, pos: int) -> bytes:
    """One compressed block, which decodes to exactly `size` bytes (no more is ever allocated)."""
    try:
        if method == "zlib":
            out = zlib.decompressobj().decompress(block, size)
        elif method == "lz4":  # allocates `size` up front: bounded by LZ4's best ratio first
            if size > 255 * len(block) + 16:
                raise InputError(f"{path}: corrupt lz4 block at byte {pos}: {len(block)} bytes cannot hold {size}")
            out = lz4.block.decompress(block, uncompressed_size=size)
        else:
            out = lzma.LZMADecompressor().decompress(block, max_length=size)
    except (zlib.error, lz4.block.LZ4BlockError, lzma.LZMAError) as exc:
        raise InputError(f"{path}: corrupt {method} block at byte {pos} ({exc})") from None
    if len(out) != size:
        raise InputError(f"{path}: corrupt {method} block at byte {pos}: {len(out)} bytes, expected {size}")
    return out


def _binary(path, data: bytes, header: np.dtype, dtype: np.dtype, method: str | None, count: int) -> np.ndarray:
    """The `count` values of one VTK binary block: a size header, then raw or block-compressed bytes.

    Compressed header: nblocks, blocksize, lastblocksize, then nblocks compressed sizes.
    """
    hsize, nbytes = header.itemsize, count * dtype.itemsize
    need_bytes(path, "data block header", hsize, len(data))
    if method is None:
        announced = int(np.frombuffer(data[:hsize], header)[0])
        if announced != nbytes:
            raise InputError(f"{path}: data block of {announced} bytes, the extent needs {nbytes}")
        if len(data) < hsize + nbytes:
            raise InputError(f"{path}: truncated data block: {nbytes} bytes announced, {len(data) - hsize} present")
        return np.frombuffer(data[hsize:hsize + nbytes], dtype)
    need_bytes(path, "compression header", 3 * hsize, len(data))
    num_blocks, block_size, last_size = (int(v) for v in np.frombuffer(data[:3 * hsize], header))
    pos = (3 + num_blocks) * hsize
    need_bytes(path, f"compression header of {num_blocks} blocks", pos, len(data))
    sizes = [block_size] * num_blocks
    if num_blocks and last_size:
        sizes[-1] = last_size
    if sum(sizes) != nbytes:
        raise InputError(f"{path}: compressed data of {sum(sizes)} bytes, the extent needs {nbytes}")
    blocks = []
    for csize, size in zip(np.frombuffer(data[hsize * 3:pos], header).astype(np.int64).tolist(), sizes):
        if pos + csize > len(data):
            raise InputError(f"{path}: truncated {method} block at byte {pos}")
        blocks.append(_decompress(path, method, data[pos:pos + csize], size, pos))
        pos += csize
    return np.frombuffer(b"".join(blocks), dtype)


def _base64_block(text: str, header: np.dtype, compressed: bool) -> bytes:
    """Decode the base64 text of one data block (size header + data) to bytes.

    VTK encodes a compressed block's header and data separately, each padded, so they are decoded
    separately. For uncompressed blocks VTK 9 encodes header and data together, other writers
    (and older VTK) separately: padding right after the header tells which.
    """
    hsize = header.itemsize
    first = _b64_len(hsize)
    if len(text) < first:
        raise ValueError("truncated base64 data block")
    head = base64.b64decode(text[:first])
    if compressed:
        num_blocks = int(np.frombuffer(head[:hsize], header)[0])
        head_len = _b64_len((3 + num_blocks) * hsize)
        if len(text) < head_len:
            raise ValueError("truncated base64 compression header")
        head = base64.b64decode(text[:head_len])
        data_len = int(np.frombuffer(head, header)[3:].sum())
        return head + base64.b64decode(text[head_len:head_len + _b64_len(data_len)])
    nbytes = int(np.frombuffer(head[:hsize], header)[0])
    if text[first - 1] == "=":
        return head[:hsize] + base64.b64decode(text[first:first + _b64_len(nbytes)])
    return base64.b64decode(text[:_b64_len(hsize + nbytes)])


def _b64_len(nbytes: int) -> int:
    """Length of the padded base64 text for `nbytes` bytes."""
    return 4 * ((nbytes + 2) // 3)


def _parse(path):
    """(root element, appended bytes, appended encoding). Appended raw data is binary, which XML
    cannot hold: the text before it is parsed and the rest sliced."""
    raw = Path(path).read_bytes()
    appended, encoding, text = b"", "raw", raw
    start = raw.find(b"<AppendedData")
    if start >= 0:
        tag_end = raw.find(b">", start)
        marker = raw.find(b"_", tag_end)
        if tag_end < 0 or marker < 0:
            raise InputError(f"{path}: truncated <AppendedData> section")
        found = re.search(rb'encoding="(\w+)"', raw[start:tag_end])
        encoding = found.group(1).decode() if found else "raw"
        appended, text = raw[marker + 1:], raw[:start] + b"</VTKFile>"
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise InputError(f"{path}: not a valid VTK XML file ({exc})") from None
    return root, appended, encoding


def open_array(path, request: Request) -> Source:
    root, appended, encoding = _parse(path)
    image = root.find("ImageData")
    if root.tag != "VTKFile" or root.get("type") != "ImageData" or image is None:
        raise InputError(f"{path}: not a VTK ImageData file (type={root.get('type')!r})")
    pieces = image.findall("Piece")
    if len(pieces) != 1:
        raise InputError(f"{path}: {len(pieces)} pieces; only single-piece .vti files are supported")
    piece = pieces[0]
    holder, key = (piece, "Extent") if piece.get("Extent") else (image, "WholeExtent")
    extent = _numbers(path, holder, key, 6, int)
    nx, ny, nz = (extent[2 * i + 1] - extent[2 * i] + 1 for i in range(3))
    if min(nx, ny, nz) < 1:
        raise InputError(f"{path}: Extent {extent} is empty")
    spacing = _numbers(path, image, "Spacing", 3, float, "1 1 1")
    origin = _numbers(path, image, "Origin", 3, float, "0 0 0")
    direction = _numbers(path, image, "Direction", 9, float, "1 0 0 0 1 0 0 0 1")
    if direction != [1, 0, 0, 0, 1, 0, 0, 0, 1]:
        raise InputError(f"{path}: Direction {direction} rotates the grid; only axis-aligned image data "
                         f"(identity Direction) is supported: resample it in ParaView first")
    origin = [o + e * s for o, e, s in zip(origin, extent[0::2], spacing)]  # voxel 0 of the piece

    point_data = piece.find("PointData")
    arrays = point_data.findall("DataArray") if point_data is not None else []
    if not arrays:
        raise InputError(f"{path}: no PointData arrays (cell data is not supported)")
    names = [a.get("Name", "") for a in arrays]
    if request.data_key is not None:
        if request.data_key not in names:
            raise InputError(f"{path}: no point data array {request.data_key!r}; arrays: {', '.join(names)}")
        element = arrays[names.index(request.data_key)]
    else:
        active = point_data.get("Scalars")
        element = arrays[names.index(active)] if active in names else arrays[0]

    byte_order = "<" if root.get("byte_order", "LittleEndian") == "LittleEndian" else ">"
    vtk_type = element.get("type", "").lower()
    if vtk_type not in _VTK_TYPES:
        raise InputError(f"{path}: unsupported DataArray type {element.get('type')!r}")
    dtype = np.dtype(byte_order + _VTK_TYPES[vtk_type])
    header = np.dtype(byte_order + ("u8" if root.get("header_type") == "UInt64" else "u4"))
    compressor = root.get("compressor")
    if compressor is not None and compressor not in _COMPRESSORS:
        raise InputError(f"{path}: unsupported compressor {compressor!r} (supported: {', '.join(_COMPRESSORS)})")
    method = _COMPRESSORS.get(compressor)
    num_components = _numbers(path, element, "NumberOfComponents", 1, int, "1")[0]
    if num_components < 1:
        raise InputError(f"{path}: NumberOfComponents={num_components}")
    count = nx * ny * nz * num_components
    label = f"array {element.get('Name')!r}"

    fmt = element.get("format", "ascii")
    try:  # base64/number parsing and odd byte counts raise ValueError
        if fmt == "ascii":
            text = element.text or ""
            need_bytes(path, f"{label} as text ({count} values)", 2 * count - 1, len(text))
            values = np.array(text.split(), dtype=dtype)
        elif fmt == "binary":
            block = _base64_block("".join((element.text or "").split()), header, method is not None)
            values = _binary(path, block, header, dtype, method, count)
        elif fmt == "appended":
            offset = _numbers(path, element, "offset", 1, int, "0")[0]
            if not 0 <= offset < len(appended):
                raise InputError(f"{path}: {label}: offset {offset} is outside the appended data "
                                 f"({len(appended)} bytes)")
            block = appended[offset:]
            if encoding == "base64":
                block = _base64_block(block.decode("ascii", "replace"), header, method is not None)
            values = _binary(path, block, header, dtype, method, count)
        else:
            raise InputError(f"{path}: unsupported DataArray format {fmt!r}")
    except ValueError as exc:
        raise InputError(f"{path}: cannot decode {label} ({exc})") from None
    if values.size != count:
        raise InputError(f"{path}: {label} has {values.size} values, extent {nx}x{ny}x{nz}x{num_components} "
                         f"needs {count}")
    shape = (nz, ny, nx, num_components) if num_components > 1 else (nz, ny, nx)
    return Source(values.reshape(shape), spacing=tuple(spacing), origin=tuple(origin), name=element.get("Name", ""))
