"""Uniform records (FORMAT.md kind 2): uniform quantization with constriction's ANS-coded integers.

Round trip exactness, files of the earlier writer still decoding (and still written byte for
byte with quantizer = kmeans), corrupt streams refused in one line, and a trained network's file
actually smaller (quantization/entropy.py, benchmarks/entropy_bench.py)."""

import base64
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

pytest.importorskip("constriction")

from neurcomp.config.errors import InputError  # noqa: E402
from neurcomp.data.volume import VolumeInfo  # noqa: E402
from neurcomp.model.architecture import Architecture  # noqa: E402
from neurcomp.model.neurcomp import Neurcomp  # noqa: E402
from neurcomp.quantization import entropy  # noqa: E402
from neurcomp.quantization.decode import decode_bytes  # noqa: E402
from neurcomp.quantization.encode import EncoderOptions, encode_model, encode_network, quantize_network  # noqa: E402
from neurcomp.quantization.format import _TENSOR, FLAG_UNIFORM, parse  # noqa: E402

INFO = VolumeInfo(shape=(5, 6, 7), spacing=(1.0, 1.0, 2.0), vmin=-3.0, vmax=4.5)

# written by the encoder before uniform records existed (commit 6e471e9, 3 bits, payload coding
# none), from _laplace_model(): an old file must decode, and quantizer = kmeans still writes it
OLD_FILE = base64.b64decode(
    "iU5DUQ0KGgoBAAAAogAAAAMAAQABAAIAAAAAAAAAPkAGAAAABgAAAAUAAAAGAAAABwAAAAAAAAAAAPA/AAAAAAAA8D8AAAAAAAAAQAAAAAAAAAAAAAAA"
    "AAAAAAAAAAAAAAAAAAAAAAAAAAjAAAAAAAAAEkAHZmxvYXQzMgMBAQABAAAAAAAIAAAA8gAAAAAAAADyAAAAAAAAAIp/n3CI8JByAAEAABIAAAAAAAAA"
    "BK5AKbuelSf/MBocWgczrvanxYCvJfwp9qJ8rg6neS1zqSedAAEAAAYAAAAAAAAAGStYIgcn47BIMecjAQEDACQAAAAIAAAAcqNfjs8lWKl0KUqujS6w"
    "tMqCgEQWCBE8AgpeRVYBAAEAAAYAAAAAAAAAmLBsKtqgoy+5qBqyAQEDACQAAAAIAAAAvpypKSMmwKW7q1ItLq/MsgK3EUiAVKk7RJQXSMkBAAEAAAYA"
    "AAAAAAAAUKy5nTszkC1hqAqqAAEAAAYAAAAAAAAA6CRArCOpJyDsqlIpAAEAAAEAAAAAAAAAkTA=")


def _laplace_model(widths=(6, 6), seed=7, scale=0.05):
    model = Neurcomp(Architecture(widths=list(widths), residual=True))
    rs = np.random.RandomState(seed)
    with torch.no_grad():
        for lin in model.linears():
            lin.weight.copy_(torch.from_numpy(rs.laplace(0, scale, lin.weight.shape).astype(np.float32)))
            lin.bias.copy_(torch.from_numpy(rs.normal(0, 0.1, lin.bias.shape).astype(np.float32)))
    return model


def _records(payload: bytes):
    """(offset, kind, count, K, layout) of every tensor record of a raw payload."""
    out, pos = [], 0
    while pos < len(payload):
        kind, dt, bits, layout, count, k = _TENSOR.unpack_from(payload, pos)
        out.append((pos, kind, count, k, layout))
        pos += _TENSOR.size
        item = 2 if dt == 1 else 4
        if kind == 0:
            pos += count * item
        elif kind == 1:
            pos += k * item + (count * bits + 7) // 8
        else:
            n_words = struct.unpack_from("<I", payload, pos + entropy.HEAD_SIZE - 4)[0]
            pos += entropy.HEAD_SIZE + 4 * n_words
    return out


def _rechecksum(data: bytearray) -> bytes:
    """Recompute the payload and header CRCs of a version-1 file with payload coding none."""
    (header_size,) = struct.unpack_from("<I", data, 12)
    (stored,) = struct.unpack_from("<Q", data, header_size - 4 - 4 - 16)
    payload = bytes(data[header_size:header_size + stored])
    struct.pack_into("<I", data, header_size - 8, zlib.crc32(payload))
    struct.pack_into("<I", data, header_size - 4, zlib.crc32(bytes(data[:header_size - 4])))
    return bytes(data)


