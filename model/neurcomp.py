"""SIREN layers and the Neurcomp network.

Sitzmann et al. 2020, "Implicit Neural Representations with Periodic Activation Functions":
    y = sin(omega_0 (W x + b)),
initialised so activations stay arcsine-distributed through depth:
    first layer W ~ U(-1/n_in, 1/n_in),   others W ~ U(-sqrt(6/n_in)/omega_0, sqrt(6/n_in)/omega_0).

Lu, Jiang, Berger 2021, "Compressive Neural Representations of Volumetric Scalar Fields"
(Neurcomp) stacks residual sine blocks  x -> a2 (x + sin(omega_0 W2 sin(omega_0 W1 (a1 x)))),
where a1 = 1/2 for every block after the first and a2 = 1/2 for the last one, keeping the
residual sum's magnitude bounded, and ends in a linear layer.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from neurcomp.model.architecture import Architecture


def siren_uniform_(linear: nn.Linear, omega_0: float, is_first: bool) -> None:
    """SIREN's weight initialisation (biases keep PyTorch's default U(-1/sqrt(n_in), 1/sqrt(n_in)))."""
    n_in = linear.in_features
    bound = 1.0 / n_in if is_first else math.sqrt(6.0 / n_in) / omega_0
    with torch.no_grad():
        linear.weight.uniform_(-bound, bound)


class SineLayer(nn.Module):
    """y = sin(omega_0 (W x + b))."""

    def __init__(self, in_features: int, out_features: int, omega_0: float = 30.0, is_first: bool = False):
        super().__init__()
        self.omega_0 = omega_0
        self.linear = nn.Linear(in_features, out_features)
        siren_uniform_(self.linear, omega_0, is_first)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(scaled_linear(x, self.linear, self.omega_0))

    def forward_with_cosines(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """(output, cos of the pre-activation): what ``input_gradient`` needs."""
        z = scaled_linear(x, self.linear, self.omega_0)
        return torch.sin(z), (torch.cos(z),)

    def input_gradient(self, grad_out: torch.Tensor, cosines: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """dL/dx from dL/dy:  (dL/dy * cos z) omega_0 W."""
        return (grad_out * cosines[0]) @ (self.linear.weight * self.omega_0)


def scaled_linear(x: torch.Tensor, linear: nn.Linear, scale: float) -> torch.Tensor:
    """scale * linear(x), computed by scaling the (small) weights instead of the (large) activations."""
    return F.linear(x, linear.weight * scale, linear.bias * scale)


class ResidualSineBlock(nn.Module):
    """x -> out_scale * (x + sin(omega_0 W2 sin(omega_0 W1 (in_scale x) + b1) + b2)); width w -> inner -> w."""

    def __init__(self, width: int, inner_width: int, omega_0: float = 30.0,
                 in_scale: float = 1.0, out_scale: float = 1.0):
        super().__init__()
        self.omega_0 = omega_0
        self.in_scale = in_scale
        self.out_scale = out_scale
        self.linear_1 = nn.Linear(width, inner_width)
        self.linear_2 = nn.Linear(inner_width, width)
        siren_uniform_(self.linear_1, omega_0, is_first=False)
        siren_uniform_(self.linear_2, omega_0, is_first=False)

    def inner(self, x: torch.Tensor) -> torch.Tensor:
        """Activation of the block's inner layer (where pruning acts)."""
        return torch.sin(F.linear(x, self.linear_1.weight * (self.omega_0 * self.in_scale),
                                  self.linear_1.bias * self.omega_0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x + torch.sin(scaled_linear(self.inner(x), self.linear_2, self.omega_0))
        return out if self.out_scale == 1.0 else self.out_scale * out

    def forward_with_cosines(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        z1 = F.linear(x, self.linear_1.weight * (self.omega_0 * self.in_scale), self.linear_1.bias * self.omega_0)
        z2 = scaled_linear(torch.sin(z1), self.linear_2, self.omega_0)
        out = x + torch.sin(z2)
        return (out if self.out_scale == 1.0 else self.out_scale * out), (torch.cos(z1), torch.cos(z2))

    def input_gradient(self, grad_out: torch.Tensor, cosines: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """dL/dx = a2 (g + ((g * cos z2) omega_0 W2 * cos z1) omega_0 a1 W1), g = dL/dy."""
        cos_1, cos_2 = cosines
        g = grad_out if self.out_scale == 1.0 else self.out_scale * grad_out
        g_inner = ((g * cos_2) @ (self.linear_2.weight * self.omega_0)) * cos_1
        return g + g_inner @ (self.linear_1.weight * (self.omega_0 * self.in_scale))


class Neurcomp(nn.Module):
    """Coordinates in [-1, 1]^d_in -> normalised value in about [-1, 1].

    Residual: SineLayer(d_in -> w), n_layers - 1 ResidualSineBlocks, Linear(w -> d_out).
    Plain (``residual=False``): one SineLayer per width (``2 n_layers - 1`` of them when sized by the
    ratio, as in the original) followed by Linear(-> d_out).
    """

    def __init__(self, arch: Architecture):
        super().__init__()
        self.arch = arch
        w, omega_0 = arch.widths, arch.omega_0
        layers: list[nn.Module] = [SineLayer(arch.d_in, w[0], omega_0, is_first=True)]
        if arch.residual:
            n_blocks = len(w) - 1
            for i, inner in enumerate(w[1:]):
                layers.append(ResidualSineBlock(w[0], inner, omega_0, in_scale=0.5 if i > 0 else 1.0,
                                                out_scale=0.5 if i == n_blocks - 1 else 1.0))
        else:
            layers += [SineLayer(a, b, omega_0) for a, b in zip(w[:-1], w[1:])]
        self.hidden = nn.ModuleList(layers)
        self.output = nn.Linear(w[-1] if not arch.residual else w[0], arch.d_out)
        siren_uniform_(self.output, omega_0, is_first=False)

    def forward(self, coords: torch.Tensor, input_gradient: bool = False):
        """Predictions (n, d_out); with ``input_gradient``, also d(sum of outputs)/d coords (n, d_in)."""
        if input_gradient:
            return self.value_and_input_gradient(coords)
        x = coords
        for layer in self.hidden:
            x = layer(x)
        return self.output(x)

    def value_and_input_gradient(self, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(predictions, d(sum of outputs)/d coords) with the reverse pass written out in tensor ops.

        The gradient loss needs the network's spatial gradient inside the loss. autograd.grad with
        create_graph=True gives it too, but as a double-backward graph that torch.compile cannot
        take; written out, it is a first-order function of the weights that autograd and the
        compiler differentiate like any other, with the same matrix products as the double
        backward (one more per layer) and the cosines of the pre-activations computed once.
        """
        x, saved = coords, []
        for layer in self.hidden:
            x, cosines = layer.forward_with_cosines(x)
            saved.append(cosines)
        pred = self.output(x)
        grad = self.output.weight.sum(0).expand_as(x)  # d(sum of outputs)/d x for the last features
        for layer, cosines in zip(reversed(self.hidden), reversed(saved)):
            grad = layer.input_gradient(grad, cosines)
        return pred, grad

    def start_at(self, value: float) -> None:
        """Set the output layer's bias to ``value`` (the data's normalised mean, ``lr = auto``): the
        untrained network then predicts the mean plus a small zero-mean ripple."""
        with torch.no_grad():
            self.output.bias.fill_(float(value))

    def linears(self) -> list[nn.Linear]:
        """Every linear layer in forward order (matches ``Architecture.linear_shapes``)."""
        return [m for m in self.modules() if isinstance(m, nn.Linear)]
