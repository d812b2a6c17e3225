"""Numbers a file may store that the float32 decoder cannot use (FORMAT.md, "Decoder checks").

The header stores float64 and the payload float32, but the network runs in float32: a value that
is finite as stored can underflow (omega_0 = 1e-320 becomes 0, and the weight initialisation's
bound sqrt(6 / n) / omega_0 overflows) or overflow once multiplied (a value range of 1e300, a
uniform step of 3e38 times q, a weight of 3e38 times omega_0). These checks look at what the stored
numbers *produce* in float32; each returns a one-line problem or None. What they cannot see (sums
inside the network) the decoder's last check catches: it refuses an output that is not finite.
"""

from __future__ import annotations

import math

import numpy as np

F32_MAX = float(np.finfo(np.float32).max)
F32_TINY = float(np.finfo(np.float32).tiny)  # the smallest normal float32


def fits_float32(x: float) -> bool:
    return math.isfinite(x) and abs(x) <= F32_MAX


def omega_problem(omega_0: float) -> str | None:
    """omega_0 must be a normal float32: a subnormal or zero one makes sqrt(6 / n) / omega_0, the
    initialisation bound of every sine layer, overflow float32 (torch's uniform_ refuses it)."""
    if not (math.isfinite(omega_0) and F32_TINY <= omega_0 <= F32_MAX):
        return (f"bad omega_0 {omega_0!r} (must be positive and a normal float32, "
                f"{F32_TINY:.4g} <= omega_0 <= {F32_MAX:.4g})")
    return None


def volume_problem(volume) -> str | None:
    """What keeps the grid and value range from mapping network outputs to finite physical values:
    vmin, vmax and the range vmax - vmin must all be finite in float32 (the decoded volume is)."""
    if not all(math.isfinite(s) and s > 0 for s in volume.spacing):
        return f"bad voxel spacing {tuple(volume.spacing)} (must be positive and finite)"
    if not all(math.isfinite(o) for o in volume.origin):
        return f"bad origin {tuple(volume.origin)} (must be finite)"
    vmin, vmax = float(volume.vmin), float(volume.vmax)
    if not (math.isfinite(vmin) and math.isfinite(vmax) and vmin < vmax):
        return f"bad value range [{volume.vmin}, {volume.vmax}] (needs finite vmin < vmax)"
    if not (fits_float32(vmin) and fits_float32(vmax) and fits_float32(vmax - vmin)):
        return f"bad value range [{volume.vmin}, {volume.vmax}] (vmin, vmax and vmax - vmin must fit float32)"
    return None


def layer_problem(index: int, shape: tuple[int, int], weights: np.ndarray, biases: np.ndarray,
                  omega_0: float) -> str | None:
    """A linear layer whose pre-activation overflows float32 for inputs in [-1, 1]: the bound
    (max|W| x fan-in + max|b|) x max(omega_0, 1), with the values a record can decode to (raw
    values, every centroid, the whole uniform table). A trained SIREN is many orders of magnitude
    below it, so only absurd weights are refused."""
    w = float(np.max(np.abs(weights), initial=0.0))
    b = float(np.max(np.abs(biases), initial=0.0))
    reach = (w * shape[1] + b) * max(float(omega_0), 1.0)
    if not fits_float32(reach):
        return (f"layer {index}: weights up to {w:.3g} and biases up to {b:.3g} overflow float32 "
                f"(|pre-activation| up to {reach:.3g} for inputs in [-1, 1])")
    return None
