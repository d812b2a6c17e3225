"""Read 3D scalar volumes: one registry of format modules, shared by the eager and the lazy path.

`read_volume` returns an in-memory float32 `data.volume.Volume`; `open_volume_lazily` a
`data.lazy.LazyVolume` whose voxels stay in the file (memory-mapped .npy/.raw, chunked HDF5) so a
volume larger than memory can be trained by streaming bricks. Both open the file with the format's
module (`open_array(path, Request) -> base.Source`) and run the same checks (`data.readers.base`).
A new format is one module with EXTENSIONS and open_array, plus its line in `_FORMATS`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from neurcomp.config.errors import InputError
from neurcomp.data.lazy import LazyVolume
from neurcomp.data.readers import cvol, hdf5, npy, raw, vti
from neurcomp.data.readers.base import Request, Source, check_geometry, check_grid, require_file, select_channel, value_range
from neurcomp.data.volume import Volume

_FORMATS = (npy, raw, hdf5, cvol, vti)
READERS = {ext: module.open_array for module in _FORMATS for ext in module.EXTENSIONS}
SUPPORTED_EXTENSIONS = tuple(READERS)


def _open(path, request: Request) -> tuple[Source, object]:
    """Open `path` with its format's reader: (source, checked (Z, Y, X) array-like in the stored dtype)."""
    path = Path(path)
    require_file(path)
    ext = path.suffix.lower()
    if ext not in READERS:
        raise InputError(f"{path}: unknown volume extension {ext or '(none)'!r}; "
                         f"supported: {', '.join(SUPPORTED_EXTENSIONS)}")
    source = READERS[ext](path, request)
    try:
        source.spacing, source.origin = check_geometry(path, source.spacing, source.origin)
        values = select_channel(path, source.values, request.channel)
        check_grid(path, values.shape, values.dtype)
    except BaseException:
        source.close()
        raise
    return source, values


def _request(data_key, raw_shape, raw_dtype, raw_endian, channel) -> Request:
    return Request(data_key=data_key or None, raw_shape=tuple(raw_shape) if raw_shape is not None else None,
                   raw_dtype=raw_dtype or None, raw_endian=raw_endian or "little", channel=channel)


def read_volume(path, *, data_key=None, raw_shape=None, raw_dtype=None, raw_endian="little", channel=None) -> Volume:
    """Read any supported volume file into memory as float32, choosing the reader by extension.

    data_key: HDF5 dataset, CVOL feature or VTI array name. raw_shape (X, Y, Z) / raw_dtype /
    raw_endian (little | big): for .raw files whose name does not say them. channel: component of
    a multi-channel volume.
    """
    source, values = _open(path, _request(data_key, raw_shape, raw_dtype, raw_endian, channel))
    try:
        value_range(path, values)
        with np.errstate(over="ignore"):
            array = np.require(values, dtype=np.float32, requirements=["C_CONTIGUOUS", "WRITEABLE", "ENSUREARRAY"])
    finally:
        source.close()
    return Volume(values=array, spacing=source.spacing, origin=source.origin,
                  source_dtype=np.dtype(values.dtype).name, path=str(path), name=source.name)


def open_volume_lazily(path, *, data_key=None, raw_shape=None, raw_dtype=None, raw_endian="little",
                       channel=None) -> LazyVolume:
    """Open a volume without reading its voxels (``.npy``, ``.raw``, ``.h5``/``.hdf5``); other formats
    are read whole (``lazy`` is then False). Same arguments and errors as ``read_volume``."""
    source, values = _open(path, _request(data_key, raw_shape, raw_dtype, raw_endian, channel))
    try:
        vmin, vmax = value_range(path, values)
    except BaseException:
        source.close()
        raise
    return LazyVolume(values, vmin=vmin, vmax=vmax, spacing=source.spacing, origin=source.origin,
                      source_dtype=np.dtype(values.dtype).name, path=str(path), lazy=source.lazy, name=source.name)
