"""Hostile compressed files on the decoder side.

Crafted `.ncq` files with valid checksums (a genuine file from a freshly built network, then
header fields rewritten and the CRC recomputed, or tensors replaced and the file re-serialized):

- omega_0 so small it underflows in float32 (item 1) or so large it overflows (item 2);
- value ranges, uniform-record steps, raw weights, centroids and correction steps whose stored
  numbers pass "finite" but whose float32 products are not (item 2), and files that pass every
  stored check but still decode to infinities (the final guard on the decoded volume);
- decompression bombs: a few hundred bytes claiming a grid that cannot fit in the memory that is
  available (item 3);
- truncations and byte flips of genuine files: ``read_header`` refuses exactly what
  ``decompress`` refuses (item 13).

Every refusal is a one-line InputError naming the file, exit 2 with one ``error:`` line through
NeurcompDequantization.py, nothing written, and no decode returns a non-finite voxel.
"""

import struct
import subprocess
import sys
import time
import zlib
from dataclasses import replace
from functools import lru_cache

import numpy as np
import pytest
import torch

from conftest import REPO, run_script
from neurcomp.compressors import api
from neurcomp.config.cli import run_cli
from neurcomp.config.errors import InputError
from neurcomp.data.volume import VolumeInfo
from neurcomp.model.architecture import Architecture
from neurcomp.model.neurcomp import Neurcomp
from neurcomp.quantization import entropy
from neurcomp.quantization.bound import ErrorBound
from neurcomp.quantization.encode import EncoderOptions, quantize_network
from neurcomp.quantization.format import parse, serialize

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WIDTHS = [8, 8]
INFO = VolumeInfo(shape=(5, 6, 7), spacing=(1.0, 1.0, 1.0), vmin=-2.0, vmax=3.0, source_dtype="float32")
needs_constriction = pytest.mark.skipif(not entropy.available(), reason="uniform records need constriction")


@lru_cache(maxsize=None)
def network(quantizer: str = "kmeans", compression: str = "none"):
    """A fresh residual network quantized at 4 bits: raw float32 first/last layers and biases,
    float32 codebooks (or uniform records) for the block matrices."""
    torch.manual_seed(0)
    model = Neurcomp(Architecture(widths=list(WIDTHS), residual=True))
    opts = EncoderOptions(compression=compression, bias="float32", raw_dtype="float32", codebook_dtype="float32",
                          quantizer=quantizer)
    return quantize_network(model, INFO, 4, opts)


def genuine(quantizer: str = "kmeans", compression: str = "none", bound: ErrorBound | None = None) -> bytes:
    return serialize(replace(network(quantizer, compression), bound=bound))


def corrections(step: float, q: int, max_abs_error: float | None = None) -> ErrorBound:
    """Two corrections (voxels 3 and 40), the first of ``q`` steps."""
    e = step if max_abs_error is None else max_abs_error
    return ErrorBound("abs", e, e, step, np.array([3, 40], np.int64), np.array([q, -1], np.int64), coding="none")


def rewrite(data: bytes, **fields) -> bytes:
    """``data`` with header fields overwritten at their FORMAT.md offsets and the header CRC recomputed."""
    out = bytearray(data)
    n = struct.unpack_from("<H", data, 22)[0]  # L
    s = data[108 + 4 * n]  # S
    where = {"omega_0": (24, "<d"), "shape": (32 + 4 * n, "<3I"), "vmin": (92 + 4 * n, "<d"),
             "vmax": (100 + 4 * n, "<d"), "max_abs_error": (153 + 4 * n + s, "<d"), "step": (161 + 4 * n + s, "<d")}
    for name, value in fields.items():
        offset, fmt = where[name]
        struct.pack_into(fmt, out, offset, *(value if isinstance(value, tuple) else (value,)))
    header_size = struct.unpack_from("<I", out, 12)[0]
    struct.pack_into("<I", out, header_size - 4, zlib.crc32(bytes(out[:header_size - 4])))
    return bytes(out)


