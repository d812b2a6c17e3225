"""The `Codec` interface every compressor implements, its result, and the registry by name.

A codec is asked for a *compression ratio* and answers with the real compressed bytes, the volume
decoded from those bytes, and the time each direction took. The ratio follows the published
convention: ``ratio = num_voxels * 4 / num_bytes`` (a float32 volume is the baseline, whatever
the dtype on disk), where ``num_bytes`` is the length of the complete, self-contained payload.

A new codec is one module in this package: subclass `Codec`, implement `_compress_to_ratio` (which
may take minutes and may use ``work_dir`` for checkpoints) and `decompress`, decorate it with
``@register_codec("name")``, and import the module in ``compressors/__init__.py``. Constructor
keyword arguments are the codec's options; `add_cli_args` / `from_args` expose them on the
benchmark command line.
"""

from __future__ import annotations

import argparse
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

BASELINE_BYTES_PER_VOXEL = 4  # ratios are quoted against float32, the published convention


@dataclass
class CodecResult:
    """What one codec produced for one volume at one target ratio.

    ``payload`` is the complete compressed stream (what would be written to disk); ``decoded`` is
    the float32 volume decoded from exactly that payload. ``encode_seconds`` / ``decode_seconds``
    time one compression / one decompression at the final parameters (for the classic codecs the
    parameter search is timed separately in ``params["search_seconds"]``; a learned codec counts
    its training as encoding). ``params`` holds JSON-serialisable codec settings.
    """

    codec: str
    target_ratio: float
    payload: bytes
    num_bytes: int
    ratio: float
    decoded: np.ndarray
    encode_seconds: float
    decode_seconds: float
    params: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.num_bytes != len(self.payload):
            raise ValueError(f"{self.codec}: num_bytes={self.num_bytes} but the payload has {len(self.payload)} bytes")
        if self.decoded.dtype != np.float32:
            raise ValueError(f"{self.codec}: decoded volume must be float32, got {self.decoded.dtype}")

    @classmethod
    def build(cls, codec: str, target_ratio: float, payload: bytes, decoded: np.ndarray,
              encode_seconds: float, decode_seconds: float, params: dict | None = None) -> "CodecResult":
        """Fill ``num_bytes`` and ``ratio`` from the payload and the decoded volume's voxel count."""
        payload = bytes(payload)
        return cls(codec=codec, target_ratio=float(target_ratio), payload=payload, num_bytes=len(payload),
                   ratio=compression_ratio(decoded.size, len(payload)), decoded=decoded,
                   encode_seconds=float(encode_seconds), decode_seconds=float(decode_seconds),
                   params=dict(params or {}))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.decoded.shape)


def compression_ratio(num_voxels: int, num_bytes: int) -> float:
    """num_voxels * 4 / num_bytes: the ratio against the float32 volume."""
    if num_bytes <= 0:
        raise ValueError(f"compressed size must be positive, got {num_bytes}")
    return num_voxels * BASELINE_BYTES_PER_VOXEL / num_bytes


def prepare_values(values) -> np.ndarray:
    """The volume as a C-contiguous float32 3D array (what SZ3 and ZFP need); rejects NaN/inf."""
    arr = np.ascontiguousarray(values, dtype=np.float32)
    if arr.ndim != 3 or min(arr.shape) < 1:
        raise ValueError(f"expected a non-empty 3D volume (Z, Y, X), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("volume contains NaN or infinite values; error-bounded codecs cannot bound them")
    return arr


class Codec(ABC):
    """A compressor that can be driven to a target compression ratio.

    Subclasses implement `_compress_to_ratio` and `decompress`. `compress_to_ratio` validates the
    input (float32, C-contiguous, 3D, finite) and checks the result; it is what callers use.
    """

    name: ClassVar[str] = ""

    def compress_to_ratio(self, values: np.ndarray, target_ratio: float, *,
                          work_dir: str | Path | None = None) -> CodecResult:
        """Compress ``values`` to about ``target_ratio`` and decode it again, timing both.

        ``work_dir``: a scratch directory the codec may use (checkpoints, logs); classic codecs
        ignore it.
        """
        if not (isinstance(target_ratio, (int, float)) and math.isfinite(target_ratio) and target_ratio > 0):
            raise ValueError(f"target_ratio must be a positive number, got {target_ratio!r}")
        arr = prepare_values(values)
        result = self._compress_to_ratio(arr, float(target_ratio), work_dir=None if work_dir is None else Path(work_dir))
        if result.decoded.shape != arr.shape:
            raise RuntimeError(f"{self.name}: decoded shape {result.decoded.shape} != input shape {arr.shape}")
        return result

    @abstractmethod
    def _compress_to_ratio(self, values: np.ndarray, target_ratio: float, *,
                           work_dir: Path | None) -> CodecResult:
        """``values`` is already a validated C-contiguous float32 3D array."""

    @abstractmethod
    def decompress(self, payload: bytes, shape: tuple[int, ...]) -> np.ndarray:
        """Decode a payload produced by this codec into a float32 array of ``shape``."""

    def options(self) -> dict:
        """The codec's constructor options (JSON-serialisable), recorded with each result."""
        return {}

    @classmethod
    def add_cli_args(cls, group: argparse._ArgumentGroup) -> None:
        """Add this codec's options to the benchmark CLI; name them ``--<codec>-<option>``."""

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Codec":
        """Build the codec from the parsed CLI arguments added by `add_cli_args`."""
        return cls()


CODECS: dict[str, type[Codec]] = {}


def register_codec(name: str):
    """Class decorator: register a `Codec` subclass under ``name`` (and set its ``name``)."""

    def decorator(cls: type[Codec]) -> type[Codec]:
        if not (isinstance(cls, type) and issubclass(cls, Codec)):
            raise TypeError(f"register_codec({name!r}) expects a Codec subclass, got {cls!r}")
        existing = CODECS.get(name)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise ValueError(f"codec name {name!r} is already registered to {existing.__qualname__}")
        cls.name = name
        CODECS[name] = cls
        return cls

    return decorator


def get_codec(name: str, **kwargs) -> Codec:
    """Instantiate the codec registered under ``name`` with its options as keyword arguments."""
    try:
        cls = CODECS[name]
    except KeyError:
        raise KeyError(f"unknown codec {name!r}; registered: {', '.join(sorted(CODECS)) or 'none'}") from None
    return cls(**kwargs)
