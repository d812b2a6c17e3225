"""Region and resolution decode: a box equals the crop of a full decode (corrections included) and
costs only its voxels; outputs of every format keep the box's place and extent."""

import numpy as np
import pytest
import torch

from neurcomp.config.cli import run_cli
from neurcomp.data.readers import read_volume
from neurcomp.data.volume import VolumeInfo
from neurcomp.model.architecture import Architecture
from neurcomp.model.neurcomp import Neurcomp
from neurcomp.quantization.bounded import encode_bounded
from neurcomp.quantization.decode import build_model, decode_volume
from neurcomp.quantization.encode import encode_network, quantize_network
from neurcomp.quantization.format import parse
from neurcomp.quantization.region import make_grid

SHAPE = (10, 12, 14)  # (Z, Y, X)
SPACING = (0.5, 1.0, 2.0)  # (x, y, z)
ORIGIN = (1.0, -2.0, 3.0)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("region")
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij")
    values = (20 * np.sin(3 * x) * np.cos(2 * y) + 5 * z).astype(np.float32)
    torch.manual_seed(0)
    info = VolumeInfo(shape=SHAPE, spacing=SPACING, origin=ORIGIN, vmin=float(values.min()), vmax=float(values.max()))
    net = quantize_network(Neurcomp(Architecture(widths=[12, 12], residual=True)), info, 6)
    bounded, _ = encode_bounded(net, values, "rel", 1e-3)
    plain = encode_network(net)
    (tmp / "b.ncq").write_bytes(bounded)
    (tmp / "p.ncq").write_bytes(plain)
    return tmp, values, bounded, plain


def _close(a, b, scale):
    """Equal up to the last bits of float32 inference (another batch size may round differently)."""
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("region", [(0, 14, 0, 12, 0, 10), (3, 9, 2, 11, 4, 5), (13, 14, 0, 1, 9, 10)])
def test_region_equals_the_crop_of_a_full_decode_with_corrections(files, region):
    _, values, bounded, _ = files
    f = parse(bounded)
    full = decode_volume(f)[0]
    part, spacing, origin = decode_volume(f, make_grid(SHAPE, region))
    x0, x1, y0, y1, z0, z1 = region
    assert part.shape == (z1 - z0, y1 - y0, x1 - x0) and spacing == SPACING
    assert origin == (ORIGIN[0] + x0 * SPACING[0], ORIGIN[1] + y0 * SPACING[1], ORIGIN[2] + z0 * SPACING[2])
    _close(part, full[z0:z1, y0:y1, x0:x1], np.abs(values).max())
    bound = f.bound.max_abs_error
    assert np.abs(part.astype(np.float64) - values[z0:z1, y0:y1, x0:x1]).max() <= bound


def test_region_costs_only_its_voxels(files):
    _, _, bounded, _ = files
    f = parse(bounded)
    model = build_model(f)
    seen = []
    model.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    decode_volume(f, make_grid(SHAPE, (2, 6, 1, 4, 3, 5)), model=model)
    assert sum(seen) == 4 * 3 * 2


def test_resolution_keeps_the_box_and_its_corners(files):
    _, values, _, plain = files
    f = parse(plain)
    full = decode_volume(f)[0]
    fine, spacing, origin = decode_volume(f, make_grid(SHAPE, None, (27, 12, 4)))
    assert fine.shape == (4, 12, 27) and origin == ORIGIN
    assert spacing == pytest.approx((SPACING[0] * 13 / 26, SPACING[1], SPACING[2] * 9 / 3))
    # the resampled grid's corners and shared points are the file's own voxels
    _close(fine[[0, -1]][:, :, [0, -1]], full[[0, -1]][:, :, [0, -1]], np.abs(values).max())
    _close(fine[:, :, ::2], full[::3, :, :], np.abs(values).max())
    box, spacing, origin = decode_volume(f, make_grid(SHAPE, (2, 8, 0, 12, 0, 10), (11, 12, 10)))
    assert box.shape == (10, 12, 11) and origin[0] == ORIGIN[0] + 2 * SPACING[0]
    assert spacing[0] == pytest.approx(SPACING[0] * 5 / 10)
    _close(box[:, :, ::2], full[:, :, 2:8], np.abs(values).max())


def _dequantize(tmp, capsys, *args):
    from NeurcompDequantization import main

    code = run_cli(main, ["--compressed_file", str(tmp / "b.ncq"), *map(str, args)])
    return code, capsys.readouterr()


@pytest.mark.parametrize("suffix", [".vti", ".npy", ".raw", ".cvol"])
def test_cli_region_in_every_output_format(files, capsys, suffix):
    tmp, values, bounded, _ = files
    out = tmp / f"box{suffix}"
    code, captured = _dequantize(tmp, capsys, "--region", 3, 9, 2, 11, 4, 7, "--decompressed_file", out)
    assert code == 0, captured.err
    expected = decode_volume(parse(bounded), make_grid(SHAPE, (3, 9, 2, 11, 4, 7)))[0]
    if suffix == ".raw":
        got = np.fromfile(out, dtype=np.float32).reshape(expected.shape)
    else:
        volume = read_volume(out)
        got = volume.values
        if suffix == ".vti":
            assert volume.origin == pytest.approx((ORIGIN[0] + 3 * 0.5, ORIGIN[1] + 2 * 1.0, ORIGIN[2] + 4 * 2.0))
        if suffix in (".vti", ".cvol"):
            assert volume.spacing == pytest.approx(SPACING)
    np.testing.assert_array_equal(got, expected)


def test_cli_resolution_and_region_with_ground_truth(files, capsys):
    tmp, values, _, _ = files
    np.save(tmp / "gt.npy", values)
    out = tmp / "fine.vti"
    code, captured = _dequantize(tmp, capsys, "--resolution", 28, 24, 20, "--decompressed_file", out)
    assert code == 0, captured.err
    volume = read_volume(out)
    assert volume.shape == (20, 24, 28) and volume.spacing == pytest.approx((0.5 * 13 / 27, 11 / 23, 2.0 * 9 / 19))
    code, captured = _dequantize(tmp, capsys, "--region", 0, 5, 0, 5, 0, 5, "--volume", tmp / "gt.npy",
                                 "--decompressed_file", tmp / "r.npy")
    assert code == 0 and "held at every voxel" in captured.out


@pytest.mark.parametrize("args,message", [
    (["--region", 0, 15, 0, 12, 0, 10], "X range [0, 15)"),
    (["--region", 4, 4, 0, 12, 0, 10], "is empty"),
    (["--resolution", 0, 5, 5], "--resolution"),
    (["--region", 0, 1, 0, 12, 0, 10, "--resolution", 3, 12, 10], "one voxel wide along X"),
    (["--resolution", 5, 5, 5, "--volume", "gt.npy"], "cannot be combined")])
def test_cli_bad_regions_fail_in_one_line(files, capsys, args, message):
    tmp = files[0]
    out = tmp / "never.npy"
    code, captured = _dequantize(tmp, capsys, *args, "--decompressed_file", out)
    assert code == 2 and captured.err.strip().count("\n") == 0 and message in captured.err, captured.err
    assert not out.exists()
