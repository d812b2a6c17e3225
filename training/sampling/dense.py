"""The float32 sampler: the normalised volume resident on the device, interpolated by ``grid_sample``."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from neurcomp.model.random_state import generator_state, reseed_value, restore_generator


class VolumeSampler:
    """Draws (coords, targets[, target_gradients]) batches from a normalised volume on ``device``.

    With ``with_gradients`` the finite-difference gradient of the volume (central differences,
    one-sided at the border, per unit of normalised coordinate) is interpolated as well; value and
    gradient share one ``grid_sample`` call.
    """

    storage = "float32"

    def __init__(self, normalized_zyx: np.ndarray | torch.Tensor, device: torch.device | str,
                 seed: int = 0, with_gradients: bool = False):
        self.device = torch.device(device)
        vol = torch.as_tensor(np.asarray(normalized_zyx, dtype=np.float32), device=self.device)
        nz, ny, nx = vol.shape
        self.grid = torch.empty((1, 4 if with_gradients else 1, nz, ny, nx), device=self.device)
        self.grid[0, 0] = vol
        if with_gradients:
            # d/d(normalised coord) = d/d(voxel) * (n - 1) / 2 along each axis; (x, y, z) channel order
            for channel, dim in ((1, 2), (2, 1), (3, 0)):
                n = vol.shape[dim]
                self.grid[0, channel] = torch.gradient(vol, spacing=2.0 / (n - 1), dim=dim)[0]
        del vol
        self.shape = (int(nz), int(ny), int(nx))
        self.with_gradients = with_gradients
        self._init_generator(seed)

    def _init_generator(self, seed: int) -> None:
        self.seed = int(seed)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(self.seed)

    # -- what subclasses change ----------------------------------------------------------------------
    def interpolate(self, coords: torch.Tensor) -> torch.Tensor:
        """Trilinear interpolation at (N, 3) coordinates (x, y, z) in [-1, 1]: (N, C)."""
        g = coords.reshape(1, -1, 1, 1, 3)
        out = F.grid_sample(self.grid, g, mode="bilinear", padding_mode="border", align_corners=True)
        return out.reshape(self.grid.shape[1], -1).t()

    def _draw(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """n uniform positions and their interpolated values (n, C)."""
        coords = torch.rand(n, 3, device=self.device, generator=self.generator) * 2.0 - 1.0
        return coords, self.interpolate(coords)

    def resident_bytes(self) -> int:
        """Device bytes holding the volume (values and, if any, gradient channels)."""
        return self.grid.numel() * self.grid.element_size()

    # -- the public API ------------------------------------------------------------------------------
    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """n uniform positions, their values (n, 1) and, if enabled, gradients (n, 3)."""
        coords, vals = self._draw(n)
        grads = vals[:, 1:4] if self.with_gradients else None
        return coords, vals[:, :1], grads

    def state_dict(self) -> dict:
        return generator_state(self.generator)

    def load_state_dict(self, state: dict, step: int = 0) -> None:
        """Restore the stream; a state from another device type restarts it from seed and ``step``."""
        self._load_generator(state, step)

    def _load_generator(self, state: dict, step: int) -> None:
        restore_generator(self.generator, state["generator"], state.get("device_type"),
                          reseed_value(self.seed, step), "sampler")

    def reseed(self, seed: int) -> None:
        """Restart the random stream from ``seed`` (a rank resuming without its own saved state)."""
        self.generator.manual_seed(int(seed))

