"""A Neurcomp network with pruning gates, and its shrinking into a plain (smaller) Neurcomp.

Gates go where the original research code put them: on the inner width of every residual block
(the first sine layer and the residual stream are left alone), or on every hidden sine layer of a
plain SIREN. Optionally (``prune_residual_width``) one more gate acts on the shared residual width:
it multiplies the residual stream wherever it is written (first sine layer and every block's
residual branch, one factor per forward pass), so the stream is x = s * u throughout and s folds
into the columns of every layer reading the stream.

``prune()`` slices the removed neurons' rows and columns out of the linear layers and folds the
gates' deterministic factors (Smallify's betas, variational theta) into the weights. Before any
fine-tuning, the pruned network computes the same function as this one in eval mode.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from neurcomp.model.architecture import Architecture, count_parameters
from neurcomp.model.neurcomp import Neurcomp
from neurcomp.model.random_state import generator_state, reseed_value, restore_generator


@dataclass
class LayerPruning:
    name: str
    before: int
    after: int
    forced_keep: bool = False  # every neuron failed the test; the strongest one was kept

    @property
    def kept_fraction(self) -> float:
        return self.after / self.before if self.before else 1.0

    def to_dict(self) -> dict:
        return {**asdict(self), "kept_fraction": self.kept_fraction}


@dataclass
class PruningReport:
    technique: str
    architecture_before: Architecture
    architecture_after: Architecture
    layers: list[LayerPruning] = field(default_factory=list)

    @property
    def num_parameters_before(self) -> int:
        return count_parameters(self.architecture_before)

    @property
    def num_parameters_after(self) -> int:
        return count_parameters(self.architecture_after)

    @property
    def messages(self) -> list[str]:
        return [f"{layer.name}: the pruning test removed all {layer.before} neurons; kept the strongest one"
                for layer in self.layers if layer.forced_keep]

    def to_dict(self) -> dict:
        return {"technique": self.technique,
                "num_parameters_before_pruning": self.num_parameters_before,
                "num_parameters_after_pruning": self.num_parameters_after,
                "network_layer_sizes_before_pruning": self.architecture_before.layer_sizes(),
                "network_layer_sizes_after_pruning": self.architecture_after.layer_sizes(),
                "layers": [layer.to_dict() for layer in self.layers],
                "messages": self.messages}

    def summary(self) -> str:
        parts = [f"{layer.name} {layer.before}->{layer.after}" for layer in self.layers]
        return (f"{self.technique}: {', '.join(parts)}; parameters {self.num_parameters_before} -> "
                f"{self.num_parameters_after}")


class PruningRegularizer:
    """The ``training.trainer.Regularizer`` of a PrunableNeurcomp: the method's loss terms."""

    def __init__(self, method):
        self.method = method

    def loss(self, model, step: int):
        return self.method.loss(model, step)

    def after_step(self, model, step: int) -> None:
        self.method.after_step(model, step)

    def data_loss(self, model, coords, pred, targets):
        return self.method.data_loss(model, coords, pred, targets)


