"""Read 3D scalar volumes (.npy, .raw, .h5/.hdf5, .cvol, .vti) into a validated float32 `Volume`.

Every problem a user can fix raises `InputError("<path>: <problem>")`.
"""

import base64
import re
import struct
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import h5py
import lz4.block
import numpy as np

from config.errors import InputError
from data.volume import Volume
from datasets import ensure_default_volume

SUPPORTED_EXTENSIONS = (".npy", ".raw", ".h5", ".hdf5", ".cvol", ".vti")


def read_volume(path, *, data_key=None, raw_shape=None, raw_dtype=None, channel=None) -> Volume:
    """Read any supported volume file, choosing the reader by extension.

    data_key: HDF5 dataset, CVOL feature or VTI array name. raw_shape (X, Y, Z) / raw_dtype: for
    .raw files whose name does not say them. channel: component of a multi-channel volume.
    """
    path = Path(path)
    ensure_default_volume(path)  # the bundled default volume is generated on first use
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    ext = path.suffix.lower()
    if ext not in SUPPORTED_EXTENSIONS:
        raise InputError(
            f"{path}: unknown volume extension {ext or '(none)'!r}; "
            f"supported: {', '.join(SUPPORTED_EXTENSIONS)}"
        )
    if ext == ".npy":
        return read_npy(path, channel=channel)
    if ext == ".raw":
        return read_raw(path, shape=raw_shape, dtype=raw_dtype)
    if ext in (".h5", ".hdf5"):
        return read_hdf5(path, data_key=data_key, channel=channel)
    if ext == ".cvol":
        return read_cvol(path, data_key=data_key, channel=channel)
    return read_vti(path, data_key=data_key, channel=channel)


# ----------------------------------------------------------------------------------------------
# Validation shared by all readers


def _make_volume(path, array, *, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), channel=None) -> Volume:
    """Pick the channel, check the array is a usable 3D volume and convert it to float32."""
    array = np.asarray(array)
    if array.ndim == 4:
        num_channels = array.shape[3]
        if channel is None and num_channels == 1:
            channel = 0
        if channel is None:
            raise InputError(
                f"{path}: 4D array of shape {array.shape} has {num_channels} channels on the last "
                f"axis; choose one with channel=0..{num_channels - 1}"
            )
        if not 0 <= channel < num_channels:
            raise InputError(f"{path}: channel {channel} out of range 0..{num_channels - 1}")
        array = array[..., channel]
    elif channel not in (None, 0):
        raise InputError(f"{path}: channel={channel} given but the volume has a single channel")
    if array.ndim != 3:
        raise InputError(f"{path}: expected a 3D volume (Z, Y, X), got shape {array.shape}")
    if min(array.shape) < 2:
        raise InputError(f"{path}: shape (Z, Y, X) = {array.shape}; every axis needs at least 2 voxels")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise InputError(f"{path}: values of type {array.dtype} are not real numbers")

    with np.errstate(over="ignore"):  # float64 beyond float32 becomes Inf, reported just below
        # Writeable: arrays from np.frombuffer (cvol, vti) are read-only views of the file bytes.
        values = np.require(array, dtype=np.float32, requirements=["C_CONTIGUOUS", "WRITEABLE"])
    finite = np.isfinite(values)
    if not finite.all():
        num_nan = int(np.isnan(values).sum())
        num_inf = int(values.size - finite.sum()) - num_nan
        detail = f"{num_nan} NaN and {num_inf} Inf values of {values.size}"
        if num_inf and np.isfinite(array).all():
            detail += " (values beyond the float32 range)"
        raise InputError(f"{path}: {detail}; the volume must be finite")
    vmin, vmax = float(values.min()), float(values.max())
    if vmin == vmax:
        raise InputError(f"{path}: constant volume (every voxel is {vmin}); there is nothing to compress")
    return Volume(
        values=values,
        spacing=tuple(float(s) for s in spacing),
        origin=tuple(float(o) for o in origin),
        source_dtype=array.dtype.name,
        path=str(path),
    )


# ----------------------------------------------------------------------------------------------
# .npy


