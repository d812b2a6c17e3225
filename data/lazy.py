"""A volume whose voxels stay in the file: what ``data.readers.open_volume_lazily`` returns.

``values`` is a read-only array-like in the stored dtype (a memory-mapped ``.npy``/``.raw``, an
HDF5 dataset read chunk by chunk, or an in-memory array for formats that must be read whole), so a
volume larger than memory (host or device) can be trained by streaming bricks of it
(``training.sampling.BrickSampler``). It has the attributes of ``data.volume.Volume`` that training
uses (shape, num_voxels, vmin, vmax, spacing, origin, source_dtype, path, name, ``normalized()``).
"""

from __future__ import annotations

import numpy as np

from neurcomp.data.volume import normalize


class LazyVolume:
    """A volume whose voxels stay in the file until a slice of ``values`` is read."""

    def __init__(self, values, *, vmin: float, vmax: float, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
                 source_dtype: str = "float32", path: str = "", lazy: bool = True, name: str = ""):
        self.values = values  # (Z, Y, X) array-like in the stored dtype
        self.vmin = float(vmin)
        self.vmax = float(vmax)
        self.spacing = tuple(float(s) for s in spacing)
        self.origin = tuple(float(o) for o in origin)
        self.source_dtype = str(source_dtype)
        self.path = str(path)
        self.lazy = lazy  # False when the format had to be read whole
        self.name = name  # the array's name in its file, "" when it has none

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
