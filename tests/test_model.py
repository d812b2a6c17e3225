"""Neurcomp architecture: exact parameter counts, width selection, SIREN initialisation."""

import math

import pytest
import torch

from config.errors import ConfigError
from config.options import NetworkConfig
from model import Architecture, Neurcomp, build_architecture, count_parameters, width_for_ratio
from model.architecture import MIN_WIDTH


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


@pytest.mark.parametrize("voxels, ratio, n_layers, residual", [
    (255 ** 3, 100, 4, True), (66 ** 3, 50, 4, True), (41 ** 3, 20, 2, False), (10 ** 6, 7.5, 6, True)])
def test_width_is_largest_that_fits(voxels, ratio, n_layers, residual):
    w = width_for_ratio(voxels, ratio, n_layers, residual)
    size = lambda k: count_parameters(Architecture.uniform(k, n_layers, residual=residual))  # noqa: E731
    assert size(w) <= voxels / ratio < size(w + 1)


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
