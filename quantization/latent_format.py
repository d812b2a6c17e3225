"""The latent-grid network's file (``model.latent_grid``): header, synthesis weights, and the latents
coded with constriction's ANS (Duda et al., PCS 2015; Bamler 2022) under the network's own Laplace
model, so the file holds what training counted as the rate.

Layout, little-endian (documented in FORMAT.md, "Latent-grid file"):

    "NCLG" | version u8 | Z Y X u32 | levels, channels, hidden, layers, weight_bits, finest u8 |
    vmin vmax f64 | symbol min, max i16 |
    per level and channel: mu f16, log b f16 |
    per synthesis layer: step f32, weights int8 (out x in, C order), biases f16 |
    ANS words u32 (count u32 first): the latents, level 0 first, each level C order.

The decoder builds the Laplace parameters from the stored f16 values with the same numpy float64
arithmetic as the encoder; constriction quantizes the model identically on both sides.
"""

from __future__ import annotations

import struct

import numpy as np
import torch

from neurcomp.config.errors import InputError
from neurcomp.model.latent_grid import MIN_SCALE, LatentGrid

MAGIC = b"NCLG"
VERSION = 1
_HEAD = struct.Struct("<4sB3I6B2d2h")
_LAYER = struct.Struct("<f")
_COUNT = struct.Struct("<I")


def _laplace_params(mu16: np.ndarray, log_scale16: np.ndarray, shapes) -> tuple[np.ndarray, np.ndarray]:
    """Per-symbol means and scales, level by level, channel by channel (the latents' order)."""
    means, scales = [], []
    for level, shape in enumerate(shapes):
        count = int(np.prod(shape))
        for c in range(mu16.shape[1]):
            means.append(np.full(count, float(mu16[level, c])))
            scales.append(np.full(count, max(float(np.exp(np.float64(log_scale16[level, c]))), MIN_SCALE)))
    return np.concatenate(means), np.concatenate(scales)


def _quantize_weight(w: np.ndarray, bits: int) -> tuple[float, np.ndarray]:
    """The same symmetric quantizer as ``model.latent_grid.fake_quantize_weight``, in float32."""
    levels = 2 ** (bits - 1) - 1
    step = np.float32(max(float(np.abs(w).max()), 1e-12) / levels)
    return float(step), np.clip(np.round(w / step), -levels, levels).astype(np.int8)


def encode(model: LatentGrid, vmin: float, vmax: float) -> bytes:
    import constriction

    if model.weight_bits > 8:
        raise ValueError("latent-grid synthesis weights are stored in at most 8 bits")
    with torch.no_grad():
        symbols = [torch.round(y).to(torch.int64).cpu().numpy()[0] for y in model.latents]
        mu16 = model.mu.detach().cpu().numpy().astype(np.float16)
        log_scale16 = model.log_scale.detach().cpu().numpy().astype(np.float16)
    flat = np.concatenate([s.reshape(-1) for s in symbols]).astype(np.int32)
    lo, hi = int(flat.min()), int(flat.max())
    if lo < -32768 or hi > 32767:
        raise ValueError(f"latents out of the 16-bit range: {lo}..{hi}")
    hi = max(hi, lo + 1)  # constriction needs at least two symbols
    z, y, x = model.shape
    parts = [_HEAD.pack(MAGIC, VERSION, z, y, x, model.levels, model.channels, model.hidden, model.layers,
                        model.weight_bits, model.finest, float(vmin), float(vmax), lo, hi),
             mu16.tobytes(), log_scale16.tobytes()]
    for layer in model.synthesis:
        step, q = _quantize_weight(layer.weight.detach().cpu().numpy(), model.weight_bits)
        parts += [_LAYER.pack(step), q.tobytes(), layer.bias.detach().cpu().numpy().astype(np.float16).tobytes()]
    means, scales = _laplace_params(mu16, log_scale16, [s.shape[1:] for s in symbols])
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(flat, constriction.stream.model.QuantizedLaplace(lo, hi), means, scales)
    words = coder.get_compressed()
    parts += [_COUNT.pack(len(words)), words.astype("<u4").tobytes()]
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


def decode(data: bytes, source: str = "latent-grid file") -> tuple[LatentGrid, float, float]:
    """The network with its integer latents and dequantized weights, and the value range."""
    import constriction

    r = _Reader(bytes(data), source)
    magic, version, z, y, x, levels, channels, hidden, layers, bits, finest, vmin, vmax, lo, hi = _HEAD.unpack(r.take(_HEAD.size))
    if magic != MAGIC or version != VERSION:
        raise InputError(f"{source}: not a latent-grid file (magic {magic!r}, version {version})")
    if min(z, y, x, levels, channels, hidden) < 1 or not 1 < bits <= 8 or hi <= lo:
        raise InputError(f"{source}: invalid latent-grid header")
    model = LatentGrid((z, y, x), levels, channels, hidden, layers, bits, finest)
    mu16 = r.array("<f2", levels * channels).reshape(levels, channels)
    log_scale16 = r.array("<f2", levels * channels).reshape(levels, channels)
    with torch.no_grad():
        model.mu.copy_(torch.from_numpy(mu16.astype(np.float32)))
        model.log_scale.copy_(torch.from_numpy(log_scale16.astype(np.float32)))
        for layer in model.synthesis:
            (step,) = _LAYER.unpack(r.take(_LAYER.size))
            q = r.array("i1", layer.weight.numel()).reshape(layer.weight.shape)
            layer.weight.copy_(torch.from_numpy(q.astype(np.float32) * np.float32(step)))
            layer.bias.copy_(torch.from_numpy(r.array("<f2", layer.bias.numel()).astype(np.float32)))
        (count,) = _COUNT.unpack(r.take(_COUNT.size))
        words = r.array("<u4", count).astype(np.uint32)
        shapes = [tuple(p.shape[2:]) for p in model.latents]
        means, scales = _laplace_params(mu16, log_scale16, shapes)
        decoder = constriction.stream.stack.AnsCoder(words)
        flat = decoder.decode(constriction.stream.model.QuantizedLaplace(lo, hi), means, scales)
        start = 0
        for p in model.latents:
            n = p.numel()
            p.copy_(torch.from_numpy(flat[start:start + n].astype(np.float32)).view(p.shape))
            start += n
    if r.pos != len(r.data):
        raise InputError(f"{source}: {len(r.data) - r.pos} unexpected bytes after the latents")
    return model, vmin, vmax


def decode_volume(data: bytes, shape=None, source: str = "latent-grid file") -> np.ndarray:
    """The decoded volume in physical units, float32, on the file's grid or on ``shape``."""
    model, vmin, vmax = decode(data, source)
    with torch.no_grad():
        norm = model("round", shape).numpy().astype(np.float64)
    return ((norm + 1.0) * 0.5 * (vmax - vmin) + vmin).astype(np.float32)
