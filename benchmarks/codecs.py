"""One `Codec` interface for every compressor in the rate-distortion benchmark.

A codec is asked for a *compression ratio* and answers with the real compressed bytes, the volume
decoded from those bytes, and the time each direction took. The ratio follows the published
convention: ``ratio = num_voxels * 4 / num_bytes`` (a float32 volume is the baseline, whatever
the dtype on disk), where ``num_bytes`` is the length of the complete, self-contained payload
(SZ3's stream carries its own config; ZFP's carries its header with shape and mode).

Classic codecs here:

* ``sz3`` (package ``pysz``): absolute error bound found on a log scale so that the ratio of the
  real byte count is within ``rel_tol`` (default 2%) of the target; each of SZ3's predictors
  (``interp``, ``interp_lorenzo``, ``lorenzo_reg``) is matched separately and the one with the best
  PSNR at the matched ratio is kept. The ratio is not a monotone function of the bound:
  ``interp_lorenzo`` re-tunes itself per bound and its ratio jumps (on the 256^3
  Richtmyer-Meshkov volume, from 372 to 502 between bounds 25.8 and 26.7), and tiny outputs (a few
  hundred bytes) are noisy. When no bound lands within ``rel_tol`` the nearest ratio at or above
  the target is kept (``params["match"] == "above"``); ``params["candidates"]`` lists what each
  predictor reached. Results depend on the SZ3 version (pysz 1.1.0 bundles SZ3 3.4.0); the
  package version is recorded in ``params["library"]``.
* ``zfp`` (package ``zfpy``): fixed-accuracy mode. ZFP only uses ``floor(log2(tolerance))``, so
  the ratio is a step function of the tolerance (steps of roughly 15-35% in ratio); the codec
  takes the smallest power-of-two tolerance whose ratio is at or above the target and reports the
  achieved ratio as it is (``params["next_finer_ratio"]`` shows the step just below).

A learned codec (e.g. Neurcomp: train, prune, quantize) fits the same interface: implement
`_compress_to_ratio` (which may take minutes and may use ``work_dir`` for checkpoints) and
`decompress`, and register it with ``@register_codec("name")``. Constructor keyword arguments are
the codec's options; `add_cli_args` / `from_args` expose them on the benchmark command line.
"""

from __future__ import annotations

import argparse
import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np

from data.metrics import volume_metrics

BASELINE_BYTES_PER_VOXEL = 4  # ratios are quoted against float32, the published convention


# --------------------------------------------------------------------------------------------
# Result and interface
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Searching a parameter for a target ratio
# --------------------------------------------------------------------------------------------


@dataclass
class _Trial:
    param: float
    num_bytes: int
    ratio: float


def _select_trial(trials: list[_Trial], target: float, rel_tol: float) -> tuple[_Trial, str]:
    """Closest trial within ``rel_tol`` ("matched"); else nearest at or above the target ("above");
    else the largest ratio reached ("unreachable": the codec cannot compress this volume so far)."""
    within = [t for t in trials if abs(t.ratio / target - 1.0) <= rel_tol]
    if within:
        return min(within, key=lambda t: (abs(math.log(t.ratio / target)), -t.ratio)), "matched"
    above = [t for t in trials if t.ratio >= target]
    if above:
        return min(above, key=lambda t: t.ratio), "above"
    return max(trials, key=lambda t: t.ratio), "unreachable"


def _search_log_scale(size_of: Callable[[float], int], num_voxels: int, target: float, scale: float, *,
                      stop_tol: float, max_evals: int, min_factor: float = 1e-10,
                      max_factor: float = 4.0) -> list[_Trial]:
    """Try error bounds on a log scale until the ratio is within ``stop_tol`` of ``target``.

    ``size_of(bound)`` returns the compressed size in bytes; the ratio is assumed to grow with the
    bound, but only roughly (SZ3 is noisy): the search keeps a bracket [lo: ratio < target,
    hi: ratio >= target], steps by log-log interpolation inside it (bisection when one side stalls)
    and returns every trial, so the caller selects among all of them.
    """
    trials: list[_Trial] = []

    def run(bound: float) -> _Trial:
        nbytes = int(size_of(bound))
        trial = _Trial(bound, nbytes, compression_ratio(num_voxels, nbytes))
        trials.append(trial)
        return trial

    lo: _Trial | None = None
    hi: _Trial | None = None
    bound = scale * 1e-2
    while len(trials) < max_evals:  # bracket the target by factors of 10
        trial = run(bound)
        if trial.ratio >= target:
            hi = trial
            if lo is not None or bound <= scale * min_factor:
                break
            bound /= 10.0
        else:
            lo = trial
            if hi is not None or bound >= scale * max_factor:
                break
            bound = min(bound * 10.0, scale * max_factor)
    if lo is None or hi is None:
        return trials

    last_sides: list[str] = []
    log_t = math.log(target)
    while len(trials) < max_evals:
        if min(abs(math.log(t.ratio / target)) for t in trials) <= math.log1p(stop_tol):
            break
        x_lo, x_hi = math.log(lo.param), math.log(hi.param)
        if x_hi - x_lo < 1e-6 * max(1.0, abs(x_lo)):
            break  # the ratio jumps across the target here; the caller picks the nearest side
        r_lo, r_hi = math.log(lo.ratio), math.log(hi.ratio)
        if len(last_sides) >= 2 and last_sides[-1] == last_sides[-2] or r_hi <= r_lo:
            frac = 0.5
        else:
            frac = min(max((log_t - r_lo) / (r_hi - r_lo), 0.05), 0.95)
        trial = run(math.exp(x_lo + frac * (x_hi - x_lo)))
        if trial.ratio >= target:
            hi = trial
            last_sides.append("hi")
        else:
            lo = trial
            last_sides.append("lo")
    return trials


