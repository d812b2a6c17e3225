"""Quantization: k-means, bit packing, the compressed file format, and the two entry scripts."""

import json
import os
import struct
import subprocess
import sys
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from neurcomp.config.errors import InputError  # noqa: E402
from neurcomp.model.architecture import Architecture  # noqa: E402
from neurcomp.model.neurcomp import Neurcomp  # noqa: E402
from neurcomp.quantization.bitpack import pack_bits, packed_size, unpack_bits  # noqa: E402
from neurcomp.quantization.decode import build_model, decode_bytes  # noqa: E402
from neurcomp.quantization.encode import (EncoderOptions, encode_model, encode_network, finetune_codebooks,  # noqa: E402
                                 quantize_network)
from neurcomp.quantization.format import MAGIC, parse  # noqa: E402
from neurcomp.quantization.kmeans import kmeans_1d  # noqa: E402
from neurcomp.data.volume import VolumeInfo  # noqa: E402
from neurcomp.training.checkpoint import save_checkpoint  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


INFO = VolumeInfo(shape=(9, 10, 11), spacing=(0.5, 1.0, 2.0), vmin=-3.0, vmax=7.5, source_dtype="uint16",
                  origin=(1.0, 2.0, 3.0))


def _model(widths, residual=True, seed=0) -> Neurcomp:
    torch.manual_seed(seed)
    return Neurcomp(Architecture(widths=list(widths), residual=residual))


def _coords(n=257, seed=1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, generator=g) * 2 - 1


@pytest.mark.parametrize("bits", range(1, 17))
def test_bitpack_every_width(bits):
    rng = np.random.default_rng(bits)
    for n in (0, 1, 7, 8, 9, 1001):
        values = rng.integers(0, 1 << bits, n)
        if n:
            values[0] = (1 << bits) - 1  # the largest value must survive too
        data = pack_bits(values, bits)
        assert len(data) == packed_size(n, bits)
        assert np.array_equal(unpack_bits(data, n, bits), values)


def test_kmeans_deterministic_sorted_and_near_optimal():
    rng = np.random.default_rng(0)
    w = rng.normal(size=20000).astype(np.float32)
    a, b = kmeans_1d(w, 4), kmeans_1d(w, 4)
    assert np.array_equal(a.codebook, b.codebook) and np.array_equal(a.indices, b.indices)
    assert np.all(np.diff(a.codebook) > 0) and a.codebook.size == 16 and not a.exact
    # Lloyd-Max optimum for a unit Gaussian at 16 levels: MSE 0.009497
    assert np.mean((a.dequantize() - w) ** 2) < 0.0097
    few = np.repeat(np.float32([0.5, -1.25, 3.0]), 5)
    exact = kmeans_1d(few, 2)
    assert exact.exact and np.array_equal(exact.dequantize(), few)


def _check_round_trip(model, bits, options):
    net = quantize_network(model, INFO, bits, options)
    data = encode_network(net)
    back = parse(data, "mem")
    assert back.arch == model.arch
    for (w0, b0), (w1, b1), lin in zip(net.tensors, back.tensors, model.linears()):
        for t0, t1 in ((w0, w1), (b0, b1)):
            assert t0.kind == t1.kind and t0.dtype == t1.dtype
            assert np.array_equal(t0.values, t1.values)  # centroids (or raw values) exact
            if t0.kind == "codebook":
                assert t1.bits <= bits and np.array_equal(t0.indices, t1.indices)  # indices exact
    decoded, info, meta = decode_bytes(data, "mem")
    assert info.shape == INFO.shape and info.spacing == INFO.spacing and info.origin == INFO.origin
    assert (info.vmin, info.vmax, info.source_dtype) == (INFO.vmin, INFO.vmax, INFO.source_dtype)
    for lin, (w, b) in zip(decoded.linears(), back.tensors):
        expect = w.values if w.kind == "raw" else w.values[w.indices.astype(np.int64)]
        assert np.array_equal(lin.weight.detach().numpy().reshape(-1), expect)  # weights == their centroids
    return net, decoded, data


