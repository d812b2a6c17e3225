"""Neurcomp architecture: exact parameter counts, width selection, SIREN initialisation."""

import math

import pytest
import torch

from neurcomp.config.errors import ConfigError
from neurcomp.config.options import NetworkConfig
from neurcomp.model import Architecture, Neurcomp, build_architecture, count_parameters, width_for_ratio
from neurcomp.model.architecture import MIN_WIDTH


@pytest.mark.parametrize("arch", [
    Architecture.uniform(32, 4),
    Architecture.uniform(17, 1),
    Architecture([24, 7, 13, 5]),  # pruned: uneven inner widths
    Architecture([10, 7, 5], residual=False),
    Architecture.uniform(16, 3, d_in=2, d_out=3),
])
def test_parameter_count_is_exact(arch):
    model = Neurcomp(arch)
    assert count_parameters(arch) == sum(p.numel() for p in model.parameters())
    assert [tuple(l.weight.shape) for l in model.linears()] == arch.linear_shapes()
    assert model(torch.zeros(5, arch.d_in)).shape == (5, arch.d_out)


def test_residual_formula():
    # first (3+1) w, each of n-1 blocks 2 (w^2 + w), final w + 1
    w, n = 165, 4
    assert count_parameters(Architecture.uniform(w, n)) == 4 * w + (n - 1) * 2 * (w * w + w) + w + 1


def _original_width(voxels, ratio, n_layers):
    """The original's compute_num_neurons, as its README states it: from 16 up while the residual
    network (first and last layers (in+1)*out, each middle layer two w x w maps with biases) has
    fewer parameters than int(voxels / ratio); then one less."""
    target = int(voxels / ratio)
    size = lambda w: 4 * w + (n_layers - 1) * 2 * (w * w + w) + w + 1  # noqa: E731
    w = 16
    while size(w) < target:
        w += 1
    return w - 1


@pytest.mark.parametrize("voxels, ratio, n_layers", [
    (255 ** 3, 100, 4), (66 ** 3, 50, 4), (41 ** 3, 20, 2), (10 ** 6, 7.5, 6), (66 ** 3, 200, 4), (41 ** 3, 100, 4)])
def test_width_is_the_originals(voxels, ratio, n_layers):
    w = width_for_ratio(voxels, ratio, n_layers)
    assert w == _original_width(voxels, ratio, n_layers)
    size = lambda k: count_parameters(Architecture.uniform(k, n_layers))  # noqa: E731
    assert w == 15 or size(w) < int(voxels / ratio) <= size(w + 1)  # the largest under the budget, or the floor


@pytest.mark.parametrize("voxels, ratio, n_layers, params", [
    (66 ** 3, 200, 4, 1516),  # neghip with mhd_p_HyperParamSearch.txt: [3, 15 x 7, 1]
    (66 ** 3, 100, 4, 2621),  # [3, 20 x 7, 1]
    (128 ** 3, 50, 8, 41851),  # [3, 54 x 15, 1]
    (41 ** 3, 100, 4, 1516),  # the original's floor: width 15 although it exceeds int(voxels / ratio) = 689
])
def test_plain_network_is_the_originals(voxels, ratio, n_layers, params):
    plain = build_architecture(NetworkConfig(n_layers=n_layers, residual=False, compression_ratio=ratio), voxels)
    residual = build_architecture(NetworkConfig(n_layers=n_layers, compression_ratio=ratio), voxels)
    w = _original_width(voxels, ratio, n_layers)
    assert plain.layer_sizes() == [3, *[w] * (2 * n_layers - 1), 1] and not plain.residual
    assert count_parameters(plain) == count_parameters(residual) == params
    assert sum(p.numel() for p in Neurcomp(plain).parameters()) == params


