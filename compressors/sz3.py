"""SZ3 (package ``pysz``) behind the `Codec` interface: absolute error bound found on a log scale so that the ratio of the
real byte count is within ``rel_tol`` (default 2%) of the target; each of SZ3's predictors
(``interp``, ``interp_lorenzo``, ``lorenzo_reg``) is matched separately and the one with the best
PSNR at the matched ratio is kept. The ratio is not a monotone function of the bound:
``interp_lorenzo`` re-tunes itself per bound and its ratio jumps (on the 256^3
Richtmyer-Meshkov volume, from 372 to 502 between bounds 25.8 and 26.7), and tiny outputs (a few
hundred bytes) are noisy. When no bound lands within ``rel_tol`` the nearest ratio at or above
the target is kept (``params["match"] == "above"``); ``params["candidates"]`` lists what each
predictor reached. Results depend on the SZ3 version (pysz 1.1.0 bundles SZ3 3.4.0); the
package version is recorded in ``params["library"]``.
"""

from __future__ import annotations

import time
from typing import ClassVar

import numpy as np

from neurcomp.compressors.base import Codec, CodecResult, register_codec
from neurcomp.compressors.search import bound_scale, finite_or_none, library_version, search_log_scale, select_trial, timed
from neurcomp.data.metrics import volume_metrics


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
        scale = bound_scale(values)
        search_start = time.perf_counter()
        evals = 0
        per_predictor = []
        for predictor in self.predictors:
            trials = search_log_scale(lambda eb: len(self.compress(values, eb, predictor)), values.size,
                                       target_ratio, scale, stop_tol=self.stop_tol, max_evals=self.max_evals)
            evals += len(trials)
            trial, match = select_trial(trials, target_ratio, self.rel_tol)
            payload, enc_s = timed(self.compress, values, trial.param, predictor)
            if len(payload) != trial.num_bytes:
                raise RuntimeError(f"SZ3 is not deterministic: {len(payload)} != {trial.num_bytes} bytes")
            decoded, dec_s = timed(self.decompress, payload, values.shape)
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
            "library": library_version("pysz"),
            "error_bound_mode": "ABS",
            "abs_error_bound": best["eb"],
            "match": best["match"],
            "rel_tol": self.rel_tol,
            "search_evals": evals,
            "search_seconds": search_s,
            "candidates": {c["predictor"]: {"abs_error_bound": c["eb"], "ratio": c["ratio"],
                                            "psnr": finite_or_none(c["psnr"]), "match": c["match"]}
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
