"""The guaranteed maximum error: every voxel of every shared volume within the bound, whatever the
network (untrained, residual, plain, pruned widths); corrupt correction sections refused in one line."""

import json
import struct
import zlib
from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import shared_volume
from neurcomp.config.cli import run_cli
from neurcomp.config.errors import InputError
from neurcomp.data.readers import read_volume
from neurcomp.data.volume import VolumeInfo
from neurcomp.model.architecture import Architecture
from neurcomp.model.neurcomp import Neurcomp
from neurcomp.quantization import bound as error_bound
from neurcomp.quantization.bounded import encode_bounded, max_error
from neurcomp.quantization.decode import decode_volume
from neurcomp.quantization.encode import EncoderOptions, quantize_network
from neurcomp.quantization.format import parse, serialize
from neurcomp.quantization.region import make_grid, predict_grid
from neurcomp.training.checkpoint import save_checkpoint


pytestmark = pytest.mark.usefixtures("one_torch_thread")


NETWORKS = {"residual": ([8, 8], True), "plain": ([8, 8, 8], False), "pruned": ([9, 4, 7], True)}
VOLUMES = ["bucky_32x32x32_uint8.raw", "chi_s3d_50x50x50_float32.raw", "hydrogen_atom_128x128x128_uint8.raw",
           "isabel_velmag_t02_125x125x25.h5", "neghip_vtk_66x66x66_uint8.npy", "nucleon_41x41x41_uint8.raw",
           "viscous_fingers_run01_t001_64x64x64.vti", "viscous_fingers_run01_t050_64x64x64_float32.npy",
           "walnut_128x96x114_uint16.raw", "RichtmyerMeshkov/ppm-t0020.cvol"]
LARGE = ("hydrogen", "walnut", "Richtmyer")  # above a million voxels: over 10 s each


def _net(values, kind="residual", bits=6, seed=0, spacing=(1.0, 1.0, 1.0)):
    """An untrained network quantized at ``bits``: the bound must hold whatever the network."""
    widths, residual = NETWORKS[kind]
    torch.manual_seed(seed)
    model = Neurcomp(Architecture(widths=widths, residual=residual))
    info = VolumeInfo(shape=values.shape, spacing=spacing, vmin=float(values.min()), vmax=float(values.max()))
    return quantize_network(model, info, bits, EncoderOptions(compression="zstd"))


@pytest.mark.parametrize("index,name", [pytest.param(i, n, marks=[pytest.mark.slow] if n.startswith(LARGE) else [])
                                        for i, n in enumerate(VOLUMES)])
def test_bound_holds_at_every_voxel_of_every_shared_volume(index, name):
    values = read_volume(shared_volume(name)).values
    kind = list(NETWORKS)[index % 3]
    bits = (2, 6, 9)[index % 3]
    span = float(values.max()) - float(values.min())
    net = _net(values, kind, bits, seed=index)
    bounds = (1e-1, 1e-2, 1e-3)
    large = [k for k, prefix in enumerate(LARGE) if name.startswith(prefix)]
    if large:  # one bound each: three inferences of a million voxels or more per bound
        bounds = bounds[large[0]:large[0] + 1]
    for rel in bounds:
        mode, requested = ("rel", rel) if index % 2 else ("abs", rel * span)
        data, report = encode_bounded(net, values, mode, requested)
        decoded = decode_volume(parse(data))[0]  # as the decoder does, from the bytes alone
        assert max_error(values, decoded) <= rel * span * (1 + 1e-12), (name, kind, bits, mode, rel)
        assert report["corrections"] > 0 and data[8] == 2


def test_bound_survives_different_inference_chunking():
    """The margin (0.9 x the bound) absorbs last-bit differences of another chunking or BLAS."""
    values = read_volume(shared_volume("nucleon_41x41x41_uint8.raw")).values
    net = _net(values, "plain", 9)
    data, _ = encode_bounded(net, values, "rel", 1e-3)
    f = parse(data)
    grid = make_grid(values.shape)
    from neurcomp.quantization.decode import build_model

    other = predict_grid(build_model(f), f.volume, grid, chunk_points=777)
    error_bound.apply(f.bound, other, values.shape)
    assert max_error(values, other) <= 1e-3 * 249.0
    # decoded as the encoder decoded it, every voxel is within the margin, 0.9 x the bound
    assert max_error(values, decode_volume(f)[0]) <= error_bound.MARGIN * 1e-3 * 249.0 * (1 + 1e-6)


