"""Variational dropout with learned drop rates (Kingma, Salimans, Welling 2015, "Variational Dropout
and the Local Reparameterization Trick", NeurIPS; Molchanov, Ashukha, Vetrov 2017, "Variational
Dropout Sparsifies Deep Neural Networks", ICML).

Every gated neuron's sine output is multiplied by Gaussian noise (Kingma et al. Eq. 11-12):

    y = x (theta + sigma eps),  eps ~ N(0, 1),  alpha = sigma^2 / theta^2,  p = alpha / (1 + alpha),

with ``log alpha = log sigma^2 - log theta^2`` clamped to [-10, 10] (p in [4.5e-5, 0.99995]) so
every term below stays finite when p reaches 0 or 1. eps is drawn per point and per neuron, the
per-example ("local") noise Kingma et al. show gives low-variance gradients; it is not shared
across the batch. The KL divergence to the log-uniform prior uses Molchanov et al.'s fit (Eq. 14):

    KL(alpha) ~ k1 - k1 sigmoid(k2 + k3 log alpha) + 0.5 log(1 + 1/alpha),
    k1 = 0.63576, k2 = 1.87320, k3 = 1.48695.

The loss is the negative evidence lower bound per voxel (N = number of voxels):

    L = mean_points NLL + (w(step) sum KL + lambda_weight sum |W| + lambda_entropy sum H(p)) / N,
    NLL = 0.5 exp(-2 s) (f(x) - v)^2 + s,          w(step) = lambda_dkl (1 + dkl_multiplier)^step,

where s is the log standard deviation of the Gaussian likelihood: the fixed ``variational_sigma``
(``variational_static``, alias ``variational``) or predicted per point by a small sine network
started at ``variational_sigma`` (``variational_dynamic``; clamped to [-9, 3]; trained with the
network and dropped when pruning). H(p) = -p log p - (1 - p) log(1 - p) is minimised, pushing each
p toward 0 or 1 (the original maximised it, which pushes toward 0.5 and could produce NaN).

Evaluation is deterministic: y = x theta for neurons with p < ``pruning_threshold``, 0 for the
others. Pruning removes the latter and folds theta into the columns of the next layer.

Options (``VariationalOptions`` below; defaults are the original parser's) and sensible ranges:

* ``variational_threshold`` (the original's ``pruning_threshold``): drop rate p at or above which a
  neuron is removed, 0.5..0.95 (original: 0.9, i.e. log alpha >= 2.2).
* ``variational_sigma``: log sigma of the likelihood, -7..-1 (original: -2.5). Lower = the data
  term weighs more (exp(-2 s) / 2 per squared error) = less pruning.
* ``variational_init_droprate``: p at the start, 0.01..0.5 (original: 0.1).
* ``variational_lambda_dkl``: KL weight at step 0 (original: 3); it grows by
  (1 + ``variational_dkl_multiplier``) per step, 0..1e-4 (original: 5e-5 static, 6e-5 dynamic).
  With the per-voxel normalisation above, 3 prunes nothing in ~1000-step runs; 3e3 removed up to
  ~10% of the inner neurons and 3e4 about half on the volumes we tried, useful range 1e2..1e5.
  Training under the multiplicative noise costs PSNR by itself (benchmarks/pruning_bench.py).
* ``variational_lambda_weight``: weight of the L1 prior on weights, 0..10 (original: 1).
* ``variational_lambda_entropy``: weight of the entropy term, 0..10 (original: 1).
* ``lambda_betas``, ``lambda_weights``: unused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from neurcomp.config.fields import between, finite, non_negative, option
from neurcomp.model.pruning import register_pruning
from neurcomp.model.pruning.base import GATE_PARAM_SCALE, Gate, PruningMethod, weight_l1

K1, K2, K3 = 0.63576, 1.87320, 1.48695
LOG_ALPHA_CLAMP = 10.0
LOG_SIGMA_RANGE = (-9.0, 3.0)  # dynamic likelihood: log sigma per point
MAX_KL_GROWTH_EXPONENT = 30.0  # (1 + m)^step is capped at e^30


def kl_approx(log_alpha: torch.Tensor) -> torch.Tensor:
    """Molchanov et al. 2017 Eq. 14, per neuron; finite for any finite log alpha."""
    return K1 - K1 * torch.sigmoid(K2 + K3 * log_alpha) + 0.5 * F.softplus(-log_alpha)


def drop_entropy(log_alpha: torch.Tensor) -> torch.Tensor:
    """H(p) with p = sigmoid(log alpha), in nats, computed with log-sigmoids (no log 0)."""
    p = torch.sigmoid(log_alpha)
    return -(p * F.logsigmoid(log_alpha) + (1 - p) * F.logsigmoid(-log_alpha))


class VariationalGate(Gate):
    histogram_name = "log_alpha"
    position = "post"

    def __init__(self, n: int, init_droprate: float, threshold: float, param_scale: float = GATE_PARAM_SCALE):
        super().__init__(n, param_scale)
        self.threshold = float(threshold)
        alpha0 = init_droprate / (1.0 - init_droprate)
        # theta is an ordinary weight (the next layer's weights can absorb it): no speed-up
        self.theta_raw = nn.Parameter(torch.ones(n))
        self.log_sigma2_raw = nn.Parameter(torch.full((n,), math.log(alpha0) / self.param_scale))

    @property
    def theta(self) -> torch.Tensor:
        return self.theta_raw

    @property
    def log_sigma2(self) -> torch.Tensor:
        return self.log_sigma2_raw * self.param_scale

    def log_alpha(self) -> torch.Tensor:
        la = self.log_sigma2 - torch.log(self.theta ** 2 + 1e-8)
        return torch.clamp(la, -LOG_ALPHA_CLAMP, LOG_ALPHA_CLAMP)

    def drop_rate(self) -> torch.Tensor:
        return torch.sigmoid(self.log_alpha())

    def raw_keep(self) -> torch.Tensor:
        return self.drop_rate() < self.threshold

    def scale(self) -> torch.Tensor:
        return self.theta

    def strength(self) -> torch.Tensor:
        return -self.log_alpha().detach()

    def train_factor(self, x, generator=None) -> torch.Tensor:
        eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        sigma = torch.exp(0.5 * torch.clamp(self.log_sigma2, max=2 * LOG_ALPHA_CLAMP))
        return self.theta + sigma * eps

    def penalty(self) -> dict[str, torch.Tensor]:
        la = self.log_alpha()
        return {"kl": kl_approx(la).sum(), "entropy": drop_entropy(la).sum()}

    def histograms(self) -> dict[str, torch.Tensor]:
        return {"log_alpha": self.log_alpha().detach(), "theta": self.theta.detach()}


class LogSigmaNet(nn.Module):
    """Per-point log sigma of the likelihood: sin(omega W1 x + b1) -> linear, started at ``init``."""

    def __init__(self, d_in: int, init: float, width: int = 16, omega_0: float = 5.0):
        super().__init__()
        self.omega_0 = omega_0
        self.hidden = nn.Linear(d_in, width)
        self.out = nn.Linear(width, 1)
        with torch.no_grad():
            self.hidden.weight.uniform_(-1.0 / d_in, 1.0 / d_in)
            self.out.weight.zero_()
            self.out.bias.fill_(init)

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        s = self.out(torch.sin(self.omega_0 * self.hidden(coords)))
        return torch.clamp(s, *LOG_SIGMA_RANGE)


@dataclass
class VariationalOptions:
    """Shared by variational_static (alias variational) and variational_dynamic."""

    GROUP = "pruning: variational"
    threshold: float = option(0.9, "variational: drop rate p at or above which a neuron is removed", type=float,
                              name="variational_threshold", aliases=("pruning_threshold",), check=between(0, 1),
                              original=0.9)
    sigma: float = option(0.0, "variational: log sigma of the Gaussian likelihood (static: fixed; dynamic: start)",
                          type=float, name="variational_sigma",
                          check=lambda v: None if finite(v) else "must be a finite number", original=0.0)
    init_droprate: float = option(0.5, "variational: initial drop rate p", type=float, name="variational_init_droprate",
                                  check=between(0, 1, open_lo=True, open_hi=True), original=0.5)
    dkl_multiplier: float = option(1e-8, "variational: the KL weight grows by (1 + this) per step", type=float,
                                   name="variational_dkl_multiplier", check=non_negative, original=1e-8)
    lambda_dkl: float = option(1e-5, "variational: weight of the KL term at step 0", type=float,
                               name="variational_lambda_dkl", check=non_negative, original=1e-5)
    lambda_weight: float = option(1e-5, "variational: weight of the weight L1 term", type=float,
                                  name="variational_lambda_weight", check=non_negative, original=1e-5)
    lambda_entropy: float = option(1e-5, "variational: weight of the drop-rate entropy term", type=float,
                                   name="variational_lambda_entropy", check=non_negative, original=1e-5)


class _Variational(PruningMethod):
    histogram_name = "log_alpha"
    dynamic = False
    Options = VariationalOptions

    def make_gate(self, n: int, position: str) -> Gate:
        return VariationalGate(n, self.opts.init_droprate, self.opts.threshold, param_scale=self.param_scale)

    def kl_weight(self, step: int) -> float:
        exponent = min(step * math.log1p(self.opts.dkl_multiplier), MAX_KL_GROWTH_EXPONENT)
        return self.opts.lambda_dkl * math.exp(exponent)

    def log_sigma(self, model, coords: torch.Tensor) -> torch.Tensor | float:
        return self.opts.sigma

    def data_loss(self, model, coords, pred, targets):
        s = self.log_sigma(model, coords)
        sq = (pred - targets) ** 2
        if not torch.is_tensor(s):
            return 0.5 * math.exp(-2.0 * s) * sq.mean() + s
        self._last_log_sigma = s.detach().mean()
        return (0.5 * torch.exp(-2.0 * s) * sq + s).mean()

    def loss(self, model, step: int):
        terms = [g.penalty() for g in model.all_gates()]
        kl = sum(t["kl"] for t in terms)
        entropy = sum(t["entropy"] for t in terms)
        w_l1 = weight_l1(model.net)
        w = self.kl_weight(step)
        o = self.opts
        loss = (w * kl + o.lambda_weight * w_l1 + o.lambda_entropy * entropy) / self.dataset_size
        metrics = {"pruning_loss": loss.detach(), "kl": kl.detach(), "kl_weight": w,
                   "drop_entropy": entropy.detach(), "weight_l1": w_l1.detach()}
        if getattr(self, "_last_log_sigma", None) is not None:
            metrics["log_sigma_mean"] = self._last_log_sigma  # dynamic: mean predicted log sigma
        return loss, metrics


@register_pruning("variational_static", "variational")
class VariationalStatic(_Variational):
    name = "variational_static"


@register_pruning("variational_dynamic")
class VariationalDynamic(_Variational):
    name = "variational_dynamic"
    dynamic = True

    def aux_modules(self, arch) -> dict[str, nn.Module]:
        return {"log_sigma": LogSigmaNet(arch.d_in, self.opts.sigma)}

    def log_sigma(self, model, coords):
        return model.aux["log_sigma"](coords)
