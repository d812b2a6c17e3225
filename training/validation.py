"""A fixed sample of voxels that judges the network during training.

The training loss is measured on fresh random points every step, so it is noisy and moves with the
learning rate. The validation sample is drawn once, from its own generator (the training stream is
untouched), at voxel centres with their stored values: its MSE estimates the whole volume's without bias,
cheap enough to evaluate a few dozen times per run. The trainer keeps the state
with the lowest validation MSE and restores it on divergence (``training.trainer``).
"""

from __future__ import annotations

import numpy as np
import torch

from neurcomp.data.volume import normalize, z_slabs
from neurcomp.model.inference import axis

# 32k voxels. On a sparse field the estimate is rough (hydrogen 128^3: 62.72 dB on the sample,
# 61.16 dB on the whole volume, same network), but it ranks the states of one run, which is its job.
VALIDATION_POINTS = 1 << 15
VALIDATION_SEED_OFFSET = 104729  # separates this generator from the training sampler's


def gather_voxels(values_zyx, iz, iy, ix) -> np.ndarray:
    """values[iz, iy, ix] for sorted flat indices, read slab by slab (memory-mapped volumes too)."""
    out = np.empty(len(iz), dtype=np.float64)
    for z0, slab in z_slabs(values_zyx):
        sel = (iz >= z0) & (iz < z0 + slab.shape[0])
        out[sel] = slab[iz[sel] - z0, iy[sel], ix[sel]]
    return out


class ValidationSet:
    """(coords, normalised values) of ``num_points`` fixed voxels (all of them on small volumes)."""

    def __init__(self, values_zyx, vmin: float, vmax: float, device, seed: int = 0,
                 num_points: int = VALIDATION_POINTS):
        shape = tuple(int(s) for s in values_zyx.shape)
        total = int(np.prod(shape))
        rng = np.random.default_rng(seed + VALIDATION_SEED_OFFSET)
        flat = np.arange(total) if total <= num_points else np.sort(rng.choice(total, num_points, replace=False))
        iz, iy, ix = np.unravel_index(flat, shape)
        values = gather_voxels(values_zyx, iz, iy, ix)
        self.targets = torch.as_tensor(normalize(values, vmin, vmax), device=device).reshape(-1, 1)
        # the coordinates full-volume inference gives these voxels, to the bit
        self.coords = torch.stack([axis(n, device)[torch.as_tensor(i, device=device)]
                                   for i, n in ((ix, shape[2]), (iy, shape[1]), (iz, shape[0]))], dim=1)

    def __len__(self) -> int:
        return self.coords.shape[0]

    @torch.no_grad()
    def mse(self, model: torch.nn.Module, chunk: int = 1 << 16) -> float:
        """Mean squared error of ``model`` on the sample, in normalised units (eval mode)."""
        was_training = model.training
        model.eval()
        total = torch.zeros((), dtype=torch.float64, device=self.coords.device)
        for start in range(0, len(self), chunk):
            pred = model(self.coords[start:start + chunk])
            total += ((pred - self.targets[start:start + chunk]) ** 2).sum(dtype=torch.float64)
        model.train(was_training)
        return float(total) / len(self)
