"""The shape of a Neurcomp network, its exact parameter count, and width selection."""

from dataclasses import asdict, dataclass

from config.errors import ConfigError

MIN_WIDTH = 4  # narrower networks cannot represent anything useful


@dataclass
class Architecture:
    """Everything needed to rebuild a network, independent of its weights.

    ``widths`` has one entry per hidden layer (``n_layers`` entries):
      * residual: ``widths[0]`` is the shared width w of the first sine layer and of every block's
        input and output; ``widths[i]`` (i >= 1) is the inner width of residual block i.
      * plain SIREN: ``widths[i]`` is the output width of hidden sine layer i.
    Unpruned networks have all widths equal; pruning makes them uneven.
    """

    widths: list[int]
    residual: bool = True
    d_in: int = 3
    d_out: int = 1
    omega_0: float = 30.0

    @property
    def n_layers(self) -> int:
        return len(self.widths)

    def layer_sizes(self) -> list[int]:
        """[d_in, hidden widths..., d_out]: the original code's ``network_layer_sizes``."""
        return [self.d_in, *self.widths, self.d_out]

    def linear_shapes(self) -> list[tuple[int, int]]:
        """(out, in) of every linear layer, in forward order."""
        w = self.widths
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
                   d_in=int(d["d_in"]), d_out=int(d["d_out"]), omega_0=float(d["omega_0"]))

    @classmethod
    def uniform(cls, width: int, n_layers: int, **kwargs) -> "Architecture":
        return cls(widths=[width] * n_layers, **kwargs)


def count_parameters(arch: Architecture) -> int:
    """Exact number of weights and biases of the network ``arch`` describes."""
    return sum(o * i + o for o, i in arch.linear_shapes())


def width_for_ratio(num_voxels: int, compression_ratio: float, n_layers: int, residual: bool = True,
                    d_in: int = 3, d_out: int = 1, source: str = "config") -> int:
    """Largest uniform width whose parameter count fits ``num_voxels / compression_ratio``.

    Raises ConfigError naming the largest achievable ratio when even ``MIN_WIDTH`` does not fit.
    """
    budget = num_voxels / compression_ratio

    def size(w: int) -> int:
        return count_parameters(Architecture.uniform(w, n_layers, residual=residual, d_in=d_in, d_out=d_out))

    if size(MIN_WIDTH) > budget:
        largest = num_voxels / size(MIN_WIDTH)
        raise ConfigError(
            f"{source}: compression_ratio {compression_ratio:g} is too high for {num_voxels} voxels "
            f"and n_layers {n_layers}: no network fits; the largest possible ratio is {largest:.4g}")
    lo, hi = MIN_WIDTH, MIN_WIDTH
    while size(hi * 2) <= budget:  # parameter count grows monotonically with width
        hi *= 2
    hi *= 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if size(mid) <= budget else (lo, mid)
    return lo


def build_architecture(net, num_voxels: int, source: str = "config") -> Architecture:
    """Architecture from a ``config.options.NetworkConfig`` and the volume size.

    ``feature_list`` fixes every width, else ``features_per_layer`` the uniform width, else the
    width follows from ``compression_ratio``.
    """
    common = dict(residual=net.residual, d_in=net.d_in, d_out=net.d_out, omega_0=net.omega_0)
    if net.feature_list:
        return Architecture(widths=list(net.feature_list), **common)
    width = net.features_per_layer or width_for_ratio(num_voxels, net.compression_ratio, net.n_layers,
                                                      net.residual, net.d_in, net.d_out, source)
    return Architecture.uniform(width, net.n_layers, **common)
