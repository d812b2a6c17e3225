"""quantization.outliers: the worst voxels corrected within a byte budget, and training's reserve for them."""

import numpy as np
import pytest
import torch

from neurcomp.data.volume import VolumeInfo
from neurcomp.model.architecture import Architecture
from neurcomp.model.neurcomp import Neurcomp
from neurcomp.quantization import outliers, snap
from neurcomp.quantization.bound import MARGIN, RECORD
from neurcomp.quantization.decode import decode_volume
from neurcomp.quantization.encode import EncoderOptions, encode_model
from neurcomp.quantization.format import FLAG_SNAP_TO_INTEGERS, parse

SHAPE = (10, 11, 12)


def _file(source_dtype: str) -> bytes:
    torch.manual_seed(0)
    info = VolumeInfo(shape=SHAPE, spacing=(1.0, 1.0, 1.0), vmin=0.0, vmax=200.0, source_dtype=source_dtype)
    return encode_model(Neurcomp(Architecture(widths=[8, 8])), info, 6, EncoderOptions())


def _spiky_truth(decoded: np.ndarray, integers: bool) -> np.ndarray:
    """The decoded volume plus small noise everywhere and five large spikes, as the nucleus of hydrogen."""
    rng = np.random.default_rng(0)
    truth = decoded.astype(np.float64) + (rng.integers(-1, 2, SHAPE) if integers else rng.normal(0, 0.3, SHAPE))
    for i, (z, y, x) in enumerate([(5, 5, 5), (0, 0, 0), (9, 10, 11), (3, 7, 2), (8, 1, 9)]):
        truth[z, y, x] += 60 - 10 * i
    return truth


def test_worst_voxels_reads_slabs_and_orders_largest_first():
    rng = np.random.default_rng(1)
    truth = rng.normal(size=SHAPE)
    decoded = np.zeros(SHAPE, np.float32)
    positions, residuals = outliers.worst_voxels(truth, decoded, 17, slab=3)
    flat = truth.reshape(-1)
    expected = np.argsort(-np.abs(flat), kind="stable")[:17]
    np.testing.assert_array_equal(positions, expected)
    np.testing.assert_allclose(residuals, flat[expected])


def test_integer_files_that_snap_get_exact_corrections_within_the_budget():
    data = snap.with_flags(_file("uint8"), FLAG_SNAP_TO_INTEGERS)
    decoded = decode_volume(parse(data))[0]
    truth = _spiky_truth(decoded, integers=True)
    before = np.mean((truth - decoded) ** 2)
    budget = 160.0
    out, bound = outliers.add_corrections(data, truth, decoded, budget)
    assert bound is not None and len(out) - len(data) <= budget  # (the bound record replaces nothing)
    assert bound.step == 1.0 and bound.positions.size >= 5
    # the decoder gives back exactly what the encoder measured: the five spikes are gone, exactly
    final = decode_volume(parse(out))[0]
    np.testing.assert_array_equal(final, decoded)
    for z, y, x in [(5, 5, 5), (0, 0, 0), (9, 10, 11), (3, 7, 2), (8, 1, 9)]:
        assert final[z, y, x] == truth[z, y, x]
    error = np.abs(truth - final)
    assert error.max() <= parse(out).bound.max_abs_error == bound.max_abs_error
    assert np.mean((truth - final) ** 2) < before / 10


def test_float_files_get_every_corrected_voxel_within_the_margin():
    data = _file("float32")
    decoded = decode_volume(parse(data))[0]
    truth = _spiky_truth(decoded, integers=False)
    out, bound = outliers.add_corrections(data, truth, decoded.copy(), 300.0)
    final = decode_volume(parse(out))[0]
    error = np.abs(truth - final.astype(np.float64))
    assert bound.step == pytest.approx(2 * MARGIN * bound.max_abs_error)
    assert error.max() <= bound.max_abs_error * (1 + 1e-6)
    flat_error = error.reshape(-1)
    assert np.all(flat_error[bound.positions] <= MARGIN * bound.max_abs_error * (1 + 1e-6))
    # the bound is the largest error the corrections left: the next voxel in line
    assert flat_error.max() == pytest.approx(bound.max_abs_error, rel=1e-6)


def test_more_budget_corrects_more_and_a_budget_under_the_record_corrects_nothing():
    data = _file("float32")
    decoded = decode_volume(parse(data))[0]
    truth = _spiky_truth(decoded, integers=False)
    assert outliers.add_corrections(data, truth, decoded.copy(), RECORD.size) == (data, None)
    counts = [outliers.add_corrections(data, truth, decoded.copy(), b)[1].positions.size for b in (80, 200, 600)]
    assert counts == sorted(counts) and counts[0] < counts[-1]


def test_the_reserve_is_a_share_of_the_target_or_nothing_when_small():
    assert outliers.reserve_bytes(80_000, 0.01) == pytest.approx(800)
    assert outliers.reserve_bytes(10_000, 0.01) == 0.0  # 100 bytes: under MIN_RESERVE_BYTES
    assert outliers.reserve_bytes(80_000, 0.0) == 0.0


def test_training_spends_what_the_network_leaves_on_the_worst_voxels(tmp_path):
    """target_file_ratio on a field with a one-voxel spike: the file lands at the target, carries
    corrections, decodes to the PSNR info.json reports, and outlier_share = 0 turns them off."""
    from neurcomp.config.options import parse_config
    from neurcomp.data.metrics import volume_metrics
    from neurcomp.training.run import train

    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in (24, 24, 24)), indexing="ij")
    field = 100 * np.exp(-4 * (x * x + y * y + z * z))
    field[12, 12, 12] = 255  # a nucleus no small network follows
    volume = np.rint(field).astype(np.uint8)
    np.save(tmp_path / "v.npy", volume)
    base = ["--data", str(tmp_path / "v.npy"), "--basedir", str(tmp_path / "exp"), "--tracking", "none",
            "--target_file_ratio", "20", "--min_steps", "300", "--compile", "off", "--batch_size", "256",
            "--quiet", "true", "--quant_bits", "8"]
    results = {}
    for share in ("0.05", "0"):
        cfg = parse_config(base + ["--expname", f"s{share}", "--outlier_share", share])
        info = train(cfg, progress=False)
        net = parse((cfg.experiment_dir / info["file"]).read_bytes())
        decoded = decode_volume(net)[0]
        assert volume_metrics(volume, decoded)["psnr"] == pytest.approx(info["file_psnr"], abs=1e-6)
        assert info["file_ratio"] >= 20 * 0.95
        results[share] = (info, net, decoded)
    info, net, decoded = results["0.05"]
    assert info["file_outlier_corrections"] > 0 and net.bound is not None
    assert decoded[12, 12, 12] == 255 or abs(decoded[12, 12, 12] - 255) <= net.bound.max_abs_error
    assert np.abs(decoded.astype(np.float64) - volume).max() <= net.bound.max_abs_error
    assert results["0"][0]["file_outlier_corrections"] == 0 and results["0"][1].bound is None
    assert info["file_psnr"] > results["0"][0]["file_psnr"]  # the spike costs more than 5 % of the network