def test_original_plain_config_with_its_feature_list(tmp_path):
    from neurcomp.config.options import parse_config

    config = tmp_path / "config.txt"  # what the original writes for a plain run: 2 n_layers - 1 widths
    config.write_text("expname = plain\ndata = vol.npy\nn_layers = 4\ndont_use_resnet\n"
                      "feature_list = [15, 15, 15, 15, 15, 15, 15]\n")
    cfg = parse_config(["--config", str(config)])
    arch = build_architecture(cfg.network, 66 ** 3)
    assert arch.layer_sizes() == [3, *[15] * 7, 1] and count_parameters(arch) == 1516
    residual = tmp_path / "residual.txt"  # a residual network still needs n_layers widths
    residual.write_text(config.read_text().replace("dont_use_resnet\n", ""))
    with pytest.raises(ConfigError, match="feature_list"):
        parse_config(["--config", str(residual)])


def test_original_hyperparameter_search_config_builds_the_originals_network():
    from pathlib import Path

    from neurcomp.config.options import parse_config

    path = Path(__file__).resolve().parents[1] / ".." / "shared" / "original" / "experiment-config-files" / \
        "mhd_p_HyperParamSearch.txt"
    if not path.exists():
        pytest.skip(f"{path} is absent (the original's configs live in ../shared/original)")
    cfg = parse_config(["--config", str(path), "--data", "neghip.raw"])
    arch = build_architecture(cfg.network, 66 ** 3)
    assert arch.layer_sizes() == [3, *[15] * 7, 1] and count_parameters(arch) == 1516


def test_width_of_the_published_network():
    # Lu et al.: 255^3 MHD pressure at ratio 100 with 4 layers -> width 165
    assert width_for_ratio(255 ** 3, 100, 4) == 165


def test_ratio_too_high_names_largest_possible():
    with pytest.raises(ConfigError, match=r"largest possible ratio is") as info:
        width_for_ratio(16 ** 3, 1000, 4, source="cfg.txt")
    largest = float(str(info.value).rsplit(" ", 1)[1])
    assert largest == pytest.approx(16 ** 3 / count_parameters(Architecture.uniform(MIN_WIDTH, 4)), rel=1e-3)
    assert str(info.value).startswith("cfg.txt")


def test_build_architecture_precedence():
    assert build_architecture(NetworkConfig(feature_list=[9, 8, 7, 6]), 10 ** 6).widths == [9, 8, 7, 6]
    assert build_architecture(NetworkConfig(features_per_layer=21, n_layers=4), 10 ** 6).widths == [21] * 4
    # as the original: features_per_layer gives n_layers layers, plain or not
    assert build_architecture(NetworkConfig(features_per_layer=21, residual=False, n_layers=4), 10 ** 6).widths == [21] * 4
    assert build_architecture(NetworkConfig(compression_ratio=100, n_layers=4), 255 ** 3).widths == [165] * 4


def test_siren_initialisation_bounds():
    torch.manual_seed(0)
    arch = Architecture.uniform(64, 3)
    model = Neurcomp(arch)
    first, *rest = model.linears()
    assert first.weight.abs().max() <= 1 / 3
    for lin in rest:
        assert lin.weight.abs().max() <= math.sqrt(6 / lin.in_features) / 30.0 + 1e-7


def test_residual_scales_follow_lu_et_al():
    blocks = Neurcomp(Architecture.uniform(8, 4)).hidden[1:]
    assert [b.in_scale for b in blocks] == [1.0, 0.5, 0.5]
    assert [b.out_scale for b in blocks] == [1.0, 1.0, 0.5]


def test_architecture_dict_round_trip():
    arch = Architecture([24, 7, 13, 5], residual=True, omega_0=25.0)
    assert Architecture.from_dict(arch.to_dict()) == arch


def test_resolve_device():
    from neurcomp.model.device import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="'gpu0' is not a device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            resolve_device("cuda:1")


def test_width_floor_past_the_budget_warns(capsys):
    """The original's floor of 15 may exceed the requested ratio: say so, with the ratio trained."""
    from neurcomp.config.options import NetworkConfig
    from neurcomp.model.architecture import build_architecture

    arch = build_architecture(NetworkConfig(n_layers=4, compression_ratio=100), 41 ** 3, "c.txt")
    assert arch.widths == [15] * 4
    err = capsys.readouterr().err
    assert "warning: c.txt: compression_ratio 100" in err and "ratio 45.5" in err
    build_architecture(NetworkConfig(n_layers=4, compression_ratio=50), 66 ** 3, "c.txt")
    assert capsys.readouterr().err == ""
