"""The latent-grid network's file (``model.latent_grid``): header, synthesis weights, the context
model's integer weights, and the latents coded with constriction's ANS (Duda et al., PCS 2015;
Bamler 2022) under the network's own entropy model, so the file holds what training counted as the
rate.

Layout, little-endian (version 5; version 4, still read, had no gain flag; version 3, still read,
had no upsampler flag either; version 2 had a trained mean per level and a context that predicted
means too):

    "NCLG" | version u8 | Z Y X u32 | levels, channels, hidden, layers, weight_bits, finest,
    context_hidden, flags u8 (bit 0: skip; bit 1: cubic B-spline upsampler, else trilinear; bit 2:
    feature gains) | vmin vmax f64 | symbol min, max i16 |
    per level and channel: log b f16 |
    if gains: per level and channel, the gain the synthesis multiplies the latent by, f16 |
    per synthesis layer: step f32, weights int8 (out x in, C order), biases f16 |
    if skip: the linear path's weights (levels x channels) and bias f16 |
    if context_hidden > 0, per context layer (2): step f32, weights int8 (out x in), biases i32 |
    ANS words u32 (count u32 first): the latents, the coarsest level first, each level C order |
    optionally, an error bound: the Neurcomp file's error-bound record, then its correction
    section (``quantization.bound``; FORMAT.md), applied on the file's own grid.

Every latent is coded with a zero-mean Laplace. The coarsest level (and every level when
context_hidden is 0) uses the scale b of its channel; a finer level's per-latent log scale is the
context model's integer output (``model.latent_context.integer_forward``) from the decoded coarser
level plus the level's log b. The decoder builds them with the same float64 arithmetic as the encoder, and decodes
each level with one constriction call.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

import numpy as np
import torch

from neurcomp.config.errors import InputError
from neurcomp.quantization.bound import RECORD, ErrorBound, apply, decode_section, encode_section, read_record
from neurcomp.model.latent_context import MAX_LOG_SCALE, integer_forward
from neurcomp.model.latent_grid import MIN_SCALE, LatentGrid

MAGIC = b"NCLG"
VERSION = 5
READ_VERSIONS = (3, 4, 5)
SKIP, CUBIC, GAIN = 1, 2, 4  # the header's flags
FLAGS = {3: SKIP, 4: SKIP | CUBIC, 5: SKIP | CUBIC | GAIN}  # those each version may set
_HEAD = struct.Struct("<4sB3I8B2d2h")
_LAYER = struct.Struct("<f")
_COUNT = struct.Struct("<I")


def _level_scales(log_scale16, level: int, shape, parent, context_layers) -> np.ndarray:
    """Per-symbol scales of one level, channel by channel (the latents' order): the factorized b
    where there is no context (or no parent), else the context's output added to log b."""
    count = int(np.prod(shape))
    log_b = np.repeat(log_scale16[level].astype(np.float64)[:, None], count, axis=1)
    if context_layers is not None and parent is not None:
        log_b = log_b + integer_forward(context_layers, parent, shape)
    return np.maximum(np.exp(np.minimum(log_b, MAX_LOG_SCALE)), MIN_SCALE).reshape(-1)


def _quantize_weight(w: np.ndarray, bits: int) -> tuple[float, np.ndarray]:
    """The same symmetric quantizer as ``model.latent_grid.fake_quantize_weight``, in float32."""
    levels = 2 ** (bits - 1) - 1
    step = np.float32(max(float(np.abs(w).max()), 1e-12) / levels)
    return float(step), np.clip(np.round(w / step), -levels, levels).astype(np.int8)


def encode(model: LatentGrid, vmin: float, vmax: float, bound: ErrorBound | None = None) -> bytes:
    """The file of ``model`` and the value range; ``bound``'s corrections appended when given."""
    import constriction

    if model.weight_bits > 8:
        raise ValueError("latent-grid synthesis weights are stored in at most 8 bits")
    with torch.no_grad():
        symbols = [torch.round(y).to(torch.int64).cpu().numpy()[0] for y in model.latents]
        log_scale16 = model.log_scale.detach().cpu().numpy().astype(np.float16)
    order = list(range(model.levels - 1, -1, -1))  # coarsest first: a level's parent is decoded before it
    flat = np.concatenate([symbols[level].reshape(-1) for level in order]).astype(np.int32)
    lo, hi = int(flat.min()), int(flat.max())
    if lo < -32768 or hi > 32767:
        raise ValueError(f"latents out of the 16-bit range: {lo}..{hi}")
    hi = max(hi, lo + 1)  # constriction needs at least two symbols
    z, y, x = model.shape
    context = model.context.integer_layers() if model.context is not None else None
    gain = model.feature_gain.detach().cpu().numpy().astype("<f2")
    parts = [_HEAD.pack(MAGIC, VERSION, z, y, x, model.levels, model.channels, model.hidden, model.layers,
                        model.weight_bits, model.finest, model.context_hidden if context else 0,
                        (SKIP if model.skip is not None else 0) | (CUBIC if model.upsampler == "cubic" else 0)
                        | (GAIN if np.any(gain != 1) else 0),
                        float(vmin), float(vmax), lo, hi),
             log_scale16.tobytes()]
    if np.any(gain != 1):
        parts.append(gain.tobytes())
    for layer in model.synthesis:
        step, q = _quantize_weight(layer.weight.detach().cpu().numpy(), model.weight_bits)
        parts += [_LAYER.pack(step), q.tobytes(), layer.bias.detach().cpu().numpy().astype(np.float16).tobytes()]
    if model.skip is not None:
        parts += [model.skip.weight.detach().cpu().numpy().astype("<f2").tobytes(),
                  model.skip.bias.detach().cpu().numpy().astype("<f2").tobytes()]
    for step, q, b in context or []:
        parts += [_LAYER.pack(step), q.tobytes(), b.astype("<i4").tobytes()]
    scales = np.concatenate([_level_scales(log_scale16, level, symbols[level].shape[1:],
                                           symbols[level + 1] if level + 1 < model.levels else None, context)
                             for level in order])
    means = np.zeros_like(scales)
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(flat, constriction.stream.model.QuantizedLaplace(lo, hi), means, scales)
    words = coder.get_compressed()
    parts += [_COUNT.pack(len(words)), words.astype("<u4").tobytes()]
    if bound is not None:
        parts += list(encode_section(bound))
    return b"".join(parts)


class _Reader:
    def __init__(self, data: bytes, source: str):
        self.data, self.pos, self.source = data, 0, source

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise InputError(f"{self.source}: truncated latent-grid file ({len(self.data)} bytes)")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def array(self, dtype, count: int) -> np.ndarray:
        dtype = np.dtype(dtype)
        return np.frombuffer(self.take(dtype.itemsize * count), dtype=dtype).copy()


class LatentFile(NamedTuple):
    model: LatentGrid
    vmin: float
    vmax: float
    bound: ErrorBound | None  # corrections on the file's grid, if the file has an error bound


def decode(data: bytes, source: str = "latent-grid file") -> tuple[LatentGrid, float, float]:
    """The network with its integer latents and dequantized weights, and the value range."""
    model, vmin, vmax, _ = read(data, source)
    return model, vmin, vmax


def read(data: bytes, source: str = "latent-grid file") -> LatentFile:
    """The network, the value range and the error bound's corrections (None without a bound)."""
    import constriction

    r = _Reader(bytes(data), source)
    (magic, version, z, y, x, levels, channels, hidden, layers, bits, finest, context_hidden, flags,
     vmin, vmax, lo, hi) = _HEAD.unpack(r.take(_HEAD.size))
    if magic != MAGIC or version not in READ_VERSIONS:
        raise InputError(f"{source}: not a latent-grid file of version {' or '.join(map(str, READ_VERSIONS))} "
                         f"(magic {magic!r}, version {version})")
    if min(z, y, x, levels, channels, hidden) < 1 or not 1 < bits <= 8 or hi <= lo:
        raise InputError(f"{source}: invalid latent-grid header")
    if context_hidden and levels < 2 or flags & ~FLAGS[version]:
        raise InputError(f"{source}: invalid latent-grid header (context or flags)")
    model = LatentGrid((z, y, x), levels, channels, hidden, layers, bits, finest, context_hidden, bool(flags & SKIP),
                       "cubic" if flags & CUBIC else "linear")
    log_scale16 = r.array("<f2", levels * channels).reshape(levels, channels)
    with torch.no_grad():
        model.log_scale.copy_(torch.from_numpy(log_scale16.astype(np.float32)))
        if flags & GAIN:
            model.feature_gain.copy_(torch.from_numpy(r.array("<f2", levels * channels).astype(np.float32)))
        for layer in model.synthesis:
            (step,) = _LAYER.unpack(r.take(_LAYER.size))
            q = r.array("i1", layer.weight.numel()).reshape(layer.weight.shape)
            layer.weight.copy_(torch.from_numpy(q.astype(np.float32) * np.float32(step)))
            layer.bias.copy_(torch.from_numpy(r.array("<f2", layer.bias.numel()).astype(np.float32)))
        if model.skip is not None:
            model.skip.weight.copy_(torch.from_numpy(r.array("<f2", levels * channels).astype(np.float32))[None])
            model.skip.bias.copy_(torch.from_numpy(r.array("<f2", 1).astype(np.float32)))
        context = None
        if model.context is not None:
            context = []
            for layer in model.context.layers:
                (step,) = _LAYER.unpack(r.take(_LAYER.size))
                q = r.array("i1", layer.weight.numel()).reshape(layer.weight.shape)
                b = r.array("<i4", layer.bias.numel())
                context.append((step, q, b))
            _load_context(model, context)
        (count,) = _COUNT.unpack(r.take(_COUNT.size))
        words = r.array("<u4", count).astype(np.uint32)
        decoder = constriction.stream.stack.AnsCoder(words)
        laplace = constriction.stream.model.QuantizedLaplace(lo, hi)
        symbols = [None] * levels
        for level in range(levels - 1, -1, -1):
            shape = tuple(model.latents[level].shape[1:])
            scales = _level_scales(log_scale16, level, shape[1:],
                                   symbols[level + 1] if level + 1 < levels else None, context)
            means = np.zeros_like(scales)
            symbols[level] = decoder.decode(laplace, means, scales).astype(np.int64).reshape(shape)
            model.latents[level].copy_(torch.from_numpy(symbols[level].astype(np.float32))[None])
    bound = _read_bound(r, z * y * x) if r.pos < len(r.data) else None
    if r.pos != len(r.data):
        raise InputError(f"{source}: {len(r.data) - r.pos} unexpected bytes after the latents")
    return LatentFile(model, vmin, vmax, bound)


def _read_bound(r: _Reader, num_voxels: int) -> ErrorBound:
    """The error-bound record and correction section after the latents, checked as a Neurcomp
    file's are (FORMAT.md, "Correction section"); a failure is one line naming the file."""
    fields = RECORD.unpack(r.take(RECORD.size)) if len(r.data) - r.pos >= RECORD.size else None
    if fields is None:
        raise InputError(f"{r.source}: {len(r.data) - r.pos} unexpected bytes after the latents")
    rec, problem = read_record(fields, num_voxels)
    if problem is None and rec["stored_size"] != len(r.data) - r.pos:
        problem = f"correction section of {rec['stored_size']} bytes, {len(r.data) - r.pos} left in the file"
    if problem is None:
        bound, problem = decode_section(rec, r.take(rec["stored_size"]), num_voxels)
    if problem is not None:
        raise InputError(f"{r.source}: {problem}")
    return bound


def _load_context(model: LatentGrid, layers) -> None:
    """The context's float weights from the file's integers (training's fake quantization of them
    gives back the same integers, so a decoded network re-encodes to the same bytes)."""
    unit = None
    for layer, (step, q, b) in zip(model.context.layers, layers):
        unit = np.float64(np.float32(step)) if unit is None else unit * np.float64(np.float32(step))
        layer.weight.copy_(torch.from_numpy(q.astype(np.float32) * np.float32(step)))
        layer.bias.copy_(torch.from_numpy((b.astype(np.float64) * unit).astype(np.float32)))


def decode_volume(data: bytes, shape=None, source: str = "latent-grid file") -> np.ndarray:
    """The decoded volume in physical units, float32, on the file's grid or on ``shape``."""
    return volume_of(read(data, source), shape)


def volume_of(file: LatentFile, shape=None) -> np.ndarray:
    """``file``'s volume on its own grid or on ``shape``; the error bound's corrections are added on
    the file's own grid (another resolution has none)."""
    model, vmin, vmax, bound = file
    with torch.no_grad():
        norm = model("round", shape).numpy().astype(np.float64)
    values = ((norm + 1.0) * 0.5 * (vmax - vmin) + vmin).astype(np.float32)
    if shape is None or tuple(shape) == model.shape:
        apply(bound, values, model.shape)
    return values


def check_grid(shape, grid, where: str) -> None:
    """A latent-grid file decodes a box at its own resolution only (the whole volume at any)."""
    from neurcomp.config.errors import ConfigError

    if grid.box != tuple((0, n) for n in tuple(shape)[::-1]) and not grid.native():
        raise ConfigError(f"{where}: a latent-grid file decodes a region at its own resolution only; "
                          "drop the resolution, or decode the whole volume at that resolution")


def volume_on(file: LatentFile, grid, where: str) -> np.ndarray:
    """``file``'s volume on a ``quantization.region`` grid: a box is cut from the volume on the
    file's own grid, corrections and all (so an error bound holds in it); the whole volume may be
    resampled (no corrections). ``where`` names the request in ``check_grid``'s error."""
    check_grid(file.model.shape, grid, where)
    (x0, x1), (y0, y1), (z0, z1) = grid.box
    if grid.box != tuple((0, n) for n in file.model.shape[::-1]):
        return np.ascontiguousarray(volume_of(file)[z0:z1, y0:y1, x0:x1])
    return volume_of(file, tuple(grid.samples[::-1]))