def test_round_trip_every_bits():
    model = _model([300, 300])  # 90000-weight matrices: a full 2^16 codebook still pays at 16 bits
    for bits in range(1, 17):
        # bit-packed (none) and byte-plane (zstd, lzma) index layouts
        compression = "lzma" if bits == 9 else ("none", "zstd")[bits % 2]
        net, _, _ = _check_round_trip(model, bits, EncoderOptions(compression=compression, level=3, quantizer="kmeans"))
        w = net.tensors[1][0]
        assert w.kind == "codebook" and w.bits == bits and w.values.size == 1 << bits


def test_fewer_distinct_weights_than_centroids_is_lossless_with_kmeans():
    model = _model([8, 6])
    opts = EncoderOptions(codebook_dtype="float16", bias="float32", quantize_first_last=True, quantizer="kmeans")
    net, decoded, _ = _check_round_trip(model, 12, opts)
    for a, b in zip(model.linears(), decoded.linears()):
        assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)


@pytest.mark.parametrize("bits", [8, 12])
def test_matrices_too_small_for_a_codebook_keep_the_precision_of_their_bits(bits):
    """The default quantizer stores a matrix no codebook fits as uniform integers at B bits'
    precision (mean squared error at most var / 4^B), smaller than raw float32; kmeans keeps it raw (exact)."""
    from neurcomp.quantization.encode import quantize_tensor

    w = np.random.default_rng(bits).normal(0, 0.1, 42).astype(np.float32)  # a 6 x 7 hidden matrix
    code = quantize_tensor(w, bits)
    assert code.kind == "uniform"
    assert np.mean((code.dequantize().astype(np.float64) - w) ** 2) <= np.var(w, dtype=np.float64) / 4 ** bits
    assert np.abs(code.dequantize() - w).max() <= code.uniform[0] / 2 * 1.0001
    assert quantize_tensor(w, bits, quantizer="kmeans").kind == "raw"
    model = _model([6, 6])
    small = len(encode_model(model, INFO, 8))
    assert small < 0.75 * len(encode_model(model, INFO, 8, EncoderOptions(quantizer="kmeans")))


@pytest.mark.parametrize("residual", [True, False])
def test_pruned_and_plain_networks_round_trip(residual):
    model = _model([24, 7, 13, 5], residual=residual)
    for opts in (EncoderOptions(), EncoderOptions(quantize_first_last=False, bias="quantized", compression="none")):
        net, decoded, _ = _check_round_trip(model, 5, opts)
        quantized = build_model(net)
        with torch.no_grad():
            x = _coords()
            assert torch.equal(decoded(x), quantized(x))
            assert not torch.equal(decoded(x), model(x))  # 5 bits really quantized something


def _small_file(compression="zstd"):
    return encode_model(_model([6, 5]), INFO, 3, EncoderOptions(compression=compression))


def _one_line_error(excinfo, name):
    msg = str(excinfo.value)
    assert name in msg and "\n" not in msg
    return msg


@pytest.mark.parametrize("compression", ["none", "zstd", "lzma"])
def test_every_flipped_byte_and_every_truncation_is_rejected(compression):
    data = _small_file(compression)
    for pos in range(len(data)):
        bad = bytearray(data)
        bad[pos] ^= 0x5A
        with pytest.raises(InputError) as e:
            parse(bytes(bad), "flipped.ncq")
        _one_line_error(e, "flipped.ncq")
    for n in range(len(data)):
        with pytest.raises(InputError) as e:
            parse(data[:n], "short.ncq")
        _one_line_error(e, "short.ncq")
    with pytest.raises(InputError, match="mismatch"):
        parse(data + b"\0", "long.ncq")


def _rechecksum(data: bytes) -> bytes:
    header_size = struct.unpack_from("<I", data, 12)[0]
    head = data[:header_size - 4]
    return head + struct.pack("<I", zlib.crc32(head)) + data[header_size:]


