"""Full-volume inference in chunks, so memory stays bounded for large grids."""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from training.checkpoint import VolumeInfo

CHUNK_POINTS = 1 << 18  # 262k points: activations of a width-512 network stay under ~1 GB


def grid_coordinates(shape_zyx, z_range: slice, device) -> torch.Tensor:
    """(x, y, z) coordinates in [-1, 1] of the voxels in slices ``z_range`` (grid points at the corners)."""
    nz, ny, nx = shape_zyx

    def axis(n):
        return torch.linspace(-1.0, 1.0, n, device=device) if n > 1 else torch.zeros(1, device=device)

    z = axis(nz)[z_range]
    zz, yy, xx = torch.meshgrid(z, axis(ny), axis(nx), indexing="ij")
    return torch.stack([xx, yy, zz], dim=-1).reshape(-1, 3)


@torch.no_grad()
def predict_volume(model: torch.nn.Module, shape_zyx, volume: VolumeInfo | None = None,
                   device=None, chunk_points: int = CHUNK_POINTS, progress: bool = False) -> np.ndarray:
    """Evaluate ``model`` on a (Z, Y, X) grid spanning [-1, 1]^3; physical units when ``volume`` is given.

    Returns a float32 numpy array of shape ``shape_zyx``.
    """
    device = device or next(model.parameters()).device
    nz, ny, nx = (int(s) for s in shape_zyx)
    out = np.empty((nz, ny, nx), dtype=np.float32)
    slices_per_chunk = max(1, chunk_points // (ny * nx))
    was_training = model.training
    model.eval()
    starts = range(0, nz, slices_per_chunk)
    for z0 in tqdm(starts, desc="inference", unit="chunk", disable=not progress, leave=False):
        z1 = min(nz, z0 + slices_per_chunk)
        pred = model(grid_coordinates((nz, ny, nx), slice(z0, z1), device)).reshape(z1 - z0, ny, nx)
        if volume is not None:
            pred = volume.denormalize(pred)
        out[z0:z1] = pred.float().cpu().numpy()
    model.train(was_training)
    return out
