"""The latent-grid network (``model.latent_grid``; Cool-chic, Ladune et al. 2023) behind the
``Codec`` interface: one training at the target file size (``training.latent_fit``), then the file
of ``quantization.latent_format``, decoded again from its bytes."""

from __future__ import annotations

import time
from dataclasses import asdict, fields

import numpy as np

from neurcomp.compressors.base import BASELINE_BYTES_PER_VOXEL, Codec, CodecResult, register_codec
from neurcomp.training.latent_fit import LatentFitOptions, fit


@register_codec("latent")
class LatentCodec(Codec):
    """Multi-resolution latents, a small synthesis MLP and a Laplace entropy model, at a target ratio."""

    def __init__(self, **options):
        self.fit_options = LatentFitOptions(**options)

    def options(self) -> dict:
        return asdict(self.fit_options)

    def _compress_to_ratio(self, values, target_ratio, *, work_dir):
        from neurcomp.quantization import latent_format

        budget = int(values.size * BASELINE_BYTES_PER_VOXEL / target_ratio)
        t0 = time.perf_counter()
        model, vmin, vmax, report = fit(values, budget, self.fit_options)
        payload = latent_format.encode(model, vmin, vmax)
        encode_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        decoded = self.decompress(payload, values.shape)
        params = {**self.options(), **model.describe(), "train_seconds": round(report["train_seconds"], 2),
                  "steps_run": report["steps"], "extra_steps": report["extra_steps"]}
        return CodecResult.build(self.name, target_ratio, payload, decoded, encode_seconds,
                                 time.perf_counter() - t0, params)

    def decompress(self, payload: bytes, shape) -> np.ndarray:
        from neurcomp.quantization import latent_format

        decoded = latent_format.decode_volume(payload)
        if decoded.shape != tuple(shape):
            raise ValueError(f"latent-grid payload holds shape {decoded.shape}, expected {tuple(shape)}")
        return decoded

    @classmethod
    def add_cli_args(cls, group):
        for f in fields(LatentFitOptions):
            group.add_argument(f"--latent-{f.name.replace('_', '-')}", type=type(f.default), default=f.default,
                               help=f"latent grid: {f.name}")

    @classmethod
    def from_args(cls, args):
        return cls(**{f.name: getattr(args, f"latent_{f.name}") for f in fields(LatentFitOptions)})
