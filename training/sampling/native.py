"""The native-storage sampler: voxels resident in their stored dtype, corners decoded to float32 on use."""

from __future__ import annotations

import numpy as np
import torch

from neurcomp.training.sampling.dense import VolumeSampler
from neurcomp.training.sampling.trilinear import take, torch_storage, trilinear

NATIVE_DTYPES = ("uint8", "int8", "uint16", "int16", "float16", "float32")


class GatherSampler(VolumeSampler):
    """Shared by the native and brick samplers: normalise gathered raw values, trilinear in float32."""

    def _init_values(self, vmin: float, vmax: float, unsigned16: bool) -> None:
        if not vmax > vmin:
            raise ValueError(f"cannot normalise with an empty value range [{vmin}, {vmax}]")
        # the constants of data.volume.normalize, in float32, so values match the float32 path
        self._vmin = torch.tensor(np.float32(vmin), device=self.device)
        self._scale = torch.tensor(np.float32(2.0 / (float(vmax) - float(vmin))), device=self.device)
        self._unsigned16 = unsigned16
        self.vmin, self.vmax = float(vmin), float(vmax)

    def _decode(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw stored values -> normalised float32 in [-1, 1]."""
        if self._unsigned16:
            raw = raw.to(torch.int32) & 0xFFFF
        out = (raw.to(torch.float32) - self._vmin) * self._scale - 1.0
        return out.clamp_(-1.0, 1.0)

    def _cell(self, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Lower corner (n, 3) and position in the cell (n, 3) of (x, y, z) coordinates in [-1, 1]."""
        nz, ny, nx = self.shape
        n = torch.tensor([nx, ny, nz], device=coords.device)
        u = (coords.clamp(-1.0, 1.0) + 1.0) * 0.5 * (n - 1).to(coords.dtype)
        i0 = torch.minimum(u.floor().long(), n - 2)
        return i0, u - i0.to(u.dtype)


class NativeVolumeSampler(GatherSampler):
    """The volume resident on the device in its stored precision, interpolated in float32.

    ``values`` are physical values in the stored dtype (Z, Y, X); ``vmin``/``vmax`` map them to
    [-1, 1] exactly as ``data.volume.normalize`` does.
    """

    storage = "native"

    def __init__(self, values, vmin: float, vmax: float, device, seed: int = 0, with_gradients: bool = False):
        self.device = torch.device(device)
        array = np.asarray(values)
        if array.dtype.name not in NATIVE_DTYPES:
            raise ValueError(f"native storage holds {', '.join(NATIVE_DTYPES)}, not {array.dtype}")
        self.values = torch_storage(array).to(self.device).reshape(-1)
        self.shape = tuple(int(s) for s in array.shape)
        self.dtype = array.dtype
        self.with_gradients = with_gradients
        self._init_values(vmin, vmax, array.dtype == np.uint16)
        self._init_generator(seed)

    def _fetch(self, iz, iy, ix) -> torch.Tensor:
        _, ny, nx = self.shape
        return self._decode(take(self.values, (iz * ny + iy) * nx + ix))

    def interpolate(self, coords: torch.Tensor) -> torch.Tensor:
        i0, t = self._cell(coords.reshape(-1, 3))
        return trilinear(self._fetch, i0, t, self.shape[::-1], self.with_gradients)

    def resident_bytes(self) -> int:
        return self.values.numel() * self.values.element_size()