def test_files_without_bound_stay_version_1_and_corrections_are_exact_inverses():
    values = np.random.default_rng(0).normal(size=(6, 7, 8)).astype(np.float32)
    net = _net(values)
    plain = serialize(replace(net, settings=replace(net.settings, compression="zstd")))
    assert struct.unpack_from("<H", plain, 8)[0] == 1 and parse(plain).bound is None
    data, _ = encode_bounded(net, values, "abs", 0.01)
    back = parse(data).bound
    # the byte layout of FORMAT.md: header_size = 201 + 4L + S, mode at 143 + 4L + S, E at 153 + 4L + S
    lead = 4 * len(net.arch.widths) + len(net.volume.source_dtype)
    assert struct.unpack_from("<HHI", data, 8) == (2, parse(plain).flags, 201 + lead) and data[143 + lead] == 1
    assert struct.unpack_from("<d", data, 153 + lead)[0] == 0.01
    assert serialize(parse(data)) == data
    assert back.positions.size > 0 and np.all(back.values != 0) and back.step == pytest.approx(1.8 * 0.01)


def _bounded_file(tmp_path):
    values = np.random.default_rng(1).normal(size=(8, 9, 10)).astype(np.float32)
    np.save(tmp_path / "gt.npy", values)
    data, _ = encode_bounded(_net(values), values, "rel", 1e-2)
    return data, values


def _dequantize(path, tmp_path, capsys, *extra):
    from NeurcompDequantization import main

    code = run_cli(main, ["--compressed_file", str(path), "--decompressed_file", str(tmp_path / "out.npy"), *extra])
    return code, capsys.readouterr()


def test_truncated_or_corrupt_correction_sections_are_refused_in_one_line(tmp_path, capsys):
    data, _ = _bounded_file(tmp_path)
    net = parse(data)
    section_size = net.bound and len(error_bound.encode_section(net.bound)[1])
    duplicate = replace(net.bound, positions=np.repeat(net.bound.positions[:1], 2), values=net.bound.values[:2])
    zero = replace(net.bound, values=np.zeros_like(net.bound.values))
    outside = replace(net.bound, positions=net.bound.positions + 10 ** 4)
    cases = {"truncated": data[:-1], "truncated file": data[:len(data) - section_size],
             "correction section checksum": data[:-3] + bytes([data[-3] ^ 0x40]) + data[-2:],
             "not increasing voxel indices": serialize(replace(net, bound=duplicate)),
             "a correction of zero": serialize(replace(net, bound=zero)),
             "inside the volume": serialize(replace(net, bound=outside))}
    for message, broken in cases.items():
        path = tmp_path / "broken.ncq"
        path.write_bytes(broken)
        code, out = _dequantize(path, tmp_path, capsys)
        assert code == 2 and "Traceback" not in out.err, message
        assert out.err.strip().count("\n") == 0 and "broken.ncq" in out.err and message in out.err, out.err
    assert not (tmp_path / "out.npy").exists()
    # a header (checksum fixed) announcing more corrections than the volume has voxels
    head = bytearray(data)
    header_size = struct.unpack_from("<I", data, 12)[0]
    at = header_size - 4 - error_bound.RECORD.size  # the record is the last before the header CRC
    fields = list(error_bound.RECORD.unpack_from(data, at))
    fields[5] = 10 ** 6
    head[at:at + error_bound.RECORD.size] = error_bound.RECORD.pack(*fields)
    head[header_size - 4:header_size] = struct.pack("<I", zlib.crc32(bytes(head[:header_size - 4])))
    with pytest.raises(InputError, match="does not fit"):
        parse(bytes(head))


def test_dequantization_reports_the_bound_and_whether_it_held(tmp_path, capsys):
    data, values = _bounded_file(tmp_path)
    path = tmp_path / "b.ncq"
    path.write_bytes(data)
    code, out = _dequantize(path, tmp_path, capsys, "--volume", str(tmp_path / "gt.npy"),
                            "--metrics_json", str(tmp_path / "m.json"))
    assert code == 0, out.err
    assert "error bound" in out.out and "held at every voxel" in out.out and "NOT" not in out.out
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["bound_held"] is True and metrics["max_abs_error"] <= metrics["error_bound"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bound")
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, 12)] * 3, indexing="ij")
    values = (30 * np.exp(-3 * (x ** 2 + y ** 2 + z ** 2)) + 5 * np.sin(3 * x)).astype(np.float32)
    np.save(tmp / "vol.npy", values)
    info = VolumeInfo(shape=values.shape, spacing=(1.0, 1.0, 1.0), vmin=float(values.min()), vmax=float(values.max()))
    torch.manual_seed(0)
    exp = tmp / "exp" / "b"
    exp.mkdir(parents=True)
    save_checkpoint(exp / "checkpoint.pt", Neurcomp(Architecture.uniform(8, 2)), info)
    return tmp, values


