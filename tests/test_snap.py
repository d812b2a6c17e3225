"""quantization.snap: integer sources decode to integers when the encoder measured that it helps."""

import numpy as np
import pytest
import torch

from neurcomp.config.errors import InputError
from neurcomp.data.volume import VolumeInfo
from neurcomp.model.architecture import Architecture
from neurcomp.model.neurcomp import Neurcomp
from neurcomp.quantization import snap
from neurcomp.quantization.decode import decode_volume
from neurcomp.quantization.encode import EncoderOptions, encode_model
from neurcomp.quantization.format import FLAG_SNAP_TO_INTEGERS, parse, parse_header

INFO = VolumeInfo(shape=(6, 7, 8), spacing=(1.0, 1.0, 1.0), vmin=0.0, vmax=40.0, source_dtype="uint8")


def _file(info=INFO) -> bytes:
    torch.manual_seed(0)
    return encode_model(Neurcomp(Architecture(widths=[8, 8])), info, 6, EncoderOptions())


def test_the_flag_round_trips_and_the_decoder_rounds_within_the_range():
    data = _file()
    plain = decode_volume(parse(data))[0]
    flagged = snap.with_flags(data, FLAG_SNAP_TO_INTEGERS)
    assert len(flagged) == len(data) and parse_header(flagged).flags == FLAG_SNAP_TO_INTEGERS
    decoded = decode_volume(parse(flagged))[0]
    np.testing.assert_array_equal(decoded, np.clip(np.rint(plain), 0, 40))
    assert decoded.dtype == np.float32 and not np.array_equal(decoded, plain)


def test_unknown_flags_are_refused_in_one_line():
    with pytest.raises(InputError, match=r"^f.ncq: .*unknown header flags 0x8$"):
        parse(snap.with_flags(_file(), FLAG_SNAP_TO_INTEGERS | 8), "f.ncq")


def test_the_encoder_flags_only_where_rounding_lowers_the_error():
    data = _file()
    net = parse(data)
    truth = np.random.default_rng(0).integers(0, 41, INFO.shape).astype(np.float32)
    close = truth + np.random.default_rng(1).uniform(-0.4, 0.4, INFO.shape).astype(np.float32)
    flagged, snapped = snap.snap_if_it_helps(data, close, truth, net)
    assert snapped and parse(flagged).flags == parse(data).flags | FLAG_SNAP_TO_INTEGERS
    np.testing.assert_array_equal(close, truth)  # snapped in place: every voxel recovered exactly
    off = truth + 0.6  # rounding moves every voxel a whole step: worse than 0.6
    assert snap.snap_if_it_helps(data, off, truth, net) == (data, False)
    assert np.all(off == truth + np.float32(0.6))  # left as it was


def test_float_sources_and_bounded_files_are_never_flagged():
    info = VolumeInfo(shape=INFO.shape, spacing=INFO.spacing, vmin=0.0, vmax=40.0, source_dtype="float32")
    data = _file(info)
    truth = np.rint(np.random.default_rng(0).uniform(0, 40, INFO.shape)).astype(np.float32)
    assert snap.snap_if_it_helps(data, truth + 0.1, truth, parse(data)) == (data, False)
    assert not snap.integer_source(VolumeInfo(shape=(2, 2, 2), spacing=(1, 1, 1), vmin=0.5, vmax=3.0,
                                              source_dtype="uint8"))


def test_training_sets_the_flag_when_it_helps(tmp_path):
    """target_file_ratio on an integer volume: the written file carries the flag exactly when
    rounding lowered the error, and its reported PSNR is that of the file as decoded."""
    import json

    from neurcomp.config.options import parse_config
    from neurcomp.data.metrics import volume_metrics
    from neurcomp.training.run import train

    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in (16, 16, 16)), indexing="ij")
    field = 3 + 2.9 * (0.6 * x + 0.3 * y * y + 0.1 * z)  # smooth, six levels: the rounding dominates the error
    np.save(tmp_path / "v.npy", np.rint(field).astype(np.uint8))
    cfg = parse_config(["--data", str(tmp_path / "v.npy"), "--basedir", str(tmp_path / "exp"), "--expname", "s",
                        "--tracking", "none", "--target_file_ratio", "4", "--min_steps", "1000", "--compile", "off",
                        "--batch_size", "256", "--quiet", "true"])
    info = train(cfg, progress=False)
    data = (tmp_path / "exp" / "s" / info["file"]).read_bytes()
    net = parse(data)
    decoded = decode_volume(net)[0]
    truth = np.rint(field).astype(np.float32)
    assert bool(net.flags & FLAG_SNAP_TO_INTEGERS) == info["file_snap_to_integers"]
    assert volume_metrics(truth, decoded)["psnr"] == pytest.approx(info["file_psnr"], abs=1e-6)
    recorded = json.loads((tmp_path / "exp" / "s" / "info.json").read_text())
    assert recorded["file_snap_to_integers"] == info["file_snap_to_integers"]
    assert info["file_snap_to_integers"], f"{info['file_psnr']} dB: a smooth field stored rounded: rounding should help here"
    assert np.all(decoded == np.rint(decoded))
    assert info["file_psnr"] > info["psnr"]  # the network alone, before rounding and quantization
    # the standalone quantizer decides the same way on request, against the config's --data
    from NeurcompQuantization import quantize_main

    out = tmp_path / "again.ncq"
    summary = quantize_main(["--config", str(tmp_path / "exp" / "s" / "config.txt"), "--snap_to_integers", "true",
                             "--output", str(out)])
    assert summary["snap_to_integers"] and parse(out.read_bytes()).flags & FLAG_SNAP_TO_INTEGERS
    assert np.all(decode_volume(parse(out.read_bytes()))[0] == np.rint(decode_volume(parse(out.read_bytes()))[0]))
