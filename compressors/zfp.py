"""ZFP (package ``zfpy``) behind the `Codec` interface, in fixed-accuracy mode. ZFP only uses ``floor(log2(tolerance))``, so
the ratio is a step function of the tolerance (steps of roughly 15-35% in ratio); the codec
takes the smallest power-of-two tolerance whose ratio is at or above the target and reports the
achieved ratio as it is (``params["next_finer_ratio"]`` shows the step just below).
"""

from __future__ import annotations

import math
import time

import numpy as np

from neurcomp.compressors.base import Codec, CodecResult, compression_ratio, register_codec
from neurcomp.compressors.search import bound_scale, library_version, timed


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
        e = math.floor(math.log2(bound_scale(values)))
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
        payload, enc_s = timed(self.compress, values, tolerance)
        decoded, dec_s = timed(self.decompress, payload, values.shape)
        params = {
            "mode": "fixed_accuracy",
            "library": library_version("zfpy"),
            "tolerance": tolerance,
            "tolerance_log2": k,
            "match": match,
            "next_finer_ratio": ratios.get(k - 1),
            "search_evals": len(ratios),
            "search_seconds": search_s,
        }
        return CodecResult.build(self.name, target_ratio, payload, decoded, enc_s, dec_s, params)
