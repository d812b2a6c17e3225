"""Starting a latent-grid network (``model.latent_grid``) from a pyramid of the volume instead of
zeros, so that training refines a working coder rather than discovering one (the default start).

The pyramid is built coarse to fine and closed-loop: level l holds what the coarser levels
(already rounded) leave unexplained, in units of the level's step

    s_l = s * 2^(-alpha l)        (l = 0 the finest level),

as the least-squares cubic B-spline coefficients of that residual with the cubic upsampler (the
upsampler is separable, so its pseudo-inverse is three small per-axis ones), as its box average
with the trilinear one. The level's feature gain is s_l and the synthesis' linear skip path starts
at weight 1 on each level's first channel, so the untrained network decodes
sum_l s_l U_l(round(y_l)), a closed-loop spline pyramid coder, while the MLP and the skip path see
values of order one rather than latent counts of up to 10^3. The global s is bisected so that the
factorized Laplace rate of the rounded latents is the target (with a context model, a few secant
steps on the context's fitted rate follow). The MLP's last layer starts small, so it adds to the
skip path instead of replacing it.

Measured (docs/latent_grid.md, tenth round; 800-step fits at ratio 200): against zero latents,
+12.6 dB on the hydrogen crop (at ratio 100), +6.6 on viscous fingers t050 and +9.9 on nucleon (with
the warmup), +2.5 on neghip (without it); the
zero start had left the coarse levels almost ternary (max |y| of 1 to 6), the smooth part coarsely
quantized.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from neurcomp.model.latent_grid import LatentGrid


def _least_squares_cubic(residual: torch.Tensor, shape) -> torch.Tensor:
    """The level's cubic B-spline coefficients nearest (least squares) to ``residual``: the spline
    upsampler is separable, U = Mz (x) My (x) Mx, so its pseudo-inverse is the product of the axes'
    pseudo-inverses (three small matrix products, as the upsampling itself)."""
    from neurcomp.model.latent_grid import bspline_matrix

    out = residual.double()
    for axis, (n_in, n_out) in enumerate(zip(shape, residual.shape[2:])):
        pinv = torch.linalg.pinv(bspline_matrix(n_out, n_in).double())  # (n_in, n_out)
        out = torch.movedim(torch.tensordot(pinv, torch.movedim(out, 2 + axis, 0), dims=1), 0, 2 + axis)
    return out.float()


def _pyramid(volume: torch.Tensor, shapes, steps, model: LatentGrid | None = None) -> list[torch.Tensor]:
    """Latents (unrounded) of every level, finest first, from the (1, 1, Z, Y, X) volume. With the
    cubic upsampler a level holds the least-squares spline coefficients of the coarser levels'
    residual and is upsampled by the model's own spline; trilinear levels hold its box average."""
    cubic = model is not None and model.upsampler == "cubic"
    residual = volume.clone()
    out = [None] * len(shapes)
    for level in range(len(shapes) - 1, -1, -1):
        if tuple(shapes[level]) == tuple(volume.shape[2:]):  # a full-resolution level is not upsampled
            y = residual / steps[level]
            up = torch.round(y) * steps[level]
        elif cubic:
            y = _least_squares_cubic(residual, shapes[level]) / steps[level]
            up = model._cubic(torch.round(y) * steps[level], tuple(volume.shape[2:]))
        else:
            y = F.adaptive_avg_pool3d(residual, shapes[level]) / steps[level]
            up = F.interpolate(torch.round(y) * steps[level], size=tuple(volume.shape[2:]), mode="trilinear",
                               align_corners=True)
        out[level] = y
        residual = residual - up
    return out


def _factorized_bits(latents: list[torch.Tensor]) -> float:
    """Bits of the rounded latents under a zero-mean Laplace fitted per level (the entropy's stand-in)."""
    from neurcomp.model.latent_grid import MIN_SCALE, laplace_bits

    total = 0.0
    for y in latents:
        q = torch.round(y)
        total += float(laplace_bits(q, 0.0, q.abs().mean().clamp(min=MIN_SCALE)).sum())
    return total


MAX_START_LATENT = 2 ** 14  # half the file's int16 range: training moves latents a little further


def _steps(s: float, alpha: float, levels: int) -> list[float]:
    """s_l = s 2^(-alpha l), rounded to the f16 gains the file stores, so the start decodes as built."""
    return torch.tensor([max(s * 2.0 ** (-alpha * level), 2.0 ** -14) for level in range(levels)]).half().float().tolist()


