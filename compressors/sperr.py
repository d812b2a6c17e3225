"""SPERR behind the `Codec` interface, through hdf5plugin's HDF5 filter.

SPERR (Li, Lindstrom and Clyne, "Lossy Scientific Data Compression With SPERR", IEEE IPDPS 2023)
transforms the volume with a CDF 9/7 wavelet, codes the coefficients bit plane by bit plane with
SPECK (set partitioning of embedded blocks), and, in its error-bounded mode, codes the points that
still exceed the bound as outliers. Its bitstream is embedded: cutting it short gives a coarser
reconstruction, which is what the fixed-rate mode used here does.

The library comes from PyPI inside ``hdf5plugin`` (filter id 32028, H5Z-SPERR), so the codec goes
through an in-memory HDF5 file:

* encode: the float32 volume is written as ONE chunk (chunk shape = volume shape) with
  ``hdf5plugin.Sperr(rate=R, swap=True)``; the payload is that chunk's stored bytes
  (``read_direct_chunk``), which equal the dataset's storage size.
* decode: a fresh in-memory dataset of the same shape, dtype and chunking, with the SPERR filter,
  receives the payload through ``write_direct_chunk`` and is read back.

What the payload holds (H5Z-SPERR 0.2, hdf5plugin >= 5.1), and why nothing else is stored:
H5Z-SPERR writes one byte (its missing-value mode; always 0 here, the volume is finite), then
SPERR's own stream: a version byte, a flags byte, the three dimensions (uint32 each), the length of
the single SPERR chunk (uint32), and the chunk's bitstream. Those 19 header bytes are part of the
payload and of the ratio. The filter's ``cd_values`` (mode, quality, swap) are only used when
encoding: the decoder reads the dimensions from the stream and takes nothing from the quality, so
decoding needs only the shape (passed to `decompress`, as for the other codecs) and float32, and
the decoder's filter options are fixed.

``rate`` is SPERR's fixed-rate target in bits per value: the chunk's bitstream holds about
``rate * num_voxels`` bits (plus a few dozen bytes of its own header), so the ratio against
float32 is a little under ``32 / rate``. hdf5plugin stores the rate as a fixed-point number with
16 fractional bits; the codec rounds to that grid itself so ``params["rate"]`` is the rate used.

``swap=True`` ("rank order swap") is required for NumPy's C-order (Z, Y, X) volumes: H5Z-SPERR
hands the chunk dimensions to SPERR in HDF5 order, and SPERR takes its first dimension as the
fastest-varying one. Without the swap a non-cubic volume is read with the wrong row length (on a
40 x 23 x 11 smooth field at 1 bit per value: 24.7 dB instead of 66.6 dB).
"""

from __future__ import annotations

import io
import math
import struct
import time
from typing import ClassVar

import numpy as np

from neurcomp.compressors.base import Codec, CodecResult, compression_ratio, register_codec
from neurcomp.compressors.search import Trial, library_version, select_trial, timed

FLOAT32_BITS = 32
# hdf5plugin packs the rate as round(rate * 2**16) (16 fractional bits) and accepts 0 < rate < 64.
RATE_QUANTUM = 2.0 ** -16
MIN_RATE = 2.0 ** -12  # below this the ~20-byte header dominates any volume this benchmark sees
MAX_RATE = 63.0
MIN_CHUNK_DIM = 9  # H5Z-SPERR's can_apply rejects chunk dimensions 2..8
MAX_CHUNK_BYTES = 2 ** 32 - 1  # an HDF5 chunk is at most 4 GiB
# Payload layout (see the module docstring): H5Z byte, SPERR version byte, SPERR flags byte, dims.
_DIMS_OFFSET = 3


def _quantize_rate(rate: float) -> float:
    """The rate hdf5plugin will really pass to SPERR (16 fractional bits), inside [MIN, MAX]."""
    rate = min(max(float(rate), MIN_RATE), MAX_RATE)
    return round(rate / RATE_QUANTUM) * RATE_QUANTUM


def _sperr_filter(rate: float):
    import hdf5plugin

    return hdf5plugin.Sperr(rate=rate, swap=True)