def with_tensor(net, layer: int, which: int, **changes) -> bytes:
    """The file of ``net`` with tensor ``which`` (0 weight, 1 bias) of linear ``layer`` replaced."""
    tensors = list(net.tensors)
    pair = list(tensors[layer])
    pair[which] = replace(pair[which], **changes)
    tensors[layer] = tuple(pair)
    return serialize(replace(net, tensors=tensors))


def first_value(code, value: float) -> np.ndarray:
    return np.concatenate([[value], code.values[1:]]).astype(np.float32)


def test_crafting_helpers_write_what_they_say():
    data = genuine()
    assert rewrite(data, omega_0=30.0, vmin=-2.0, vmax=3.0, shape=(5, 6, 7)) == data
    net = parse(rewrite(data, omega_0=12.5, vmax=4.0), "x.ncq")
    assert net.arch.omega_0 == 12.5 and net.volume.vmax == 4.0
    bounded = genuine(bound=corrections(0.5, 3))
    assert parse(rewrite(bounded, step=0.25), "x.ncq").bound.step == 0.25
    assert np.isfinite(api.decompress(data)).all()


# ----------------------------------------------------------------------------------------------
# items 1 and 2: stored numbers that pass "finite" but overflow or underflow float32

def _raw_weight(v):
    net = network()
    return with_tensor(net, 0, 0, values=first_value(net.tensors[0][0], v))


def _bias(v):
    net = network()
    return with_tensor(net, 0, 1, values=first_value(net.tensors[0][1], v))


def _centroid(v):
    net = network()
    w = net.tensors[1][0]
    assert w.kind == "codebook" and w.dtype == "float32"
    return with_tensor(net, 1, 0, values=first_value(w, v))


def _uniform(step, qmin=None):
    net = network("uniform")
    w = net.tensors[1][0]
    assert w.kind == "uniform"
    qmin = w.uniform[1] if qmin is None else qmin
    return with_tensor(net, 1, 0, uniform=(step, qmin))


TINY_OMEGA = [1e-320, 5e-324, 1e-300, 1e-45, 1e-39, 1e-38]  # 0 or subnormal in float32

CRAFTED = [
    *(pytest.param(lambda w=w: rewrite(genuine(), omega_0=w), "omega_0", id=f"omega_0={w:g}") for w in TINY_OMEGA),
    *(pytest.param(lambda w=w: rewrite(genuine(), omega_0=w), "omega_0", id=f"omega_0={w:g}")
      for w in (1e308, 1e39, 3.5e38)),
    pytest.param(lambda: rewrite(genuine(), vmax=1e300), "value range", id="vmax=1e300"),
    pytest.param(lambda: rewrite(genuine(), vmax=3.5e38), "value range", id="vmax=3.5e38"),
    pytest.param(lambda: rewrite(genuine(), vmin=-1e300), "value range", id="vmin=-1e300"),
    pytest.param(lambda: rewrite(genuine(), vmin=-1.7e308, vmax=1.7e308), "value range", id="range=3.4e308"),
    pytest.param(lambda: rewrite(genuine(), vmin=-2e38, vmax=2e38), "value range", id="range=4e38"),
    *(pytest.param(lambda v=v: _raw_weight(v), "layer 0", id=f"raw_weight={v:g}") for v in (3e38, -3e38, 1e37)),
    *(pytest.param(lambda v=v: _bias(v), "layer 0", id=f"raw_bias={v:g}") for v in (3e38, -2e37)),
    *(pytest.param(lambda v=v: _centroid(v), "layer 1", id=f"centroid={v:g}") for v in (3e38, -1e38, 1e37)),
    pytest.param(lambda: _uniform(3e38), "layer 1", id="uniform_step=3e38", marks=needs_constriction),
    pytest.param(lambda: _uniform(1e30, 2 ** 30), "layer 1", id="uniform_step=1e30_qmin=2^30",
                 marks=needs_constriction),
    pytest.param(lambda: _uniform(1e36), "layer 1", id="uniform_step=1e36", marks=needs_constriction),
    pytest.param(lambda: genuine(bound=corrections(1e300, 1)), "error bound", id="correction_step=1e300"),
    pytest.param(lambda: genuine(bound=corrections(1e30, 2 ** 30)), "correction", id="correction_step=1e30_q=2^30"),
    pytest.param(lambda: genuine(bound=corrections(3e38, -2)), "correction", id="correction_step=3e38_q=-2"),
]

