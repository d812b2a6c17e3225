"""A scalar volume in physical units, and the map between physical values and the network's [-1, 1]."""

from dataclasses import dataclass

import numpy as np


def normalize(values, vmin: float, vmax: float) -> np.ndarray:
    """Map [vmin, vmax] linearly onto [-1, 1] as float32 (values outside the range map outside)."""
    if not vmax > vmin:
        raise ValueError(f"cannot normalise with an empty value range [{vmin}, {vmax}]")
    scale = np.float32(2.0 / (float(vmax) - float(vmin)))
    out = (np.asarray(values, dtype=np.float32) - np.float32(vmin)) * scale
    out -= np.float32(1.0)
    return out


SLAB_VOXELS = 1 << 24  # voxels per z-slab when scanning a volume (16 Mi: 64 MiB as float32)


def z_slabs(values_zyx, slab_voxels: int = SLAB_VOXELS):
    """(z0, slab) pairs covering a (Z, Y, X) array-like (in memory, memory-mapped or an HDF5
    dataset, whose slabs hold whole chunks along z), each slab read into memory as it comes."""
    nz, ny, nx = (int(s) for s in values_zyx.shape)
    step = max(1, slab_voxels // max(1, ny * nx))
    chunks = getattr(values_zyx, "chunks", None)
    if chunks:
        step = max(chunks[0], step // chunks[0] * chunks[0])
    for z0 in range(0, nz, step):
        yield z0, np.asarray(values_zyx[z0:z0 + step])


def mean_value(values_zyx) -> float:
    """The volume's mean, accumulated in float64 slab by slab."""
    total = sum(float(slab.sum(dtype=np.float64)) for _, slab in z_slabs(values_zyx))
    return total / int(np.prod(values_zyx.shape))


def denormalize(values_in_minus1_1, vmin: float, vmax: float):
    """Inverse of `normalize`: map [-1, 1] back to [vmin, vmax] physical units.

    The arithmetic is float64 and the result float32: with a float32 scale, values near vmax of a
    volume whose range is far from zero (e.g. 1000..1001) lose several bits. Accepts numpy arrays
    and torch tensors (network output, on any device that has float64), returning the same kind.
    """
    half_range = (float(vmax) - float(vmin)) / 2.0
    if type(values_in_minus1_1).__module__.startswith("torch"):
        return ((values_in_minus1_1.double() + 1.0) * half_range + float(vmin)).float()
    out = (np.asarray(values_in_minus1_1, dtype=np.float64) + 1.0) * half_range + float(vmin)
    return out.astype(np.float32)


@dataclass
class Volume:
    """Scalar field on a regular grid; `values` is float32 in C order (Z, Y, X)."""

    values: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)  # (x, y, z) world units per voxel
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)  # (x, y, z) world position of voxel 0
    source_dtype: str = "float32"  # numpy dtype name as stored on disk, e.g. "uint8"
    path: str = ""
    name: str = ""  # the array's name in its file (.vti DataArray, HDF5 dataset), "" when it has none

    @property
    def shape(self) -> tuple[int, int, int]:
        """(Z, Y, X) voxel counts."""
        return tuple(int(n) for n in self.values.shape)

    @property
    def num_voxels(self) -> int:
        return int(self.values.size)

    @property
    def vmin(self) -> float:
        return float(self.values.min())

    @property
    def vmax(self) -> float:
        return float(self.values.max())

    @property
    def value_range(self) -> float:
        """vmax - vmin, the denominator of PSNR."""
        return self.vmax - self.vmin

    def normalized(self) -> np.ndarray:
        """Values mapped to [-1, 1] as float32 (clipped, so float rounding cannot step outside)."""
        out = normalize(self.values, self.vmin, self.vmax)
        return np.clip(out, -1.0, 1.0, out=out)


@dataclass
class VolumeInfo:
    """What the network needs to know about the volume it encodes, to output physical units
    (stored in checkpoints and compressed files)."""

    shape: tuple[int, int, int]  # (Z, Y, X)
    spacing: tuple[float, float, float]  # (x, y, z)
    vmin: float
    vmax: float
    source_dtype: str = "float32"
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    path: str = ""

    @property
    def num_voxels(self) -> int:
        return int(self.shape[0]) * int(self.shape[1]) * int(self.shape[2])

    def denormalize(self, normalized):
        """Map network output in [-1, 1] back to physical values (`denormalize`)."""
        return denormalize(normalized, self.vmin, self.vmax)

    @classmethod
    def from_volume(cls, volume) -> "VolumeInfo":
        return cls(shape=tuple(int(s) for s in volume.shape), spacing=tuple(float(s) for s in volume.spacing),
                   vmin=float(volume.vmin), vmax=float(volume.vmax), source_dtype=str(volume.source_dtype),
                   origin=tuple(float(o) for o in volume.origin), path=str(volume.path))

    @classmethod
    def from_dict(cls, d: dict) -> "VolumeInfo":
        return cls(shape=tuple(d["shape"]), spacing=tuple(d["spacing"]), vmin=float(d["vmin"]),
                   vmax=float(d["vmax"]), source_dtype=d.get("source_dtype", "float32"),
                   origin=tuple(d.get("origin", (0.0, 0.0, 0.0))), path=d.get("path", ""))
