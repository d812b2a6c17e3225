"""Smallify switches (Leclerc, Vartak, Fernandez, Kraska, Madden 2018, "Smallify: Learning Network
Size while Training", arXiv:1806.03723).

Every gated neuron gets a switch beta multiplying its pre-activation,

    y = sin(omega_0 * beta * (W x + b)),

and the loss adds an L1 penalty on the switches and on the weights (their Eq. 2):

    L = MSE + lambda_betas * sum |beta| + lambda_weights * sum |W| (weights and biases).

The L1 pulls unimportant switches to zero, where the optimizer makes them flip sign. An
exponential moving average and variance of sign(beta) (Welford/Finch update with rate
``pruning_momentum`` = mu), per step:

    d = sign(beta) - m,   m <- m + mu d,   v <- (1 - mu) (v + mu d^2),

tracks that; a neuron whose sign variance v exceeds ``pruning_threshold`` is switched off for the
rest of training (as in the paper, pruning is permanent). A stable switch has v ~ 0, a switch
flipping every step has v ~ 1 - mu, so thresholds live in (0, 1).

Options and sensible ranges (loss in squared normalised units, volume mapped to [-1, 1]):

* ``lambda_betas``: price of one unit of |beta| in MSE units. 0 prunes nothing. Measured with
  ~1000-step prune phases at lr 1e-3 (benchmarks/pruning_bench.py): the original 1e-6 pruned
  nothing, 1e-4 about 20% and 1e-3 about half of the inner neurons; useful range 1e-5..1e-2.
* ``lambda_weights``: L1 on weights and biases, 0..1e-5 (original: 5e-6); it stops the weights
  growing to compensate for shrinking switches.
* ``smallify_momentum`` (the original's ``pruning_momentum``): mu, 0.01..0.1 (original configs:
  0.025): an averaging window of about 1/mu steps.
* ``smallify_threshold`` (the original's ``pruning_threshold``): sign variance above which a neuron
  is removed, 0.5..0.9 (original configs: 0.75).

Pruning folds each kept beta into its layer's weight rows and bias (beta (W x + b) = (beta W) x +
beta b), so the pruned network is a plain Neurcomp. On the shared residual width (optional) the
switch multiplies the residual stream instead, and is folded into the columns of the layers
reading it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from neurcomp.config.fields import between, non_negative, option
from neurcomp.model.pruning import register_pruning
from neurcomp.model.pruning.base import GATE_PARAM_SCALE, Gate, PruningMethod, keep_or_strongest, weight_l1


class SmallifyGate(Gate):
    histogram_name = "betas"

    def __init__(self, n: int, momentum: float, threshold: float, position: str = "pre",
                 param_scale: float = GATE_PARAM_SCALE):
        super().__init__(n, param_scale)
        self.position = position
        self.momentum = float(momentum)
        self.threshold = float(threshold)
        self.beta_raw = nn.Parameter(torch.full((n,), 1.0 / self.param_scale))
        self.register_buffer("sign_mean", torch.zeros(n))
        self.register_buffer("sign_var", torch.zeros(n))
        self.register_buffer("alive", torch.ones(n, dtype=torch.bool))
        self.register_buffer("tracked_steps", torch.zeros((), dtype=torch.long))

    @property
    def beta(self) -> torch.Tensor:
        return self.beta_raw * self.param_scale

    def raw_keep(self) -> torch.Tensor:
        return self.alive

    def scale(self) -> torch.Tensor:
        return self.beta

    def strength(self) -> torch.Tensor:
        return self.beta.detach().abs() - self.sign_var  # stable, large switches first

    def train_factor(self, x, generator=None) -> torch.Tensor:
        return self.beta * self.keep_mask().to(self.beta.dtype)

    def penalty(self) -> dict[str, torch.Tensor]:
        return {"betas_l1": self.beta.abs().sum()}

    def histograms(self) -> dict[str, torch.Tensor]:
        return {"betas": self.beta.detach(), "sign_variance": self.sign_var.detach()}

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        # every decision stays on the device (torch.where): this runs after every optimizer step
        sign = torch.where(self.beta >= 0, 1.0, -1.0)
        first = self.tracked_steps == 0  # the first tracked step starts the mean at the sign
        d = sign - self.sign_mean
        incr = self.momentum * d
        self.sign_mean.copy_(torch.where(first, sign, self.sign_mean + incr))
        self.sign_var.copy_(torch.where(first, self.sign_var, (1.0 - self.momentum) * (self.sign_var + d * incr)))
        self.tracked_steps += 1
        # keep the strongest one alive in training as well
        self.alive.copy_(keep_or_strongest(self.alive & (self.sign_var <= self.threshold), self.strength()))


@dataclass
class SmallifyOptions:
    GROUP = "pruning: smallify"
    momentum: float = option(0.02, "smallify: rate mu of the sign mean and variance moving averages", type=float,
                             name="smallify_momentum", aliases=("pruning_momentum",), check=between(0, 1),
                             original=0.02)
    threshold: float = option(0.9, "smallify: sign variance above which a neuron is removed", type=float,
                              name="smallify_threshold", aliases=("pruning_threshold",), check=non_negative,
                              original=0.9)


@register_pruning("smallify")
class Smallify(PruningMethod):
    name = "smallify"
    histogram_name = "betas"
    Options = SmallifyOptions

    def make_gate(self, n: int, position: str) -> Gate:
        return SmallifyGate(n, self.opts.momentum, self.opts.threshold,
                            position="pre" if position == "inner" else "post", param_scale=self.param_scale)

    def loss(self, model, step: int):
        betas = sum(g.penalty()["betas_l1"] for g in model.all_gates())
        w_l1 = weight_l1(model.net)
        loss = self.cfg.lambda_betas * betas + self.cfg.lambda_weights * w_l1
        return loss, {"pruning_loss": loss.detach(), "betas_l1": betas.detach(), "weight_l1": w_l1.detach()}