def _constant_output(v: float, bound: ErrorBound | None = None) -> bytes:
    """The network's output is ``v`` everywhere: the last layer's weights 0, its bias ``v``."""
    net = network()
    w, b = net.tensors[-1]
    last = (replace(w, values=np.zeros_like(w.values)), replace(b, values=np.full_like(b.values, v)))
    tensors = [*net.tensors[:-1], last]
    return serialize(replace(net, tensors=tensors, bound=bound))


# files that pass every check on stored numbers and still decode to infinities: the final guard.
# The range 3.4e38 fits float32, but a network output of 5 maps to 8.5e38.
NOT_FINITE = [pytest.param(lambda: rewrite(_constant_output(5.0), vmin=-1.7e38, vmax=1.7e38), "not finite",
                           id="range_edge+output_5")]


def one_line(exc: pytest.ExceptionInfo, name: str) -> str:
    msg = str(exc.value)
    assert name in msg and "\n" not in msg, msg
    return msg


def check_refused(tmp_path, data: bytes, message: str, capsys) -> None:
    """Every decode path refuses ``data`` in one line naming the file; the CLI exits 2 and writes nothing."""
    from NeurcompDequantization import main as dequantize

    path = tmp_path / "crafted.ncq"
    path.write_bytes(data)
    for kwargs in ({}, {"region": (1, 5, 0, 3, 2, 4)}, {"resolution": (4, 3, 9)}):
        try:
            out = api.decompress(path, **kwargs)
        except InputError as exc:
            msg = str(exc)
            assert str(path) in msg and "\n" not in msg and message in msg, msg
        else:
            pytest.fail(f"decompress({kwargs}) returned a volume ({np.isfinite(out).all() = })")
    for args in ([], ["--region", "1", "5", "0", "3", "2", "4"], ["--resolution", "4", "3", "9"]):
        out = tmp_path / "out.vti"
        code = run_cli(dequantize, ["--compressed_file", str(path), "--decompressed_file", str(out), *args])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err and err.strip().count("\n") == 0, err
        assert err.startswith("error: ") and "crafted.ncq" in err and message in err, err
        assert not out.exists()


@pytest.mark.parametrize("make, message", CRAFTED + NOT_FINITE)
def test_crafted_numbers_that_overflow_float32_are_refused(tmp_path, capsys, make, message):
    check_refused(tmp_path, make(), message, capsys)


