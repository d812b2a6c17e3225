"""Structured Bayesian pruning with log-normal multiplicative noise (Neklyudov, Molchanov, Ashukha,
Vetrov 2017, "Structured Bayesian Pruning via Log-Normal Multiplicative Noise", NeurIPS).

Every gated neuron's sine output is multiplied by noise theta = exp(phi) whose log follows a normal
distribution truncated to [a, b], with the prior on theta log-uniform truncated to
the same interval, i.e. phi ~ U[a, b]:

    q(phi) = N(phi | mu, sigma^2) restricted to [a, b],   alpha = (a - mu) / sigma,  beta = (b - mu) / sigma,
    Z = Phi(beta) - Phi(alpha)         (Phi, phi: standard normal CDF and density).

Training samples phi per point and per neuron by the reparameterisation trick (inverse CDF):
phi = mu + sigma Phi^-1(Phi(alpha) + u Z), u ~ U(0, 1). The KL divergence to the prior is
the negative entropy of the truncated normal plus log(b - a), always >= 0:

    KL = log(b - a) - log(sqrt(2 pi e) sigma) - log Z - (alpha phi(alpha) - beta phi(beta)) / (2 Z).

The loss is the negative evidence lower bound per voxel (N voxels), as for variational dropout:

    L = mean_points [0.5 exp(-2 s) (f(x) - v)^2 + s] + (lambda_dkl sum KL + lambda_weight sum |W|) / N,

with s = ``sbp_sigma`` the fixed log standard deviation of the Gaussian likelihood. A neuron is kept
while its signal-to-noise ratio is above ``sbp_threshold``:

    E[theta]   = exp(mu + sigma^2 / 2) (Phi(beta - sigma) - Phi(alpha - sigma)) / Z,
    E[theta^2] = exp(2 mu + 2 sigma^2) (Phi(beta - 2 sigma) - Phi(alpha - 2 sigma)) / Z,
    SNR = E[theta] / sqrt(E[theta^2] - E[theta]^2).

Evaluation is deterministic, y = x E[theta] for kept neurons and 0 for the others; pruning folds
E[theta] into the columns of the next layer. Every Phi difference is taken in log space
(``log_phi_diff``) in float64, so the terms stay finite when the interval lies deep in a tail
(mu far outside [a, b], tiny sigma). As in the original code mu starts at 0 and is kept in
[a, b + 5] ([-20, 5] there), log sigma starts at -5 (kept in [-10, 5] here).

Options (``SBPOptions``; the original's names are accepted and set them) and sensible ranges:

* ``sbp_threshold``: SNR below which a neuron is removed, 1..10; the original fixed 4 (it ignored
  ``pruning_threshold``). A neuron at the prior (phi ~ U[-20, 0]) has SNR 0.3, one at the start
  (mu = b = 0, log sigma = -5) 247; with mu well inside the interval SNR ~ 1 / sigma.
* ``sbp_lambda_dkl`` (``variational_lambda_dkl``): KL weight, useful range 10..1e3 with
  ``sbp_sigma`` -2.5 (benchmarks/pruning_bench.py, 16 passes on viscous fingers t001: 3 removed
  none of the inner neurons, 30 6 %, 100 a third, 300 two thirds; 3e3 left 1..12 per block on the
  benchmark volumes). The original config's 0.8 with ``sbp_sigma`` -8.8 removes nothing.
* ``sbp_lambda_weight`` (``variational_lambda_weight``): weight of the L1 term on the weights.
* ``sbp_sigma`` (``variational_sigma``): log sigma of the likelihood; lower = the data term weighs
  more (exp(-2 s) / 2 per squared error) = less pruning. The original config used -8.8.
* ``sbp_log_min``, ``sbp_log_max``: the truncation interval [a, b] of log theta (original: [-20, 0]).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from neurcomp.config.errors import ConfigError
from neurcomp.config.fields import finite, non_negative, option, positive
from neurcomp.model.pruning import register_pruning
from neurcomp.model.pruning.base import GATE_PARAM_SCALE, Gate, PruningMethod, weight_l1

MU_ABOVE_B = 5.0  # mu is kept in [a, b + 5] (the original: [-20, 5] with b = 0)
LOG_SIGMA_RANGE = (-10.0, 5.0)
INIT_LOG_SIGMA = -5.0
LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
MATH = torch.float64  # the gate's own arithmetic (n values per layer, and the noise per point)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, accurate near 0 and for very negative x."""
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def left_tail(hi: torch.Tensor, lo: torch.Tensor):
    """(hi, lo, mirrored): the bounds reflected (x -> -x) where the interval lies mostly right of 0,
    so that both CDFs Phi(lo) < Phi(hi) are small and carry full precision."""
    right = (hi + lo) > 0
    return torch.where(right, -lo, hi), torch.where(right, -hi, lo), right


