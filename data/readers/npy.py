"""NumPy `.npy`: (Z, Y, X), or (Z, Y, X, C) with `channel` choosing C; memory-mapped."""

from __future__ import annotations

import math

import numpy as np

from neurcomp.config.errors import InputError
from neurcomp.data.readers.base import Request, Source, file_size, need_bytes

EXTENSIONS = (".npy",)


def _header(path):
    """(shape, fortran_order, dtype, data offset), refusing any unreadable header as InputError."""
    try:
        with open(path, "rb") as file:
            version = np.lib.format.read_magic(file)
            if version not in ((1, 0), (2, 0), (3, 0)):  # 3.0 = 2.0 with a UTF-8 header
                raise ValueError(f"unknown .npy format version {version}")
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(file)
            offset = file.tell()
    # A cut or flipped header fails in numpy's parser with ValueError, tokenize.TokenError,
    # SyntaxError, UnicodeDecodeError or EOFError, depending on where it breaks.
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{path}: not a readable .npy file ({type(exc).__name__}: {exc})") from None
    if any(int(n) < 0 for n in shape):  # numpy's header parser takes any integers
        raise InputError(f"{path}: the .npy header gives a negative shape {tuple(shape)}")
    return shape, fortran, dtype, offset


def open_array(path, request: Request) -> Source:
    shape, fortran, dtype, offset = _header(path)
    if dtype.hasobject:
        raise InputError(f"{path}: .npy of Python objects ({dtype}); only numeric arrays are read")
    nbytes = math.prod(shape) * dtype.itemsize
    need_bytes(path, f"array {shape} {dtype}", offset + nbytes, file_size(path))
    if nbytes == 0:  # nothing to map; the shape check refuses it
        return Source(np.zeros(shape, dtype))
    order = "F" if fortran else "C"
    return Source(np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order=order), lazy=True)