def test_corrections_that_overflow_the_voxel_are_caught_by_the_final_guard(tmp_path, capsys):
    """Every voxel is 1.5e38 (output 0 on [0, 3e38]); the correction 3 x 1e38 fits float32 as a
    number, but voxel 3 becomes 4.5e38: a whole decode and a box holding voxel 3 are refused."""
    from NeurcompDequantization import main as dequantize

    path = tmp_path / "crafted.ncq"
    path.write_bytes(rewrite(_constant_output(0.0, corrections(1e38, 3)), vmin=0.0, vmax=3e38))
    for region in (None, (2, 5, 0, 2, 0, 3)):
        with pytest.raises(InputError, match="decoded volume is not finite") as e:
            api.decompress(path, region=region)
        one_line(e, str(path))
    assert np.isfinite(api.decompress(path, region=(0, 2, 0, 2, 0, 2))).all()  # voxel 3 is outside this box
    out = tmp_path / "out.vti"
    assert run_cli(dequantize, ["--compressed_file", str(path), "--decompressed_file", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not finite" in err and err.strip().count("\n") == 0 and not out.exists()


@pytest.mark.parametrize("omega_0", TINY_OMEGA)
def test_tiny_omega_0_is_refused_by_the_header(omega_0):
    """Item 1: refused when the header is read, before a network is built (was a RuntimeError)."""
    with pytest.raises(InputError, match="omega_0") as e:
        api.read_header(rewrite(genuine(), omega_0=omega_0))
    one_line(e, "<bytes>")


def test_edge_values_that_fit_float32_still_decode():
    """The checks are float32's limits, not arbitrary caps: an extreme but representable file decodes."""
    data = rewrite(genuine(bound=corrections(1e3, 2)), omega_0=2e-38, vmin=-1e37, vmax=1e37)
    out = api.decompress(data)
    assert out.shape == INFO.shape and np.isfinite(out).all()


def test_the_final_guard_covers_decode_volume_itself():
    """A network changed after parsing (not through a file) still cannot decode to infinities."""
    from neurcomp.quantization.decode import decode_volume
    from neurcomp.quantization.region import make_grid

    net = parse(genuine(), "mem.ncq")
    w, b = net.tensors[-1]
    net.tensors[-1] = (w, replace(b, values=np.full_like(b.values, np.inf)))
    for grid in (None, make_grid(INFO.shape, (0, 3, 0, 3, 0, 3)), make_grid(INFO.shape, None, (3, 3, 3))):
        with pytest.raises(InputError, match="decoded volume is not finite") as e:
            decode_volume(net, grid)
        one_line(e, "mem.ncq")


@pytest.mark.parametrize("case", [
    pytest.param(lambda: rewrite(genuine(), omega_0=1e-320), id="omega_0=1e-320"),
    pytest.param(lambda: rewrite(genuine(), vmax=1e300), id="vmax=1e300"),
])
def test_entry_script_exits_2_with_one_line(tmp_path, case):
    path = tmp_path / "hostile.ncq"
    path.write_bytes(case())
    out = tmp_path / "out.vti"
    r = run_script("NeurcompDequantization.py", "--compressed_file", path, "--decompressed_file", out)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error: ") and r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    assert "hostile.ncq" in r.stderr and not out.exists()


# ----------------------------------------------------------------------------------------------
# item 3: decompression bombs

def test_memory_check_uses_available_not_total_memory(monkeypatch):
    """128 MiB of output fits the machine's total memory but not the (patched) 32 MiB available:
    refused at once, before the inference allocates anything."""
    from neurcomp.quantization import memory

    monkeypatch.setattr(memory, "available_memory", lambda: 32 << 20, raising=False)
    data = rewrite(genuine(), shape=(1 << 25, 1, 1))
    start = time.perf_counter()
    with pytest.raises(InputError, match="available") as e:
        api.decompress(data)
    assert time.perf_counter() - start < 1.0
    one_line(e, "<bytes>")
    with pytest.raises(InputError, match="available"):  # a box or a resampling counts its own points
        api.decompress(data, resolution=(1, 1, 1 << 24))
    api.decompress(data, region=(0, 1, 0, 1, 0, 1 << 10))  # 4 KiB: fine


def test_memory_check_counts_the_inference_working_memory(monkeypatch):
    """A wide network needs activations per batch besides the output: a few voxels of a
    width-4096 network do not fit in 64 MiB, though their output is tiny."""
    from neurcomp.quantization import memory

    monkeypatch.setattr(memory, "available_memory", lambda: 64 << 20, raising=False)
    net = network()
    wide = replace(net.arch, widths=[4096, 8])
    need = memory.decode_memory(wide, 1 << 20)
    assert need["working"] > 64 << 20 and need["output"] == 4 << 20
    with pytest.raises(InputError, match="working"):
        memory.check_decode_memory(wide, (1 << 20, 1, 1), "wide.ncq")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS as Linux applies it")
def test_claimed_huge_grid_under_an_address_space_limit_fails_in_one_line(tmp_path):
    """The issue's bomb: a few hundred bytes claiming (2^30, 1, 1) voxels, 4 GiB of output, under a
    3 GiB address-space limit (ulimit -v): was a MemoryError traceback and exit 1."""
    path = tmp_path / "bomb.ncq"
    path.write_bytes(rewrite(genuine(), shape=(1 << 30, 1, 1)))
    assert path.stat().st_size < 1000
    out = tmp_path / "bomb.vti"
    limit = 3 << 30
    code = (f"import resource, runpy, sys; resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit})); "
            f"sys.argv = ['NeurcompDequantization.py', '--compressed_file', {str(path)!r}, '--decompressed_file', "
            f"{str(out)!r}]; runpy.run_path('NeurcompDequantization.py', run_name='__main__')")
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.startswith("error: ") and r.stderr.strip().count("\n") == 0 and "bomb.ncq" in r.stderr
    assert ("address-space" in r.stderr or "available memory" in r.stderr) and not out.exists()
    assert time.perf_counter() - start < 60  # the interpreter's start; the refusal itself is instant


# ----------------------------------------------------------------------------------------------
# item 13: read_header refuses what decompress refuses

def _outcome(call, data):
    try:
        call(data)
    except InputError as exc:
        assert "<bytes>" in str(exc) and "\n" not in str(exc)
        return True
    return False  # any other exception propagates and fails the test


@pytest.mark.parametrize("kind", ["plain", "bounded", "uniform"])
def test_read_header_refuses_exactly_what_decompress_refuses(kind):
    if kind == "uniform" and not entropy.available():
        pytest.skip("uniform records need constriction")
    data = {"plain": lambda: genuine(compression="zstd"),
            "bounded": lambda: genuine(compression="lzma", bound=corrections(0.5, 3)),
            "uniform": lambda: genuine("uniform")}[kind]()
    rng = np.random.default_rng(13)
    cases = [data[:n] for n in range(len(data))]  # every truncation
    for pos in rng.integers(0, len(data), 400):  # random single-byte flips
        bad = bytearray(data)
        bad[pos] ^= int(rng.integers(1, 256))
        cases.append(bytes(bad))
    assert not _outcome(api.read_header, data) and not _outcome(api.decompress, data)
    header_refused = [_outcome(api.read_header, c) for c in cases]
    decode_refused = [_outcome(api.decompress, c) for c in cases]
    mismatched = [i for i, (h, d) in enumerate(zip(header_refused, decode_refused)) if h != d]
    assert not mismatched, f"{len(mismatched)} of {len(cases)} cases differ, e.g. case {mismatched[0]}"
    assert all(decode_refused)


def test_the_encoder_refuses_a_bound_whose_step_the_decoder_would_refuse():
    """The decoder refuses a correction step beyond float32, so the encoder never writes one."""
    from neurcomp.quantization.bounded import encode_bounded

    truth = np.zeros(INFO.shape, np.float32)
    with pytest.raises(InputError, match="correction step beyond float32"):
        encode_bounded(network(), truth, "abs", 1e300)


def test_working_memory_counts_on_the_cpu_only(monkeypatch):
    """On a GPU the batch's activations are the GPU's: the host needs the output alone."""
    from neurcomp.quantization import memory

    monkeypatch.setattr(memory, "available_memory", lambda: 64 << 20)
    wide = replace(network().arch, widths=[4096, 8])
    memory.check_decode_memory(wide, (1 << 20, 1, 1), "wide.ncq", "cuda")
    with pytest.raises(InputError, match="working"):
        memory.check_decode_memory(wide, (1 << 20, 1, 1), "wide.ncq", "cpu")
