"""Random training samples drawn on the device, targets by trilinear interpolation.

The volume lives on the training device as a (1, C, Z, Y, X) tensor; each step draws uniform
positions in [-1, 1]^3 with a device-side generator and interpolates with ``grid_sample``
(align_corners=True: voxel i of n sits at -1 + 2 i / (n - 1), as in ``training.inference``).
No DataLoader workers, no per-sample Python.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


class VolumeSampler:
    """Draws (coords, targets[, target_gradients]) batches from a normalised volume on ``device``.

    With ``with_gradients`` the finite-difference gradient of the volume (central differences,
    one-sided at the border, per unit of normalised coordinate) is interpolated as well; value and
    gradient share one ``grid_sample`` call.
    """

    def __init__(self, normalized_zyx: np.ndarray | torch.Tensor, device: torch.device | str,
                 seed: int = 0, with_gradients: bool = False):
        self.device = torch.device(device)
        vol = torch.as_tensor(np.asarray(normalized_zyx, dtype=np.float32), device=self.device)
        channels = [vol]
        if with_gradients:
            # d/d(normalised coord) = d/d(voxel) * (n - 1) / 2 along each axis
            spacing = [2.0 / (n - 1) for n in vol.shape]  # z, y, x
            gz, gy, gx = torch.gradient(vol, spacing=spacing)
            channels += [gx, gy, gz]  # same (x, y, z) order as the coordinates
        self.grid = torch.stack(channels)[None].contiguous()  # (1, C, Z, Y, X)
        self.with_gradients = with_gradients
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    def interpolate(self, coords: torch.Tensor) -> torch.Tensor:
        """Trilinear interpolation at (N, 3) coordinates (x, y, z) in [-1, 1]: (N, C)."""
        g = coords.reshape(1, -1, 1, 1, 3)
        out = F.grid_sample(self.grid, g, mode="bilinear", padding_mode="border", align_corners=True)
        return out.reshape(self.grid.shape[1], -1).t()

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """n uniform positions, their values (n, 1) and, if enabled, gradients (n, 3)."""
        coords = torch.rand(n, 3, device=self.device, generator=self.generator) * 2.0 - 1.0
        vals = self.interpolate(coords)
        grads = vals[:, 1:4] if self.with_gradients else None
        return coords, vals[:, :1], grads

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