def _check_shape(shape: tuple[int, ...]) -> tuple[int, int, int]:
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3:
        raise ValueError(f"SPERR codec expects a 3D shape (Z, Y, X), got {shape}")
    if min(shape) < MIN_CHUNK_DIM:
        raise ValueError(f"SPERR's HDF5 filter needs every dimension >= {MIN_CHUNK_DIM}, got shape {shape}")
    if math.prod(shape) * 4 > MAX_CHUNK_BYTES:
        raise ValueError(f"volume of shape {shape} is over HDF5's 4 GiB chunk limit; the SPERR codec "
                         "writes the volume as one chunk")
    return shape


def _search_rate(size_of, num_voxels: int, target: float, *, stop_tol: float, max_evals: int) -> list[Trial]:
    """Bisect the bit rate (on a log scale) until the ratio is within ``stop_tol`` of ``target``.

    The ratio falls as the rate grows. The search starts at ``32 / target`` (the ratio if the
    header cost nothing), brackets the target by factors of 2, [low rate: ratio >= target,
    high rate: ratio < target], and halves the bracket in log(rate) until a trial is close enough,
    the bracket is one rate quantum wide, or ``max_evals`` runs are spent. Every trial is returned
    so the caller selects among all of them (`compressors.search.select_trial`).
    """
    trials: dict[float, Trial] = {}

    def run(rate: float) -> Trial:
        rate = _quantize_rate(rate)
        if rate not in trials:
            nbytes = int(size_of(rate))
            trials[rate] = Trial(rate, nbytes, compression_ratio(num_voxels, nbytes))
        return trials[rate]

    def close_enough() -> bool:
        return min(abs(math.log(t.ratio / target)) for t in trials.values()) <= math.log1p(stop_tol)

    reaching: Trial | None = None  # lowest-quality side: ratio >= target
    missing: Trial | None = None   # highest-quality side: ratio < target
    trial = run(FLOAT32_BITS / target)
    while len(trials) < max_evals and not close_enough():
        if trial.ratio >= target:
            reaching = trial
            if missing is not None or trial.param >= MAX_RATE:
                break
            trial = run(trial.param * 2.0)
        else:
            missing = trial
            if reaching is not None or trial.param <= MIN_RATE:
                break
            trial = run(trial.param / 2.0)
    if reaching is not None and missing is not None:
        while len(trials) < max_evals and not close_enough():
            if missing.param - reaching.param <= RATE_QUANTUM:
                break  # adjacent rates on hdf5plugin's grid: nothing lies between them
            mid = run(math.sqrt(reaching.param * missing.param))
            if mid.param in (reaching.param, missing.param):
                break
            if mid.ratio >= target:
                reaching = mid
            else:
                missing = mid
    return list(trials.values())


