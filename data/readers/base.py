"""What every volume reader shares: the request, the opened source, and each check written once.

A format module opens its file into a `Source` (an array-like in the stored dtype, memory-mapped or
chunked where the format allows, plus spacing and origin); `data.readers` then picks the channel,
checks shape, dtype and values here, and builds an in-memory `Volume` or a `LazyVolume` from it.
Every problem a user can fix raises `InputError("<path>: <problem>")`; header values are checked
against the file's size before anything is allocated.
"""

from __future__ import annotations

import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from neurcomp.config.errors import InputError
from neurcomp.data.volume import SLAB_VOXELS, z_slabs

@dataclass(frozen=True)
class Request:
    """What the caller asked for. data_key: HDF5 dataset, CVOL feature or VTI array name;
    raw_shape (X, Y, Z), raw_dtype, raw_endian: layout of headerless .raw files; channel: component
    of a multi-channel volume."""

    data_key: str | None = None
    raw_shape: tuple[int, int, int] | None = None
    raw_dtype: str | None = None
    raw_endian: str = "little"
    channel: int | None = None


@dataclass
class Source:
    """An opened volume file. `values`: (Z, Y, X) or (Z, Y, X, C) array-like in the stored dtype
    (numpy array, memory map, or an object with shape, dtype, ndim and numpy-style slicing)."""

    values: object
    spacing: tuple = (1.0, 1.0, 1.0)  # (x, y, z)
    origin: tuple = (0.0, 0.0, 0.0)  # (x, y, z)
    lazy: bool = False  # True when `values` reads the file on demand
    name: str = ""  # the array's own name (.vti DataArray, HDF5 dataset, CVOL feature), if it has one
    close: Callable[[], None] = field(default=lambda: None)


def file_size(path) -> int:
    return Path(path).stat().st_size


def need_bytes(path, what: str, needed: int, available: int) -> None:
    """Refuse a header that claims more data than the file holds (before allocating for it)."""
    if needed > available:
        raise InputError(f"{path}: truncated: {what} needs {needed} bytes, the file has {available}")


def numeric_dtype(path, name, endian: str = "little") -> np.dtype:
    """The numpy dtype `name` (e.g. uint16), in the given byte order; only integers and floats."""
    try:
        dtype = np.dtype(name)
    except TypeError:
        dtype = None
    if dtype is None or not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise InputError(f"{path}: {name!r} is not a numeric dtype (e.g. uint8, int16, uint16, float32)")
    if endian not in ("little", "big"):
        raise InputError(f"{path}: raw_endian = {endian!r}; expected little or big")
    return dtype.newbyteorder("<" if endian == "little" else ">")


def check_geometry(path, spacing, origin=(0.0, 0.0, 0.0)) -> tuple[tuple, tuple]:
    """Spacing must be three finite positive numbers and origin three finite ones (a zero spacing
    only fails when the .vti is written at the very end of training)."""
    spacing, origin = tuple(float(s) for s in spacing), tuple(float(o) for o in origin)
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise InputError(f"{path}: spacing {spacing}: needs three finite values > 0")
    if len(origin) != 3 or not all(math.isfinite(o) for o in origin):
        raise InputError(f"{path}: origin {origin}: needs three finite values")
    return spacing, origin


def select_channel(path, values, channel):
    """(Z, Y, X) view of a 3D array-like, or of one channel of a (Z, Y, X, C) one (still lazy)."""
    if values.ndim == 4:
        num_channels = values.shape[3]
        if channel is None and num_channels == 1:
            channel = 0
        if channel is None:
            raise InputError(f"{path}: 4D array of shape {tuple(values.shape)} has {num_channels} channels on the "
                             f"last axis; choose one with channel=0..{num_channels - 1}")
        if not 0 <= channel < num_channels:
            raise InputError(f"{path}: channel {channel} out of range 0..{num_channels - 1}")
        take = getattr(values, "take_channel", None)  # e.g. HDF5: stay lazy
        return take(channel) if take else values[..., channel]
    if channel not in (None, 0):
        raise InputError(f"{path}: channel={channel} given but the volume has a single channel")
    return values


def require_file(path, what: str = "file") -> None:
    """Refuse, in one line saying which, a path that is missing, a folder, a FIFO or device (reading
    one blocks or never ends), a link loop or unreadable: ``what`` names the file's role."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise InputError(f"{path}: {what} not found") from None
    except OSError as exc:  # ELOOP, EACCES on a parent, ENAMETOOLONG ...
        raise InputError(f"{path}: cannot open the {what}: {exc.strerror}") from None
    if stat.S_ISDIR(mode):
        raise InputError(f"{path}: is a folder, not a {what}")
    if not stat.S_ISREG(mode):
        raise InputError(f"{path}: is not a regular file (a FIFO, socket or device); give a {what}")


def check_grid(path, shape, dtype) -> None:
    """A 3D grid of real numbers with at least 2 voxels per axis (trilinear sampling needs a cell)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise InputError(f"{path}: expected a 3D volume (Z, Y, X), got shape {shape}")
    if min(shape) < 2:
        raise InputError(f"{path}: shape (Z, Y, X) = {shape}; every axis needs at least 2 voxels")
    dtype = np.dtype(dtype)
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise InputError(f"{path}: values of type {dtype} are not real numbers")


def value_range(path, values, slab_voxels: int = SLAB_VOXELS) -> tuple[float, float]:
    """(min, max) of a (Z, Y, X) array-like, read slab by slab in the stored dtype.

    Refuses NaN, Inf, values beyond the float32 range (the network trains in float32) and a constant
    volume, counting the bad values.
    """
    lo, hi = math.inf, -math.inf
    num_nan = num_inf = num_beyond = 0
    is_float = np.issubdtype(values.dtype, np.floating)
    for _, slab in z_slabs(values, slab_voxels):
        if is_float:
            finite = np.isfinite(slab)
            if slab.dtype.itemsize > 4:
                with np.errstate(over="ignore"):
                    beyond = finite & ~np.isfinite(slab.astype(np.float32))
                num_beyond += int(beyond.sum())
            if not finite.all():
                nan = int(np.isnan(slab).sum())
                num_nan += nan
                num_inf += int(slab.size - finite.sum()) - nan
                slab = slab[finite]
                if not slab.size:
                    continue
        # integers compared exactly: int64 values 2^62 apart by less than float64's step are not equal
        smallest, largest = (slab.min(), slab.max()) if is_float else (int(slab.min()), int(slab.max()))
        lo, hi = min(lo, smallest), max(hi, largest)
    if num_nan or num_inf or num_beyond:
        total = math.prod(int(s) for s in values.shape)
        detail = f"{num_nan} NaN and {num_inf + num_beyond} Inf values of {total}"
        if num_beyond:
            detail += f" ({num_beyond} values beyond the float32 range)"
        raise InputError(f"{path}: {detail}; the volume must be finite")
    if lo == hi:
        raise InputError(f"{path}: constant volume (every voxel is {lo}); there is nothing to compress")
    if np.float32(lo) == np.float32(hi):  # the volume is read as float32: its range would vanish
        step = float(np.spacing(np.float32(hi)))
        raise InputError(f"{path}: the values span only {hi - lo:.6g} around {float(lo):.6g}, below float32's step "
                         f"{step:.3g} there, so as float32 every voxel is equal; subtract an offset first")
    return float(lo), float(hi)
