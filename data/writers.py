"""Write volumes atomically (`data.atomic`: a temporary in the same folder, then `os.replace`).

Arrays are C-order (Z, Y, X); spacing and origin are (x, y, z), as in `data.volume.Volume`.
"""

import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from xml.sax.saxutils import quoteattr

import lz4.block
import numpy as np

from neurcomp.config.errors import NeurcompError
from neurcomp.data.atomic import atomic_path

_CVOL_TYPES = {np.dtype("uint8"): 0, np.dtype("uint16"): 1, np.dtype("float32"): 2}
_LZ4_CHUNK = 65536  # fV-SRN's MAX_CHUNK_SIZE; also LZ4's back-reference window
_VTK_TYPES = {"int8": "Int8", "uint8": "UInt8", "int16": "Int16", "uint16": "UInt16", "int32": "Int32",
              "uint32": "UInt32", "int64": "Int64", "uint64": "UInt64", "float32": "Float32", "float64": "Float64"}
_VTI_COMPRESSORS = {"zlib": "vtkZLibDataCompressor"}
_VTI_BLOCK = 1 << 20  # bytes per zlib block (VTK reads any block size)
_ZLIB_LEVEL = 1  # measured under load, 128^3: level 6 saved 0.5% more on float32 at up to 9x the time


def _as_dtype(path, values, dtype) -> np.ndarray:
    """Cast to `dtype`; integer targets are rounded and must fit (no silent wrap-around)."""
    values = np.asarray(values)
    dtype = np.dtype(dtype) if dtype is not None else values.dtype
    if np.issubdtype(dtype, np.integer) and not np.issubdtype(values.dtype, np.integer):
        values = np.rint(values)
    if np.issubdtype(dtype, np.integer) and values.size:
        info = np.iinfo(dtype)
        lo, hi = values.min(), values.max()
        if lo < info.min or hi > info.max:
            raise NeurcompError(f"{path}: values span {lo}..{hi}, outside the {dtype.name} range {info.min}..{info.max}")
    return values.astype(dtype, copy=False)