@register_codec("sperr")
class SPERRCodec(Codec):
    """SPERR (Li, Lindstrom, Clyne 2023: wavelets + SPECK + outlier coding) at a fixed bit rate.

    The rate (bits per value, 0 < rate < 64) is bisected so that the ratio of the real payload,
    ``num_voxels * 4 / len(payload)``, is within ``rel_tol`` (default 2%) of the target; failing
    that the nearest ratio at or above the target is kept (``params["match"] == "above"``), and a
    target beyond SPERR's reach on this volume is reported as ``"unreachable"``, as for SZ3 and
    ZFP. The payload is H5Z-SPERR's chunk, header included; see the module docstring.
    """

    MODE: ClassVar[str] = "fixed_rate"

    def __init__(self, rel_tol: float = 0.02, stop_tol: float | None = None, max_evals: int = 40):
        if stop_tol is None:  # search on until this close, to land near the target, not at the tolerance edge
            stop_tol = min(0.002, rel_tol / 4)
        if not 0 < stop_tol <= rel_tol:
            raise ValueError(f"need 0 < stop_tol <= rel_tol, got stop_tol={stop_tol}, rel_tol={rel_tol}")
        if max_evals < 1:
            raise ValueError(f"max_evals must be at least 1, got {max_evals}")
        self.rel_tol = float(rel_tol)
        self.stop_tol = float(stop_tol)
        self.max_evals = int(max_evals)

    def options(self) -> dict:
        return {"rel_tol": self.rel_tol, "max_evals": self.max_evals}

    @staticmethod
    def compress_and_read_back(values: np.ndarray, rate: float) -> tuple[bytes, np.ndarray]:
        """One SPERR compression at ``rate`` bits per value: (payload, what h5py reads back).

        The second item is the volume decoded by HDF5 from the file the payload was written to;
        `decompress` must give the same from the payload alone.
        """
        import h5py

        arr = np.ascontiguousarray(values, dtype=np.float32)
        shape = _check_shape(arr.shape)
        with h5py.File(io.BytesIO(), "w") as h5:
            dset = h5.create_dataset("volume", data=arr, chunks=shape, **_sperr_filter(_quantize_rate(rate)))
            filter_mask, payload = dset.id.read_direct_chunk((0, 0, 0))
            if filter_mask != 0:  # HDF5 skips a filter that fails, storing the chunk raw
                raise RuntimeError(f"the SPERR filter was not applied (filter mask {filter_mask:#x})")
            storage = dset.id.get_storage_size()
            if storage != len(payload):
                raise RuntimeError(f"SPERR chunk is {len(payload)} bytes but the dataset stores {storage}")
            read_back = dset[...]
        return bytes(payload), read_back

    @classmethod
    def compress(cls, values: np.ndarray, rate: float) -> bytes:
        """One SPERR compression at ``rate`` bits per value; returns the complete payload."""
        return cls.compress_and_read_back(values, rate)[0]

    def decompress(self, payload: bytes, shape: tuple[int, ...]) -> np.ndarray:
        import h5py

        shape = _check_shape(shape)
        payload = bytes(payload)
        # The filter sizes its output from the dataset's shape, not from the stream: check they agree.
        if len(payload) < _DIMS_OFFSET + 12:
            raise ValueError(f"SPERR payload of {len(payload)} bytes is too short to hold a header")
        stream_dims = struct.unpack_from("<3I", payload, _DIMS_OFFSET)  # (X, Y, Z) after the rank swap
        if payload[0] != 0 or stream_dims != shape[::-1]:
            raise ValueError(f"SPERR payload holds shape {stream_dims[::-1]} (missing-value mode {payload[0]}), "
                             f"expected {shape} (mode 0)")
        with h5py.File(io.BytesIO(), "w") as h5:
            # Any rate works here: the decoder reads everything it needs from the stream.
            dset = h5.create_dataset("volume", shape=shape, dtype=np.float32, chunks=shape, **_sperr_filter(1.0))
            dset.id.write_direct_chunk((0, 0, 0), payload)
            return np.ascontiguousarray(dset[...], dtype=np.float32)

    def _compress_to_ratio(self, values, target_ratio, *, work_dir):
        _check_shape(values.shape)
        search_start = time.perf_counter()
        trials = _search_rate(lambda rate: len(self.compress(values, rate)), values.size, target_ratio,
                              stop_tol=self.stop_tol, max_evals=self.max_evals)
        trial, match = select_trial(trials, target_ratio, self.rel_tol)
        search_s = time.perf_counter() - search_start

        payload, enc_s = timed(self.compress, values, trial.param)
        if len(payload) != trial.num_bytes:
            raise RuntimeError(f"SPERR is not deterministic: {len(payload)} != {trial.num_bytes} bytes")
        decoded, dec_s = timed(self.decompress, payload, values.shape)
        params = {
            "mode": self.MODE,
            "rate": trial.param,
            "library": library_version("hdf5plugin"),
            "h5py": library_version("h5py"),
            "swap": True,
            "match": match,
            "rel_tol": self.rel_tol,
            "search_evals": len(trials),
            "search_seconds": search_s,
            "candidates": [{"rate": t.param, "ratio": t.ratio} for t in trials],
        }
        return CodecResult.build(self.name, target_ratio, payload, decoded, enc_s, dec_s, params)

    @classmethod
    def add_cli_args(cls, group):
        group.add_argument("--sperr-rel-tol", type=float, default=0.02,
                           help="accepted relative distance of the achieved ratio from the target")
        group.add_argument("--sperr-max-evals", type=int, default=40,
                           help="most SPERR compressions tried per target ratio in the rate search")

    @classmethod
    def from_args(cls, args):
        return cls(rel_tol=args.sperr_rel_tol, max_evals=args.sperr_max_evals)
