"""The compressed network file: byte layout, checksums and validation (see FORMAT.md).

``serialize(CompressedNetwork) -> bytes`` and ``parse(bytes, source) -> CompressedNetwork`` are
exact inverses. ``parse`` refuses anything that is not a complete, consistent file of a known
version with an ``InputError`` whose one-line message names ``source``.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np

from neurcomp.config.errors import InputError
from neurcomp.config.limits import machine_memory
from neurcomp.data.volume import VolumeInfo
from neurcomp.model.architecture import Architecture
from neurcomp.quantization import bound as error_bound
from neurcomp.quantization import entropy, fvsrn_format
from neurcomp.quantization.checks import layer_problem, omega_problem, volume_problem  # noqa: F401  (re-exported)
from neurcomp.quantization.bitpack import index_bytes, index_size, indices_from  # noqa: F401  (re-exported)
from neurcomp.quantization.coding import COMPRESSIONS, compress, decompress  # noqa: F401  (re-exported)

MAGIC = b"\x89NCQ\r\n\x1a\n"
FORMAT_VERSION = 1  # files without an error bound; 2 adds the bound record and correction section
BOUND_VERSION = 2
SUPPORTED_VERSIONS = (1, 2)

_FIXED = struct.Struct("<8sHHI")  # magic, version, flags, header_size
FLAG_SNAP_TO_INTEGERS = 2  # decoded voxels are rounded to integers within [vmin, vmax] (quantization.snap)
_ARCH = struct.Struct("<HHBBHd")  # d_in, d_out, residual, network id (fvsrn_format), n_layers, omega_0
_VOLUME = struct.Struct("<3I3d3d2d")  # shape (Z,Y,X), spacing (x,y,z), origin (x,y,z), vmin, vmax
_SETTINGS = struct.Struct("<BBBBBBf")  # bits, codebook dtype, bias mode, quantize first/last, raw dtype, compression, finetune passes
_PAYLOAD = struct.Struct("<IQQI")  # n_tensors, stored size, raw size, payload CRC32
_CRC = struct.Struct("<I")
_TENSOR = struct.Struct("<BBBBII")  # kind, dtype, index bits, index layout, count, codebook length

DTYPES = ("float32", "float16")
BIAS_MODES = ("float32", "float16", "quantized")
KIND_RAW, KIND_CODEBOOK, KIND_UNIFORM = 0, 1, 2
FLAG_UNIFORM = 4  # header flag bit 2: the payload may hold uniform records (older decoders refuse the file)
KNOWN_FLAGS = FLAG_SNAP_TO_INTEGERS | fvsrn_format.FLAG_FVSRN | FLAG_UNIFORM
LAYOUTS = ("packed", "planes")  # index layouts, see index_bytes()
MAX_LAYERS = 4096
MAX_DIM = 1 << 24
MAX_CODEBOOK = 1 << 16


@dataclass
class QuantSettings:
    """The encoder's choices, recorded in the header (informational for the decoder except
    ``compression``). No defaults: ``encode.EncoderOptions`` holds them, this only records them."""

    bits: int
    codebook_dtype: str
    bias: str
    quantize_first_last: bool
    raw_dtype: str
    compression: str
    finetune_passes: float


@dataclass
class TensorCode:
    """One stored tensor, flattened: raw values, or a codebook plus one index per value.

    ``values`` holds the raw values (``count``,) or the codebook (K,) as float32 arrays whose
    entries are exactly representable in ``dtype``; ``indices`` is (count,) uint16 for codebooks.
    """

    kind: str  # "raw" | "codebook" | "uniform" (values: the reconstruction table q * step, quantization.entropy)
    dtype: str  # "float32" | "float16"
    values: np.ndarray
    indices: np.ndarray | None = None
    bits: int = 0
    layout: str = "packed"  # index layout: "packed" (B-bit stream) or "planes" (byte plane + high bits)
    uniform: tuple[float, int] | None = None  # (step, qmin) of a uniform record

    @property
    def count(self) -> int:
        return int(self.values.size if self.kind == "raw" else self.indices.size)

    def dequantize(self) -> np.ndarray:
        return self.values.copy() if self.kind == "raw" else self.values[self.indices.astype(np.int64)]


@dataclass
class CompressedNetwork:
    arch: Architecture
    volume: VolumeInfo
    settings: QuantSettings
    tensors: list[tuple[TensorCode, TensorCode]] = field(default_factory=list)  # (weight, bias) per linear
    bound: error_bound.ErrorBound | None = None  # the guaranteed maximum error and its corrections
    flags: int = 0  # header flags: FLAG_SNAP_TO_INTEGERS (quantization.snap)
    source: str = "<compressed file>"  # the file's name for messages (``parse`` sets it)


# ----------------------------------------------------------------------------------------------
# writing

def _encode_tensor(t: TensorCode) -> bytes:
    kind = KIND_RAW if t.kind == "raw" else KIND_CODEBOOK
    dt = np.dtype(t.dtype).newbyteorder("<")
    if t.kind == "uniform":
        model, data = entropy.encode_record(t)
        return _TENSOR.pack(KIND_UNIFORM, 0, 0, model, t.indices.size, t.values.size) + data
    if kind == KIND_RAW:
        head = _TENSOR.pack(kind, DTYPES.index(t.dtype), 0, 0, t.values.size, 0)
        return head + t.values.astype(dt).tobytes()
    head = _TENSOR.pack(kind, DTYPES.index(t.dtype), t.bits, LAYOUTS.index(t.layout), t.indices.size, t.values.size)
    return head + t.values.astype(dt).tobytes() + index_bytes(t.indices, t.bits, t.layout)


def raw_payload(net: CompressedNetwork) -> bytes:
    return b"".join(_encode_tensor(w) + _encode_tensor(b) for w, b in net.tensors)


def serialize(net: CompressedNetwork, level: int | None = None) -> bytes:
    """The complete file. ``net.settings.compression`` picks the payload coding."""
    arch, vol, s = net.arch, net.volume, net.settings
    raw = raw_payload(net)
    stored = compress(raw, s.compression, level)
    dtype_name = str(vol.source_dtype).encode("ascii")
    if len(dtype_name) > 255:
        raise ValueError("source dtype name too long")
    body = b"".join([
        _ARCH.pack(arch.d_in, arch.d_out, int(arch.residual), fvsrn_format.network_id(arch), arch.n_layers, float(arch.omega_0)),
        struct.pack(f"<{arch.n_layers}I", *arch.widths), fvsrn_format.record(arch),
        _VOLUME.pack(*(int(n) for n in vol.shape), *(float(x) for x in vol.spacing),
                     *(float(x) for x in vol.origin), float(vol.vmin), float(vol.vmax)),
        struct.pack("<B", len(dtype_name)), dtype_name,
        _SETTINGS.pack(s.bits, DTYPES.index(s.codebook_dtype), BIAS_MODES.index(s.bias),
                       int(s.quantize_first_last), DTYPES.index(s.raw_dtype), COMPRESSIONS.index(s.compression),
                       float(s.finetune_passes)),
        _PAYLOAD.pack(2 * len(net.tensors), len(stored), len(raw), zlib.crc32(stored)),
    ])
    section, version = b"", FORMAT_VERSION
    if net.bound is not None:
        record, section = error_bound.encode_section(net.bound)
        body, version = body + record, BOUND_VERSION
    header_size = _FIXED.size + len(body) + _CRC.size
    uniform = FLAG_UNIFORM if any(t.kind == "uniform" for pair in net.tensors for t in pair) else 0
    flags = (net.flags & ~(fvsrn_format.FLAG_FVSRN | FLAG_UNIFORM)) | fvsrn_format.header_flags(arch) | uniform
    head = _FIXED.pack(MAGIC, version, flags, header_size) + body
    return head + _CRC.pack(zlib.crc32(head)) + stored + section


# ----------------------------------------------------------------------------------------------
# reading

class _Reader:
    """Bounds-checked little-endian reads; running past the end raises ``_Short``."""

    def __init__(self, data: bytes | memoryview, what: str):
        self.data = memoryview(data)
        self.pos = 0
        self.what = what

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise _Short(self.what, self.pos + n, len(self.data))
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, st: struct.Struct):
        return st.unpack(self.take(st.size))


class _Short(Exception):
    def __init__(self, what, need, have):
        super().__init__(f"{what} ends early: needs at least {need} bytes, has {have}")


def _fail(source: str, message: str) -> InputError:
    return InputError(f"{source}: not a valid compressed network: {message}")


@dataclass
class FileHeader:
    """Everything before the payload: what ``read_header`` shows without decoding the network."""

    arch: Architecture
    volume: VolumeInfo
    settings: QuantSettings
    version: int
    header_size: int
    stored_size: int
    raw_size: int
    payload_crc: int
    bound: dict | None  # the error-bound record (bound.read_record), version 2
    flags: int = 0


def parse_header(data: bytes, source: str = "<bytes>") -> FileHeader:
    """Validate the header of a complete file (the payload is neither checked nor decoded)."""
    size = len(data)
    if size < len(MAGIC) or data[:len(MAGIC)] != MAGIC:
        if size < len(MAGIC) and MAGIC.startswith(data):
            raise _fail(source, f"truncated file ({size} bytes)")
        raise _fail(source, "wrong magic (not a Neurcomp quantized file)")
    if size < _FIXED.size:
        raise _fail(source, f"truncated file ({size} bytes, header needs at least {_FIXED.size})")
    _, version, flags, header_size = _FIXED.unpack_from(data)
    if version not in SUPPORTED_VERSIONS:
        raise _fail(source, f"unknown format version {version} (this decoder reads {', '.join(map(str, SUPPORTED_VERSIONS))})")
    if header_size < _FIXED.size + _CRC.size or header_size > 1 << 20:
        raise _fail(source, f"implausible header size {header_size}")
    if size < header_size:
        raise _fail(source, f"truncated file ({size} bytes, header alone is {header_size})")
    (header_crc,) = _CRC.unpack_from(data, header_size - _CRC.size)
    if zlib.crc32(data[:header_size - _CRC.size]) != header_crc:
        raise _fail(source, "header checksum mismatch (file corrupted)")
    if flags & ~KNOWN_FLAGS:
        raise _fail(source, f"unknown header flags {flags & ~KNOWN_FLAGS:#x}")

    r = _Reader(data[_FIXED.size:header_size - _CRC.size], "header")
    try:
        d_in, d_out, residual, net_id, n_layers, omega_0 = r.unpack(_ARCH)
        if not (1 <= n_layers <= MAX_LAYERS) or residual not in (0, 1) or d_in < 1 or d_out < 1:
            raise _fail(source, f"bad architecture (n_layers {n_layers}, residual {residual}, d_in {d_in}, d_out {d_out})")
        widths = list(struct.unpack(f"<{n_layers}I", r.take(4 * n_layers)))
        if min(widths) < 1 or max(widths) > MAX_DIM:
            raise _fail(source, f"bad layer widths {widths}")
        network = fvsrn_format.read_record(r.unpack, net_id, flags, lambda problem: _fail(source, problem))
        vol = r.unpack(_VOLUME)
        (name_len,) = struct.unpack("<B", r.take(1))
        dtype_name = bytes(r.take(name_len)).decode("ascii", errors="replace")
        bits, cb_dt, bias_mode, q_first_last, raw_dt, comp, passes = r.unpack(_SETTINGS)
        n_tensors, stored_size, raw_size, payload_crc = r.unpack(_PAYLOAD)
        bound_fields = r.unpack(error_bound.RECORD) if version == BOUND_VERSION else None
    except _Short as exc:
        raise _fail(source, f"header/payload mismatch: {exc}") from None
    if r.pos != len(r.data):
        raise _fail(source, f"header/payload mismatch: {len(r.data) - r.pos} unexplained header bytes")
    if not (1 <= bits <= 16) or cb_dt >= len(DTYPES) or bias_mode >= len(BIAS_MODES) or raw_dt >= len(DTYPES) \
            or comp >= len(COMPRESSIONS) or q_first_last not in (0, 1):
        raise _fail(source, "bad quantization settings in header")
    arch = Architecture(widths=widths, residual=bool(residual), d_in=d_in, d_out=d_out, omega_0=omega_0, **network)
    shapes = arch.linear_shapes()
    if n_tensors != 2 * len(shapes):
        raise _fail(source, f"header/payload mismatch: {n_tensors} tensors stored, the architecture has {2 * len(shapes)}")
    shape = tuple(int(n) for n in vol[0:3])
    if min(shape) < 1:
        raise _fail(source, f"bad volume shape {shape}")
    volume = VolumeInfo(shape=shape, spacing=tuple(vol[3:6]), origin=tuple(vol[6:9]), vmin=vol[9], vmax=vol[10],
                        source_dtype=dtype_name)
    settings = QuantSettings(bits=bits, codebook_dtype=DTYPES[cb_dt], bias=BIAS_MODES[bias_mode],
                             quantize_first_last=bool(q_first_last), raw_dtype=DTYPES[raw_dt],
                             compression=COMPRESSIONS[comp], finetune_passes=float(passes))

    _check_values(source, arch, volume, settings)
    _check_sizes(source, shapes, volume, raw_size)
    bound = None
    if bound_fields is not None:
        bound, problem = error_bound.read_record(bound_fields, volume.num_voxels)
        if problem:
            raise _fail(source, problem)
    return FileHeader(arch, volume, settings, version, header_size, stored_size, raw_size, payload_crc, bound, flags)


def parse(data: bytes, source: str = "<bytes>") -> CompressedNetwork:
    """Validate and parse a complete file; raises InputError (one line, naming ``source``)."""
    data = bytes(data)
    h = parse_header(data, source)
    size, header_size, stored_size, raw_size, settings = len(data), h.header_size, h.stored_size, h.raw_size, h.settings
    section_size = h.bound["stored_size"] if h.bound else 0
    expected = header_size + stored_size + section_size
    if size < expected:
        raise _fail(source, f"truncated file ({size} bytes, header announces {expected})")
    if size > expected:
        raise _fail(source, f"header/payload mismatch: {size - expected} bytes after the announced end of the payload")
    stored = data[header_size:header_size + stored_size]
    if zlib.crc32(stored) != h.payload_crc:
        raise _fail(source, "payload checksum mismatch (file corrupted)")
    try:
        raw = decompress(stored, settings.compression, raw_size)
    except ImportError:
        raise InputError(f"{source}: payload is {settings.compression}-compressed but the "
                         f"'zstandard' package is not installed (pip install zstandard)") from None
    except Exception as exc:  # corrupt stream that still matched its CRC (e.g. a buggy writer)
        raise _fail(source, f"cannot decompress the {settings.compression} payload ({exc})") from None
    if len(raw) != raw_size:
        raise _fail(source, f"header/payload mismatch: payload decodes to {len(raw)} bytes, header says {raw_size}")

    p = _Reader(raw, "payload")
    tensors = []
    try:
        for i, (out_f, in_f) in enumerate(h.arch.linear_shapes()):
            w = _decode_tensor(p, out_f * in_f, f"layer {i} weight", source)
            b = _decode_tensor(p, out_f, f"layer {i} bias", source)
            tensors.append((w, b))
    except _Short as exc:
        raise _fail(source, f"header/payload mismatch: {exc}") from None
    if p.pos != len(raw):
        raise _fail(source, f"header/payload mismatch: {len(raw) - p.pos} payload bytes left after the last layer")
    for i, (shape, (w, b)) in enumerate(zip(h.arch.linear_shapes(), tensors)):
        problem = layer_problem(i, shape, w.values, b.values, h.arch.omega_0)
        if problem:
            raise _fail(source, problem)
    bound = None
    if h.bound:
        bound, problem = error_bound.decode_section(h.bound, data[size - section_size:], h.volume.num_voxels)
        if problem:
            raise _fail(source, problem)
    return CompressedNetwork(arch=h.arch, volume=h.volume, settings=settings, tensors=tensors, bound=bound,
                             flags=h.flags, source=source)


def _check_values(source: str, arch: Architecture, volume: VolumeInfo, settings: QuantSettings) -> None:
    problem = omega_problem(arch.omega_0) or volume_problem(volume)
    if problem:
        raise _fail(source, problem)
    if not (math.isfinite(settings.finetune_passes) and settings.finetune_passes >= 0):
        raise _fail(source, f"bad fine-tuning passes {settings.finetune_passes} (must be finite and >= 0)")


def _check_sizes(source: str, shapes, volume: VolumeInfo, raw_size: int) -> None:
    """Refuse, before decompressing anything, a payload size the architecture cannot have, and a
    network or reconstruction that cannot fit in this machine's memory."""
    counts = [n for o, i in shapes for n in (o * i, o)]
    params = sum(counts)
    # smallest record: one float16 centroid and 1-bit indices; largest: raw float32 or a full
    # 16-bit codebook of float32 with 16-bit indices
    least = sum(_TENSOR.size + min(2 + (n + 7) // 8, entropy.HEAD_SIZE) for n in counts)
    most = sum(_TENSOR.size + max(4 * n, 4 * MAX_CODEBOOK + 2 * n) for n in counts)
    if not least <= raw_size <= most:
        raise _fail(source, f"header/payload mismatch: a raw payload of {raw_size} bytes is impossible for "
                            f"{params} parameters ({least}..{most} bytes)")
    needed = 4 * volume.num_voxels + 8 * params + raw_size
    memory = machine_memory()
    if memory is not None and needed > memory:
        raise _fail(source, f"a {'x'.join(map(str, volume.shape))} volume and {params} parameters need "
                            f"{needed / 2 ** 30:.1f} GiB, more than this machine's {memory / 2 ** 30:.1f} GiB")


def _decode_tensor(p: _Reader, expected_count: int, what: str, source: str) -> TensorCode:
    kind, dt, bits, layout, count, k = p.unpack(_TENSOR)
    if count != expected_count:
        raise _fail(source, f"header/payload mismatch: {what} holds {count} values, the architecture needs {expected_count}")
    if kind == KIND_UNIFORM and not dt and not bits:
        with np.errstate(over="ignore", invalid="ignore"):  # the table q x step is checked below
            got = entropy.decode_record(p.take, count, k, layout, source)
        if isinstance(got, str):
            raise _fail(source, f"{what}: {got}")
        if not np.isfinite(got[1]).all():
            raise _fail(source, f"{what}: uniform record's values q x step overflow float32 "
                                f"(step {got[0][0]:.3g}, q from {got[0][1]} to {got[0][1] + k - 1})")
        return TensorCode("uniform", "float32", got[1], got[2], uniform=got[0])
    if dt >= len(DTYPES) or layout >= len(LAYOUTS) or kind not in (KIND_RAW, KIND_CODEBOOK):
        raise _fail(source, f"bad record for {what}")
    dtype = DTYPES[dt]
    np_dt = np.dtype(dtype).newbyteorder("<")
    if kind == KIND_RAW:
        if bits != 0 or k != 0 or layout != 0:
            raise _fail(source, f"bad record for {what}")
        values = np.frombuffer(p.take(count * np_dt.itemsize), dtype=np_dt).astype(np.float32)
        if not np.isfinite(values).all():
            raise _fail(source, f"{what} holds NaN or infinite values")
        return TensorCode("raw", dtype, values)
    if not (1 <= bits <= 16) or not (1 <= k <= (1 << bits)):
        raise _fail(source, f"bad codebook record for {what} ({k} centroids, {bits}-bit indices)")
    codebook = np.frombuffer(p.take(k * np_dt.itemsize), dtype=np_dt).astype(np.float32)
    if not np.isfinite(codebook).all():
        raise _fail(source, f"{what} has NaN or infinite centroids")
    indices = indices_from(p.take(index_size(count, bits, LAYOUTS[layout])), count, bits, LAYOUTS[layout])
    if count and int(indices.max()) >= k:
        raise _fail(source, f"header/payload mismatch: {what} has an index past its {k}-entry codebook")
    return TensorCode("codebook", dtype, codebook, indices, bits, LAYOUTS[layout])
