"""The trilinear kernel shared by the native and brick samplers: gather 8 corners, weight in float32.

Voxel i of n sits at -1 + 2 i / (n - 1) (as in ``model.inference``). Gathering by integer index
lets the volume stay in its stored dtype (or in bricks) while the arithmetic is float32; the
finite-difference gradients (targets of the ``grad_lambda`` loss) come from the corners' neighbours,
so they cost no memory.
"""

from __future__ import annotations

import numpy as np
import torch


def torch_storage(array: np.ndarray) -> torch.Tensor:
    """CPU tensor sharing ``array``'s bytes (uint16 as int16 bits: torch cannot index uint16)."""
    array = np.ascontiguousarray(array)
    if array.dtype == np.uint16:
        array = array.view(np.int16)
    return torch.from_numpy(array)


def take(flat: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """flat[index] for any index shape (index_select: much faster than advanced indexing on the CPU)."""
    return flat.index_select(0, index.reshape(-1)).reshape(index.shape)


def _corner_offsets(device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(cx, cy, cz), each (8, 1): corner k has offsets (k & 1, k >> 1 & 1, k >> 2)."""
    k = torch.arange(8, device=device)
    return (k & 1)[:, None], ((k >> 1) & 1)[:, None], (k >> 2)[:, None]


def trilinear(fetch, i0: torch.Tensor, t: torch.Tensor, dims_xyz, with_gradients: bool) -> torch.Tensor:
    """Trilinear interpolation from gathered corner values: (n, 1), or (n, 4) with gradients.

    ``fetch(iz, iy, ix)`` returns normalised float32 values at integer voxel indices (broadcast
    (8, n) index tensors). ``i0`` (n, 3) is the lower corner (x, y, z) with 0 <= i0 <= dim - 2, ``t``
    (n, 3) the position in the cell. Gradients (per unit of normalised coordinate) are the trilinear
    interpolation of central differences, one-sided at the border, like ``torch.gradient``.
    """
    ix, iy, iz = i0[:, 0], i0[:, 1], i0[:, 2]
    tx, ty, tz = t[:, 0], t[:, 1], t[:, 2]
    cx, cy, cz = _corner_offsets(i0.device)
    X, Y, Z = ix + cx, iy + cy, iz + cz  # (8, n)
    if with_gradients:
        nx, ny, nz = dims_xyz
        nbx = torch.where(cx == 0, (ix - 1).clamp(min=0), (ix + 2).clamp(max=nx - 1))
        nby = torch.where(cy == 0, (iy - 1).clamp(min=0), (iy + 2).clamp(max=ny - 1))
        nbz = torch.where(cz == 0, (iz - 1).clamp(min=0), (iz + 2).clamp(max=nz - 1))
        vals = fetch(torch.cat([Z, Z, Z, nbz]), torch.cat([Y, Y, nby, Y]), torch.cat([X, nbx, X, X]))
        v, vnx, vny, vnz = vals.split(8)
    else:
        v = fetch(Z, Y, X)
    w = (torch.where(cx == 1, tx, 1.0 - tx) * torch.where(cy == 1, ty, 1.0 - ty)
         * torch.where(cz == 1, tz, 1.0 - tz))  # (8, n)
    value = (w * v).sum(0)
    if not with_gradients:
        return value[:, None]
    k = torch.arange(8, device=i0.device)
    out = [value]
    for axis, (c, i, nb, n, vn) in enumerate(((cx, ix, nbx, nx, vnx), (cy, iy, nby, ny, vny), (cz, iz, nbz, nz, vnz))):
        partner = v.index_select(0, k ^ (1 << axis))  # the corner across the cell along this axis
        diff = torch.where(c == 0, partner - vn, vn - partner)
        steps = torch.where(c == 0, (i + 1) - nb, nb - i).to(v.dtype)  # 2 inside, 1 at the border
        out.append((w * diff / steps).sum(0) * ((n - 1) / 2.0))  # per voxel -> per normalised unit
    return torch.stack(out, dim=1)