def test_specific_refusals_have_clear_messages():
    data = _small_file()
    with pytest.raises(InputError, match="wrong magic"):
        parse(b"PK\x03\x04" + data[4:], "x.ncq")
    newer = bytearray(data)
    newer[8:10] = struct.pack("<H", 99)
    with pytest.raises(InputError, match="unknown format version 99"):
        parse(_rechecksum(bytes(newer)), "x.ncq")
    with pytest.raises(InputError, match="truncated"):
        parse(data[:-1], "x.ncq")
    with pytest.raises(InputError, match="payload checksum"):
        parse(data[:-1] + bytes([data[-1] ^ 1]), "x.ncq")
    with pytest.raises(InputError, match="header checksum"):
        parse(data[:20] + bytes([data[20] ^ 1]) + data[21:], "x.ncq")
    # a consistent, checksummed header describing another architecture than its payload
    net = quantize_network(_model([6, 5]), INFO, 3)
    lying = encode_network(replace(net, arch=Architecture(widths=[6, 4])))
    with pytest.raises(InputError, match="header/payload mismatch"):
        parse(lying, "x.ncq")
    assert MAGIC == data[:8]


def _finetune_case(lr, keep_best):
    from neurcomp.training.sampling import VolumeSampler

    z, y, x = np.meshgrid(*[np.linspace(-1, 1, 12)] * 3, indexing="ij")
    vol = np.sin(3 * x) * np.cos(2 * y) * z
    model = _model([16, 16])
    net = quantize_network(model, INFO, 3)
    before = [w.indices.copy() for w, _ in net.tensors if w.kind == "codebook"]
    codebooks = [w.values.copy() for w, _ in net.tensors if w.kind == "codebook"]
    sampler = VolumeSampler(vol.astype(np.float32), "cpu", seed=0)
    result = finetune_codebooks(model, net, sampler, passes=4, points_per_step=512, lr=lr, log=None,
                                keep_best=keep_best)
    after = [w for w, _ in net.tensors if w.kind == "codebook"]
    assert result["steps"] == 14
    assert all(np.array_equal(a, w.indices) for a, w in zip(before, after))  # assignments fixed
    for lin, (w, _) in zip(model.linears(), net.tensors):  # model holds the stored (dequantized) weights
        assert np.array_equal(lin.weight.detach().numpy().reshape(-1), w.dequantize())
    changed = any(not np.array_equal(c, w.values) for c, w in zip(codebooks, after))
    return result, changed


def test_finetune_trains_centroids_with_fixed_assignments():
    # k-means of an untrained network is far from the volume: the tuned codebooks and biases must
    # lower the grid MSE they are trained on, by far (about 4 dB here), whether kept or not
    result, changed = _finetune_case(lr=1e-3, keep_best=False)
    assert result["kept"] and changed
    assert result["psnr_tuned"] == result["psnr_after"] > result["psnr_before"] + 1.0


def test_finetune_keeps_the_kmeans_codebooks_when_tuning_makes_them_worse():
    result, changed = _finetune_case(lr=1.0, keep_best=True)  # steps far too large: the tuned result is worse
    assert result["psnr_tuned"] < result["psnr_before"]
    assert not result["kept"] and not changed and result["psnr_after"] == result["psnr_before"]


# ----------------------------------------------------------------------------------------------
# the entry scripts, end to end