class PrunableNeurcomp(nn.Module):
    """``net`` (a Neurcomp, holding all weights) plus one gate per gated layer."""

    def __init__(self, arch: Architecture, method, prune_residual_width: bool = False, seed: int = 0,
                 net: Neurcomp | None = None):
        super().__init__()
        self.net = net if net is not None else Neurcomp(arch)
        arch = self.net.arch
        if arch.residual and arch.n_layers < 2 and not prune_residual_width:
            raise ValueError(f"a residual network with n_layers = {arch.n_layers} has no residual block: "
                             "no layer to prune (use n_layers >= 2 or a plain SIREN)")
        self.method = method
        gated = arch.widths[1:] if arch.residual else arch.widths
        self.gates = nn.ModuleList(method.make_gate(n, "inner") for n in gated)
        self.stream_gate = (method.make_gate(arch.widths[0], "stream")
                            if arch.residual and prune_residual_width else None)
        self.aux = nn.ModuleDict(method.aux_modules(arch))
        self.regularizer = PruningRegularizer(method)
        self.noise_seed = int(seed)
        self._start_seed = self.noise_seed  # where the noise stream starts (a resume may move it)
        self._generator: torch.Generator | None = None
        self._pending_noise_state: dict | None = None

    # -- structure ---------------------------------------------------------------------------------
    @property
    def arch(self) -> Architecture:
        return self.net.arch

    @property
    def prune_residual_width(self) -> bool:
        return self.stream_gate is not None

    def all_gates(self) -> list:
        return list(self.gates) + ([self.stream_gate] if self.stream_gate is not None else [])

    def gate_names(self) -> list[str]:
        if self.arch.residual:
            names = [f"block{i + 1}_inner" for i in range(len(self.gates))]
        else:
            names = [f"layer{i}" for i in range(len(self.gates))]
        return names + (["residual_width"] if self.stream_gate is not None else [])

    def named_gates(self):
        return list(zip(self.gate_names(), self.all_gates()))

    def live_neurons(self) -> dict[str, int]:
        return {name: int(g.keep_mask().sum()) for name, g in self.named_gates()}

    # -- noise (variational) ------------------------------------------------------------------------
    def generator(self, device: torch.device) -> torch.Generator:
        if self._generator is None or self._generator.device != torch.device(device):
            self._generator = torch.Generator(device=device)
            self._generator.manual_seed(self._start_seed)
            if self._pending_noise_state is not None:
                saved = self._pending_noise_state
                restore_generator(self._generator, saved["generator"], saved.get("device_type"),
                                  self._start_seed, "variational noise")
                self._pending_noise_state = None
        return self._generator

    def noise_state(self) -> dict | None:
        """The noise generator's state and device type (None before any noise was drawn)."""
        return generator_state(self._generator) if self._generator is not None else self._pending_noise_state

    def load_noise_state(self, state, step: int = 0) -> None:
        """Continue the noise stream of a checkpoint. ``state`` None (a rank the checkpoint has no
        state for) or a state from another device type restarts it from the seed and ``step``."""
        self._generator = None
        if torch.is_tensor(state):  # checkpoints before the device type was stored
            state = {"generator": state, "device_type": None}
        self._pending_noise_state = state
        self._start_seed = reseed_value(self.noise_seed, step)

    # -- forward -------------------------------------------------------------------------------------
    @staticmethod
    def _gated_sine(linear: nn.Linear, omega_0: float, x: torch.Tensor, gate, gen) -> torch.Tensor:
        z = linear(x)
        if gate.position == "pre":
            z = gate(z, gen)
        h = torch.sin(omega_0 * z)
        if gate.position == "post":
            h = gate(h, gen)
        return h

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        net, arch = self.net, self.net.arch
        gen = self.generator(coords.device) if self.training else None
        if not arch.residual:
            x = coords
            for layer, gate in zip(net.hidden, self.gates):
                x = self._gated_sine(layer.linear, layer.omega_0, x, gate, gen)
            return net.output(x)
        first = net.hidden[0]
        x = torch.sin(first.omega_0 * first.linear(coords))
        s = self.stream_gate.factor(x, gen) if self.stream_gate is not None else None
        if s is not None:
            x = x * s
        for block, gate in zip(net.hidden[1:], self.gates):
            h = self._gated_sine(block.linear_1, block.omega_0, block.in_scale * x, gate, gen)
            r = torch.sin(block.omega_0 * block.linear_2(h))
            if s is not None:
                r = r * s
            x = block.out_scale * (x + r)
        return net.output(x)

    # -- shrinking -------------------------------------------------------------------------------
    @torch.no_grad()
    def prune(self) -> tuple[Neurcomp, PruningReport]:
        """(plain Neurcomp without the removed neurons, gates folded in; report)."""
        arch, net = self.arch, self.net
        infos = [g.keep_info() for g in self.gates]
        keeps = [k for k, _ in infos]
        scales = [g.scale().detach() for g in self.gates]
        layers = [LayerPruning(name, g.n, int(k.sum()), forced)
                  for name, g, (k, forced) in zip(self.gate_names(), self.gates, infos)]
        if arch.residual:
            if self.stream_gate is not None:
                sk, forced = self.stream_gate.keep_info()
                ss = self.stream_gate.scale().detach()[sk]
                layers.append(LayerPruning("residual_width", arch.widths[0], int(sk.sum()), forced))
            else:
                sk = torch.ones(arch.widths[0], dtype=torch.bool, device=net.output.weight.device)
                ss = None
            widths = [int(sk.sum())] + [int(k.sum()) for k in keeps]
        else:
            widths = [int(k.sum()) for k in keeps]
        new_arch = Architecture(widths=widths, residual=arch.residual, d_in=arch.d_in, d_out=arch.d_out,
                                omega_0=arch.omega_0)
        new = Neurcomp(new_arch).to(net.output.weight.device, net.output.weight.dtype)

        def put(dst: nn.Linear, weight: torch.Tensor, bias: torch.Tensor) -> None:
            dst.weight.copy_(weight)
            dst.bias.copy_(bias)

        if arch.residual:
            first = net.hidden[0].linear
            put(new.hidden[0].linear, first.weight[sk], first.bias[sk])
            for old_b, new_b, gate, k, sc in zip(net.hidden[1:], new.hidden[1:], self.gates, keeps, scales):
                w1, b1 = old_b.linear_1.weight[k][:, sk], old_b.linear_1.bias[k]
                if ss is not None:
                    w1 = w1 * ss[None, :]
                if gate.position == "pre":
                    w1, b1 = w1 * sc[k][:, None], b1 * sc[k]
                put(new_b.linear_1, w1, b1)
                w2 = old_b.linear_2.weight[sk][:, k]
                if gate.position == "post":
                    w2 = w2 * sc[k][None, :]
                put(new_b.linear_2, w2, old_b.linear_2.bias[sk])
            w_out = net.output.weight[:, sk]
            put(new.output, w_out * ss[None, :] if ss is not None else w_out, net.output.bias)
        else:
            prev_keep, prev_post = None, None
            for old_l, new_l, gate, k, sc in zip(net.hidden, new.hidden, self.gates, keeps, scales):
                w, b = old_l.linear.weight[k], old_l.linear.bias[k]
                if prev_keep is not None:
                    w = w[:, prev_keep]
                    if prev_post is not None:
                        w = w * prev_post[None, :]
                if gate.position == "pre":
                    w, b = w * sc[k][:, None], b * sc[k]
                put(new_l.linear, w, b)
                prev_keep, prev_post = k, (sc[k] if gate.position == "post" else None)
            w_out = net.output.weight[:, prev_keep]
            put(new.output, w_out * prev_post[None, :] if prev_post is not None else w_out, net.output.bias)
        new.train(self.training)
        return new, PruningReport(self.method.name, arch, new_arch, layers)
