"""HDF5 (`.h5`, `.hdf5`): the dataset `data_key`, or the file's only 3D dataset; read chunk by chunk.

h5py reports damaged files late and in many types (OSError, RuntimeError, KeyError, ValueError,
while reading rather than at open), so every access goes through `_guard`.
"""

from __future__ import annotations

import contextlib
import math

import h5py
import numpy as np

from neurcomp.config.errors import InputError
from neurcomp.data.readers.base import Request, Source, file_size, need_bytes

EXTENSIONS = (".h5", ".hdf5")
_H5_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError, MemoryError, OverflowError)


@contextlib.contextmanager
def _guard(path, doing: str):
    try:
        yield
    except _H5_ERRORS as exc:
        raise InputError(f"{path}: not a readable HDF5 file ({doing}: {type(exc).__name__}: {exc})") from None


class H5Array:
    """Read-only array-like over an HDF5 dataset: numpy-style slicing reads only what it touches."""

    def __init__(self, path, key: str):
        self.path = str(path)
        with _guard(path, "open"):
            self.file = h5py.File(path, "r")
            self.dataset = self.file[key]
            self.shape = tuple(int(s) for s in self.dataset.shape)
            self.dtype = np.dtype(self.dataset.dtype)
            self.chunks = self.dataset.chunks
        self.channel = None

    def take_channel(self, channel: int) -> "H5Array":
        """Read only `channel` of a (Z, Y, X, C) dataset from now on (`base.select_channel`)."""
        self.channel, self.shape = channel, self.shape[:3]
        return self

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def __getitem__(self, item) -> np.ndarray:
        if self.channel is not None:
            item = item if isinstance(item, tuple) else (item,)
            item = tuple(item) + (slice(None),) * (3 - len(item)) + (self.channel,)
        with _guard(self.path, "read"):
            return np.asarray(self.dataset[item])

    def __array__(self, dtype=None, copy=None):
        out = self[:, :, :]
        return out if dtype is None else out.astype(dtype)

    # what the end-of-training metrics and writers use (data.metrics, training.outputs)
    def min(self) -> float:
        from neurcomp.data.volume import z_slabs

        return min(float(slab.min()) for _, slab in z_slabs(self))

    def max(self) -> float:
        from neurcomp.data.volume import z_slabs

        return max(float(slab.max()) for _, slab in z_slabs(self))

    def reshape(self, *shape) -> np.ndarray:
        """Reads the whole dataset (host memory, stored dtype)."""
        return np.asarray(self).reshape(*shape)

    def close(self) -> None:
        self.file.close()


def _list_datasets(path) -> dict:
    """name -> (shape, dtype, stored bytes or None when filtered/compressed), searched in all groups."""
    found = {}
    with _guard(path, "open"), h5py.File(path, "r") as file:
        def collect(name, obj):  # must return None, or h5py stops visiting
            if isinstance(obj, h5py.Dataset):
                plist = obj.id.get_create_plist()  # contiguous, unfiltered, in this file: stored as is
                plain = (plist.get_layout() == h5py.h5d.CONTIGUOUS and not plist.get_nfilters()
                         and not plist.get_external_count() and not obj.is_virtual)
                found[name] = (tuple(obj.shape), obj.dtype, plain)

        file.visititems(collect)
    return found


def open_array(path, request: Request) -> Source:
    datasets = _list_datasets(path)
    listing = ", ".join(f"{n} {s} {d}" for n, (s, d, _) in datasets.items()) or "none"
    if request.data_key:
        key = str(request.data_key).strip("/")
        if key not in datasets:
            raise InputError(f"{path}: no dataset {request.data_key!r}; datasets: {listing}")
    else:
        candidates = [n for n, (s, _, _) in datasets.items() if len(s) == 3]
        if len(candidates) != 1:
            raise InputError(f"{path}: {len(candidates)} 3D datasets, cannot choose; pass data_key= one of: {listing}")
        key = candidates[0]
    shape, dtype, plain = datasets[key]
    if plain:  # a header claiming more than the file holds is damage
        need_bytes(path, f"dataset {key!r} {shape} {dtype}", math.prod(shape) * dtype.itemsize, file_size(path))
    array = H5Array(path, key)
    return Source(array, lazy=True, close=array.close, name=key.rsplit("/", 1)[-1])