def _bisect(v, shapes, levels: int, alpha: float, target_bits: float, model: LatentGrid | None = None) -> float:
    """The step s whose pyramid's factorized rate is ``target_bits``."""
    lo, hi = math.log(1e-5), math.log(4.0)  # log s: small steps cost many bits
    for _ in range(18):
        mid = 0.5 * (lo + hi)
        steps = _steps(math.exp(mid), alpha, levels)
        latents = _pyramid(v, shapes, steps, model)
        # too many bits, or latents beyond the file's 16-bit symbols (a smooth volume and a large
        # budget: the rate alone would shrink the steps to f16's floor)
        if _factorized_bits(latents) > target_bits or max(float(y.abs().max()) for y in latents) > MAX_START_LATENT:
            lo = mid
        else:
            hi = mid
    return math.exp(hi)


@torch.no_grad()
def _set_latents(model: LatentGrid, latents: list[torch.Tensor]) -> None:
    """The pyramid's latents on the first channel, the entropy model at their spread."""
    for p, y in zip(model.latents, latents):
        p.zero_()
        p[:, :1].copy_(y)
    for level, y in enumerate(latents):
        model.log_scale[level].fill_(math.log(max(float(torch.round(y).abs().mean()), 0.05)))


def _fit_entropy_model(model: LatentGrid, steps: int, lr: float = 1e-2) -> float:
    """Train the context and the per-level scale on the rounded latents' rate alone;
    returns the rate (bits) they reach."""
    params = [model.log_scale, *model.context.parameters()]
    optimizer = torch.optim.Adam(params, lr=lr)
    y_hat = [torch.round(y.detach()) for y in model.latents]
    for _ in range(steps):
        bits = model.rate_bits(y_hat)
        optimizer.zero_grad(set_to_none=True)
        bits.backward()
        optimizer.step()
    with torch.no_grad():
        return float(model.rate_bits(y_hat))


def pyramid_init(model: LatentGrid, volume: torch.Tensor, target_bits: float, alpha: float = 1.0,
                 context_steps: int = 100, rounds: int = 4) -> float:
    """Set ``model``'s latents, skip path and entropy model from the pyramid of ``volume`` (values
    normalised to [-1, 1], shape (Z, Y, X)) at the rate ``target_bits``; returns the step s.
    With a context model, ``rounds`` secant steps on log s against the log of the fitted context's
    rate (``context_steps`` Adam steps per evaluation, warm-started; 0 rounds: the factorized rate)."""
    if model.skip is None:
        raise ValueError("the pyramid initialisation needs the synthesis' linear skip path")
    shapes = [tuple(p.shape[2:]) for p in model.latents]
    v = volume.reshape(1, 1, *model.shape).float()

    def start(step: float) -> list[torch.Tensor]:
        with torch.no_grad():
            latents = _pyramid(v, shapes, _steps(step, alpha, model.levels), model)
            _set_latents(model, latents)
        return latents

    with torch.no_grad():
        s = _bisect(v, shapes, model.levels, alpha, target_bits, model)
        # the latents grow as 1 / s: the smallest step that keeps them within MAX_START_LATENT
        floor = s * max(float(y.abs().max()) for y in _pyramid(v, shapes, _steps(s, alpha, model.levels), model)) \
            / MAX_START_LATENT
    if model.context is not None and rounds > 0:
        # the context only saves bits, so the factorized s lands under the target: walk to smaller steps
        points = []
        for _ in range(rounds):
            start(s)
            points.append((math.log(s), math.log(max(_fit_entropy_model(model, context_steps), 1.0))))
            if abs(points[-1][1] - math.log(target_bits)) < 0.01:
                break
            if len(points) == 1:
                slope = -0.9  # log R against log s, about -1 (measured on neghip and viscous fingers)
            else:
                (x0, y0), (x1, y1) = points[-2], points[-1]
                slope = (y1 - y0) / (x1 - x0) if abs(x1 - x0) > 1e-6 else -0.9
                slope = min(-0.2, max(-3.0, slope))
            s = max(math.exp(points[-1][0] + (math.log(target_bits) - points[-1][1]) / slope), floor)
        start(s)
        _fit_entropy_model(model, context_steps)
    else:
        start(s)
    with torch.no_grad():
        model.feature_gain.copy_(torch.tensor(_steps(s, alpha, model.levels)).repeat_interleave(model.channels))
        model.skip.weight.zero_()
        model.skip.weight[0, ::model.channels] = 1.0
        model.skip.bias.zero_()
        last = model.synthesis[-1]
        last.weight.mul_(0.01)
        last.bias.zero_()
    return s
