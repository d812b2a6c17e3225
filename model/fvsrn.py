"""fV-SRN: a trainable latent grid feeding a small MLP (``network = fvsrn``).

Weiss, Hermüller, Westermann 2022, "fV-SRN: GPU-Accelerated Inference and Training of Scene
Representation Networks" (IEEE TVCG): a coarse grid of latent features, trilinearly interpolated at
the query point, carries most of the volume's detail, and a small MLP decodes it:

    f(x) = MLP([grid(x), x]),   grid(x) = trilinear interpolation of the C x G^3 latent grid at x.

Here the grid has C channels of G^3 cells spanning [-1, 1]^3 (cell centres at both ends, as the
voxels; ``torch.nn.functional.grid_sample`` with ``align_corners=True``) and a bias per channel;
the MLP has ``arch.widths`` hidden layers with SiLU (or SIREN sine) activations and a linear output.
The sizes follow from the parameter budget (``model.architecture.fvsrn_for_parameters``): one
hidden layer, SiLU. Sine trained better at width 34 (nucleon 41^3, 2000 steps: 40.3 dB against
38.1 dB) but stalled at width 13 (21.5 to 24.9 dB for any grid scale or lr tried, SiLU 29.8 dB),
so SiLU is the default; ``activation = "sine"`` stays available in the architecture.

The grid is a ``GridLayer``, an ``nn.Linear`` of shape (C, G^3) whose forward samples its weight
as a grid: the quantizer, the file format and the codebook fine-tuning see it as one more weight
matrix (k-means'd like any other), and ``linears()`` lists it second, after the MLP's first layer,
so the first and last linear layers stay the small ones the encoder stores unquantized.

Learning rate: Adam moves a parameter by about lr per step. The grid is stored as ``weight`` and
used as ``GRID_SCALE * weight``, so its cells move ``GRID_SCALE`` times faster than the MLP's
weights under one optimizer: the grid's own, higher learning rate without a second parameter group.
Measured on nucleon 41^3 (1000 steps, SiLU, two hidden layers): GRID_SCALE 10 against 1 gave
41.08 against 40.41 dB at lr 5e-3 and 40.95 against 40.23 dB at lr 2e-3. ``lr = auto``
(``auto_learning_rate``): 5e-3 for the MLP, scaled by sqrt(32 / width) above width 32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from neurcomp.model.architecture import FVSRN as FVSRN_NAME, Architecture
from neurcomp.model.neurcomp import Neurcomp, siren_uniform_

GRID_SCALE = 10.0  # the grid's effective learning rate is GRID_SCALE x lr (benchmarks: docs/rate_distortion.md)
GRID_INIT = 0.05  # initial grid values: uniform in [-GRID_INIT, GRID_INIT]


class GridLayer(nn.Linear):
    """A C x G^3 latent grid (stored as the weight of an (out=C, in=G^3) linear layer, plus a bias
    per channel), sampled trilinearly at coordinates (x, y, z) in [-1, 1]: (n, 3) -> (n, C)."""

    def __init__(self, grid: int, channels: int):
        super().__init__(grid ** 3, channels)
        self.grid, self.channels = int(grid), int(channels)
        with torch.no_grad():
            self.weight.uniform_(-GRID_INIT / GRID_SCALE, GRID_INIT / GRID_SCALE)
            self.bias.zero_()

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        g = self.grid
        volume = (self.weight * GRID_SCALE).reshape(1, self.channels, g, g, g)  # (1, C, Z, Y, X)
        sampled = F.grid_sample(volume, coords.reshape(1, -1, 1, 1, 3), mode="bilinear",
                                padding_mode="border", align_corners=True)  # (1, C, n, 1, 1)
        return sampled.reshape(self.channels, -1).t() + self.bias


class FVSRN(nn.Module):
    """Coordinates in [-1, 1]^3 -> normalised value: MLP([grid(x), x])."""

    def __init__(self, arch: Architecture):
        super().__init__()
        if arch.network != FVSRN_NAME or not arch.widths or arch.grid < 2 or arch.channels < 1:
            raise ValueError(f"not an fvsrn architecture: {arch}")
        if arch.activation not in ("silu", "sine"):
            raise ValueError(f"fvsrn activation must be silu or sine, not {arch.activation!r}")
        self.arch = arch
        w = arch.widths
        # registration order = linears() order = Architecture.linear_shapes(): first, grid, rest, output
        self.first = nn.Linear(arch.channels + arch.d_in, w[0])
        self.grid = GridLayer(arch.grid, arch.channels)
        self.rest = nn.ModuleList(nn.Linear(a, b) for a, b in zip(w[:-1], w[1:]))
        self.output = nn.Linear(w[-1], arch.d_out)
        self.sine = arch.activation == "sine"
        if self.sine:
            siren_uniform_(self.first, arch.omega_0, is_first=True)
            for lin in [*self.rest, self.output]:
                siren_uniform_(lin, arch.omega_0, is_first=False)

    def _act(self, x: torch.Tensor, lin: nn.Linear) -> torch.Tensor:
        if self.sine:
            return torch.sin(F.linear(x, lin.weight * self.arch.omega_0, lin.bias * self.arch.omega_0))
        return F.silu(lin(x))

    def forward(self, coords: torch.Tensor, input_gradient: bool = False):
        if input_gradient:
            raise NotImplementedError("network fvsrn has no input gradient (grad_lambda > 0 is refused)")
        x = self._act(torch.cat([self.grid(coords), coords], dim=1), self.first)
        for lin in self.rest:
            x = self._act(x, lin)
        return self.output(x)

    def start_at(self, value: float) -> None:
        """Set the output bias to ``value`` (``lr = auto``: the data's normalised mean)."""
        with torch.no_grad():
            self.output.bias.fill_(float(value))

    def linears(self) -> list[nn.Linear]:
        """Every weight/bias pair in ``Architecture.linear_shapes`` order (the grid second)."""
        return [self.first, self.grid, *self.rest, self.output]


def build_network(arch: Architecture) -> nn.Module:
    """The network ``arch`` describes: ``FVSRN`` or ``Neurcomp``, untrained."""
    return FVSRN(arch) if arch.network == FVSRN_NAME else Neurcomp(arch)


FVSRN_LR = 5e-3  # lr = auto for fvsrn: the MLP's Adam lr; the grid moves GRID_SCALE times faster


def auto_learning_rate(arch: Architecture) -> float:
    """``lr = auto`` for an fvsrn network: ``FVSRN_LR`` scaled down for wide MLPs (fan-in above 32)
    by sqrt(32 / fan_in), as Adam's per-step change of a pre-activation grows with its fan-in."""
    fan_in = max(arch.widths)
    return FVSRN_LR * min(1.0, math.sqrt(32.0 / fan_in))
