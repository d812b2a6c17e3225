"""network = fvsrn (model.fvsrn): sizing, training, the .ncq round trip, the options and their checks."""

import numpy as np
import pytest
import torch

from neurcomp.config.errors import ConfigError
from neurcomp.config.options import parse_config
from neurcomp.data.volume import VolumeInfo
from neurcomp.model.architecture import (FVSRN_MAX_WIDTH, FVSRN_MIN_WIDTH, FVSRN_MLP_FRACTION, Architecture,
                                build_architecture, count_parameters, fvsrn_architecture, fvsrn_for_parameters)
from neurcomp.model.fvsrn import FVSRN, GRID_SCALE, GridLayer, build_network
from neurcomp.model.neurcomp import Neurcomp
from neurcomp.quantization.decode import decode_bytes
from neurcomp.quantization.encode import EncoderOptions, encode_model
from neurcomp.quantization.format import parse

INFO = VolumeInfo(shape=(12, 14, 16), spacing=(1.0, 1.0, 1.0), vmin=0.0, vmax=1.0)


@pytest.mark.parametrize("voxels, ratio", [(41 ** 3, 25), (64 ** 3, 100), (128 ** 3, 400)])
def test_size_follows_the_ratio(voxels, ratio):
    budget = voxels / ratio
    arch = fvsrn_for_parameters(budget, voxels)
    params = count_parameters(arch)
    assert arch.network == "fvsrn" and arch.channels >= 1 and arch.grid >= 4
    assert 0.8 * budget <= params <= budget  # fills the budget, never exceeds it
    mlp = params - arch.channels * (arch.grid ** 3 + 1)
    assert mlp <= FVSRN_MLP_FRACTION * budget or arch.widths[0] == FVSRN_MIN_WIDTH
    assert FVSRN_MIN_WIDTH <= arch.widths[0] <= FVSRN_MAX_WIDTH
    # the config path: compression_ratio sizes it the same way
    cfg = parse_config(["--data", "x.npy", "--network", "fvsrn", "--compression_ratio", str(ratio)])
    assert build_architecture(cfg.network, voxels) == arch


def test_shapes_and_parameter_count():
    arch = fvsrn_architecture(grid=5, channels=2, width=8, hidden=2)
    model = FVSRN(arch)
    assert [tuple(lin.weight.shape) for lin in model.linears()] == arch.linear_shapes()
    assert arch.linear_shapes()[1] == (2, 125) and isinstance(model.linears()[1], GridLayer)
    assert sum(p.numel() for p in model.parameters()) == count_parameters(arch)
    assert model(torch.rand(7, 3) * 2 - 1).shape == (7, 1)
    assert isinstance(build_network(arch), FVSRN) and isinstance(build_network(Architecture([8, 8])), Neurcomp)
    assert Architecture.from_dict(arch.to_dict()) == arch
    old = {k: v for k, v in Architecture([8, 8]).to_dict().items() if k in ("widths", "residual", "d_in", "d_out", "omega_0")}
    assert Architecture.from_dict(old) == Architecture([8, 8])  # checkpoints from before fvsrn


