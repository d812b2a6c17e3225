"""Uniform scalar quantization with entropy-coded integers: the "uniform" tensor record (kind 2).

Entropy-coded scalar quantization (ECSQ): q = round(w / step) (mid-tread), w' = q * step, and the
integers q coded with an entropy coder under a fitted model. At high rate a uniform quantizer
followed by an ideal entropy coder has distortion step^2 / 12 at rate h(W) - log2(step), within
0.254 bit of the rate-distortion bound (Gish and Pierce, "Asymptotically efficient quantizing",
IEEE Trans. IT 1968), where a fixed-rate Lloyd-Max / k-means quantizer of a Gaussian is 0.72 bit
away and must also store its codebook. Measured on trained Neurcomp networks in
``benchmarks/entropy_bench.py`` (docs/quantization.md). The coder is ``constriction``'s ANS
(Duda et al., PCS 2015; Bamler, "constriction", 2022).

Models, evaluated with float64 products only (no exp, log or pow in the decoder, so every
machine builds the same table bit for bit), over the symbols s = q - qmin in [0, K):

- 0, two-sided geometric (the Laplace density sampled at the integers): p(s) ~ theta^|s - c|;
- 1, discrete Gaussian: p(s) ~ theta^((s - c)^2).

``encode_record`` / ``decode_record`` write and read the record's data (FORMAT.md, "Uniform
record"); ``uniform_code`` picks the step for a target mean squared error.
"""

from __future__ import annotations

import math
import struct

import numpy as np

from neurcomp.config.errors import InputError

_DATA = struct.Struct("<fiIdI")  # step, qmin, centre c, theta, number of 32-bit ANS words
MODELS = ("geometric", "gaussian")
MAX_LEVELS = 1 << 16  # K, the number of integers between qmin and qmax (as a 16-bit codebook)
HEAD_SIZE = _DATA.size


def available() -> bool:
    try:
        import constriction  # noqa: F401
    except ImportError:
        return False
    return True


def model_probabilities(levels: int, model: int, centre: int, theta: float) -> np.ndarray:
    """Unnormalised p(s), s = 0..levels-1, from running products (deterministic in IEEE float64).

    geometric: theta^|d|; gaussian: theta^(d^2) = prod of theta^(2j+1), j < |d|. Tails that
    underflow to 0 still get constriction's smallest probability, so every symbol is codable."""
    d = np.abs(np.arange(levels, dtype=np.int64) - centre)
    span = int(d.max()) + 1
    if model == 0:
        factors = np.full(span, theta)
    else:
        factors = np.empty(span)
        factors[0] = theta
        factors[1:] = theta * theta
        factors = np.multiply.accumulate(factors)  # theta^(2j+1)
    power = np.ones(span)
    power[1:] = np.multiply.accumulate(factors[:-1])
    return power[d]


def _categorical(probs: np.ndarray):
    import constriction

    return constriction.stream.model.Categorical(probs, perfect=False)


def _ans_words(symbols: np.ndarray, probs: np.ndarray) -> np.ndarray:
    import constriction

    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(symbols.astype(np.int32), _categorical(probs))
    return coder.get_compressed().astype("<u4")


def _fits(symbols: np.ndarray, levels: int):
    """Candidate (model, centre, theta): each model at its moment fit and a few scalings of it."""
    s = symbols.astype(np.float64)
    for model in (0, 1):
        centre = int(np.clip(np.round(np.median(s) if model == 0 else s.mean()), 0, levels - 1))
        spread = float(np.mean(np.abs(s - centre)) if model == 0 else np.mean((s - centre) ** 2))
        for k in (0.7, 0.85, 1.0, 1.2):
            b = max(spread * k, 0.05)
            theta = math.exp(-1.0 / b) if model == 0 else math.exp(-1.0 / (2.0 * b))
            yield model, centre, float(min(max(theta, 1e-300), 1.0 - 1e-12))


