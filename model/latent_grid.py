"""A multi-resolution latent grid, a small synthesis MLP and a learned entropy model: the overfitted
neural codec of Cool-chic (Ladune, Philippe, Henry, Clare, Leguay, "COOL-CHIC: Coordinate-based Low
Complexity Hierarchical Image Codec", ICCV 2023) and C3 (Kim et al., CVPR 2024), for volumes.

The volume is the output of a synthesis MLP f_theta fed, at every voxel v, with the latents of L
3D grids y_l of C channels at 1, 1/2, 1/4, ... of the volume's resolution, each upsampled to the
voxel (trilinear, U_l) and concatenated:

    x_hat(v) = f_theta( [U_0(y_hat_0)(v), ..., U_{L-1}(y_hat_{L-1})(v)] ),   y_hat_l = round(y_l).

U_l is trilinear, or (``upsampler = "cubic"``) the separable uniform cubic B-spline,

    U(y)(x) = sum_k y[i - 1 + k] B_k(t),   i = floor(x), t = x - i,
    B_0 = (1 - t)^3 / 6, B_1 = (3t^3 - 6t^2 + 4) / 6, B_2 = (-3t^3 + 3t^2 + 3t + 1) / 6, B_3 = t^3 / 6,

along each axis (Unser, "Splines: a perfect fit for signal and image processing", IEEE SPM 1999):
its span holds every cubic polynomial (approximation order 4) where trilinear's holds linear ones
(order 2), so the latents being trained coefficients, a coarse level carries more of a smooth field,
as a wavelet with more vanishing moments does.

The coarse grids carry the smooth part compactly, as a wavelet coder's coarse bands do; the fine
grids only the detail that pays for its bits. The latents are integers in the file, so the step of
their quantization is 1 in latent units and the synthesis learns the scale: the same as a trained
step per level.

The rate is the latents' code length under a zero-mean Laplace model of scale b per level and
channel (trained), the probability of an integer being the density's mass over its bin:

    P(y_hat) = F(y_hat + 1/2) - F(y_hat - 1/2),   R = sum_l sum_i -log2 P(y_hat_{l,i}).

The mean is 0, not trained: with a trained mean the noise proxy is cheapest at a mean between two
integers (y = mu + u at no cost), where the rounded latents cost a bit each; on nucleon at ratio 200
the rate then never came down and the fit ended at 18 dB, where a zero mean reached 35.9 dB.

and training minimises D + lambda R / N (N voxels). While it trains, rounding is replaced by
additive uniform noise (Balle et al., "End-to-end optimized image compression", ICLR 2017), then by
rounding with a straight-through gradient. ``quantization.latent_format`` codes the integers with
constriction's ANS under exactly this model, so R is the file's size within a few bytes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from neurcomp.model.latent_context import MAX_LOG_SCALE, LatentContext

MIN_LEVEL_SIDE = 2  # the coarsest grid keeps at least 2 samples along its shortest axis
MIN_PROBABILITY = 2.0 ** -24  # constriction's smallest probability (24-bit precision): R never reaches inf
MAX_BITS = 24.0  # what a symbol at that probability costs
MIN_SCALE = 0.02  # Laplace scales below this code nearly every latent as its mean anyway
INIT_SCALE = 0.1  # zero latents start nearly free (0.0001 bit each), not at 1.4 bits


def level_shapes(shape: tuple[int, int, int], levels: int, finest: int = 0) -> list[tuple[int, int, int]]:
    """The grid of level l has ceil(n / 2^(finest + l)) samples along an axis of n voxels."""
    return [tuple(max(1, math.ceil(n / 2 ** (finest + level))) for n in shape) for level in range(levels)]


def default_levels(shape: tuple[int, int, int], finest: int = 0) -> int:
    """As many halvings as keep the coarsest grid at least MIN_LEVEL_SIDE along every axis."""
    levels = 1
    while min(math.ceil(n / 2 ** (finest + levels)) for n in shape) >= MIN_LEVEL_SIDE:
        levels += 1
    return levels


UPSAMPLERS = ("linear", "cubic")


def bspline_weights(t: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The uniform cubic B-spline's weights of the samples i-1, i, i+1, i+2 at i + t (0 <= t < 1)."""
    return ((1 - t) ** 3 / 6, (3 * t ** 3 - 6 * t ** 2 + 4) / 6, (-3 * t ** 3 + 3 * t ** 2 + 3 * t + 1) / 6, t ** 3 / 6)


