"""``make_sampler``: the sampler the ``scaling`` options ask for, and the storage it holds the volume in."""

from __future__ import annotations

import numpy as np

from neurcomp.training.sampling.bricks import BrickSampler
from neurcomp.training.sampling.dense import VolumeSampler
from neurcomp.training.sampling.native import NATIVE_DTYPES, NativeVolumeSampler

STORAGES = ("auto", "float32", "native")


def resolve_storage(requested: str, source_dtype: str) -> str:
    """'float32' or 'native' for a volume stored as ``source_dtype``.

    auto: native when the stored type is smaller than float32 (uint8, int8, uint16, int16, float16).
    native for a type it cannot hold exactly in float32 arithmetic (int32, float64, ...) falls back to float32.
    """
    if requested not in STORAGES:
        raise ValueError(f"volume_storage must be one of {STORAGES}, not {requested!r}")
    name = np.dtype(source_dtype).name
    if requested == "float32" or name not in NATIVE_DTYPES:
        return "float32"
    if requested == "native":
        return "native"
    return "native" if np.dtype(name).itemsize < 4 else "float32"



def stored_values(volume) -> np.ndarray:
    """The volume's voxels in their stored dtype (exact: float32 holds every value of a native dtype)."""
    values = volume.values
    dtype = np.dtype(volume.source_dtype)
    if isinstance(values, np.ndarray) and values.dtype == dtype:
        return values
    return np.asarray(values).astype(dtype)


def make_sampler(volume, device, *, seed: int = 0, with_gradients: bool = False, scaling=None) -> VolumeSampler:
    """The sampler the ``scaling`` options (``config.options.ScalingConfig``) ask for.

    ``volume``: a ``data.volume.Volume`` or ``data.lazy.LazyVolume``. Under torch.distributed each
    rank samples with its own seed (``training.distributed.rank_seed``).
    """
    from neurcomp.config.options import ScalingConfig
    from neurcomp.training.distributed import rank_seed

    scaling = scaling or ScalingConfig()
    seed = rank_seed(seed)
    storage = resolve_storage(scaling.volume_storage, volume.source_dtype)
    if scaling.stream_bricks:
        values = getattr(volume, "values")
        if np.dtype(values.dtype).name != np.dtype(volume.source_dtype).name and storage == "native":
            values = stored_values(volume)  # an in-memory float32 Volume: back to the stored dtype
        return BrickSampler(values, volume.vmin, volume.vmax, device, seed=seed, with_gradients=with_gradients,
                            brick_size=scaling.brick_size, bricks_resident=scaling.bricks_resident,
                            refresh_steps=scaling.brick_refresh_steps, storage=storage)
    if storage == "float32":
        return VolumeSampler(volume.normalized(), device, seed=seed, with_gradients=with_gradients)
    return NativeVolumeSampler(stored_values(volume), volume.vmin, volume.vmax, device, seed=seed,
                               with_gradients=with_gradients)
