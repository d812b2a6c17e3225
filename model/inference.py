"""Full-volume inference in chunks, so memory stays bounded for large grids.

With ``split=True`` under torch.distributed (``training.run.evaluate`` does this) the chunks are
dealt out to the ranks round-robin and gathered on rank 0 round by round:
rank 0 returns the whole volume, the others None, and every rank must make the call (with the same
network). Without it the calling process evaluates the whole grid alone (rank-0-only work).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from neurcomp.data.volume import VolumeInfo

CHUNK_POINTS = 1 << 18  # 262k points: one activation of a width-512 network is 512 MB


def axis(n: int, device) -> torch.Tensor:
    """Coordinates in [-1, 1] of the n voxels along an axis: grid points at both ends."""
    return torch.linspace(-1.0, 1.0, n, device=device) if n > 1 else torch.zeros(1, device=device)


def grid_coordinates(shape_zyx, z_range: slice, device) -> torch.Tensor:
    """(x, y, z) coordinates in [-1, 1] of the voxels in slices ``z_range`` (grid points at the corners)."""
    nz, ny, nx = shape_zyx
    z = axis(nz, device)[z_range]
    zz, yy, xx = torch.meshgrid(z, axis(ny, device), axis(nx, device), indexing="ij")
    return torch.stack([xx, yy, zz], dim=-1).reshape(-1, 3)


def flat_coordinates(axes_xyz, start: int, stop: int) -> torch.Tensor:
    """(x, y, z) coordinates of the voxels with flat (Z, Y, X) C-order indices [start, stop)."""
    ax, ay, az = axes_xyz
    nx, ny = ax.numel(), ay.numel()
    index = torch.arange(start, stop, device=ax.device)
    return torch.stack([ax[index % nx], ay[(index // nx) % ny], az[index // (nx * ny)]], dim=1)


def use_full_float32() -> None:
    """No TF32 in float32 matrix products: a SIREN scales every pre-activation by omega_0 = 30, so
    TF32's 10 mantissa bits cap the PSNR near 76 dB (training.precision also warns about overrides)."""
    torch.set_float32_matmul_precision("highest")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def _world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


@torch.no_grad()
def predict_volume(model: torch.nn.Module, shape_zyx, volume: VolumeInfo | None = None,
                   device=None, chunk_points: int = CHUNK_POINTS, progress: bool | Callable = False,
                   split: bool = False) -> np.ndarray | None:
    """Evaluate ``model`` on a (Z, Y, X) grid spanning [-1, 1]^3; physical units when ``volume`` is given.

    Returns a float32 numpy array of shape ``shape_zyx``. The grid goes through the network in
    ranges of ``chunk_points`` consecutive voxels (flat C order), not whole slices: a 4096^2 slice
    at width 512 would need 34 GB per activation. ``split`` shares the chunks among the ranks of a
    distributed run (a collective: every rank calls); rank 0 then returns the volume, the others None.
    ``progress``: True for a tqdm bar, or ``make(total)`` returning an object with tqdm's ``update``
    and ``close`` (the caller's convention, e.g. log lines when stderr is not a terminal); shown on
    rank 0 only.
    """
    use_full_float32()
    device = device or next(model.parameters()).device
    nz, ny, nx = (int(s) for s in shape_zyx)
    total = nz * ny * nx
    chunk_points = max(1, min(int(chunk_points), total))
    starts = list(range(0, total, chunk_points))
    split = split and _world_size() > 1
    world_size = _world_size() if split else 1
    rank = torch.distributed.get_rank() if split else 0
    out = np.empty(total, dtype=np.float32) if rank == 0 else None
    axes = (axis(nx, device), axis(ny, device), axis(nz, device))
    was_training = model.training
    model.eval()

    def chunk(i: int) -> torch.Tensor:
        start = starts[i]
        pred = model(flat_coordinates(axes, start, min(total, start + chunk_points))).reshape(-1)
        return volume.denormalize(pred) if volume is not None else pred

    # gloo gathers CPU tensors only (dist_backend = gloo with CUDA training)
    gather_device = torch.device("cpu") if world_size > 1 and torch.distributed.get_backend() == "gloo" else device
    rounds = range(0, len(starts), world_size)
    if callable(progress) and rank == 0:
        bar = progress(len(rounds))
    else:
        bar = tqdm(total=len(rounds), desc="inference", unit="chunk", disable=not progress or rank != 0, leave=False)
    for first in rounds:
        if world_size == 1:
            pred = chunk(first).float().cpu().numpy()
            out[starts[first]:starts[first] + pred.size] = pred
            bar.update(1)
            continue
        # one chunk per rank, padded to full size, gathered on rank 0
        mine = torch.zeros(chunk_points, dtype=torch.float32, device=gather_device)
        if first + rank < len(starts):
            pred = chunk(first + rank).float()
            mine[:pred.numel()] = pred.to(gather_device)
        gathered = [torch.empty_like(mine) for _ in range(world_size)] if rank == 0 else None
        torch.distributed.gather(mine, gathered, dst=0)
        if rank == 0:
            for r, part in enumerate(gathered):
                if first + r < len(starts):
                    start = starts[first + r]
                    stop = min(total, start + chunk_points)
                    out[start:stop] = part[:stop - start].cpu().numpy()
        bar.update(1)
    bar.close()
    model.train(was_training)
    return out.reshape(nz, ny, nx) if out is not None else None
