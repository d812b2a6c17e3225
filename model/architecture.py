"""The shape of a Neurcomp network, its exact parameter count, and width selection.

Width selection follows the original code (Bussler/NeurcompCompression, ``compute_num_neurons``
and ``setup_neurcomp``): the width is the largest whose residual network stays under
``int(voxels / compression_ratio)`` parameters, never below 15; a plain network
(``dont_use_resnet``) gets ``2 n_layers - 1`` sine layers of that width, about as many layers as
the residual one has linear maps, and the same parameter count.
"""

import sys
from dataclasses import asdict, dataclass

from neurcomp.config.errors import ConfigError
from neurcomp.config.limits import BYTES, OPTIMIZER_COPIES, machine_memory

NEURCOMP, FVSRN = "neurcomp", "fvsrn"
NETWORKS = (NEURCOMP, FVSRN)
MIN_WIDTH = 4  # narrower networks cannot represent anything useful
ORIGINAL_MIN_WIDTH = 15  # the original never goes below this width, even past the budget


@dataclass
class Architecture:
    """Everything needed to rebuild a network, independent of its weights.

    ``widths`` has one entry per hidden layer:
      * residual (``n_layers`` entries): ``widths[0]`` is the shared width w of the first sine
        layer and of every block's input and output; ``widths[i]`` (i >= 1) is the inner width of
        residual block i.
      * plain SIREN: ``widths[i]`` is the output width of hidden sine layer i (``2 n_layers - 1``
        entries when the width comes from the ratio, see ``hidden_layers``).
    Unpruned networks have all widths equal; pruning makes them uneven.
    """

    widths: list[int]
    residual: bool = True
    d_in: int = 3
    d_out: int = 1
    omega_0: float = 30.0
    network: str = "neurcomp"  # "neurcomp" | "fvsrn" (model.fvsrn: grid + MLP; ``widths`` are the MLP's)
    grid: int = 0  # fvsrn: G, the latent grid's cells per axis
    channels: int = 0  # fvsrn: C, the latent grid's channels
    activation: str = "sine"  # fvsrn's MLP: "silu" or "sine" (Neurcomp: always sine)

    @property
    def n_layers(self) -> int:
        return len(self.widths)

    def layer_sizes(self) -> list[int]:
        """[d_in, hidden widths..., d_out]: the original code's ``network_layer_sizes``."""
        return [self.d_in, *self.widths, self.d_out]

    def linear_shapes(self) -> list[tuple[int, int]]:
        """(out, in) of every linear layer, in forward order; an fvsrn network's latent grid counts
        as one of shape (C, G^3) (a bias per channel) after its MLP's first layer (model.fvsrn)."""
        w = self.widths
        if self.network == FVSRN:
            shapes = [(w[0], self.channels + self.d_in), (self.channels, self.grid ** 3)]
            shapes += [(cur, prev) for prev, cur in zip(w[:-1], w[1:])]
            return shapes + [(self.d_out, w[-1])]
        shapes = [(w[0], self.d_in)]
        if self.residual:
            for inner in w[1:]:
                shapes += [(inner, w[0]), (w[0], inner)]
            shapes.append((self.d_out, w[0]))
        else:
            for prev, cur in zip(w[:-1], w[1:]):
                shapes.append((cur, prev))
            shapes.append((self.d_out, w[-1]))
        return shapes

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Architecture":
        return cls(widths=[int(x) for x in d["widths"]], residual=bool(d["residual"]),
                   d_in=int(d["d_in"]), d_out=int(d["d_out"]), omega_0=float(d["omega_0"]),
                   network=str(d.get("network", NEURCOMP)), grid=int(d.get("grid", 0)),
                   channels=int(d.get("channels", 0)), activation=str(d.get("activation", "sine")))

    @classmethod
    def uniform(cls, width: int, n_layers: int, **kwargs) -> "Architecture":
        return cls(widths=[width] * n_layers, **kwargs)


def hidden_layers(n_layers: int, residual: bool) -> int:
    """Hidden layers of a network configured with ``n_layers``: a plain one has ``2 n_layers - 1``."""
    return n_layers if residual else 2 * n_layers - 1


def count_parameters(arch: Architecture) -> int:
    """Exact number of weights and biases of the network ``arch`` describes."""
    return sum(o * i + o for o, i in arch.linear_shapes())


def width_for_ratio(num_voxels: int, compression_ratio: float, n_layers: int, d_in: int = 3, d_out: int = 1,
                    source: str = "config") -> int:
    """The original's width for a ratio: the largest whose residual network of ``n_layers`` has
    fewer than ``int(num_voxels / compression_ratio)`` parameters, but at least 15 (the original's
    floor, which may exceed the budget). A plain network uses the same width (``hidden_layers``).

    Raises ConfigError naming the largest achievable ratio when not even ``MIN_WIDTH`` fits.
    """
    budget = num_voxels / compression_ratio
    memory = machine_memory()
    if memory is not None and budget * BYTES * OPTIMIZER_COPIES > memory:  # also catches an infinite budget
        raise ConfigError(
            f"{source}: compression_ratio {compression_ratio:g} is too low for {num_voxels} voxels: it asks for "
            f"{budget:.3g} parameters, more than this machine's {memory / 2 ** 30:.3g} GiB can train")
    target = int(budget)

    def size(w: int) -> int:
        return count_parameters(Architecture.uniform(w, n_layers, d_in=d_in, d_out=d_out))

    if size(MIN_WIDTH) > num_voxels / compression_ratio:
        largest = num_voxels / size(MIN_WIDTH)
        raise ConfigError(
            f"{source}: compression_ratio {compression_ratio:g} is too high for {num_voxels} voxels "
            f"and n_layers {n_layers}: no network fits; the largest possible ratio is {largest:.4g}")
    lo, hi = ORIGINAL_MIN_WIDTH, ORIGINAL_MIN_WIDTH + 1  # size(lo) < target <= size(hi) once bracketed
    if size(hi) >= target:
        return ORIGINAL_MIN_WIDTH
    while size(hi) < target:  # parameter count grows monotonically with width
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if size(mid) < target else (lo, mid)
    return lo