def read_npy(path, *, channel=None) -> Volume:
    """NumPy array in C order (Z, Y, X), or (Z, Y, X, C) with `channel` choosing C."""
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"{path}: not a readable .npy file ({exc})") from None
    return _make_volume(path, array, channel=channel)


# ----------------------------------------------------------------------------------------------
# .raw


_RAW_NAME = re.compile(r"(\d+)x(\d+)x(\d+)(?:_([a-z]+\d+))?$")


def raw_layout_from_name(path) -> tuple[tuple[int, int, int] | None, str | None]:
    """((X, Y, Z), dtype name) from a name like `hydrogen_atom_128x128x128_uint8.raw`; None where absent."""
    match = _RAW_NAME.search(Path(path).stem.lower())
    if match is None:
        return None, None
    x, y, z, dtype = match.groups()
    return (int(x), int(y), int(z)), dtype


def _numeric_dtype(path, name) -> np.dtype:
    try:
        dtype = np.dtype(name)
    except TypeError:
        dtype = None
    if dtype is None or not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise InputError(f"{path}: {name!r} is not a numeric dtype (e.g. uint8, int16, uint16, float32)")
    return dtype.newbyteorder("<")


def read_raw(path, *, shape=None, dtype=None) -> Volume:
    """Headerless little-endian voxels, X fastest. shape=(X, Y, Z) and dtype override the name."""
    name_shape, name_dtype = raw_layout_from_name(path)
    shape = shape if shape is not None else name_shape
    dtype = dtype if dtype is not None else name_dtype
    if shape is None or dtype is None:
        raise InputError(
            f"{path}: cannot tell the raw layout; name the file like "
            f"'name_<X>x<Y>x<Z>_<dtype>.raw' or pass raw_shape=(X, Y, Z) and raw_dtype"
        )
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3:
        raise InputError(f"{path}: raw_shape must be (X, Y, Z), got {shape}")
    dtype = _numeric_dtype(path, dtype)
    expected = shape[0] * shape[1] * shape[2] * dtype.itemsize
    actual = Path(path).stat().st_size
    if actual != expected:
        problem = "truncated" if actual < expected else "size mismatch"
        raise InputError(
            f"{path}: {problem}: {shape[0]}x{shape[1]}x{shape[2]} {dtype.name} needs "
            f"{expected} bytes, the file has {actual}"
        )
    x, y, z = shape
    array = np.fromfile(path, dtype=dtype).reshape(z, y, x)
    return _make_volume(path, array)


# ----------------------------------------------------------------------------------------------
# .h5 / .hdf5


def read_hdf5(path, *, data_key=None, channel=None) -> Volume:
    """The dataset `data_key`, or the file's only 3D dataset when no key is given."""
    try:
        file = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"{path}: not a readable HDF5 file ({exc})") from None
    with file:
        datasets = {}  # name -> dataset, searched through all groups

        def collect(name, obj):  # must return None, or h5py stops visiting
            if isinstance(obj, h5py.Dataset):
                datasets[name] = obj

        file.visititems(collect)
        listing = ", ".join(f"{name} {tuple(d.shape)} {d.dtype}" for name, d in datasets.items()) or "none"
        if data_key is not None:
            key = str(data_key).strip("/")
            if key not in datasets:
                raise InputError(f"{path}: no dataset {data_key!r}; datasets: {listing}")
        else:
            candidates = [name for name, d in datasets.items() if d.ndim == 3]
            if len(candidates) != 1:
                raise InputError(
                    f"{path}: {len(candidates)} 3D datasets, cannot choose; pass data_key= one of: {listing}"
                )
            key = candidates[0]
        array = datasets[key][()]
    return _make_volume(path, array, channel=channel)


# ----------------------------------------------------------------------------------------------
# .cvol (fV-SRN / pyrenderer), see ../shared/datasets/CVOL_FORMAT.md

_CVOL_DTYPES = {0: np.dtype("uint8"), 1: np.dtype("<u2"), 2: np.dtype("<f4")}
_LZ4_CHUNK = 65536  # the writer's MAX_CHUNK_SIZE and LZ4's back-reference window