def encode_record(code) -> tuple[int, bytes]:
    """(model id, record data) of a uniform TensorCode: the smallest stream among the fits."""
    step, qmin = code.uniform
    levels = int(code.values.size)
    symbols = code.indices.astype(np.int64)
    best = None
    for model, centre, theta in _fits(symbols, levels):
        words = _ans_words(symbols, model_probabilities(levels, model, centre, theta))
        if best is None or words.size < best[3].size:
            best = (model, centre, theta, words)
    model, centre, theta, words = best
    return model, _DATA.pack(step, qmin, centre, theta, words.size) + words.tobytes()


def decode_record(take, count: int, levels: int, model: int, source: str):
    """((step, qmin), reconstruction table (levels,) float32, symbols (count,) uint16) read with
    ``take(n) -> bytes``, or a one-line problem (str). Without constriction: InputError."""
    if not available():
        raise InputError(f"{source}: holds entropy-coded weights but the 'constriction' package is not installed "
                         "(pip install constriction)")
    step, qmin, centre, theta, n_words = struct.unpack("<fiIdI", take(_DATA.size))
    if model >= len(MODELS) or not (1 <= levels <= MAX_LEVELS) or centre >= levels:
        return f"bad uniform record ({levels} levels, model {model}, centre {centre})"
    if not (math.isfinite(step) and step > 0 and 0 < theta < 1) or not -2 ** 31 <= qmin <= 2 ** 31 - levels:
        return f"bad uniform record (step {step}, theta {theta}, qmin {qmin})"
    if n_words > count + 2:  # at most 24 bits (constriction's precision) per symbol, plus the state
        return f"uniform record announces {n_words} ANS words for {count} values"
    words = np.frombuffer(take(4 * n_words), dtype="<u4").astype(np.uint32)
    import constriction

    try:
        coder = constriction.stream.stack.AnsCoder(words)
        symbols = coder.decode(_categorical(model_probabilities(levels, model, centre, theta)), count)
        ok = coder.is_empty()
    except Exception as exc:  # noqa: BLE001  (constriction raises on an invalid stream)
        return f"uniform record's ANS stream does not decode ({exc})"
    if not ok or symbols.size != count:
        return "uniform record's ANS stream does not decode to its values (stream corrupt)"
    table = np.arange(qmin, qmin + levels, dtype=np.float32) * np.float32(step)
    return (float(step), int(qmin)), table, symbols.astype(np.uint16)


def quantize_uniform(values: np.ndarray, step: float) -> tuple[np.ndarray, int, np.ndarray]:
    """(q - qmin as int64, qmin, reconstruction table float32) of ``values`` at ``step``."""
    step32 = np.float32(step)
    q = np.round(values.astype(np.float64) / float(step32)).astype(np.int64)
    qmin = int(q.min())
    table = np.arange(qmin, int(q.max()) + 1, dtype=np.float32) * step32
    return q - qmin, qmin, table


def uniform_code(values: np.ndarray, target_mse: float, make_code):
    """The coarsest step (to 1 %) whose mean squared error is at most ``target_mse`` and whose
    integers span at most MAX_LEVELS, as ``make_code(table, symbols, (step, qmin))``; None if no
    step qualifies. The error is that of the stored (float32) reconstruction."""
    v = np.asarray(values, dtype=np.float32).reshape(-1)
    span = float(v.max() - v.min())
    if not (v.size and span > 0 and target_mse > 0):
        return None

    def error(step):
        sym, qmin, table = quantize_uniform(v, step)
        ok = table.size <= MAX_LEVELS and float(np.mean((table[sym] - v) ** 2, dtype=np.float64)) <= target_mse
        return ok, (sym, qmin, table)

    lo, hi = span / (MAX_LEVELS - 1), span
    ok, best = error(lo)
    if not ok:
        return None
    while hi / lo > 1.01:
        mid = math.sqrt(lo * hi)
        ok, found = error(mid)
        lo, hi, best = (mid, hi, found) if ok else (lo, mid, best)
    sym, qmin, table = best
    if not -2 ** 31 <= qmin <= 2 ** 31 - table.size:
        return None
    return make_code(table, sym.astype(np.uint16), (float(np.float32(lo)), qmin))