def _run(script, *args, cwd=ROOT):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """A tiny network fitted for a few hundred steps to a synthetic 16^3 volume, saved like training does."""
    from neurcomp.data.volume import Volume
    from neurcomp.training.sampling import VolumeSampler

    tmp = tmp_path_factory.mktemp("quant")
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, 16)] * 3, indexing="ij")
    values = (40 * np.exp(-3 * (x ** 2 + (y - 0.2) ** 2 + z ** 2)) + 10 * np.sin(2 * x)).astype(np.float32)
    np.save(tmp / "vol.npy", values)
    volume = Volume(values, spacing=(1.0, 1.0, 1.0), path=str(tmp / "vol.npy"))
    torch.manual_seed(0)
    model = Neurcomp(Architecture.uniform(16, 3))
    sampler = VolumeSampler(volume.normalized(), "cpu", seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(300):
        coords, targets, _ = sampler.sample(1024)
        loss = torch.mean((model(coords) - targets) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    exp_dir = tmp / "experiments" / "tiny"
    exp_dir.mkdir(parents=True)
    save_checkpoint(exp_dir / "checkpoint.pt", model, VolumeInfo.from_volume(volume))
    (exp_dir / "config.txt").write_text(
        f"expname = tiny\nbasedir = {tmp / 'experiments'}\ndata = {tmp / 'vol.npy'}\nn_layers = 3\n"
        f"features_per_layer = 16\nbatch_size = 64\nsample_size = 16\ndevice = cpu\ntracking = none\n")
    return tmp, exp_dir, model, volume


def test_cli_end_to_end_with_vtk_reader(experiment):
    from vtkmodules.util.numpy_support import vtk_to_numpy
    from vtkmodules.vtkIOXML import vtkXMLImageDataReader

    from neurcomp.data.metrics import volume_metrics
    from neurcomp.quantization.decode import decode_file
    from neurcomp.model.inference import predict_volume

    tmp, exp_dir, model, volume = experiment
    r = _run("NeurcompQuantization.py", "--config", exp_dir / "config.txt", "--filename", "tiny.ncq",
             "--quant_bits", 8, "--finetune_passes", 1)
    assert r.returncode == 0, r.stderr
    compressed = exp_dir / "tiny.ncq"
    size = compressed.stat().st_size
    assert "compression ratio" in r.stdout and str(size) in r.stdout and "fine-tuning" in r.stdout

    out = tmp / "recon.vti"
    metrics_path = tmp / "metrics.json"
    r = _run("NeurcompDequantization.py", "--compressed_file", compressed, "--volume", tmp / "vol.npy",
             "--decompressed_file", out, "--metrics_json", metrics_path)
    assert r.returncode == 0, r.stderr
    assert "PSNR" in r.stdout
    metrics = json.loads(metrics_path.read_text())
    assert set(metrics) == {"psnr", "rmse", "l1_diff", "max_abs_error", "compression_ratio", "file_bytes"}
    assert metrics["file_bytes"] == size and metrics["compression_ratio"] == pytest.approx(16 ** 3 * 4 / size)

    reader = vtkXMLImageDataReader()
    reader.SetFileName(str(out))
    reader.Update()
    image = reader.GetOutput()
    assert image.GetDimensions() == (16, 16, 16) and image.GetSpacing() == (1.0, 1.0, 1.0)
    from_vtk = vtk_to_numpy(image.GetPointData().GetArray(0)).reshape(16, 16, 16)

    decoded, info, _ = decode_file(compressed)
    assert np.allclose(from_vtk, predict_volume(decoded, info.shape, info), rtol=0, atol=1e-4)
    original = predict_volume(model, volume.shape, VolumeInfo.from_volume(volume))
    # the decoded volume differs from the unquantized network's only by quantization error
    assert volume_metrics(original, from_vtk)["psnr"] > 35
    assert metrics["psnr"] == pytest.approx(volume_metrics(volume.values, from_vtk)["psnr"], abs=1e-3)
    assert metrics["psnr"] > volume_metrics(volume.values, original)["psnr"] - 0.5


def test_cli_bad_inputs_fail_in_one_line(experiment, capsys):
    tmp, exp_dir, _, _ = experiment
    bad = tmp / "bad.ncq"
    bad.write_bytes(MAGIC + b"\x01\x00")
    r = _run("NeurcompDequantization.py", "--compressed_file", bad)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "bad.ncq" in r.stderr and "truncated" in r.stderr

    from NeurcompQuantization import main as quantize  # in-process: same run_cli path, no torch start-up
    from neurcomp.config.cli import run_cli

    code = run_cli(quantize, ["--config", str(exp_dir / "config.txt"), "--expname", "missing"])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err
    assert err.strip().count("\n") == 0 and "checkpoint not found" in err


# ----------------------------------------------------------------------------------------------
# hand-made files: consistent, checksummed, and still impossible


def _crafted(**changes) -> bytes:
    """A file whose header (or tensors) say what ``changes`` say, with valid checksums throughout."""
    from neurcomp.quantization.format import serialize

    net = quantize_network(_model([6, 5]), INFO, 3, EncoderOptions(compression="none", bias="float32"))
    arch, volume, settings = net.arch, net.volume, net.settings
    if "omega_0" in changes:
        arch = replace(arch, omega_0=changes.pop("omega_0"))
    if "passes" in changes:
        settings = replace(settings, finetune_passes=changes.pop("passes"))
    tensors = list(net.tensors)
    if "centroid" in changes:
        w, b = tensors[1]
        assert w.kind == "codebook"
        tensors[1] = (replace(w, values=np.concatenate([[changes.pop("centroid")], w.values[1:]]).astype(np.float32)), b)
    if "bias" in changes:
        w, b = tensors[0]
        tensors[0] = (w, replace(b, values=np.concatenate([[changes.pop("bias")], b.values[1:]]).astype(np.float32)))
    volume = replace(volume, **changes)
    return serialize(replace(net, arch=arch, volume=volume, settings=settings, tensors=tensors))


@pytest.mark.parametrize("changes, message", [
    (dict(omega_0=0.0), "omega_0"), (dict(omega_0=-30.0), "omega_0"), (dict(omega_0=float("nan")), "omega_0"),
    (dict(shape=(65535, 65535, 65535)), "more than this machine"),
    (dict(vmin=float("nan")), "value range"), (dict(vmax=float("inf")), "value range"),
    (dict(vmin=7.5), "value range"), (dict(spacing=(0.0, 1.0, 1.0)), "spacing"),
    (dict(spacing=(1.0, float("nan"), 1.0)), "spacing"), (dict(origin=(float("inf"), 0.0, 0.0)), "origin"),
    (dict(centroid=float("nan")), "NaN or infinite"), (dict(bias=float("inf")), "NaN or infinite"),
    (dict(passes=float("inf")), "fine-tuning passes"), (dict(passes=float("nan")), "fine-tuning passes"),
    (dict(passes=-1.0), "fine-tuning passes"),
])
def test_crafted_headers_are_refused_in_one_line(tmp_path, capsys, changes, message):
    from NeurcompDequantization import main as dequantize
    from neurcomp.config.cli import run_cli

    path = tmp_path / "crafted.ncq"
    path.write_bytes(_crafted(**changes))
    with pytest.raises(InputError, match=message):
        parse(path.read_bytes(), "crafted.ncq")
    out = tmp_path / "out.vti"
    code = run_cli(dequantize, ["--compressed_file", str(path), "--decompressed_file", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and err.strip().count("\n") == 0
    assert "crafted.ncq" in err and message in err and not out.exists()


def _with_payload(data: bytes, stored: bytes, raw_size: int) -> bytes:
    """``data`` with its payload replaced (sizes and both checksums updated)."""
    from neurcomp.quantization.format import _PAYLOAD

    header_size = struct.unpack_from("<I", data, 12)[0]
    at = header_size - 4 - _PAYLOAD.size
    n_tensors = struct.unpack_from("<I", data, at)[0]
    head = bytearray(data[:header_size - 4])
    head[at:at + _PAYLOAD.size] = _PAYLOAD.pack(n_tensors, len(stored), raw_size, zlib.crc32(stored))
    return bytes(head) + struct.pack("<I", zlib.crc32(bytes(head))) + stored


@pytest.mark.parametrize("method", ["lzma", "zstd"])
def test_decompression_bombs_are_cut_at_the_announced_size(method):
    from neurcomp.quantization.format import compress, decompress

    data = _small_file(method)
    net = parse(data, "mem")
    header_size = struct.unpack_from("<I", data, 12)[0]
    raw_size = struct.unpack_from("<Q", data, header_size - 4 - 12)[0]
    raw = decompress(data[header_size:], method, raw_size)
    assert len(raw) == raw_size and net.settings.compression == method
    bomb = compress(raw + bytes(4 << 20), method, level=1 if method == "zstd" else None)  # 4 MiB of zeros more
    assert len(decompress(bomb, method, raw_size)) == raw_size + 1  # cut, never held in full
    with pytest.raises(InputError, match="mismatch"):
        parse(_with_payload(data, bomb, raw_size), "bomb.ncq")
    # a header announcing more than the architecture could ever hold is refused before decoding
    with pytest.raises(InputError, match="impossible for"):
        parse(_with_payload(data, bomb, raw_size + (4 << 20)), "bomb.ncq")


def test_nan_weights_at_encode_time_are_an_input_error():
    model = _model([6, 5])
    with torch.no_grad():
        model.linears()[1].weight[0, 0] = float("nan")
    with pytest.raises(InputError, match="ckpt.pt: cannot quantize: linear layer 1 holds NaN"):
        quantize_network(model, INFO, 3, source="ckpt.pt")
    with pytest.raises(InputError, match="value range"):
        quantize_network(_model([6, 5]), replace(INFO, vmin=float("nan")), 3)


@pytest.mark.parametrize("args, message", [
    (["--finetune_passes", "inf"], "finetune_passes = inf is invalid"),
    (["--finetune_passes", "nan"], "finetune_passes = nan is invalid"),
    (["--finetune_lr", "inf"], "finetune_lr = inf is invalid"),
    (["--output", "{tmp}"], "is a folder"),
    (["--output", "{tmp}/vol.npy/q.ncq"], "is a file, not a folder"),
])
def test_quantization_options_fail_in_one_line(experiment, capsys, args, message):
    from NeurcompQuantization import main as quantize
    from neurcomp.config.cli import run_cli

    tmp, exp_dir, _, _ = experiment
    before = sorted(p.name for p in exp_dir.iterdir())
    code = run_cli(quantize, ["--config", str(exp_dir / "config.txt"), *(a.format(tmp=tmp) for a in args)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and err.strip().count("\n") == 0 and message in err
    assert sorted(p.name for p in exp_dir.iterdir()) == before  # nothing written


def test_quantization_refuses_a_checkpoint_with_nan_weights(experiment, tmp_path, capsys):
    from NeurcompQuantization import main as quantize
    from neurcomp.config.cli import run_cli

    _, exp_dir, model, volume = experiment
    broken = Neurcomp(model.arch)
    broken.load_state_dict(model.state_dict())
    with torch.no_grad():
        broken.linears()[2].bias[0] = float("nan")
    folder = tmp_path / "experiments" / "nan"
    folder.mkdir(parents=True)
    save_checkpoint(folder / "checkpoint.pt", broken, VolumeInfo.from_volume(volume))
    code = run_cli(quantize, ["--config", str(exp_dir / "config.txt"), "--basedir", str(tmp_path / "experiments"),
                              "--expname", "nan"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and err.strip().count("\n") == 0
    # refused where the checkpoint is read (training.checkpoint.load_model), before quantizing
    assert "checkpoint.pt: the network's weights are not all finite (NaN or Inf)" in err
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint.pt"]


@pytest.mark.parametrize("option, target, message", [
    ("--decompressed_file", "{tmp}", "is a folder"),
    ("--decompressed_file", "{tmp}/vol.npy/out.vti", "is a file, not a folder"),
    ("--metrics_json", "{tmp}", "is a folder"),
    ("--metrics_json", "{tmp}/vol.npy/m.json", "is a file, not a folder"),
])
def test_dequantization_outputs_that_cannot_be_files_fail_in_one_line(experiment, tmp_path, capsys, option, target,
                                                                      message):
    from NeurcompDequantization import main as dequantize
    from neurcomp.config.cli import run_cli

    tmp, _, model, volume = experiment
    compressed = tmp_path / "q.ncq"
    compressed.write_bytes(encode_model(model, VolumeInfo.from_volume(volume), 6))
    args = ["--compressed_file", str(compressed), "--volume", str(tmp / "vol.npy"), option, target.format(tmp=tmp)]
    if option == "--metrics_json":
        args += ["--decompressed_file", str(tmp_path / "out.vti")]
    code = run_cli(dequantize, args)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and err.strip().count("\n") == 0
    assert option in err and message in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.ncq"]


def test_quantization_and_decoding_do_not_import_training():
    """Dependencies run one way: entry scripts -> training -> quantization -> model, data -> config."""
    code = ("import sys, quantization.cli, quantization.decode, quantization.encode, quantization.rate_control, "
            "model.inference, model.device, NeurcompDequantization; "
            "print(sorted(m for m in sys.modules if m == 'training' or m.startswith('training.')))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
