"""A fixed sample of voxels that judges the network during training.

The training loss is measured on fresh random points every step, so it is noisy and moves with the
learning rate. The validation sample is drawn once, from its own generator (the training stream is
untouched), at voxel centres with their stored values: its MSE is an unbiased estimate of the
whole volume's, cheap enough to evaluate a few dozen times per run. The trainer keeps the state
with the lowest validation MSE and restores it on divergence (``training.trainer``).
"""

from __future__ import annotations

import numpy as np
import torch

from data.volume import normalize

VALIDATION_POINTS = 1 << 15  # 32k voxels: the MSE estimate's relative error is ~1 % on smooth fields
VALIDATION_SEED_OFFSET = 104729  # separates this generator from the training sampler's


SLAB_VOXELS = 1 << 24  # z-slabs of at most 16M voxels: bounded memory on memory-mapped volumes


def z_slabs(values_zyx):
    """(z0, slab) pairs covering a (Z, Y, X) array, memory-mapped or HDF5-backed ones included."""
    nz, ny, nx = (int(s) for s in values_zyx.shape)
    step = max(1, SLAB_VOXELS // (ny * nx))
    for z0 in range(0, nz, step):
        yield z0, np.asarray(values_zyx[z0:z0 + step])


def gather_voxels(values_zyx, iz, iy, ix) -> np.ndarray:
    """values[iz, iy, ix] for sorted flat indices, read slab by slab."""
    out = np.empty(len(iz), dtype=np.float64)
    for z0, slab in z_slabs(values_zyx):
        sel = (iz >= z0) & (iz < z0 + slab.shape[0])
        out[sel] = slab[iz[sel] - z0, iy[sel], ix[sel]]
    return out


def mean_value(values_zyx) -> float:
    """The volume's mean, accumulated in float64 slab by slab."""
    total = sum(float(slab.sum(dtype=np.float64)) for _, slab in z_slabs(values_zyx))
    return total / int(np.prod(values_zyx.shape))


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

        def coord(i, n):  # voxel index -> [-1, 1], grid points at the corners (training.inference)
            return 2.0 * i / (n - 1) - 1.0 if n > 1 else np.zeros_like(i, dtype=np.float64)

        xyz = np.stack([coord(ix, shape[2]), coord(iy, shape[1]), coord(iz, shape[0])], axis=1)
        self.coords = torch.as_tensor(xyz, dtype=torch.float32, device=device)

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
