"""What every pruning method provides: per-layer gates and a loss.

A *gate* sits on one layer's neurons (``n`` of them) and multiplies them by a factor:

* ``position = "pre"``: the factor multiplies the layer's pre-activation ``W x + b`` (Smallify's
  switches); pruning folds it into the rows of that layer's weight and bias.
* ``position = "post"``: the factor multiplies the sine's output (binary masks, variational
  dropout); pruning folds it into the columns of the layers that read those neurons.

In eval mode a gate is deterministic: ``factor = scale() * keep_mask()``, never noise, so the
masked network computes exactly what the pruned network computes. ``keep_mask()`` never keeps
zero neurons: when the method's test would remove every neuron of a layer, the strongest one
(``strength()``) is kept and ``forced_keep`` says so.
"""

from __future__ import annotations

import torch
from torch import nn

# Gate parameters are stored as raw / GATE_PARAM_SCALE: Adam moves every parameter by at most
# about lr per step whatever the gradient's size, so a gate (whose values are O(1)) would move
# ~100x more slowly, relative to its size, than the SIREN weights (O(0.01)). The scale lets the
# gates traverse their range within a few hundred steps at the learning rates Neurcomp uses
# (1e-4 .. 1e-3); it changes only the speed, not where the loss balances.
GATE_PARAM_SCALE = 30.0


class Gate(nn.Module):
    """Multiplies ``n`` neurons by a learned factor; subclasses define the factor and the test."""

    position = "post"
    histogram_name = "gate"

    def __init__(self, n: int, param_scale: float = GATE_PARAM_SCALE):
        super().__init__()
        self.n = int(n)
        self.param_scale = float(param_scale)

    # -- what subclasses provide -----------------------------------------------------------------
    def raw_keep(self) -> torch.Tensor:
        """The method's own test: bool (n,), True = keep."""
        raise NotImplementedError

    def scale(self) -> torch.Tensor:
        """Deterministic factor of the kept neurons (folded into the weights when pruning)."""
        raise NotImplementedError

    def strength(self) -> torch.Tensor:
        """Larger = more important; used to keep one neuron when the test would remove all."""
        raise NotImplementedError

    def train_factor(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Factor used in training mode (may be stochastic); broadcastable to ``x``."""
        return self.eval_factor()

    def penalty(self) -> dict[str, torch.Tensor]:
        """Unweighted per-gate loss terms, summed over the neurons (the method weights them)."""
        return {}

    def histograms(self) -> dict[str, torch.Tensor]:
        """Values to log as histograms (betas, masks, log alpha ...)."""
        return {}

    def after_step(self, step: int) -> None:
        """Bookkeeping after an optimizer step (Smallify's sign-variance tracker)."""

    # -- shared ----------------------------------------------------------------------------------
    def keep_info(self) -> tuple[torch.Tensor, bool]:
        """(keep mask, forced): the raw test, or just the strongest neuron if it removes them all."""
        with torch.no_grad():
            keep = self.raw_keep().bool()
            if bool(keep.any()):
                return keep, False
            forced = torch.zeros_like(keep)
            forced[int(torch.argmax(self.strength()))] = True
            return forced, True

    def keep_mask(self) -> torch.Tensor:
        """``keep_info()``'s mask, decided on the device: every training step's forward calls it,
        and asking the host whether any neuron is kept would synchronise with the GPU each time."""
        with torch.no_grad():
            return keep_or_strongest(self.raw_keep().bool(), self.strength())

    def eval_factor(self) -> torch.Tensor:
        return self.scale() * self.keep_mask().to(self.scale().dtype)

    def factor(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.train_factor(x, generator) if self.training else self.eval_factor()

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return x * self.factor(x, generator)

    def extra_repr(self) -> str:
        return f"n={self.n}, position={self.position}"


def keep_or_strongest(keep: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
    """``keep``, or only the strongest neuron when ``keep`` is all False; no host synchronisation."""
    strongest = torch.zeros_like(keep).scatter_(0, torch.argmax(strength).reshape(1), True)
    return torch.where(keep.any(), keep, strongest)


def weight_l1(net: nn.Module) -> torch.Tensor:
    """Sum of |w| over every weight and bias of the network's linear layers."""
    return sum(p.abs().sum() for p in net.parameters())


class PruningMethod:
    """A pruning family: makes the gates and the regularisation loss.

    ``loss(model, step)`` returns the terms added to the data loss; ``data_loss`` may replace the
    mean squared error (variational methods use a Gaussian likelihood); ``after_step`` runs after
    every optimizer step. ``model`` is a ``model.pruning.prunable.PrunableNeurcomp``.
    """

    name = ""
    histogram_name = "gate"
    Options = None  # the method's own option group: a dataclass of config.fields.option fields

    def __init__(self, cfg, dataset_size: int = 1, param_scale: float = GATE_PARAM_SCALE):
        self.cfg = cfg  # config.options.PruningConfig: technique and the options methods share
        self.opts = cfg.options(self.Options) if self.Options is not None else None
        self.dataset_size = max(1, int(dataset_size))
        self.param_scale = float(param_scale)

    def make_gate(self, n: int, position: str) -> Gate:
        """``position`` is "inner" (a layer's own neurons) or "stream" (the shared residual width)."""
        raise NotImplementedError

    def aux_modules(self, arch) -> dict[str, nn.Module]:
        """Extra trainable modules the loss needs (trained with the network, dropped at pruning)."""
        return {}

    def loss(self, model, step: int) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def data_loss(self, model, coords: torch.Tensor, pred: torch.Tensor, targets: torch.Tensor):
        """Replacement for the MSE data term, or None to keep the MSE."""
        return None

    def after_step(self, model, step: int) -> None:
        for gate in model.all_gates():
            gate.after_step(step)

    def describe(self) -> dict:
        return {"technique": self.name}