def log_phi_diff(hi: torch.Tensor, lo: torch.Tensor) -> torch.Tensor:
    """log(Phi(hi) - Phi(lo)) for hi > lo; Phi(hi) - Phi(lo) = Phi(-lo) - Phi(-hi) in the mirror."""
    h, low, _ = left_tail(hi, lo)
    log_h = torch.special.log_ndtr(h)
    return log_h + log1mexp(torch.clamp(torch.special.log_ndtr(low) - log_h, max=-1e-300))


def inverse_mills(x: torch.Tensor) -> torch.Tensor:
    """phi(x) / Phi(x) without dividing two underflowing numbers (erfcx is the scaled erfc) for
    x < 0, and without erfcx's overflow for x >= 0 (where Phi(x) >= 1/2)."""
    neg, pos = torch.clamp(x, max=0.0), torch.clamp(x, min=0.0)
    left = math.sqrt(2 / math.pi) / torch.special.erfcx(-neg / math.sqrt(2))
    right = torch.exp(-0.5 * pos * pos - LOG_SQRT_2PI - torch.special.log_ndtr(pos))
    return torch.where(x < 0, left, right)


def sbp_kl(mu, log_sigma, a: float, b: float) -> torch.Tensor:
    """KL(q(phi) || U[a, b]) per neuron (the paper's closed form). The entropy is reflection-invariant,
    so it is taken in the left tail, where phi(x) / Z = inverse_mills(x) Phi(x) / Z is exact even when
    Z underflows (mu far outside [a, b], tiny sigma)."""
    sigma = torch.exp(log_sigma)
    hi, lo, _ = left_tail((b - mu) / sigma, (a - mu) / sigma)
    log_hi = torch.special.log_ndtr(hi)
    d = torch.clamp(torch.special.log_ndtr(lo) - log_hi, max=-1e-300)  # log(Phi(lo) / Phi(hi))
    log_z, one_minus = log_hi + log1mexp(d), -torch.expm1(d)
    tails = (lo * inverse_mills(lo) * torch.exp(d) - hi * inverse_mills(hi)) / one_minus
    return math.log(b - a) - (LOG_SQRT_2PI + 0.5) - log_sigma - log_z - 0.5 * tails