def test_model_table_is_products_only_and_normalisable():
    p = entropy.model_probabilities(7, 0, 3, 0.5)
    assert np.array_equal(p, [0.125, 0.25, 0.5, 1.0, 0.5, 0.25, 0.125])
    g = entropy.model_probabilities(5, 1, 2, 0.5)  # theta^(d^2)
    assert np.array_equal(g, [0.5 ** 4, 0.5, 1.0, 0.5, 0.5 ** 4])
    tiny = entropy.model_probabilities(4000, 1, 0, 0.5)  # the tail underflows to 0: still codable
    assert tiny[0] == 1.0 and tiny[-1] == 0.0


@pytest.mark.parametrize("compression", ["none", "zstd", "lzma", "auto"])
def test_uniform_round_trip_is_exact(compression):
    model = _laplace_model((40, 40))
    net = quantize_network(model, INFO, 6, EncoderOptions(quantizer="uniform", compression=compression))
    kinds = [w.kind for w, _ in net.tensors]
    assert kinds[1:-1] == ["uniform"] * (len(kinds) - 2) and kinds[0] == kinds[-1] == "raw"
    data = encode_network(net)
    assert struct.unpack_from("<H", data, 10)[0] == FLAG_UNIFORM
    back = parse(data, "mem")
    decoded, _, _ = decode_bytes(data, "mem")
    for (w0, b0), (w1, b1), lin in zip(net.tensors, back.tensors, decoded.linears()):
        assert w0.kind == w1.kind and np.array_equal(w0.values, w1.values)
        assert np.array_equal(w0.dequantize(), w1.dequantize()) and np.array_equal(b0.dequantize(), b1.dequantize())
        assert np.array_equal(lin.weight.detach().numpy().reshape(-1), w1.dequantize())
        if w1.kind == "uniform":
            step, qmin = w1.uniform
            assert np.array_equal(w1.values, np.arange(qmin, qmin + w1.values.size, dtype=np.float32) * np.float32(step))
    assert encode_network(back) == data  # re-encoding the parsed file gives the same bytes


def test_uniform_error_is_at_most_the_kmeans_error():
    model = _laplace_model((40, 40))
    km = quantize_network(model, INFO, 5, EncoderOptions(quantizer="kmeans"))
    un = quantize_network(model, INFO, 5, EncoderOptions(quantizer="uniform"))
    for lin, (wk, _), (wu, _) in list(zip(model.linears(), km.tensors, un.tensors))[1:-1]:
        w = lin.weight.detach().numpy().reshape(-1).astype(np.float64)
        assert np.mean((wu.dequantize() - w) ** 2) <= np.mean((wk.dequantize() - w) ** 2)


def test_old_files_still_decode_and_kmeans_writes_them_unchanged():
    net = parse(OLD_FILE, "old.ncq")
    model = _laplace_model()
    kinds = [w.kind for w, _ in net.tensors]
    assert kinds[0] == kinds[-1] == "raw" and set(kinds[1:-1]) == {"codebook"} and len(kinds) == 4
    decoded, info, _ = decode_bytes(OLD_FILE, "old.ncq")
    assert info.shape == INFO.shape
    for lin, (w, _) in zip(decoded.linears(), net.tensors):
        assert np.allclose(lin.weight.detach().numpy().reshape(-1), w.dequantize())
    assert encode_model(model, INFO, 3, EncoderOptions(compression="none", quantizer="kmeans")) == OLD_FILE


