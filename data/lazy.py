"""Open a volume without loading it: a read-only array-like in the stored dtype plus its metadata.

``open_volume_lazily`` memory-maps ``.npy`` (``np.load(mmap_mode='r')``) and ``.raw``
(``np.memmap``) files and keeps HDF5 datasets open (h5py reads only the chunks a slice touches),
so a volume larger than memory (host or device) can be trained by streaming bricks of it
(``training.sampling.BrickSampler``). The value range is computed in slabs of ``CHUNK_VOXELS``
voxels, which also checks that every value is finite. Formats that cannot be read lazily (``.cvol``,
``.vti``: compressed or XML) are read whole by ``data.readers`` and wrapped, so every format works.

The result has the attributes of ``data.volume.Volume`` that training uses (shape, num_voxels, vmin,
vmax, spacing, origin, source_dtype, path, ``values``, ``normalized()``), with ``values`` the lazy
array in the stored dtype instead of an in-memory float32 array.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from config.errors import InputError
from data.readers import SUPPORTED_EXTENSIONS, _numeric_dtype, raw_layout_from_name, read_volume
from data.volume import normalize, z_slabs
from datasets import ensure_default_volume

CHUNK_VOXELS = 1 << 24  # voxels per slab when scanning for the value range (16 Mi: 64 MiB as float32)


class H5Array:
    """Read-only array-like over an HDF5 dataset (optionally one channel of a 4D one)."""

    def __init__(self, path, key: str, channel: int | None):
        self.file = h5py.File(path, "r")
        self.dataset = self.file[key]
        self.channel = channel
        shape = tuple(int(s) for s in self.dataset.shape)
        self.shape = shape[:3] if channel is not None else shape
        self.dtype = np.dtype(self.dataset.dtype)
        self.ndim = len(self.shape)
        self.chunks = self.dataset.chunks

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __getitem__(self, item) -> np.ndarray:
        if not isinstance(item, tuple):
            item = (item,)
        if self.channel is not None:
            item = tuple(item) + (slice(None),) * (3 - len(item)) + (self.channel,)
        return np.asarray(self.dataset[item])

    def __array__(self, dtype=None, copy=None):
        out = self[:, :, :]
        return out if dtype is None else out.astype(dtype)

    # what the end-of-training metrics and writers use (data.metrics, training.outputs)
    def min(self) -> float:
        return min(float(np.min(self[z0:z0 + self._slab()])) for z0 in range(0, self.shape[0], self._slab()))

    def max(self) -> float:
        return max(float(np.max(self[z0:z0 + self._slab()])) for z0 in range(0, self.shape[0], self._slab()))

    def reshape(self, *shape) -> np.ndarray:
        """Reads the whole dataset (host memory, stored dtype)."""
        return np.asarray(self).reshape(*shape)

    def _slab(self) -> int:
        return max(1, CHUNK_VOXELS // max(1, self.shape[1] * self.shape[2]))

    def close(self) -> None:
        self.file.close()


class LazyVolume:
    """A volume whose voxels stay in the file until a slice of ``values`` is read."""

    def __init__(self, values, *, vmin: float, vmax: float, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
                 source_dtype: str = "float32", path: str = "", lazy: bool = True):
        self.values = values  # (Z, Y, X) array-like in the stored dtype
        self.vmin = float(vmin)
        self.vmax = float(vmax)
        self.spacing = tuple(float(s) for s in spacing)
        self.origin = tuple(float(o) for o in origin)
        self.source_dtype = str(source_dtype)
        self.path = str(path)
        self.lazy = lazy  # False when the format had to be read whole

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.values.shape)

    @property
    def num_voxels(self) -> int:
        z, y, x = self.shape
        return z * y * x

    @property
    def value_range(self) -> float:
        return self.vmax - self.vmin

    def read(self, z: slice, y: slice, x: slice) -> np.ndarray:
        """A block in the stored dtype, as a C-contiguous in-memory array."""
        return np.ascontiguousarray(self.values[z, y, x])

    def normalized(self) -> np.ndarray:
        """The whole volume in [-1, 1] as float32 (loads it: for small volumes and tests)."""
        out = normalize(np.asarray(self.values), self.vmin, self.vmax)
        return np.clip(out, -1.0, 1.0, out=out)


def value_range(path, values, chunk_voxels: int = CHUNK_VOXELS) -> tuple[float, float]:
    """(min, max) of a (Z, Y, X) array-like, read in z-slabs of about ``chunk_voxels`` voxels.

    Raises InputError for NaN/Inf values or a constant volume, like ``data.readers``.
    """
    nz, ny, nx = (int(s) for s in values.shape)
    is_float = np.issubdtype(values.dtype, np.floating)
    lo, hi = np.inf, -np.inf
    bad = 0
    for _, block in z_slabs(values, chunk_voxels):
        if is_float:
            finite = np.isfinite(block)
            if not finite.all():
                bad += int(block.size - finite.sum())
                continue
        lo = min(lo, float(block.min()))
        hi = max(hi, float(block.max()))
    if bad:
        raise InputError(f"{path}: {bad} NaN or Inf values of {nz * ny * nx}; the volume must be finite")
    if lo == hi:
        raise InputError(f"{path}: constant volume (every voxel is {lo}); there is nothing to compress")
    return lo, hi


def _check_array(path, shape, dtype) -> None:
    if len(shape) != 3:
        raise InputError(f"{path}: expected a 3D volume (Z, Y, X), got shape {tuple(shape)}")
    if min(shape) < 2:
        raise InputError(f"{path}: shape (Z, Y, X) = {tuple(shape)}; every axis needs at least 2 voxels")
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise InputError(f"{path}: values of type {dtype} are not real numbers")


def _pick_channel(path, array, channel):
    """(Z, Y, X) view of a 3D array or of one channel of a (Z, Y, X, C) one (still lazy)."""
    if array.ndim == 4:
        num_channels = array.shape[3]
        if channel is None and num_channels == 1:
            channel = 0
        if channel is None:
            raise InputError(f"{path}: 4D array of shape {array.shape} has {num_channels} channels on the last "
                             f"axis; choose one with channel=0..{num_channels - 1}")
        if not 0 <= channel < num_channels:
            raise InputError(f"{path}: channel {channel} out of range 0..{num_channels - 1}")
        return array[..., channel]
    if channel not in (None, 0):
        raise InputError(f"{path}: channel={channel} given but the volume has a single channel")
    return array


def _open_npy(path, channel):
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"{path}: not a readable .npy file ({exc})") from None
    return _pick_channel(path, array, channel)


def _open_raw(path, shape, dtype):
    name_shape, name_dtype = raw_layout_from_name(path)
    shape = shape if shape is not None else name_shape
    dtype = dtype if dtype is not None else name_dtype
    if shape is None or dtype is None:
        raise InputError(f"{path}: cannot tell the raw layout; name the file like "
                         f"'name_<X>x<Y>x<Z>_<dtype>.raw' or pass raw_shape=(X, Y, Z) and raw_dtype")
    x, y, z = (int(n) for n in shape)
    dtype = _numeric_dtype(path, dtype)
    expected = x * y * z * dtype.itemsize
    actual = Path(path).stat().st_size
    if actual != expected:
        problem = "truncated" if actual < expected else "size mismatch"
        raise InputError(f"{path}: {problem}: {x}x{y}x{z} {dtype.name} needs {expected} bytes, the file has {actual}")
    return np.memmap(path, dtype=dtype, mode="r", shape=(z, y, x))


def _open_hdf5(path, data_key, channel):
    try:
        file = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"{path}: not a readable HDF5 file ({exc})") from None
    with file:
        datasets = {}

        def collect(name, obj):
            if isinstance(obj, h5py.Dataset):
                datasets[name] = (tuple(obj.shape), obj.dtype)

        file.visititems(collect)
    listing = ", ".join(f"{n} {s} {d}" for n, (s, d) in datasets.items()) or "none"
    if data_key:
        key = str(data_key).strip("/")
        if key not in datasets:
            raise InputError(f"{path}: no dataset {data_key!r}; datasets: {listing}")
    else:
        candidates = [n for n, (s, _) in datasets.items() if len(s) == 3]
        if len(candidates) != 1:
            raise InputError(f"{path}: {len(candidates)} 3D datasets, cannot choose; pass data_key= one of: {listing}")
        key = candidates[0]
    shape = datasets[key][0]
    if len(shape) == 4:
        if channel is None and shape[3] == 1:
            channel = 0
        if channel is None:
            raise InputError(f"{path}: 4D array of shape {shape} has {shape[3]} channels on the last axis; "
                             f"choose one with channel=0..{shape[3] - 1}")
        if not 0 <= channel < shape[3]:
            raise InputError(f"{path}: channel {channel} out of range 0..{shape[3] - 1}")
    elif channel not in (None, 0):
        raise InputError(f"{path}: channel={channel} given but the volume has a single channel")
    else:
        channel = None
    return H5Array(path, key, channel)


def open_volume_lazily(path, *, data_key=None, raw_shape=None, raw_dtype=None, channel=None) -> LazyVolume:
    """Open a volume file without reading its voxels (``.npy``, ``.raw``, ``.h5``/``.hdf5``).

    Other formats are read whole by ``data.readers.read_volume`` (``lazy`` is then False).
    Same arguments and errors as ``read_volume``.
    """
    path = Path(path)
    ensure_default_volume(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    ext = path.suffix.lower()
    if ext not in SUPPORTED_EXTENSIONS:
        raise InputError(f"{path}: unknown volume extension {ext or '(none)'!r}; "
                         f"supported: {', '.join(SUPPORTED_EXTENSIONS)}")
    if ext in (".cvol", ".vti"):
        vol = read_volume(path, data_key=data_key, raw_shape=raw_shape, raw_dtype=raw_dtype, channel=channel)
        return LazyVolume(vol.values, vmin=vol.vmin, vmax=vol.vmax, spacing=vol.spacing, origin=vol.origin,
                          source_dtype=vol.source_dtype, path=vol.path, lazy=False)
    if ext == ".npy":
        values = _open_npy(path, channel)
    elif ext == ".raw":
        values = _open_raw(path, raw_shape, raw_dtype)
    else:
        values = _open_hdf5(path, data_key, channel)
    _check_array(path, values.shape, values.dtype)
    vmin, vmax = value_range(path, values)
    return LazyVolume(values, vmin=vmin, vmax=vmax, source_dtype=np.dtype(values.dtype).name, path=str(path))
