"""Snapping decoded voxels to the source's integers: header flag ``FLAG_SNAP_TO_INTEGERS``.

A volume stored as integers (uint8 simulations, uint16 CT scans) holds a field rounded to whole
steps. The network fits the smooth field, so beside the stored integers its error has a floor: the
rounding itself, uniform in [-1/2, 1/2] (RMS 1/sqrt(12) = 0.29 of a step) wherever the field varies.
Where the network is within half a step of the field, rounding its output,

    v_hat = clip(rint(f_theta(x)), vmin, vmax),

gives back the stored integer exactly. Where it is further off, rounding can move a voxel the wrong
way, so the encoder, which has the volume, measures the error both ways and sets the flag only when
rounding lowers it: one bit of side information, decided on the data. The decoder rounds and clips
when the flag is set. Files with a requested error bound never set it (their corrections are
computed on the network's own output); outlier corrections (``quantization.outliers``) are
computed after snapping, so those files may carry both.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

from neurcomp.data.volume import VolumeInfo
from neurcomp.quantization.format import _CRC, _FIXED, FLAG_SNAP_TO_INTEGERS, CompressedNetwork


def integer_source(info: VolumeInfo) -> bool:
    """The volume was stored as integers, with an integral value range."""
    return np.issubdtype(np.dtype(info.source_dtype), np.integer) \
        and float(info.vmin).is_integer() and float(info.vmax).is_integer()


def snap(values: np.ndarray, info: VolumeInfo) -> np.ndarray:
    """Round ``values`` (float32, physical units) to integers within [vmin, vmax], in place."""
    np.rint(values, out=values)
    return np.clip(values, info.vmin, info.vmax, out=values)


def apply(net: CompressedNetwork, values: np.ndarray) -> np.ndarray:
    """What the decoder does with the network's output: snap it when the file says so."""
    return snap(values, net.volume) if net.flags & FLAG_SNAP_TO_INTEGERS else values


def snapping_helps(prediction: np.ndarray, ground_truth: np.ndarray, info: VolumeInfo) -> bool:
    """Whether rounding ``prediction`` to the source's integers lowers its squared error."""
    if not integer_source(info):
        return False
    plain = snapped = 0.0
    for z in range(0, prediction.shape[0], 16):  # slabs: no full-volume float64 temporaries
        p = prediction[z:z + 16].astype(np.float64)
        t = np.asarray(ground_truth[z:z + 16], dtype=np.float64)
        plain += float(np.sum((p - t) ** 2))
        snapped += float(np.sum((np.clip(np.rint(p), info.vmin, info.vmax) - t) ** 2))
    return snapped < plain


def with_flags(data: bytes, flags: int) -> bytes:
    """The same file with the header's flags replaced (and its header checksum recomputed)."""
    magic, version, _, header_size = _FIXED.unpack_from(data)
    head = bytearray(data[:header_size - _CRC.size])
    _FIXED.pack_into(head, 0, magic, version, flags, header_size)
    return bytes(head) + struct.pack("<I", zlib.crc32(head)) + data[header_size:]


def snap_if_it_helps(data: bytes, prediction: np.ndarray, ground_truth: np.ndarray,
                     net: CompressedNetwork) -> tuple[bytes, bool]:
    """(the file, snapped?): flag ``data`` and snap ``prediction`` in place when that lowers the error.

    ``prediction`` is the decoded volume of ``data`` as it stands (unsnapped). A file with an error
    bound is returned unchanged.
    """
    if net.bound is not None or not snapping_helps(prediction, ground_truth, net.volume):
        return data, False
    snap(prediction, net.volume)
    return with_flags(data, net.flags | FLAG_SNAP_TO_INTEGERS), True
