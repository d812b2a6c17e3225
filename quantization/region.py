"""Decode a box of the grid, or sample the continuous field on another grid.

A network is a function of the coordinates, so a box costs only its own voxels: the box's
coordinates are the full grid's own (the same ``model.inference.axis`` values, indexed), the
corrections inside it are added (``quantization.bound.apply``), and the result equals the crop
of a full decode up to float rounding in the last bits of the inference (inside the bound's margin).
A resolution samples the same box with another number of points per axis; the spacing is scaled
so the box keeps its physical extent (grid points at the box's corner voxels, as the training grid).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from neurcomp.config.errors import InputError
from neurcomp.config.limits import machine_memory
from neurcomp.data.volume import VolumeInfo
from neurcomp.model.inference import CHUNK_POINTS, axis, flat_coordinates, use_full_float32

Box = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]  # (x0, x1), (y0, y1), (z0, z1), half-open


@dataclass
class Grid:
    """What to decode: a box in voxel indices and the number of samples per axis (x, y, z)."""

    box: Box
    samples: tuple[int, int, int]

    def native(self) -> bool:
        """One sample per voxel of the box: the file's own grid (corrections apply)."""
        return all(m == b - a for m, (a, b) in zip(self.samples, self.box))


def make_grid(shape_zyx, region=None, resolution=None, source: str = "--region") -> Grid:
    """Check ``region`` (X0 X1 Y0 Y1 Z0 Z1, ParaView's x-first order, half-open) and ``resolution``
    (X Y Z) against the volume; None means the whole grid / one sample per voxel."""
    sizes = tuple(int(n) for n in shape_zyx)[::-1]  # (X, Y, Z)
    if region is None:
        box = tuple((0, n) for n in sizes)
    else:
        r = [int(v) for v in region]
        if len(r) != 6:
            raise InputError(f"{source} {region}: needs six voxel indices X0 X1 Y0 Y1 Z0 Z1")
        box = ((r[0], r[1]), (r[2], r[3]), (r[4], r[5]))
        for name, (a, b), n in zip("XYZ", box, sizes):
            if not 0 <= a < b <= n:
                raise InputError(f"{source} {' '.join(map(str, r))}: {name} range [{a}, {b}) is empty or outside "
                                 f"the volume's 0..{n}")
    samples = tuple(b - a for a, b in box) if resolution is None else tuple(int(m) for m in resolution)
    if len(samples) != 3 or min(samples) < 1:
        raise InputError(f"--resolution {resolution}: needs three sample counts X Y Z >= 1")
    for name, (a, b), m in zip("XYZ", box, samples):
        if b - a == 1 and m > 1:
            raise InputError(f"--resolution {' '.join(map(str, samples))}: the box is one voxel wide along {name}, "
                             f"so it has no extent to sample {m} points on")
    memory = machine_memory()
    needed = 4 * int(np.prod(samples, dtype=np.float64))
    if memory is not None and needed > memory:
        raise InputError(f"--resolution {' '.join(map(str, samples))}: the output needs {needed / 2 ** 30:.1f} GiB, "
                         f"more than this machine's {memory / 2 ** 30:.1f} GiB")
    return Grid(box, samples)


def geometry(info: VolumeInfo, grid: Grid) -> tuple[tuple, tuple]:
    """(spacing, origin) of the decoded grid: the box's true origin, spacing scaled to keep its extent."""
    spacing, origin = [], []
    for s, o, (a, b), m in zip(info.spacing, info.origin, grid.box, grid.samples):
        origin.append(o + a * s)
        spacing.append(s * (b - 1 - a) / (m - 1) if m > 1 else s)
    return tuple(spacing), tuple(origin)


def grid_axes(shape_zyx, grid: Grid, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The (x, y, z) coordinate axes of the grid in [-1, 1]: the full grid's own values when native."""
    out = []
    for n, (a, b), m in zip(tuple(shape_zyx)[::-1], grid.box, grid.samples):
        full = axis(n, device)
        out.append(full[a:b] if m == b - a else torch.linspace(float(full[a]), float(full[b - 1]), m, device=device))
    return tuple(out)


@torch.no_grad()
def predict_grid(model: torch.nn.Module, info: VolumeInfo, grid: Grid, device=None,
                 chunk_points: int = CHUNK_POINTS) -> np.ndarray:
    """The network on ``grid`` in physical units, (Z, Y, X) float32; cost proportional to its points."""
    use_full_float32()
    device = device or next(model.parameters()).device
    axes = grid_axes(info.shape, grid, device)
    mx, my, mz = grid.samples
    total = mx * my * mz
    out = np.empty(total, dtype=np.float32)
    model.eval()
    for start in range(0, total, chunk_points):
        stop = min(total, start + chunk_points)
        pred = model(flat_coordinates(axes, start, stop)).reshape(-1)
        out[start:stop] = info.denormalize(pred).float().cpu().numpy()
    return out.reshape(mz, my, mx)
