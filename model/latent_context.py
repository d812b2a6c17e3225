"""A hierarchical context model for the latent grids of ``model.latent_grid``: the Laplace scale of
every latent of level l predicted from the already decoded coarser level l + 1.

Wavelet coders (SPIHT, SPECK, SPERR) gain most of their rate from the parent-child dependence of
detail magnitudes: where the coarse band is busy, the fine band is busy too. Here a tiny MLP shared
by all levels reads, for a latent at index (z, y, x) of level l, the 3 x 3 x 3 neighbourhood of its
parent (z // 2, y // 2, x // 2) in level l + 1 (all channels, zero outside the grid) and the
latent's parity (z % 2, y % 2, x % 2), and outputs the latent's log scale per channel:

    log b_{l,i} = g_phi(N(y_hat_{l+1}, parent(i)), parity(i)) + log b_l.

The mean stays 0 (see ``model.latent_grid``): a predicted mean between two integers is as
exploitable by the noise proxy as a trained one.

Every latent of a level depends only on the coarser level, so a decoder computes all of a level's
parameters at once and decodes the level with one vectorised ANS call; the coarsest level keeps the
factorized model (mu_l, log b_l). Cool-chic's ARM reads causal neighbours within the level instead,
which needs one decoding step per latent.

The decoder must compute bit-identical parameters, or ANS decodes garbage. The MLP therefore runs in
integers: int8 weights with a float32 step per layer, biases as integers in units of the layer's
accumulated step, inputs the integer latents. Every product and sum is an integer below 2^53, so the
float64 matrix products in ``integer_forward`` are exact whatever the BLAS summation order; the
output is one exact integer times one float64 constant. Training (``LatentContext.forward``) uses
the same quantized weights in float32, which differs from the file's values only by rounding.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

NEIGHBOURS = 27  # the parent's 3 x 3 x 3 neighbourhood
MAX_LOG_SCALE = 12.0  # exp(12) ~ 1.6e5: far beyond any latent's spread, and finite
MAX_BIAS_UNITS = 2 ** 30  # integer biases stay small enough for exact float64 sums
EXACT = 2.0 ** 52


def context_inputs(channels: int) -> int:
    return NEIGHBOURS * channels + 3


def _step(w: torch.Tensor, bits: int) -> torch.Tensor:
    return w.detach().abs().max().clamp(min=1e-12) / (2 ** (bits - 1) - 1)


def _fake_quantize(v: torch.Tensor, step: torch.Tensor, limit: float) -> torch.Tensor:
    return v + (torch.clamp(torch.round(v / step), -limit, limit) * step - v).detach()


class LatentContext(nn.Module):
    """g_phi: (27 C + 3) inputs, one hidden layer of ``hidden`` ReLU units, C outputs."""

    def __init__(self, channels: int, hidden: int, weight_bits: int = 8):
        super().__init__()
        self.channels, self.hidden, self.weight_bits = channels, hidden, weight_bits
        self.layers = nn.ModuleList([nn.Linear(context_inputs(channels), hidden), nn.Linear(hidden, channels)])
        with torch.no_grad():  # start as the factorized model: zero offsets
            self.layers[1].weight.mul_(0.01)
            self.layers[1].bias.zero_()

    def quantized_layers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Weights and biases as the file holds them (straight-through gradients)."""
        out, unit = [], None
        limit = 2 ** (self.weight_bits - 1) - 1
        for layer in self.layers:
            step = _step(layer.weight, self.weight_bits)
            unit = step if unit is None else unit * step
            out.append((_fake_quantize(layer.weight, step, limit), _fake_quantize(layer.bias, unit, MAX_BIAS_UNITS)))
        return out

    def forward(self, parent: torch.Tensor, child_shape) -> torch.Tensor:
        """The log b offsets (1, C, *child_shape) from the parent level (1, C, ...).

        The eight children of a parent voxel share its neighbourhood and differ only in parity, so
        the hidden layer's neighbourhood part is computed once per parent voxel and the parity's
        part once per parity class (the children z = pz + 2j, ...): the same function as the rows
        ``torch_features`` gives, for an eighth of the products and no gather (at 128^3 the rate's forward
        and backward went from 0.20 to 0.05 s)."""
        (w1, b1), (w2, b2) = self.quantized_layers()
        k = NEIGHBOURS * self.channels
        size = tuple(parent.shape[2:])
        nb = torch.cat(_shifted_neighbourhood(F.pad(parent, (1, 1, 1, 1, 1, 1)), size), dim=1)[0]
        per_parent = (w1[:, :k] @ nb.flatten(1)).view(-1, *size)  # (hidden, pz, py, px)
        out = parent.new_empty(self.channels, *child_shape)
        for parity in itertools.product(range(2), repeat=3):
            n = [(c - q + 1) // 2 for q, c in zip(parity, child_shape)]  # this class's children per axis
            if min(n) == 0:
                continue
            shift = w1[:, k:] @ parent.new_tensor(parity) + b1
            h = torch.relu(per_parent[:, :n[0], :n[1], :n[2]] + shift.view(-1, 1, 1, 1))
            out[:, parity[0]::2, parity[1]::2, parity[2]::2] = (
                torch.einsum("ch,hzyx->czyx", w2, h) + b2.view(-1, 1, 1, 1))
        return out.unsqueeze(0)

    # -- the file's integer form -----------------------------------------------------------------
    def integer_layers(self) -> list[tuple[float, np.ndarray, np.ndarray]]:
        """(step f32, int8 weights, int32 biases in units of the accumulated step) per layer."""
        out, unit = [], None
        limit = 2 ** (self.weight_bits - 1) - 1
        for layer in self.layers:
            w = layer.weight.detach().cpu().float()
            step = np.float32(float(_step(w, self.weight_bits)))
            unit = np.float64(step) if unit is None else unit * np.float64(step)
            q = np.clip(np.round(w.numpy() / step), -limit, limit).astype(np.int8)
            b = np.clip(np.round(layer.bias.detach().cpu().double().numpy() / unit), -MAX_BIAS_UNITS, MAX_BIAS_UNITS)
            out.append((float(step), q, b.astype(np.int32)))
        return out


def _shifted_neighbourhood(padded, size):
    pz, py, px = size
    return [padded[..., dz:dz + pz, dy:dy + py, dx:dx + px] for dz, dy, dx in itertools.product(range(3), repeat=3)]


def torch_features(parent: torch.Tensor, child_shape) -> torch.Tensor:
    """(child voxels, 27 C + 3) rows: the parent's neighbourhood (shift-major) and the parity."""
    size = tuple(parent.shape[2:])
    nb = torch.cat(_shifted_neighbourhood(F.pad(parent, (1, 1, 1, 1, 1, 1)), size), dim=1)[0]  # (27C, pz, py, px)
    idx = [torch.arange(n, device=parent.device) for n in child_shape]
    nb = nb[:, idx[0] // 2][:, :, idx[1] // 2][:, :, :, idx[2] // 2]
    parity = torch.stack(torch.meshgrid(*(i % 2 for i in idx), indexing="ij")).to(nb.dtype)
    return torch.cat([nb, parity], dim=0).flatten(1).t()


def numpy_features(parent: np.ndarray, child_shape) -> np.ndarray:
    """The same rows as ``torch_features`` from an integer parent (C, pz, py, px), as float64."""
    size = parent.shape[1:]
    padded = np.pad(parent.astype(np.float64), ((0, 0), (1, 1), (1, 1), (1, 1)))
    nb = np.stack(_shifted_neighbourhood(padded, size)).reshape(-1, *size)  # shift-major, as torch.cat
    iz, iy, ix = (np.arange(n) for n in child_shape)
    nb = nb[:, iz // 2][:, :, iy // 2][:, :, :, ix // 2]
    parity = np.stack(np.meshgrid(iz % 2, iy % 2, ix % 2, indexing="ij")).astype(np.float64)
    return np.concatenate([nb, parity], axis=0).reshape(nb.shape[0] + 3, -1).T


def integer_forward(layers, parent: np.ndarray, child_shape) -> np.ndarray:
    """The log b offsets (C, voxels) in float64, bit-identical wherever it runs."""
    h = numpy_features(parent, child_shape)
    unit = None
    for i, (step, q, b) in enumerate(layers):
        unit = np.float64(np.float32(step)) if unit is None else unit * np.float64(np.float32(step))
        h = h @ q.astype(np.float64).T + b.astype(np.float64)
        if np.abs(h).max(initial=0.0) >= EXACT:
            raise ValueError("latent context sums exceed float64's exact integers")
        if i < len(layers) - 1:
            h = np.maximum(h, 0.0)
    return (h * unit).T
