"""Compress to a target file ratio: sizing before training, rate control after, the benchmark codec."""

import json
import math

import numpy as np
import pytest

from neurcomp.config.errors import ConfigError
from neurcomp.config.options import parse_config
from neurcomp.quantization.rate_control import architecture_for_file_bytes, predict_file_bytes
from tests.conftest import shared_volume
from neurcomp.training.run import train


def target_config(tmp_path, data, ratio, **extra):
    opts = {"data": data, "basedir": tmp_path, "expname": "target", "target_file_ratio": ratio, "quant_bits": 9,
            "n_layers": 4, "max_pass": 3, "batch_size": 256, "sample_size": 16, "lr": 5e-4, "tracking": "none",
            "checkpoint_every": 0, **extra}
    return parse_config([f"--{k}={v}" for k, v in opts.items()])


@pytest.mark.parametrize("name, ratio", [("nucleon_41x41x41_uint8.raw", 40),
                                         ("viscous_fingers_run01_t050_64x64x64_float32.npy", 150)])
def test_training_lands_within_5_percent_of_the_file_ratio(tmp_path, name, ratio):
    cfg = target_config(tmp_path, shared_volume(name), ratio)
    info = train(cfg, progress=False)
    path = cfg.experiment_dir / info["file"]
    voxels = info["volume_num_voxels"]
    achieved = voxels * 4 / path.stat().st_size
    assert abs(achieved / ratio - 1) <= 0.05, (achieved, info["file_layer_bits"])
    assert info["file_ratio"] == pytest.approx(achieved) and info["file_ratio_within_5_percent"]
    saved = json.loads((cfg.experiment_dir / "info.json").read_text())
    assert saved["file_psnr"] == pytest.approx(info["file_psnr"])
    # the file alone decodes to the volume whose PSNR info.json reports, a little below the network's
    from neurcomp.data.readers import read_volume
    from neurcomp.quantization.decode import decode_volume
    from neurcomp.quantization.format import parse

    gt = read_volume(shared_volume(name)).values.astype(np.float64)
    pred = decode_volume(parse(path.read_bytes()))[0]  # snapping and corrections included
    psnr = 20 * math.log10(gt.max() - gt.min()) - 10 * math.log10(np.mean((pred - gt) ** 2))
    assert info["file_psnr"] == pytest.approx(psnr, abs=1e-3)
    if not info["file_snap_to_integers"] and not info["file_outlier_corrections"]:
        assert info["file_psnr"] <= info["psnr"] + 0.05  # quantization only loses


def test_prediction_grows_with_width_and_fills_the_budget():
    arch = architecture_for_file_bytes(40_000, 4, 9)
    assert predict_file_bytes(arch, 9) <= 40_000
    bigger = type(arch)(widths=[arch.widths[0] + 1] * 4)
    assert predict_file_bytes(bigger, 9) > 40_000
    assert predict_file_bytes(arch, 9) > 0.97 * 40_000  # uneven inner widths fill the rest


def test_target_ratio_refuses_pruning(tmp_path):
    with pytest.raises(ConfigError, match="target_file_ratio"):
        target_config(tmp_path, "x.npy", 100, dropout_technique="smallify")


def test_unreachable_ratio_is_a_clear_error(tmp_path, tiny_volume):
    from neurcomp.config.errors import InputError

    with pytest.raises(ConfigError, match="smallest network"):
        train(target_config(tmp_path, tiny_volume, 5000, network="neurcomp"), progress=False)
    # without a network, 5000 trains the latent grid (config.options.LATENT_FROM_RATIO): its own one line
    with pytest.raises(InputError, match="cannot hold a latent-grid network"):
        train(target_config(tmp_path, tiny_volume, 5000, expname="latent"), progress=False)


def test_neurcomp_codec_interface(tmp_path):
    from neurcomp.compressors import get_codec

    values = np.load(shared_volume("viscous_fingers_run01_t050_64x64x64_float32.npy"))
    codec = get_codec("neurcomp", steps=40, batch_size=256)
    result = codec.compress_to_ratio(values, 60, work_dir=tmp_path)
    assert result.num_bytes == len(result.payload)
    assert abs(result.ratio / 60 - 1) <= 0.05
    assert result.decoded.shape == values.shape and result.decoded.dtype == np.float32
    gt = values.astype(np.float64)
    psnr = 20 * np.log10(gt.max() - gt.min()) - 10 * np.log10(np.mean((result.decoded - gt) ** 2))
    assert np.isfinite(psnr) and psnr > 15
    np.testing.assert_array_equal(codec.decompress(result.payload, values.shape), result.decoded)


def test_neurcomp_codec_keeps_integer_volumes_integer_and_decodes_as_the_decoder(tmp_path):
    """A uint8 scan reaches every codec as float32; the neurcomp codec trains on it as uint8 (as a
    user's file), and its decompress is the decoder's path, snapping included."""
    from neurcomp.compressors import get_codec
    from neurcomp.compressors.neurcomp import integer_storage
    from neurcomp.quantization.decode import decode_volume
    from neurcomp.quantization.format import parse

    assert integer_storage(np.array([0, 3, 255], np.float32)).dtype == np.uint8
    assert integer_storage(np.array([0, 3, 256], np.float32)).dtype == np.uint16
    for not_integer in ([0, 3.5], [-1, 3], [0, 70000]):
        assert integer_storage(np.array(not_integer, np.float32)).dtype == np.float32
    values = np.fromfile(shared_volume("nucleon_41x41x41_uint8.raw"), np.uint8).reshape(41, 41, 41)
    codec = get_codec("neurcomp", steps=60, batch_size=256)
    result = codec.compress_to_ratio(values.astype(np.float32), 30, work_dir=tmp_path)
    net = parse(result.payload)
    assert net.volume.source_dtype == "uint8"
    np.testing.assert_array_equal(result.decoded, decode_volume(net)[0])