def _cvol_body(path, buf, pos, nbytes, compressed, history):
    """Decode one feature body at `pos`; returns (bytes, position after it).

    `history` is the decoded output before this body: fV-SRN shares one LZ4 stream across
    features, so the first chunk may reference up to 64 KiB of the previous feature.
    """
    if not compressed:
        if len(buf) - pos < nbytes:
            raise InputError(f"{path}: truncated: body needs {nbytes} bytes, {len(buf) - pos} left")
        return bytes(buf[pos : pos + nbytes]), pos + nbytes
    out = bytearray(nbytes)
    written = 0
    while written < nbytes:
        if pos + 4 > len(buf):
            raise InputError(f"{path}: truncated: LZ4 stream ends after {written} of {nbytes} bytes")
        (csize,) = struct.unpack_from("<i", buf, pos)
        if csize <= 0 or pos + 4 + csize > len(buf):
            raise InputError(
                f"{path}: truncated or corrupt LZ4 chunk at byte {pos} (size {csize}), "
                f"after {written} of {nbytes} bytes"
            )
        if written >= _LZ4_CHUNK:
            window = out[written - _LZ4_CHUNK : written]
        else:
            window = (bytes(history) + out[:written])[-_LZ4_CHUNK:]
        try:
            chunk = lz4.block.decompress(
                buf[pos + 4 : pos + 4 + csize],
                uncompressed_size=min(_LZ4_CHUNK, nbytes - written),
                dict=bytes(window),
            )
        except lz4.block.LZ4BlockError as exc:
            raise InputError(f"{path}: corrupt LZ4 chunk at byte {pos} ({exc})") from None
        out[written : written + len(chunk)] = chunk
        written += len(chunk)
        pos += 4 + csize
    return bytes(out), pos


def read_cvol(path, *, data_key=None, channel=None) -> Volume:
    """fV-SRN `.cvol`: legacy `cvol` (one density feature) or `CVOL` (named features)."""
    buf = memoryview(Path(path).read_bytes())
    magic = bytes(buf[:4])
    if magic == b"cvol":
        if len(buf) < 64:
            raise InputError(f"{path}: truncated: header needs 64 bytes, the file has {len(buf)}")
        sx, sy, sz, vx, vy, vz, dtype_id, compressed = struct.unpack_from("<3Q3dIB", buf, 4)
        if data_key not in (None, "density"):
            raise InputError(f"{path}: no feature {data_key!r}; a legacy cvol has only 'density'")
        dtype = _cvol_dtype(path, dtype_id)
        body, _ = _cvol_body(path, buf, 64, sx * sy * sz * dtype.itemsize, compressed, b"")
        array = np.frombuffer(body, dtype=dtype).reshape(sz, sy, sx)
        return _make_volume(path, array, spacing=(vx, vy, vz), channel=channel)
    if magic != b"CVOL":
        raise InputError(f"{path}: not a cvol file (magic {magic!r}, expected b'cvol' or b'CVOL')")

    if len(buf) < 32:
        raise InputError(f"{path}: truncated: header needs 32 bytes, the file has {len(buf)}")
    version, wx, wy, wz, num_features, flags = struct.unpack_from("<i3fii", buf, 4)
    if version != 1:
        raise InputError(f"{path}: unsupported CVOL version {version} (expected 1)")
    compressed = bool(flags & 1)
    pos, history, names = 32, b"", []
    for _ in range(num_features):
        if pos + 4 > len(buf):
            raise InputError(f"{path}: truncated: feature header at byte {pos} is missing")
        (len_name,) = struct.unpack_from("<i", buf, pos)
        name = bytes(buf[pos + 4 : pos + 4 + len_name]).decode("utf-8", "replace")
        pos += 4 + len_name
        if pos + 32 > len(buf):
            raise InputError(f"{path}: truncated: feature {name!r} header is incomplete")
        sx, sy, sz, num_channels, dtype_id = struct.unpack_from("<3Q2i", buf, pos)
        pos += 32
        dtype = _cvol_dtype(path, dtype_id)
        nbytes = sx * sy * sz * num_channels * dtype.itemsize
        names.append(f"{name} ({sx}x{sy}x{sz}, {num_channels} ch, {dtype.name})")
        wanted = name == data_key if data_key is not None else len(names) == 1
        if not compressed and not wanted:  # raw bodies can simply be skipped
            pos += nbytes
            continue
        body, pos = _cvol_body(path, buf, pos, nbytes, compressed, history)
        if wanted:
            array = np.frombuffer(body, dtype=dtype).reshape(sz, sy, sx, num_channels)
            if num_channels == 1:
                array = array[..., 0]
            spacing = (wx / sx, wy / sy, wz / sz)  # worldSize is the whole box
            return _make_volume(path, array, spacing=spacing, channel=channel)
        history = (history + body)[-_LZ4_CHUNK:]
    raise InputError(f"{path}: no feature {data_key!r}; features: {', '.join(names) or 'none'}")