@pytest.mark.parametrize("option,value", [("--max_abs_error", "0.5"), ("--max_rel_error", "0.002")])
def test_quantization_cli_keeps_either_bound(checkpoint, capsys, option, value):
    from NeurcompQuantization import main

    tmp, values = checkpoint
    out = tmp / f"q{option}.ncq"
    code = run_cli(main, ["--basedir", str(tmp / "exp"), "--expname", "b", "--data", str(tmp / "vol.npy"),
                          "--device", "cpu", "--quant_bits", "4", "--output", str(out), option, value])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "corrections, verified max abs error" in captured.out
    bound = 0.5 if option == "--max_abs_error" else 0.002 * float(values.max() - values.min())
    f = parse(out.read_bytes())
    assert f.bound.max_abs_error == pytest.approx(bound)
    assert max_error(values, decode_volume(f)[0]) <= bound


@pytest.mark.parametrize("args,message", [
    (["--max_abs_error", "1", "--max_rel_error", "0.1"], "not both"),
    (["--max_rel_error", "1.5"], "max_rel_error"),
    (["--max_abs_error", "-1"], "max_abs_error")])
def test_bound_options_fail_in_one_line(checkpoint, capsys, args, message):
    from NeurcompQuantization import main

    tmp, _ = checkpoint
    code = run_cli(main, ["--basedir", str(tmp / "exp"), "--expname", "b", "--data", str(tmp / "vol.npy"),
                          "--output", str(tmp / "x.ncq"), *args])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().count("\n") == 0 and message in err
    assert not (tmp / "x.ncq").exists()


# -- the "ans" correction coding (quantization.correction_coding) ---------------------------------
def test_ans_streams_round_trip_at_every_bit_length():
    from neurcomp.quantization import correction_coding

    rng = np.random.default_rng(0)
    edges = np.array([0, 1, 31, 32, 33, 63, 64, 2 ** 31, 2 ** 53 + 1, 2 ** 62, 2 ** 63 - 1], np.uint64)
    for deltas in (edges, rng.geometric(0.05, 2000).astype(np.uint64), np.ones(5, np.uint64), np.zeros(0, np.uint64)):
        zigzag = rng.integers(1, 300, deltas.size).astype(np.uint64)
        stored = correction_coding.compress_section(deltas, zigzag)
        back = correction_coding.decompress_section(stored, deltas.size)
        assert np.array_equal(back[0], deltas) and np.array_equal(back[1], zigzag)
        with pytest.raises(ValueError):  # another count, or a cut stream, never decodes silently
            correction_coding.decompress_section(stored[:-1] if stored[-1:] else stored + b"\0", deltas.size)
    with pytest.raises(ValueError):
        correction_coding.compress_section(np.array([2 ** 63], np.uint64), np.ones(1, np.uint64))


def test_the_smaller_section_coding_is_stored_and_both_decode_within_the_bound():
    z, y, x = np.meshgrid(*(np.linspace(0, 1, n) for n in (12, 13, 14)), indexing="ij")
    values = (np.sin(6 * x) * np.cos(5 * y) + z).astype(np.float32)
    data, _ = encode_bounded(_net(values), values, "rel", 1e-2)
    net = parse(data)
    sizes = {c: len(error_bound.encode_section(replace(net.bound, coding=c))[1]) for c in ("zstd", "ans")}
    assert net.bound.coding == min(sizes, key=sizes.get) and net.bound.positions.size > 100
    assert len(error_bound.encode_section(net.bound)[1]) == min(sizes.values())
    for coding in ("zstd", "ans"):
        file = serialize(replace(net, bound=replace(net.bound, coding=coding)))
        back = parse(file)
        assert back.bound.coding == coding and serialize(back) == file
        assert np.array_equal(back.bound.positions, net.bound.positions)
        assert np.array_equal(back.bound.values, net.bound.values)
        decoded = decode_volume(back)[0]
        assert np.abs(decoded - values).max() <= net.bound.max_abs_error


def test_a_corrupt_ans_section_with_a_valid_checksum_is_refused():
    z, y, x = np.meshgrid(*(np.linspace(0, 1, n) for n in (12, 13, 14)), indexing="ij")
    values = (np.sin(6 * x) * np.cos(5 * y) + z).astype(np.float32)
    data, _ = encode_bounded(_net(values), values, "rel", 1e-2)
    net = parse(data)
    good = serialize(replace(net, bound=replace(net.bound, coding="ans")))
    header_size = struct.unpack_from("<I", good, 12)[0]
    at = header_size - 4 - error_bound.RECORD.size
    fields = list(error_bound.RECORD.unpack_from(good, at))
    section = bytearray(good[len(good) - fields[6]:])
    section[0] = 200  # an impossible number of symbols
    fields[8] = zlib.crc32(bytes(section))
    head = bytearray(good[:len(good) - len(section)])
    head[at:at + error_bound.RECORD.size] = error_bound.RECORD.pack(*fields)
    head[header_size - 4:header_size] = struct.pack("<I", zlib.crc32(bytes(head[:header_size - 4])))
    with pytest.raises(InputError, match="cannot decode the ans correction section"):
        parse(bytes(head) + bytes(section))