def bspline_matrix(n_out: int, n_in: int) -> torch.Tensor:
    """(n_out, n_in): cubic B-spline upsampling along one axis, the samples beyond the ends
    replicated (the same as ``grid_sample``'s border padding)."""
    x = torch.arange(n_out, dtype=torch.float64) * ((n_in - 1) / max(n_out - 1, 1))  # align_corners: ends on ends
    i = torch.floor(x)
    rows = torch.arange(n_out)
    matrix = torch.zeros(n_out, n_in, dtype=torch.float64)
    for k, w in enumerate(bspline_weights(x - i)):
        matrix.index_put_((rows, (i.long() - 1 + k).clamp(0, n_in - 1)), w, accumulate=True)
    return matrix.float()


def quantize_latent(y: torch.Tensor, mode: str) -> torch.Tensor:
    """``noise``: y + U(-1/2, 1/2); ``ste``: round(y) with the identity's gradient; ``round``."""
    if mode == "noise":
        return y + torch.empty_like(y).uniform_(-0.5, 0.5)
    if mode == "ste":
        return y + (torch.round(y) - y).detach()
    if mode == "round":
        return torch.round(y)
    raise ValueError(f"quantization mode must be noise, ste or round, not {mode!r}")


def laplace_bits(y_hat: torch.Tensor, mu: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """-log2 P(y_hat) per element, P the Laplace(mu, scale) mass over [y_hat - 1/2, y_hat + 1/2].

    F(x) = 1/2 + 1/2 sign(x - mu) (1 - exp(-|x - mu| / b)). Outside the mode's bin (d = |y_hat - mu|
    >= 1/2) the mass is 1/2 exp(-(d - 1/2) / b) (1 - exp(-1 / b)), so its bits are written in the log
    domain, linear in d: an outlier keeps a gradient towards mu (a clamped probability gave it none,
    and a fit whose scale shrank left its outliers stranded at the clamp). The value reported is
    capped at the coder's 24-bit floor, what the file pays; the gradient is the uncapped one's."""
    d = (y_hat - mu).abs()
    tail = (torch.clamp(d - 0.5, min=0.0) / scale - torch.log1p(-torch.exp(-1.0 / scale))) / math.log(2) + 1.0
    # (0.5 - d) clamped: the branch not taken must not overflow, or its inf times 0 makes a NaN gradient
    mode_mass = 1.0 - 0.5 * torch.exp(-torch.clamp(0.5 - d, min=0.0) / scale) - 0.5 * torch.exp(-(d + 0.5) / scale)
    bits = torch.where(d < 0.5, -torch.log2(torch.clamp(mode_mass, min=MIN_PROBABILITY)), tail)
    return bits + (torch.clamp(bits, max=MAX_BITS) - bits).detach()


def fake_quantize_weight(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric uniform quantization at ``bits`` (step = max|w| / (2^(bits-1) - 1)), with the
    identity's gradient: the synthesis trains on the weights the file will hold."""
    levels = 2 ** (bits - 1) - 1
    step = w.detach().abs().max().clamp(min=1e-12) / levels
    return w + (torch.round(w / step) * step - w).detach()


class LatentGrid(nn.Module):
    """L latent grids of ``channels`` channels, a synthesis MLP of ``layers`` hidden layers of
    ``hidden`` units (ReLU), and the entropy model's log b per level and channel.

    Initialisation as in Cool-chic: latents at 0 (they cost nothing until the loss asks for them),
    the MLP with PyTorch's default (Kaiming-uniform) layers."""

    def __init__(self, shape: tuple[int, int, int], levels: int = 0, channels: int = 1, hidden: int = 16,
                 layers: int = 2, weight_bits: int = 8, finest: int = 0, context_hidden: int = 0,
                 skip: bool = False, upsampler: str = "linear"):
        super().__init__()
        if upsampler not in UPSAMPLERS:
            raise ValueError(f"latent-grid upsampler must be one of {UPSAMPLERS}, not {upsampler!r}")
        self.upsampler = upsampler
        self._matrices: dict = {}  # (level shape, output shape) -> the cubic upsampler's axis matrices
        self.shape = tuple(int(n) for n in shape)
        self.finest = finest  # the finest grid is 1 / 2^finest of the volume's resolution
        self.levels = levels or default_levels(self.shape, finest)
        self.channels, self.hidden, self.layers, self.weight_bits = channels, hidden, layers, weight_bits
        self.latents = nn.ParameterList(
            nn.Parameter(torch.zeros(1, channels, *s)) for s in level_shapes(self.shape, self.levels, finest))
        widths = [self.levels * channels] + [hidden] * layers + [1]
        self.synthesis = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        # a linear path from the features to the value, beside the MLP (f16 weights in the file)
        self.skip = nn.Linear(self.levels * channels, 1) if skip else None
        # the synthesis reads latent * gain: a pyramid start (training.latent_init) sets each level's gain
        # to its quantization step, so that the MLP and the skip path see values, not latent counts of
        # up to 10^3 that Adam's first steps would blow up (f16 in the file; ones: the plain network)
        self.register_buffer("feature_gain", torch.ones(self.levels * channels))
        self.log_scale = nn.Parameter(torch.full((self.levels, channels), math.log(INIT_SCALE)))
        self.quantized_weights = False  # set for the last phase of training, and by the decoder
        # 0: the factorized model; otherwise every level but the coarsest coded from its parent level
        self.context_hidden = context_hidden
        self.context = LatentContext(channels, context_hidden) if context_hidden and self.levels > 1 else None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints written before the gains existed hold none: theirs were ones
        state_dict.setdefault(prefix + "feature_gain", torch.ones_like(self.feature_gain))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- the latents and their rate --------------------------------------------------------------
    def quantized(self, mode: str) -> list[torch.Tensor]:
        return [quantize_latent(y, mode) for y in self.latents]

    def scales(self) -> torch.Tensor:
        return torch.exp(self.log_scale).clamp(min=MIN_SCALE)

    def laplace_scale(self, y_hat: list[torch.Tensor], level: int) -> torch.Tensor:
        """The Laplace scale of level ``level``'s latents (broadcastable to the level)."""
        log_b = self.log_scale[level].view(1, -1, 1, 1, 1)
        if self.context is not None and level < self.levels - 1:
            log_b = log_b + self.context(y_hat[level + 1], tuple(y_hat[level].shape[2:]))
        return torch.exp(torch.clamp(log_b, max=MAX_LOG_SCALE)).clamp(min=MIN_SCALE)

    def rate_bits(self, y_hat: list[torch.Tensor]) -> torch.Tensor:
        """The latents' code length in bits under the entropy model (a differentiable estimate)."""
        total = y_hat[0].new_zeros(())
        for level, y in enumerate(y_hat):
            total = total + laplace_bits(y, 0.0, self.laplace_scale(y_hat, level)).sum()
        return total

    # -- synthesis -------------------------------------------------------------------------------
    def features(self, y_hat: list[torch.Tensor], shape: tuple[int, int, int] | None = None) -> torch.Tensor:
        """Every level upsampled to ``shape`` (default: the volume's), as (voxels, L * C) rows."""
        shape = tuple(shape or self.shape)
        if self.upsampler == "cubic":
            grids = [y if tuple(y.shape[2:]) == shape else self._cubic(y, shape) for y in y_hat]
        else:
            grids = [y if tuple(y.shape[2:]) == shape else
                     F.interpolate(y, size=shape, mode="trilinear", align_corners=True) for y in y_hat]
        return torch.cat(grids, dim=1).flatten(2)[0].t()

    def _cubic(self, y: torch.Tensor, shape, rows=None) -> torch.Tensor:
        """One level upsampled to ``shape`` by the separable cubic B-spline: three small matrix
        products; ``rows`` (z, y, x index tensors) keeps only that sub-lattice of the output."""
        key = (tuple(y.shape[2:]), tuple(shape), y.device, y.dtype)
        if key not in self._matrices:
            self._matrices[key] = [bspline_matrix(o, i).to(y.device, y.dtype) for o, i in zip(shape, y.shape[2:])]
        mz, my, mx = self._matrices[key]
        if rows is not None:
            mz, my, mx = (m[r] for m, r in zip((mz, my, mx), rows))
        g = torch.einsum("zk,bckyx->bczyx", mz, y)
        g = torch.einsum("yl,bczlx->bczyx", my, g)
        return torch.einsum("xm,bczym->bczyx", mx, g)

    def features_on(self, y_hat: list[torch.Tensor], rows) -> torch.Tensor:
        """The rows of ``features(y_hat)`` on the sub-lattice ``rows`` (z, y, x index tensors), in C
        order, with the cubic upsampler: the product of the axes' sampled matrix rows costs the
        sample, not the volume (``training.latent_fit`` samples a step's voxels so)."""
        if self.upsampler != "cubic":
            raise ValueError("features_on needs the cubic upsampler (a separable one)")
        zs, ys, xs = rows
        grids = [y[:, :, zs][:, :, :, ys][..., xs] if tuple(y.shape[2:]) == self.shape else self._cubic(y, self.shape, rows)
                 for y in y_hat]
        return torch.cat(grids, dim=1).flatten(2)[0].t()

    def features_at(self, y_hat: list[torch.Tensor], index: torch.Tensor) -> torch.Tensor:
        """The rows of ``features(y_hat)`` at the flat voxel indices ``index``, interpolated at those
        voxels only: a training step on a sample of a large volume costs the sample, not the volume.

        ``grid_sample`` with align_corners maps -1 / +1 to a grid's first / last sample, as
        ``interpolate(align_corners=True)`` does, so one set of normalised coordinates serves every level."""
        if self.upsampler == "cubic":  # three matrix products over the volume, then the sample's rows: at
            # 128^3, 0.17 s forward and backward, where 64 samples (or 8 trilinear fetches) a point took 1.6 s.
            # Each level's rows are picked along its contiguous axis (index_select, whose backward is an
            # index_add), not from the concatenated (voxels, L * C) view: 0.20 -> 0.11-0.14 s at 128^3
            rows = [(y if tuple(y.shape[2:]) == self.shape else self._cubic(y, self.shape)).flatten(2)[0]
                    .index_select(1, index) for y in y_hat]
            return torch.cat(rows, dim=0).t()
        zyx = torch.stack(torch.unravel_index(index, self.shape), dim=-1).to(y_hat[0].dtype)
        extent = torch.tensor([max(n - 1, 1) for n in self.shape], dtype=zyx.dtype, device=zyx.device)
        grid = (2 * zyx / extent - 1).flip(-1).view(1, 1, 1, -1, 3)  # grid_sample wants (x, y, z)
        rows = [F.grid_sample(y, grid, mode="bilinear", align_corners=True).view(y.shape[1], -1) for y in y_hat]
        return torch.cat(rows, dim=0).t()

    def synthesize(self, feats: torch.Tensor) -> torch.Tensor:
        feats = feats * self.feature_gain
        h = feats
        for i, layer in enumerate(self.synthesis):
            if self.quantized_weights:
                h = F.linear(h, fake_quantize_weight(layer.weight, self.weight_bits), layer.bias)
            else:
                h = layer(h)
            if i < len(self.synthesis) - 1:
                h = torch.relu(h)
        if self.skip is not None:
            w, b = self.skip.weight, self.skip.bias
            if self.quantized_weights:  # the file's f16 values
                w, b = (v + (v.half().float() - v).detach() for v in (w, b))
            h = h + F.linear(feats, w, b)
        return h[:, 0]

    def forward(self, mode: str = "round", shape: tuple[int, int, int] | None = None) -> torch.Tensor:
        """The decoded volume (normalised values) on ``shape``, the latents quantized by ``mode``."""
        shape = tuple(shape or self.shape)
        return self.synthesize(self.features(self.quantized(mode), shape)).view(shape)

    def describe(self) -> dict:
        return {"network": "latent", "levels": self.levels, "channels": self.channels, "hidden": self.hidden,
                "layers": self.layers, "weight_bits": self.weight_bits, "finest": self.finest,
                "context_hidden": self.context_hidden if self.context is not None else 0,
                "skip": self.skip is not None, "upsampler": self.upsampler,
                "level_shapes": [list(y.shape[2:]) for y in self.latents]}