def _cvol_dtype(path, dtype_id) -> np.dtype:
    if dtype_id not in _CVOL_DTYPES:
        raise InputError(f"{path}: unknown cvol data type {dtype_id} (0=uchar, 1=ushort, 2=float)")
    return _CVOL_DTYPES[dtype_id]


# ----------------------------------------------------------------------------------------------
# .vti (VTK XML ImageData), parsed natively


_VTK_TYPES = {
    "int8": "i1", "uint8": "u1", "int16": "i2", "uint16": "u2", "int32": "i4", "uint32": "u4",
    "int64": "i8", "uint64": "u8", "float32": "f4", "float64": "f8",
}


def read_vti(path, *, data_key=None, channel=None) -> Volume:
    """VTK XML ImageData point data (ascii, inline base64, appended raw/base64; zlib or not)."""
    raw = Path(path).read_bytes()
    # Appended raw data is binary, which XML cannot hold: parse the text before it and slice the rest.
    appended, encoding = b"", "raw"
    start = raw.find(b"<AppendedData")
    text = raw
    if start >= 0:
        tag_end = raw.find(b">", start)
        marker = raw.find(b"_", tag_end)
        if tag_end < 0 or marker < 0:
            raise InputError(f"{path}: truncated <AppendedData> section")
        found = re.search(rb'encoding="(\w+)"', raw[start:tag_end])
        encoding = found.group(1).decode() if found else "raw"
        appended = raw[marker + 1 :]
        text = raw[:start] + b"</VTKFile>"
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise InputError(f"{path}: not a valid VTK XML file ({exc})") from None
    image = root.find("ImageData")
    if root.tag != "VTKFile" or root.get("type") != "ImageData" or image is None:
        raise InputError(f"{path}: not a VTK ImageData file (type={root.get('type')!r})")
    pieces = image.findall("Piece")
    if len(pieces) != 1:
        raise InputError(f"{path}: {len(pieces)} pieces; only single-piece .vti files are supported")

    extent = [int(v) for v in (pieces[0].get("Extent") or image.get("WholeExtent")).split()]
    nx, ny, nz = extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1
    spacing = tuple(float(v) for v in image.get("Spacing", "1 1 1").split())
    origin = tuple(float(v) for v in image.get("Origin", "0 0 0").split())

    point_data = pieces[0].find("PointData")
    arrays = point_data.findall("DataArray") if point_data is not None else []
    if not arrays:
        raise InputError(f"{path}: no PointData arrays (cell data is not supported)")
    names = [a.get("Name", "") for a in arrays]
    if data_key is not None:
        if data_key not in names:
            raise InputError(f"{path}: no point data array {data_key!r}; arrays: {', '.join(names)}")
        array_el = arrays[names.index(data_key)]
    else:
        active = point_data.get("Scalars")
        array_el = arrays[names.index(active)] if active in names else arrays[0]

    byte_order = "<" if root.get("byte_order", "LittleEndian") == "LittleEndian" else ">"
    vtk_type = array_el.get("type", "").lower()
    if vtk_type not in _VTK_TYPES:
        raise InputError(f"{path}: unsupported DataArray type {array_el.get('type')!r}")
    dtype = np.dtype(byte_order + _VTK_TYPES[vtk_type])
    header = np.dtype(byte_order + ("u8" if root.get("header_type") == "UInt64" else "u4"))
    compressor = root.get("compressor")
    if compressor not in (None, "vtkZLibDataCompressor"):
        raise InputError(f"{path}: unsupported compressor {compressor!r} (only vtkZLibDataCompressor)")
    num_components = int(array_el.get("NumberOfComponents", "1"))
    count = nx * ny * nz * num_components

    fmt = array_el.get("format", "ascii")
    compressed = compressor is not None
    try:  # base64/number parsing and odd byte counts raise ValueError
        if fmt == "ascii":
            values = np.array((array_el.text or "").split(), dtype=dtype)
        elif fmt == "binary":
            block = _vtk_base64_block("".join((array_el.text or "").split()), header, compressed)
            values = _vtk_binary(path, block, header, dtype, compressed)
        elif fmt == "appended":
            block = appended[int(array_el.get("offset", "0")) :]
            if encoding == "base64":
                block = _vtk_base64_block(block.decode("ascii", "replace"), header, compressed)
            values = _vtk_binary(path, block, header, dtype, compressed)
        else:
            raise InputError(f"{path}: unsupported DataArray format {fmt!r}")
    except ValueError as exc:
        raise InputError(f"{path}: cannot decode array {array_el.get('Name')!r} ({exc})") from None
    if values.size != count:
        raise InputError(f"{path}: array {array_el.get('Name')!r} has {values.size} values, "
                         f"extent {nx}x{ny}x{nz}x{num_components} needs {count}")
    shape = (nz, ny, nx, num_components) if num_components > 1 else (nz, ny, nx)
    return _make_volume(path, values.reshape(shape), spacing=spacing, origin=origin, channel=channel)