def _timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def _library(package: str) -> str:
    """"<package> <version>" for the record (results differ between library versions)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"{package} {version(package)}"
    except PackageNotFoundError:
        return package


def _bound_scale(values: np.ndarray) -> float:
    """A positive magnitude to scale error bounds by: the value range, else the largest |value|."""
    vrange = float(values.max()) - float(values.min())
    if vrange > 0:
        return vrange
    peak = float(np.abs(values).max())
    return peak if peak > 0 else 1.0


# --------------------------------------------------------------------------------------------
# SZ3
# --------------------------------------------------------------------------------------------


@register_codec("sz3")
class SZ3Codec(Codec):
    """SZ3 (pysz) in absolute-error-bound mode, matched to the target ratio, best predictor kept.

    predictors: any of "interp" (pysz ``szAlgorithm.INTERP``: spline interpolation),
    "interp_lorenzo" (``INTERP_LORENZO``, SZ3's default: samples the data and picks interpolation
    or Lorenzo itself) and "lorenzo_reg" (``LORENZO_REG``: Lorenzo + linear regression blocks).
    rel_tol: the accepted relative distance between achieved and target ratio (default 2%).
    """

    PREDICTORS: ClassVar[dict[str, str]] = {
        "interp": "INTERP",
        "interp_lorenzo": "INTERP_LORENZO",
        "lorenzo_reg": "LORENZO_REG",
    }

    def __init__(self, predictors=("interp", "interp_lorenzo", "lorenzo_reg"), rel_tol: float = 0.02,
                 stop_tol: float | None = None, max_evals: int = 40):
        predictors = tuple(predictors)
        unknown = [p for p in predictors if p not in self.PREDICTORS]
        if unknown or not predictors:
            raise ValueError(f"unknown SZ3 predictor(s) {unknown}; choose from {sorted(self.PREDICTORS)}")
        if stop_tol is None:  # search on until this close, to land near the target, not at the tolerance edge
            stop_tol = min(0.002, rel_tol / 4)
        if not 0 < stop_tol <= rel_tol:
            raise ValueError(f"need 0 < stop_tol <= rel_tol, got stop_tol={stop_tol}, rel_tol={rel_tol}")
        self.predictors = predictors
        self.rel_tol = float(rel_tol)
        self.stop_tol = float(stop_tol)
        self.max_evals = int(max_evals)

    def options(self) -> dict:
        return {"predictors": list(self.predictors), "rel_tol": self.rel_tol}

    @staticmethod
    def compress(values: np.ndarray, abs_error_bound: float, predictor: str = "interp_lorenzo") -> bytes:
        """One SZ3 compression with an absolute error bound; returns the complete stream."""
        import pysz

        config = pysz.szConfig()
        config.errorBoundMode = pysz.szErrorBoundMode.ABS
        config.absErrorBound = float(abs_error_bound)
        config.cmprAlgo = getattr(pysz.szAlgorithm, SZ3Codec.PREDICTORS[predictor])
        compressed, _ = pysz.sz.compress(np.ascontiguousarray(values, dtype=np.float32), config)
        # pysz returns a view into a buffer sized by SZ3's worst-case bound: copy out the stream.
        return compressed.tobytes()

    def decompress(self, payload: bytes, shape: tuple[int, ...]) -> np.ndarray:
        import pysz

        decoded, _ = pysz.sz.decompress(np.frombuffer(payload, dtype=np.uint8), np.float32, tuple(shape))
        return decoded

    def _compress_to_ratio(self, values, target_ratio, *, work_dir):
        scale = _bound_scale(values)
        search_start = time.perf_counter()
        evals = 0
        per_predictor = []
        for predictor in self.predictors:
            trials = _search_log_scale(lambda eb: len(self.compress(values, eb, predictor)), values.size,
                                       target_ratio, scale, stop_tol=self.stop_tol, max_evals=self.max_evals)
            evals += len(trials)
            trial, match = _select_trial(trials, target_ratio, self.rel_tol)
            payload, enc_s = _timed(self.compress, values, trial.param, predictor)
            if len(payload) != trial.num_bytes:
                raise RuntimeError(f"SZ3 is not deterministic: {len(payload)} != {trial.num_bytes} bytes")
            decoded, dec_s = _timed(self.decompress, payload, values.shape)
            psnr = volume_metrics(values, decoded)["psnr"]
            per_predictor.append(dict(predictor=predictor, eb=trial.param, match=match, payload=payload,
                                      decoded=decoded, enc_s=enc_s, dec_s=dec_s, psnr=psnr, ratio=trial.ratio))
        search_s = time.perf_counter() - search_start

        # Prefer predictors that reached the target (within tolerance or above); then best PSNR.
        reached = [c for c in per_predictor if c["match"] != "unreachable"]
        best = (max(reached, key=lambda c: (c["psnr"], c["ratio"])) if reached
                else max(per_predictor, key=lambda c: c["ratio"]))
        params = {
            "predictor": best["predictor"],
            "library": _library("pysz"),
            "error_bound_mode": "ABS",
            "abs_error_bound": best["eb"],
            "match": best["match"],
            "rel_tol": self.rel_tol,
            "search_evals": evals,
            "search_seconds": search_s,
            "candidates": {c["predictor"]: {"abs_error_bound": c["eb"], "ratio": c["ratio"],
                                            "psnr": _finite_or_none(c["psnr"]), "match": c["match"]}
                           for c in per_predictor},
        }
        return CodecResult.build(self.name, target_ratio, best["payload"], best["decoded"],
                                 best["enc_s"], best["dec_s"], params)

    @classmethod
    def add_cli_args(cls, group):
        group.add_argument("--sz3-predictors", nargs="+", choices=sorted(cls.PREDICTORS),
                           default=["interp", "interp_lorenzo", "lorenzo_reg"],
                           help="SZ3 predictors to try at each ratio; the best PSNR is kept")
        group.add_argument("--sz3-rel-tol", type=float, default=0.02,
                           help="accepted relative distance of the achieved ratio from the target")

    @classmethod
    def from_args(cls, args):
        return cls(predictors=args.sz3_predictors, rel_tol=args.sz3_rel_tol)


def _finite_or_none(x: float):
    return x if math.isfinite(x) else None


# --------------------------------------------------------------------------------------------
# ZFP
# --------------------------------------------------------------------------------------------


@register_codec("zfp")
class ZFPCodec(Codec):
    """ZFP (zfpy) in fixed-accuracy mode; the smallest power-of-two tolerance reaching the target.

    The payload includes zfpy's header (shape, type and mode, 8 bytes for 3D) so it decodes on
    its own; it is counted in ``num_bytes``.
    """

    def __init__(self, min_exponent_below_range: int = 40, max_exponent_above_range: int = 24):
        self.min_offset = int(min_exponent_below_range)
        self.max_offset = int(max_exponent_above_range)

    @staticmethod
    def compress(values: np.ndarray, tolerance: float) -> bytes:
        """One fixed-accuracy ZFP compression (|error| <= tolerance), header included."""
        import zfpy

        return bytes(zfpy.compress_numpy(np.ascontiguousarray(values, dtype=np.float32),
                                         tolerance=float(tolerance), write_header=True))

    def decompress(self, payload: bytes, shape: tuple[int, ...]) -> np.ndarray:
        import zfpy

        decoded = zfpy.decompress_numpy(bytes(payload))
        if tuple(decoded.shape) != tuple(shape):
            raise ValueError(f"ZFP payload holds shape {decoded.shape}, expected {tuple(shape)}")
        return np.ascontiguousarray(decoded, dtype=np.float32)

    def _compress_to_ratio(self, values, target_ratio, *, work_dir):
        # ZFP uses floor(log2(tolerance)) only, so search integer exponents k (tolerance 2**k);
        # the ratio grows monotonically with k (fewer bit planes per block).
        e = math.floor(math.log2(_bound_scale(values)))
        k_lo, k_hi = e - self.min_offset, e + self.max_offset
        search_start = time.perf_counter()
        ratios: dict[int, float] = {}

        def ratio_at(k: int) -> float:
            if k not in ratios:
                ratios[k] = compression_ratio(values.size, len(self.compress(values, 2.0 ** k)))
            return ratios[k]

        if ratio_at(k_hi) < target_ratio:
            k, match = k_hi, "unreachable"
        elif ratio_at(k_lo) >= target_ratio:
            k, match = k_lo, "above"
        else:  # invariant: ratio(k_lo) < target <= ratio(k_hi)
            while k_hi - k_lo > 1:
                mid = (k_lo + k_hi) // 2
                if ratio_at(mid) >= target_ratio:
                    k_hi = mid
                else:
                    k_lo = mid
            k, match = k_hi, "above"
        if match == "above" and abs(ratios[k] / target_ratio - 1.0) <= 0.02:
            match = "matched"
        search_s = time.perf_counter() - search_start

        tolerance = 2.0 ** k
        payload, enc_s = _timed(self.compress, values, tolerance)
        decoded, dec_s = _timed(self.decompress, payload, values.shape)
        params = {
            "mode": "fixed_accuracy",
            "library": _library("zfpy"),
            "tolerance": tolerance,
            "tolerance_log2": k,
            "match": match,
            "next_finer_ratio": ratios.get(k - 1),
            "search_evals": len(ratios),
            "search_seconds": search_s,
        }
        return CodecResult.build(self.name, target_ratio, payload, decoded, enc_s, dec_s, params)
