"""Full-volume inference in chunks, so memory stays bounded for large grids.

With ``split=True`` under torch.distributed (``training.distributed``; ``training.run.evaluate``
does this) the chunks are dealt out to the ranks round-robin and gathered on rank 0 round by round:
rank 0 returns the whole volume, the others None, and every rank must make the call (with the same
network). Without it the calling process evaluates the whole grid alone (rank-0-only work).
"""

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
                   device=None, chunk_points: int = CHUNK_POINTS, progress: bool = False,
                   split: bool = False) -> np.ndarray | None:
    """Evaluate ``model`` on a (Z, Y, X) grid spanning [-1, 1]^3; physical units when ``volume`` is given.

    Returns a float32 numpy array of shape ``shape_zyx``. ``split`` shares the chunks among the ranks
    of a distributed run (a collective: every rank calls); rank 0 then returns the volume, the others None.
    """
    from training import distributed

    device = device or next(model.parameters()).device
    nz, ny, nx = (int(s) for s in shape_zyx)
    slices_per_chunk = max(1, chunk_points // (ny * nx))
    starts = list(range(0, nz, slices_per_chunk))
    split = split and distributed.is_enabled()
    world_size = distributed.get_world_size() if split else 1
    rank = distributed.get_rank() if split else 0
    out = np.empty((nz, ny, nx), dtype=np.float32) if rank == 0 else None
    was_training = model.training
    model.eval()

    def chunk(i: int) -> torch.Tensor:
        z0 = starts[i]
        z1 = min(nz, z0 + slices_per_chunk)
        pred = model(grid_coordinates((nz, ny, nx), slice(z0, z1), device)).reshape(z1 - z0, ny, nx)
        return volume.denormalize(pred) if volume is not None else pred

    rounds = range(0, len(starts), world_size)
    for first in tqdm(rounds, desc="inference", unit="chunk", disable=not progress or rank != 0, leave=False):
        if world_size == 1:
            out[starts[first]:starts[first] + slices_per_chunk] = chunk(first).float().cpu().numpy()
            continue
        # one chunk per rank, padded to full size, gathered on rank 0
        mine = torch.zeros((slices_per_chunk, ny, nx), dtype=torch.float32, device=device)
        if first + rank < len(starts):
            pred = chunk(first + rank).float()
            mine[:pred.shape[0]] = pred
        gathered = [torch.empty_like(mine) for _ in range(world_size)] if rank == 0 else None
        torch.distributed.gather(mine, gathered, dst=0)
        if rank == 0:
            for r, part in enumerate(gathered):
                if first + r < len(starts):
                    z0 = starts[first + r]
                    z1 = min(nz, z0 + slices_per_chunk)
                    out[z0:z1] = part[:z1 - z0].cpu().numpy()
    model.train(was_training)
    return out