def build_architecture(net, num_voxels: int, source: str = "config") -> Architecture:
    """Architecture from a ``config.options.NetworkConfig`` and the volume size, as the original.

    ``feature_list`` fixes every width, else ``features_per_layer`` the uniform width of
    ``n_layers`` layers, else the width follows from ``compression_ratio`` (``width_for_ratio``)
    with ``hidden_layers`` layers.
    """
    if getattr(net, "network", NEURCOMP) == FVSRN:
        return fvsrn_for_parameters(num_voxels / net.compression_ratio, num_voxels, source=source)
    common = dict(residual=net.residual, d_in=net.d_in, d_out=net.d_out, omega_0=net.omega_0)
    if net.feature_list:
        return Architecture(widths=list(net.feature_list), **common)
    if net.features_per_layer:
        return Architecture.uniform(net.features_per_layer, net.n_layers, **common)
    width = width_for_ratio(num_voxels, net.compression_ratio, net.n_layers, net.d_in, net.d_out, source)
    arch = Architecture.uniform(width, hidden_layers(net.n_layers, net.residual), **common)
    if count_parameters(arch) > num_voxels / net.compression_ratio:  # the original's width floor
        print(f"warning: {source}: compression_ratio {net.compression_ratio:g} asks for fewer parameters than "
              f"the narrowest network the original builds (width {ORIGINAL_MIN_WIDTH}); training "
              f"{count_parameters(arch)} parameters, ratio {num_voxels / count_parameters(arch):.1f}", file=sys.stderr)
    return arch


# -- fvsrn sizing (model.fvsrn) ---------------------------------------------------------------------
FVSRN_MLP_FRACTION = 0.1  # share of the parameter budget for the MLP; the grid gets the rest
FVSRN_HIDDEN = 1  # hidden layers of the MLP (one: its first and last layers are stored unquantized, a middle one would cost a codebook)
FVSRN_MIN_WIDTH, FVSRN_MAX_WIDTH = 8, 64
FVSRN_MIN_GRID = 4
FVSRN_MAX_CHANNELS = 8


def fvsrn_architecture(grid: int, channels: int, width: int, hidden: int = FVSRN_HIDDEN,
                       activation: str = "silu") -> Architecture:
    return Architecture(widths=[width] * hidden, residual=False, network=FVSRN, grid=grid, channels=channels,
                        activation=activation)


def fvsrn_for_parameters(budget: float, num_voxels: int, source: str = "config",
                         activation: str = "silu") -> Architecture:
    """The fvsrn network for a budget of ``budget`` parameters on a volume of ``num_voxels`` voxels.

    Rule: the MLP (``FVSRN_HIDDEN`` hidden layers) gets ``FVSRN_MLP_FRACTION`` of the budget, as
    the widest width in [8, 64] that fits it (8 at least); the grid gets the rest as C channels of
    G^3 cells. One channel, unless its G would exceed half the volume's resolution (N = voxels^(1/3),
    a grid that fine stops adding detail per parameter): then channels are added, up to 8, at
    G <= N / 2. G is at least 4; a budget too small for that is a ConfigError.
    """
    n = max(2.0, num_voxels ** (1.0 / 3.0))

    def mlp(width: int, channels: int) -> int:
        return count_parameters(fvsrn_architecture(1, channels, width)) - 2 * channels  # less the 1-cell grid

    def grid_for(rest: float, channels: int) -> int:
        g = int(round((max(rest, 0.0) / channels) ** (1.0 / 3.0))) + 1
        while g > 0 and channels * g ** 3 + channels > rest:
            g -= 1
        return g

    channels, width, g = 1, FVSRN_MIN_WIDTH, 0
    for channels in range(1, FVSRN_MAX_CHANNELS + 1):
        width = FVSRN_MIN_WIDTH
        while width < FVSRN_MAX_WIDTH and mlp(width + 1, channels) <= FVSRN_MLP_FRACTION * budget:
            width += 1
        g = grid_for(budget - mlp(width, channels), channels)
        if g <= n / 2 or channels == FVSRN_MAX_CHANNELS:
            break
    if g < FVSRN_MIN_GRID:
        smallest = count_parameters(fvsrn_architecture(FVSRN_MIN_GRID, 1, FVSRN_MIN_WIDTH))
        raise ConfigError(f"{source}: network fvsrn: a budget of {budget:.0f} parameters is too small for a "
                          f"{FVSRN_MIN_GRID}^3 grid and a width-{FVSRN_MIN_WIDTH} MLP ({smallest}); "
                          f"the largest possible ratio is {num_voxels / smallest:.4g}")
    return fvsrn_architecture(g, channels, width, activation=activation)