def test_corrupt_ans_stream_is_refused_in_one_line():
    model = _laplace_model((40, 40))
    data = bytearray(encode_network(quantize_network(model, INFO, 6, EncoderOptions(quantizer="uniform",
                                                                                          compression="none"))))
    (header_size,) = struct.unpack_from("<I", data, 12)
    payload = bytes(data[header_size:])
    pos, kind, count, k, layout = next(r for r in _records(payload) if r[1] == 2)
    words = header_size + pos + _TENSOR.size + entropy.HEAD_SIZE
    for i in range(8):  # overwrite some words in the middle of the stream, then fix the checksums
        data[words + 40 + i] ^= 0xA5
    bad = _rechecksum(data)
    with pytest.raises(InputError) as err:
        parse(bad, "bad.ncq")
    msg = str(err.value)
    assert msg.startswith("bad.ncq: ") and "\n" not in msg and "ANS stream" in msg
    # a record announcing more words than its values can need is refused before decoding
    data = bytearray(encode_network(quantize_network(model, INFO, 6, EncoderOptions(quantizer="uniform",
                                                                                         compression="none"))))
    struct.pack_into("<I", data, header_size + pos + _TENSOR.size + entropy.HEAD_SIZE - 4, count + 3)
    with pytest.raises(InputError, match="ANS words"):
        parse(_rechecksum(data), "bad.ncq")


def test_unknown_flags_and_bad_uniform_fields_are_refused():
    model = _laplace_model((40, 40))
    data = bytearray(encode_network(quantize_network(model, INFO, 6, EncoderOptions(quantizer="uniform",
                                                                                         compression="none"))))
    flagged = bytearray(data)
    struct.pack_into("<H", flagged, 10, 8)  # bit 3: no decoder knows it
    (header_size,) = struct.unpack_from("<I", flagged, 12)
    struct.pack_into("<I", flagged, header_size - 4, zlib.crc32(bytes(flagged[:header_size - 4])))
    with pytest.raises(InputError, match="unknown header flags"):
        parse(bytes(flagged), "f.ncq")
    pos = next(r for r in _records(bytes(data[header_size:])) if r[1] == 2)[0]
    struct.pack_into("<f", data, header_size + pos + _TENSOR.size, -1.0)  # step must be > 0
    with pytest.raises(InputError, match="bad uniform record"):
        parse(_rechecksum(data), "s.ncq")


def test_trained_network_file_is_smaller_with_the_default_quantizer():
    from neurcomp.datasets.marschner_lobb import marschner_lobb

    torch.manual_seed(0)
    values = torch.from_numpy(marschner_lobb((24, 24, 24)).astype(np.float32))
    values = 2 * (values - values.min()) / (values.max() - values.min()) - 1
    model = Neurcomp(Architecture.uniform(32, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    axes = [torch.linspace(-1, 1, n) for n in values.shape]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij")[::-1], dim=-1).reshape(-1, 3)
    target = values.reshape(-1, 1)
    for _ in range(150):
        idx = torch.randint(0, grid.shape[0], (2048,))
        loss = torch.mean((model(grid[idx]) - target[idx]) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for bits in (6, 8):
        kmeans = encode_model(model, INFO, bits, EncoderOptions(quantizer="kmeans"))
        default = encode_model(model, INFO, bits)
        assert EncoderOptions().quantizer == "auto"
        assert len(default) < 0.95 * len(kmeans), (bits, len(default), len(kmeans))
        assert any(w.kind == "uniform" for w, _ in parse(default).tensors)


def test_quantization_command_takes_the_quantizer(tmp_path):
    """NeurcompQuantization.py --quantizer kmeans writes codebooks only, uniform ANS records only."""
    from NeurcompQuantization import quantize_main
    from neurcomp.config.options import parse_config
    from neurcomp.datasets.marschner_lobb import marschner_lobb
    from neurcomp.training.run import train

    np.save(tmp_path / "v.npy", marschner_lobb((16, 16, 16)).astype(np.float32))
    train(parse_config(["--data", str(tmp_path / "v.npy"), "--basedir", str(tmp_path), "--expname", "e",
                        "--tracking", "none", "--feature_list", "24", "24", "24", "24", "--min_steps", "60", "--max_pass", "1",
                        "--batch_size", "256", "--compile", "off", "--quiet", "true"]), progress=False)
    kinds = {}
    for quantizer in ("kmeans", "uniform"):
        out = tmp_path / f"{quantizer}.ncq"
        quantize_main(["--config", str(tmp_path / "e" / "config.txt"), "--quant_bits", "6", "--quantizer", quantizer,
                       "--output", str(out)])
        kinds[quantizer] = {w.kind for w, _ in parse(out.read_bytes()).tensors[1:-1]}  # first/last layers: raw
    assert kinds == {"kmeans": {"codebook"}, "uniform": {"uniform"}}