def sbp_moments(mu, log_sigma, a: float, b: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(log E[theta], log SNR) per neuron (the paper's SNR)."""
    sigma = torch.exp(log_sigma)
    alpha, beta = (a - mu) / sigma, (b - mu) / sigma
    log_z = log_phi_diff(beta, alpha)
    d1 = log_phi_diff(beta - sigma, alpha - sigma)
    d2 = log_phi_diff(beta - 2 * sigma, alpha - 2 * sigma)
    log_mean = mu + 0.5 * sigma ** 2 + d1 - log_z
    r = sigma ** 2 + d2 + log_z - 2 * d1  # log(E[theta^2] / E[theta]^2) >= 0
    log_snr = -0.5 * torch.log(torch.expm1(torch.clamp(r, min=1e-30)))
    return log_mean, log_snr


def sample_truncated_normal(mu, sigma, a: float, b: float, u: torch.Tensor) -> torch.Tensor:
    """mu + sigma Phi^-1(Phi(alpha) + u Z), in the left tail (``left_tail``); a truncation interval
    beyond float64's CDF (both bounds below -37) is a point mass at its nearer end."""
    hi, lo, right = left_tail((b - mu) / sigma, (a - mu) / sigma)
    c_lo, c_hi = torch.special.ndtr(lo), torch.special.ndtr(hi)
    p = torch.clamp(c_lo + u * (c_hi - c_lo), torch.finfo(MATH).tiny, 1 - torch.finfo(MATH).eps)
    x = torch.where(c_hi > 0, torch.special.ndtri(torch.where(c_hi > 0, p, 0.5)), hi)
    x = torch.minimum(torch.maximum(x, lo), hi)
    return mu + sigma * torch.where(right, -x, x)


class SBPGate(Gate):
    histogram_name = "log_snr"
    position = "post"

    def __init__(self, n: int, threshold: float, log_min: float, log_max: float,
                 param_scale: float = GATE_PARAM_SCALE):
        super().__init__(n, param_scale)
        self.threshold, self.a, self.b = float(threshold), float(log_min), float(log_max)
        self.mu_raw = nn.Parameter(torch.full((n,), min(max(0.0, self.a), self.b) / self.param_scale))
        self.log_sigma_raw = nn.Parameter(torch.full((n,), INIT_LOG_SIGMA / self.param_scale))

    def params64(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, log sigma) in float64, inside their ranges."""
        mu = torch.clamp(self.mu_raw.to(MATH) * self.param_scale, self.a, self.b + MU_ABOVE_B)
        return mu, torch.clamp(self.log_sigma_raw.to(MATH) * self.param_scale, *LOG_SIGMA_RANGE)

    def moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        return sbp_moments(*self.params64(), self.a, self.b)

    def snr(self) -> torch.Tensor:
        return torch.exp(self.moments()[1])

    def raw_keep(self) -> torch.Tensor:
        return self.moments()[1] > math.log(self.threshold)

    def scale(self) -> torch.Tensor:
        return torch.exp(self.moments()[0]).to(self.mu_raw.dtype)

    def strength(self) -> torch.Tensor:
        return self.moments()[1].detach()

    def train_factor(self, x, generator=None) -> torch.Tensor:
        mu, log_sigma = self.params64()
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=MATH)
        return torch.exp(sample_truncated_normal(mu, torch.exp(log_sigma), self.a, self.b, u)).to(x.dtype)

    def penalty(self) -> dict[str, torch.Tensor]:
        return {"kl": sbp_kl(*self.params64(), self.a, self.b).sum().to(self.mu_raw.dtype)}

    def histograms(self) -> dict[str, torch.Tensor]:
        mu, log_sigma = self.params64()
        return {"log_snr": self.strength().float(), "mu": mu.detach().float(), "log_sigma": log_sigma.detach().float()}

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        # projected steps: a parameter beyond its range would get no gradient from the clamps
        s = self.param_scale
        self.mu_raw.clamp_(self.a / s, (self.b + MU_ABOVE_B) / s)
        self.log_sigma_raw.clamp_(LOG_SIGMA_RANGE[0] / s, LOG_SIGMA_RANGE[1] / s)


def _finite(v):
    return None if finite(v) else "must be a finite number"


@dataclass
class SBPOptions:
    GROUP = "pruning: sbp_log_normal"
    threshold: float = option(4.0, "sbp_log_normal: signal-to-noise ratio E[theta]/std[theta] below which a "
                              "neuron is removed (the original fixed 4)", type=float, name="sbp_threshold",
                              check=positive)
    lambda_dkl: float = option(1e-5, "sbp_log_normal: weight of the KL term", type=float, name="sbp_lambda_dkl",
                               aliases=("variational_lambda_dkl",), check=non_negative, original=1e-5)
    lambda_weight: float = option(1e-5, "sbp_log_normal: weight of the weight L1 term", type=float,
                                  name="sbp_lambda_weight", aliases=("variational_lambda_weight",),
                                  check=non_negative, original=1e-5)
    sigma: float = option(0.0, "sbp_log_normal: log sigma of the Gaussian likelihood", type=float, name="sbp_sigma",
                          aliases=("variational_sigma",), check=_finite, original=0.0)
    log_min: float = option(-20.0, "sbp_log_normal: lower end a of the truncation interval of log theta",
                            type=float, name="sbp_log_min", check=_finite)
    log_max: float = option(0.0, "sbp_log_normal: upper end b of the truncation interval of log theta",
                            type=float, name="sbp_log_max", check=_finite)


@register_pruning("sbp_log_normal")
class SBPLogNormal(PruningMethod):
    name = "sbp_log_normal"
    histogram_name = "log_snr"
    Options = SBPOptions

    def __init__(self, cfg, dataset_size: int = 1, param_scale: float = GATE_PARAM_SCALE):
        super().__init__(cfg, dataset_size, param_scale)
        if not self.opts.log_min < self.opts.log_max:
            raise ConfigError(f"sbp_log_min = {self.opts.log_min:g} must be below sbp_log_max = "
                              f"{self.opts.log_max:g} (the truncation interval of log theta)")

    def make_gate(self, n: int, position: str) -> Gate:
        o = self.opts
        return SBPGate(n, o.threshold, o.log_min, o.log_max, param_scale=self.param_scale)

    def data_loss(self, model, coords, pred, targets):
        s = self.opts.sigma
        return 0.5 * math.exp(-2.0 * s) * ((pred - targets) ** 2).mean() + s

    def loss(self, model, step: int):
        kl = sum(g.penalty()["kl"] for g in model.all_gates())
        w_l1 = weight_l1(model.net)
        loss = (self.opts.lambda_dkl * kl + self.opts.lambda_weight * w_l1) / self.dataset_size
        return loss, {"pruning_loss": loss.detach(), "kl": kl.detach(), "weight_l1": w_l1.detach()}
