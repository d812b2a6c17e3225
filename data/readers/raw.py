"""Headerless `.raw` voxels, X fastest; layout from the name (`name_<X>x<Y>x<Z>_<dtype>.raw`) or
from raw_shape / raw_dtype, byte order from raw_endian. Memory-mapped."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from neurcomp.config.errors import InputError
from neurcomp.data.readers.base import Request, Source, file_size, numeric_dtype

EXTENSIONS = (".raw",)

_RAW_NAME = re.compile(r"(\d+)x(\d+)x(\d+)(?:_([a-z]+\d+))?$")


def raw_layout_from_name(path) -> tuple[tuple[int, int, int] | None, str | None]:
    """((X, Y, Z), dtype name) from a name like `hydrogen_atom_128x128x128_uint8.raw`; None where absent."""
    match = _RAW_NAME.search(Path(path).stem.lower())
    if match is None:
        return None, None
    x, y, z, dtype = match.groups()
    return (int(x), int(y), int(z)), dtype


def open_array(path, request: Request) -> Source:
    name_shape, name_dtype = raw_layout_from_name(path)
    shape = request.raw_shape if request.raw_shape is not None else name_shape
    dtype = request.raw_dtype or name_dtype
    if shape is None or dtype is None:
        raise InputError(f"{path}: cannot tell the raw layout; name the file like "
                         f"'name_<X>x<Y>x<Z>_<dtype>.raw' or pass raw_shape=(X, Y, Z) and raw_dtype")
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise InputError(f"{path}: raw_shape must be (X, Y, Z) with every dim >= 1, got {shape}")
    dtype = numeric_dtype(path, dtype, request.raw_endian or "little")
    x, y, z = shape
    expected, actual = x * y * z * dtype.itemsize, file_size(path)
    if actual != expected:
        problem = "truncated" if actual < expected else "size mismatch"
        raise InputError(f"{path}: {problem}: {x}x{y}x{z} {dtype.name} needs {expected} bytes, the file has {actual}")
    return Source(np.memmap(path, dtype=dtype, mode="r", shape=(z, y, x)), lazy=True)
