"""Learned binary masks with a straight-through gradient (Bengio, Leonard, Courville 2013,
"Estimating or Propagating Gradients Through Stochastic Neurons for Conditional Computation",
arXiv:1308.3432; the straight-through estimator, their Sec. 4).

Every gated neuron has a score M; its soft mask is m = sigmoid(M) and the forward pass multiplies
the neuron's sine output by the hard mask

    h = [m >= t],   forward: y = x * h,   backward: dy/dM = x * dm/dM   (straight through),

implemented as ``h + (m - m.detach())`` (exactly h in value). The loss adds

    L = MSE + lambda_betas * sum m + lambda_weights * sum |W| (weights and biases).

Pruning removes exactly the neurons the forward pass switches off, [sigmoid(M) >= t] false (the
original code tested |M| when pruning and sigmoid(M) in the forward pass, so the two disagreed).
Kept neurons have mask 1, so nothing needs folding. A switched-off neuron still receives the
straight-through gradient and can come back while training goes on.

Options (``BinaryOptions`` below, plus the shared ``lambda_*``) and sensible ranges (loss in squared
normalised units, volume mapped to [-1, 1]):

* ``binary_threshold`` (the original's ``pruning_threshold``, which still sets it): t in (0, 1), the
  mask value below which a neuron is off; 0.5 (M >= 0) is the natural choice and our default. The
  original's 0.9 with its scores M ~ U(0, 1) (sigmoid(M) <= 0.73) switched every mask off. Scores
  start at M = logit(t) + 2, so every neuron starts on.
* ``lambda_betas``: price of one open mask in MSE units; 0 prunes nothing. Measured with
  ~1000-step prune phases at lr 1e-3 (benchmarks/pruning_bench.py): 1e-5 pruned nothing, 1e-4
  (experiment-config-files/pruning_binary.txt) a quarter to a half of the inner neurons, 1e-3 all
  but 1..6 per block; useful range 1e-5..1e-3.
* ``lambda_weights``: L1 on weights and biases, 0..1e-5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from neurcomp.config.fields import between, option
from neurcomp.model.pruning import register_pruning
from neurcomp.model.pruning.base import GATE_PARAM_SCALE, Gate, PruningMethod, weight_l1

INIT_MARGIN = 2.0  # initial score: logit(threshold) + INIT_MARGIN


class BinaryGate(Gate):
    histogram_name = "masks"
    position = "post"

    def __init__(self, n: int, threshold: float, param_scale: float = GATE_PARAM_SCALE):
        super().__init__(n, param_scale)
        self.threshold = float(threshold)
        t = min(max(self.threshold, 1e-6), 1 - 1e-6)
        init = math.log(t / (1 - t)) + INIT_MARGIN
        self.score_raw = nn.Parameter(torch.full((n,), init / self.param_scale))

    @property
    def score(self) -> torch.Tensor:
        return self.score_raw * self.param_scale

    def soft_mask(self) -> torch.Tensor:
        return torch.sigmoid(self.score)

    def raw_keep(self) -> torch.Tensor:
        return self.soft_mask() >= self.threshold

    def scale(self) -> torch.Tensor:
        return torch.ones(self.n, device=self.score_raw.device, dtype=self.score_raw.dtype)

    def strength(self) -> torch.Tensor:
        return self.score.detach()

    def train_factor(self, x, generator=None) -> torch.Tensor:
        m = self.soft_mask()
        hard = self.keep_mask().to(m.dtype)
        return hard + (m - m.detach())  # value: exactly the hard mask; gradient: through m

    def penalty(self) -> dict[str, torch.Tensor]:
        return {"mask_sum": self.soft_mask().sum()}

    def histograms(self) -> dict[str, torch.Tensor]:
        return {"masks": self.soft_mask().detach(), "scores": self.score.detach()}


@dataclass
class BinaryOptions:
    GROUP = "pruning: binary"
    threshold: float = option(0.5, "binary: mask value sigmoid(M) below which a neuron is off", type=float,
                              name="binary_threshold", aliases=("pruning_threshold",), check=between(0, 1),
                              original=0.9, deviation="0.9 switched every mask off at the start (M ~ U(0, 1)); "
                              "0.5 is M >= 0. An original config's pruning_threshold still applies")


@register_pruning("binary")
class BinaryMask(PruningMethod):
    name = "binary"
    histogram_name = "masks"
    Options = BinaryOptions

    def make_gate(self, n: int, position: str) -> Gate:
        return BinaryGate(n, self.opts.threshold, param_scale=self.param_scale)

    def loss(self, model, step: int):
        masks = sum(g.penalty()["mask_sum"] for g in model.all_gates())
        w_l1 = weight_l1(model.net)
        loss = self.cfg.lambda_betas * masks + self.cfg.lambda_weights * w_l1
        return loss, {"pruning_loss": loss.detach(), "mask_sum": masks.detach(), "weight_l1": w_l1.detach()}