def _vtk_base64_block(text: str, header: np.dtype, compressed: bool) -> bytes:
    """Decode the base64 text of one data block (size header + data) to bytes.

    VTK encodes a compressed block's header and data separately, each padded, so they are decoded
    separately. For uncompressed blocks VTK 9 encodes header and data together, other writers
    (and older VTK) separately: padding right after the header tells which.
    """
    hsize = header.itemsize
    first = _b64_len(hsize)
    head = base64.b64decode(text[:first])
    if compressed:
        num_blocks = int(np.frombuffer(head[:hsize], header)[0])
        head_len = _b64_len((3 + num_blocks) * hsize)
        head = base64.b64decode(text[:head_len])
        data_len = int(np.frombuffer(head, header)[3:].sum())
        return head + base64.b64decode(text[head_len : head_len + _b64_len(data_len)])
    nbytes = int(np.frombuffer(head[:hsize], header)[0])
    if text[first - 1] == "=":
        return head[:hsize] + base64.b64decode(text[first : first + _b64_len(nbytes)])
    return base64.b64decode(text[: _b64_len(hsize + nbytes)])


def _b64_len(nbytes: int) -> int:
    """Length of the padded base64 text for `nbytes` bytes."""
    return 4 * ((nbytes + 2) // 3)


def _vtk_binary(path, data: bytes, header: np.dtype, dtype: np.dtype, compressed: bool) -> np.ndarray:
    """Values of one VTK binary block: a size header, then raw or zlib block-compressed bytes.

    Compressed header: nblocks, blocksize, lastblocksize, then nblocks compressed sizes.
    """
    hsize = header.itemsize
    if len(data) < hsize:
        raise InputError(f"{path}: truncated data block")
    if not compressed:
        nbytes = int(np.frombuffer(data[:hsize], header)[0])
        if len(data) < hsize + nbytes:
            raise InputError(f"{path}: truncated data block: {nbytes} bytes announced, {len(data) - hsize} present")
        return np.frombuffer(data[hsize : hsize + nbytes], dtype)
    num_blocks = int(np.frombuffer(data[:hsize], header)[0])
    pos = (3 + num_blocks) * hsize
    if len(data) < pos:
        raise InputError(f"{path}: truncated compression header")
    blocks = []
    for csize in np.frombuffer(data[hsize * 3 : pos], header).astype(np.int64):
        if pos + csize > len(data):
            raise InputError(f"{path}: truncated zlib block at byte {pos}")
        try:
            blocks.append(zlib.decompress(data[pos : pos + csize]))
        except zlib.error as exc:
            raise InputError(f"{path}: corrupt zlib block at byte {pos} ({exc})") from None
        pos += csize
    return np.frombuffer(b"".join(blocks), dtype)
