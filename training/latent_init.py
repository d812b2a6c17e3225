"""Starting a latent-grid network (``model.latent_grid``) from a Laplacian pyramid of the volume
instead of zeros, so that training refines a working coder rather than discovering one.

The pyramid is built coarse to fine and closed-loop: level l holds the box average of what the
coarser levels (already rounded) leave unexplained, divided by the level's step

    s_l = s * 2^(-alpha l)        (l = 0 the finest level),

and the linear skip path of the synthesis starts at weight s_l on level l's first channel, so the
untrained network decodes sum_l s_l U_l(round(y_l)): a crude wavelet coder. High-rate theory for
trilinear basis functions whose energy grows 8x per level asks for alpha = 1.5; the closed loop
lets the finer levels fix the coarser levels' errors, so a smaller alpha is the default. The
global s is bisected so that the factorized Laplace rate of the rounded latents is the target.
The MLP's last layer starts small, so it adds to the skip path instead of replacing it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from neurcomp.model.latent_grid import LatentGrid


def _pyramid(volume: torch.Tensor, shapes, steps) -> list[torch.Tensor]:
    """Latents (unrounded) of every level, finest first, from the (1, 1, Z, Y, X) volume."""
    residual = volume.clone()
    out = [None] * len(shapes)
    for level in range(len(shapes) - 1, -1, -1):
        y = F.adaptive_avg_pool3d(residual, shapes[level]) / steps[level]
        out[level] = y
        up = F.interpolate(torch.round(y) * steps[level], size=tuple(volume.shape[2:]), mode="trilinear",
                           align_corners=True)
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


def _bisect(v, shapes, levels: int, alpha: float, target_bits: float) -> float:
    """The step s whose pyramid's factorized rate is ``target_bits``."""
    lo, hi = math.log(1e-5), math.log(4.0)  # log s: small steps cost many bits
    for _ in range(18):
        mid = 0.5 * (lo + hi)
        steps = [math.exp(mid) * 2.0 ** (-alpha * level) for level in range(levels)]
        if _factorized_bits(_pyramid(v, shapes, steps)) > target_bits:
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
            latents = _pyramid(v, shapes, [step * 2.0 ** (-alpha * level) for level in range(model.levels)])
            _set_latents(model, latents)
        return latents

    with torch.no_grad():
        s = _bisect(v, shapes, model.levels, alpha, target_bits)
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
            s = math.exp(points[-1][0] + (math.log(target_bits) - points[-1][1]) / slope)
        start(s)
        _fit_entropy_model(model, context_steps)
    else:
        start(s)
    steps = [s * 2.0 ** (-alpha * level) for level in range(model.levels)]
    with torch.no_grad():
        model.skip.weight.zero_()
        for level in range(model.levels):
            model.skip.weight[0, level * model.channels] = steps[level]
        model.skip.bias.zero_()
        last = model.synthesis[-1]
        last.weight.mul_(0.01)
        last.bias.zero_()
    return s