def test_grid_interpolates_its_cells_at_the_corners():
    layer = GridLayer(grid=3, channels=1)
    with torch.no_grad():
        layer.weight.copy_(torch.arange(27.0).reshape(1, 27) / 10.0)  # x fastest, as the volume's (Z, Y, X)
        layer.bias.fill_(0.5)
    corners = torch.tensor([[-1.0, -1.0, -1.0], [1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [1.0, 1.0, 1.0]])
    expected = torch.tensor([0.0, 2.0, 6.0, 26.0]) / 10.0 * GRID_SCALE + 0.5  # stored x GRID_SCALE, + bias
    assert torch.allclose(layer(corners)[:, 0], expected)


@pytest.mark.parametrize("activation", ["sine", "silu"])
def test_trains_a_few_steps_and_beats_the_mean(activation):
    torch.manual_seed(0)
    z, y, x = torch.meshgrid(*(torch.linspace(-1, 1, n) for n in (10, 10, 10)), indexing="ij")
    coords = torch.stack([x, y, z], -1).reshape(-1, 3)
    target = (torch.sin(2 * x) * torch.cos(3 * y) + 0.5 * z ** 2).reshape(-1, 1)
    model = FVSRN(fvsrn_architecture(grid=6, channels=1, width=16, activation=activation))
    model.start_at(float(target.mean()))
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    for _ in range(150):
        loss = torch.mean((model(coords) - target) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
    mse = float(torch.mean((model(coords).detach() - target) ** 2))
    assert mse < 0.1 * float(torch.var(target))


def test_ncq_round_trip_rebuilds_the_same_network():
    torch.manual_seed(1)
    model = FVSRN(fvsrn_architecture(grid=9, channels=2, width=12, activation="silu"))
    kmeans = EncoderOptions(quantizer="kmeans")  # re-encoding a k-means file is exact (asserted below)
    data = encode_model(model, INFO, 6, kmeans)
    net = parse(data)
    assert net.arch == model.arch
    assert net.tensors[1][0].kind == "codebook" and net.tensors[1][0].bits == 6  # the grid is k-means'd
    assert parse(encode_model(model, INFO, 6)).tensors[1][0].kind in ("codebook", "uniform")  # the default
    decoded, info, meta = decode_bytes(data)
    assert isinstance(decoded, FVSRN) and decoded.arch == model.arch and info.shape == INFO.shape
    # what the file holds is exactly what the decoded network computes with
    for lin, (w, b) in zip(decoded.linears(), net.tensors):
        assert np.array_equal(lin.weight.detach().numpy().reshape(-1), w.dequantize())
        assert np.array_equal(lin.bias.detach().numpy(), b.dequantize())
    again, _, _ = decode_bytes(encode_model(decoded, INFO, 6, kmeans))  # re-encoding the decoded network: identical
    for a, b in zip(decoded.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    coords = torch.rand(50, 3) * 2 - 1
    with torch.no_grad():
        assert float((decoded(coords) - model(coords)).abs().max()) < 0.05


def test_neurcomp_files_are_unchanged():
    torch.manual_seed(2)
    data = encode_model(Neurcomp(Architecture([8, 8])), INFO, 6)
    assert data[10] & 1 == 0  # header flag bit 0 (fvsrn) unset
    assert data[21] == 0  # network id (the reserved byte of the architecture record)
    assert parse(data).arch == Architecture([8, 8])


def test_fvsrn_file_is_refused_by_flag_and_id_mismatch():
    import zlib

    from neurcomp.config.errors import InputError
    from neurcomp.quantization.format import _CRC

    data = bytearray(encode_model(FVSRN(fvsrn_architecture(4, 1, 8)), INFO, 4))
    assert data[10] == 1 and data[21] == 1
    data[21] = 0  # network id Neurcomp, fvsrn flag still set
    header_size = int.from_bytes(data[12:16], "little")
    data[header_size - _CRC.size:header_size] = zlib.crc32(bytes(data[:header_size - _CRC.size])).to_bytes(4, "little")
    with pytest.raises(InputError, match="do not match network id"):
        parse(bytes(data), "f.ncq")


def test_config_option_parses_and_defaults_to_neurcomp():
    assert parse_config(["--data", "x.npy"]).network.network == "neurcomp"
    assert parse_config(["--data", "x.npy", "--network", "fvsrn"]).network.network == "fvsrn"
    with pytest.raises(ConfigError, match="network"):
        parse_config(["--data", "x.npy", "--network", "mlp"])


@pytest.mark.parametrize("extra, key", [(["--dropout_technique", "binary"], "dropout_technique"),
                                        (["--grad_lambda", "0.1"], "grad_lambda"),
                                        (["--features_per_layer", "16"], "features_per_layer")])
def test_what_fvsrn_does_not_do_is_refused_in_one_line(extra, key):
    with pytest.raises(ConfigError) as info:
        parse_config(["--data", "x.npy", "--network", "fvsrn", *extra])
    message = str(info.value)
    assert "\n" not in message and key in message and "fvsrn" in message


def test_lr_auto_for_fvsrn():
    from neurcomp.training.recipe import auto_learning_rate

    narrow, wide = fvsrn_architecture(10, 1, 16), fvsrn_architecture(10, 1, 64)
    assert auto_learning_rate(narrow) == pytest.approx(5e-3)
    assert auto_learning_rate(wide) == pytest.approx(5e-3 * (32 / 64) ** 0.5)


def test_training_to_a_file_ratio_and_decoding(tmp_path, tiny_volume):
    from neurcomp.quantization.decode import decode_file
    from neurcomp.training.run import train

    cfg = parse_config(["--data", str(tiny_volume), "--network", "fvsrn", "--target_file_ratio", "4",
                        "--quant_bits", "6", "--basedir", str(tmp_path), "--expname", "f", "--tracking", "none",
                        "--max_pass", "20", "--min_steps", "60", "--checkpoint_every", "0", "--compile", "off"])
    info = train(cfg, progress=False)
    # a 2688-voxel volume: the grid's integer G and whole bits per index are coarse steps here
    assert abs(info["file_ratio"] / 4 - 1) < 0.1, info["file_ratio"]
    model, vinfo, meta = decode_file(cfg.experiment_dir / info["file"])
    assert isinstance(model, FVSRN) and meta["architecture"]["network"] == "fvsrn"
    assert info["file_psnr"] > 25


def test_fvsrn_codec_is_registered_beside_neurcomp():
    import argparse

    from neurcomp.compressors import CODECS

    parser = argparse.ArgumentParser()
    for name in ("fvsrn", "neurcomp"):
        CODECS[name].add_cli_args(parser.add_argument_group(name))
    args = parser.parse_args(["--fvsrn-bits", "7"])
    fvsrn, neurcomp = CODECS["fvsrn"].from_args(args), CODECS["neurcomp"].from_args(args)
    assert fvsrn.name == "fvsrn" and fvsrn.options()["network"] == "fvsrn" and fvsrn.bits == 7
    assert neurcomp.options()["network"] == "neurcomp"


def test_a_checkpoint_of_the_other_network_is_refused_in_one_line():
    from neurcomp.training.checkpoint import check_compatible

    state = {"architecture": fvsrn_architecture(8, 1, 16).to_dict()}
    with pytest.raises(ConfigError) as info:
        check_compatible("run/checkpoint.pt", state, Architecture([16]))
    assert "\n" not in str(info.value) and "network fvsrn (config: neurcomp)" in str(info.value)
    check_compatible("run/checkpoint.pt", state, fvsrn_architecture(8, 1, 16))  # the same network: accepted
