"""Write volumes atomically (`data.atomic`: a temporary in the same folder, then `os.replace`).

Arrays are C-order (Z, Y, X); spacing and origin are (x, y, z), as in `data.volume.Volume`.
"""

import struct
from pathlib import Path

import lz4.block
import numpy as np
from pyevtk.hl import imageToVTK

from config.errors import NeurcompError
from data.atomic import atomic_path

_CVOL_TYPES = {np.dtype("uint8"): 0, np.dtype("uint16"): 1, np.dtype("float32"): 2}
_LZ4_CHUNK = 65536  # fV-SRN's MAX_CHUNK_SIZE; also LZ4's back-reference window


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


def write_vti(path, volume_values_zyx, spacing, origin=(0.0, 0.0, 0.0), name="value",
              extra_arrays: dict | None = None) -> None:
    """VTK XML ImageData with point data `name` (and `extra_arrays`, name -> (Z, Y, X) array)."""
    arrays = {name: volume_values_zyx, **(extra_arrays or {})}
    # pyevtk indexes arrays as (X, Y, Z) and writes them in Fortran order, i.e. X fastest.
    point_data = {key: np.asfortranarray(np.asarray(a).transpose(2, 1, 0)) for key, a in arrays.items()}
    with atomic_path(path, suffix=".vti") as tmp:  # pyevtk appends ".vti" to the name it is given
        imageToVTK(str(tmp)[:-len(".vti")], origin=tuple(map(float, origin)), spacing=tuple(map(float, spacing)),
                   pointData=point_data)


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