def write_npy(path, values) -> None:
    """NumPy .npy, C order (Z, Y, X)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as file:  # a file object stops np.save adding ".npy"
        np.save(file, np.ascontiguousarray(values))


def write_raw(path, values, dtype=None) -> None:
    """Headerless little-endian voxels, X fastest, in `dtype` (default: the array's)."""
    data = _as_dtype(path, values, dtype)
    data = np.ascontiguousarray(data, dtype=data.dtype.newbyteorder("<"))
    with atomic_path(path) as tmp:
        data.tofile(tmp)


def vti_dtype(dtype) -> np.dtype:
    """`dtype` when VTK stores it (8- to 64-bit integers, float32, float64), else float32 (e.g. float16)."""
    dtype = np.dtype(dtype)
    return dtype if dtype.name in _VTK_TYPES else np.dtype(np.float32)


def _appended_block(values: np.ndarray, compression: str) -> list:
    """One array as VTK's appended raw data: a UInt64 size header and the bytes, X fastest; with zlib,
    a header (blocks, block size, last block size, compressed sizes) and the zlib blocks."""
    data = np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<"))
    raw = memoryview(data).cast("B")
    if compression == "none":
        return [np.array([raw.nbytes], "<u8").tobytes(), raw]
    chunks = [raw[start:start + _VTI_BLOCK] for start in range(0, raw.nbytes, _VTI_BLOCK)]
    with ThreadPoolExecutor() as pool:  # zlib releases the GIL: blocks compress in parallel
        blocks = list(pool.map(lambda chunk: zlib.compress(chunk, _ZLIB_LEVEL), chunks))
    header = [len(blocks), _VTI_BLOCK, raw.nbytes % _VTI_BLOCK, *(len(b) for b in blocks)]
    return [np.array(header, "<u8").tobytes(), *blocks]


def write_vti(path, volume_values_zyx, spacing, origin=(0.0, 0.0, 0.0), name="value",
              extra_arrays: dict | None = None, compression: str = "none") -> None:
    """VTK XML ImageData with point data `name` (and `extra_arrays`, name -> (Z, Y, X) array), each
    in its own dtype; `compression` none or zlib (VTK's vtkZLibDataCompressor, lossless).

    A (Z, Y, X) C-order array already has X fastest, VTK's point order: it is written as it is.
    """
    arrays = {name: np.asarray(volume_values_zyx), **{k: np.asarray(a) for k, a in (extra_arrays or {}).items()}}
    shape = arrays[name].shape
    for key, values in arrays.items():
        if values.shape != shape or values.ndim != 3:
            raise NeurcompError(f"{path}: array {key!r} of shape {values.shape}; expected a 3D {shape}")
        if values.dtype.name not in _VTK_TYPES:
            raise NeurcompError(f"{path}: VTK cannot store array {key!r} of type {values.dtype.name}")
    blocks = {key: _appended_block(values, compression) for key, values in arrays.items()}
    nz, ny, nx = shape
    extent = f"0 {nx - 1} 0 {ny - 1} 0 {nz - 1}"
    compressor = f' compressor="{_VTI_COMPRESSORS[compression]}"' if compression != "none" else ""
    lines = ['<?xml version="1.0"?>',
             f'<VTKFile type="ImageData" version="1.0" byte_order="LittleEndian" header_type="UInt64"{compressor}>',
             f'<ImageData WholeExtent="{extent}" Origin="{_xyz(origin)}" Spacing="{_xyz(spacing)}">',
             f'<Piece Extent="{extent}">', f"<PointData Scalars={quoteattr(name)}>"]
    offset = 0
    for key, values in arrays.items():
        lines.append(f'<DataArray Name={quoteattr(key)} NumberOfComponents="1" type="{_VTK_TYPES[values.dtype.name]}" '
                     f'format="appended" offset="{offset}"/>')
        offset += sum(memoryview(b).nbytes for b in blocks[key])
    lines += ["</PointData>", "</Piece>", "</ImageData>", '<AppendedData encoding="raw">', "_"]
    with atomic_path(path) as tmp, open(tmp, "wb") as file:
        file.write("\n".join(lines).encode())
        for key in arrays:
            for block in blocks[key]:
                file.write(block)
        file.write(b"\n</AppendedData>\n</VTKFile>\n")


def _xyz(values) -> str:
    return "".join(f"{float(v)!r} " for v in values)


def write_cvol(path, values, spacing=(1.0, 1.0, 1.0), dtype=None) -> None:
    """Legacy fV-SRN `cvol`: 64-byte header, then an LZ4 linked-block chunk stream."""
    data = np.ascontiguousarray(_as_dtype(path, values, dtype))
    if data.dtype not in _CVOL_TYPES:
        raise NeurcompError(f"{path}: cvol stores uint8, uint16 or float32, not {data.dtype.name}")
    data = data.astype(data.dtype.newbyteorder("<"), copy=False)
    sz, sy, sx = data.shape
    header = b"cvol" + struct.pack("<3Q3dIB", sx, sy, sz, *map(float, spacing), _CVOL_TYPES[data.dtype], 1)
    header += b"\0" * (64 - len(header))
    raw = data.tobytes()
    with atomic_path(path) as tmp, open(tmp, "wb") as file:
        file.write(header)
        for start in range(0, len(raw), _LZ4_CHUNK):
            # The previous chunk as dictionary = fV-SRN's streaming compressor (linked blocks).
            block = lz4.block.compress(raw[start : start + _LZ4_CHUNK], store_size=False,
                                       dict=raw[max(0, start - _LZ4_CHUNK) : start])
            file.write(struct.pack("<i", len(block)) + block)


def write_volume(path, values, spacing=(1.0, 1.0, 1.0), dtype=None) -> None:
    """Write by extension: .vti, .npy, .raw or .cvol; `dtype` converts (rounding to integers)."""
    ext = Path(path).suffix.lower()
    if ext == ".vti":
        write_vti(path, _as_dtype(path, values, dtype), spacing)
    elif ext == ".npy":
        write_npy(path, _as_dtype(path, values, dtype))
    elif ext == ".raw":
        write_raw(path, values, dtype)
    elif ext == ".cvol":
        write_cvol(path, values, spacing, dtype)
    else:
        raise NeurcompError(f"{path}: cannot write {ext or 'files without an extension'}; use .vti, .npy, .raw or .cvol")
