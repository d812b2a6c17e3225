"""Network -> compressed file: k-means per matrix, optional codebook fine-tuning, serialisation.

    net = quantize_network(model, volume_info, bits, options)      # CompressedNetwork
    finetune_codebooks(model, net, sampler, passes, ...)            # optional, updates net in place
    data = encode_network(net)                                      # bytes (format.serialize)

or in one call ``encode_model(model, volume_info, bits, options) -> bytes``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from neurcomp.config.errors import InputError
from neurcomp.data.volume import VolumeInfo
from neurcomp.model.fvsrn import build_network
from neurcomp.model.neurcomp import Neurcomp
from neurcomp.quantization import entropy
from neurcomp.quantization.bitpack import packed_size
from neurcomp.quantization.format import (BIAS_MODES, COMPRESSIONS, DTYPES, CompressedNetwork, QuantSettings, TensorCode,
                                 compress, raw_payload, serialize, volume_problem)
from neurcomp.quantization.kmeans import MAX_ITERS, assign, kmeans_1d

FLOAT16_MAX = 65504.0
QUANTIZERS = ("kmeans", "uniform", "auto")


@dataclass
class EncoderOptions:
    """How each tensor is stored. The defaults are what ``benchmarks/quantization_bench.py`` showed to pay."""

    codebook_dtype: str = "float16"  # centroids: float16 or float32
    bias: str = "float16"  # biases: float32, float16 or quantized (own k-means codebook, same bits)
    quantize_first_last: bool = False  # k-means the first and last layers too (else raw, raw_dtype)
    raw_dtype: str = "float16"  # dtype of unquantized first/last layer weights
    compression: str = "auto"  # payload entropy coding: zstd, lzma, none, or auto (smallest of the three)
    level: int | None = None  # compressor level (zstd default 19)
    max_iters: int = MAX_ITERS  # Lloyd iterations cap
    # per k-means'd tensor: kmeans, uniform (entropy-coded uniform quantization at the k-means error,
    # quantization.entropy) or auto (the smaller record of the two); see docs/quantization.md
    quantizer: str = "auto"

    def validate(self) -> "EncoderOptions":
        if self.codebook_dtype not in DTYPES:
            raise ValueError(f"codebook_dtype must be one of {DTYPES}, got {self.codebook_dtype!r}")
        if self.raw_dtype not in DTYPES:
            raise ValueError(f"raw_dtype must be one of {DTYPES}, got {self.raw_dtype!r}")
        if self.bias not in BIAS_MODES:
            raise ValueError(f"bias must be one of {BIAS_MODES}, got {self.bias!r}")
        if self.quantizer not in QUANTIZERS:
            raise ValueError(f"quantizer must be one of {QUANTIZERS}, got {self.quantizer!r}")
        if self.compression not in (*COMPRESSIONS, "auto"):
            raise ValueError(f"compression must be one of {(*COMPRESSIONS, 'auto')}, got {self.compression!r}")
        return self


def _round_to(values: np.ndarray, dtype: str) -> tuple[np.ndarray, str]:
    """float32 copy of ``values`` rounded to ``dtype``; float16 falls back to float32 if it would overflow."""
    v = np.asarray(values, dtype=np.float32)
    if dtype == "float16":
        if v.size and float(np.max(np.abs(v))) > FLOAT16_MAX:
            return v.copy(), "float32"
        return v.astype(np.float16).astype(np.float32), "float16"
    return v.copy(), "float32"


def raw_tensor(values: np.ndarray, dtype: str) -> TensorCode:
    v, dt = _round_to(np.asarray(values).reshape(-1), dtype)
    return TensorCode("raw", dt, v)


def frequency_order(code: TensorCode) -> TensorCode:
    """Renumber a codebook so index 0 is the most used centroid (ties keep value order).

    Decoding is unaffected (weights are codebook[indices] either way), but small indices become
    the common ones, which is what an entropy coder of the byte planes can exploit.
    """
    if code.kind != "codebook":
        return code
    counts = np.bincount(code.indices.astype(np.int64), minlength=code.values.size)
    order = np.argsort(-counts, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return replace(code, values=code.values[order], indices=rank[code.indices.astype(np.int64)].astype(np.uint16))


def _uniform_record(flat: np.ndarray, target_mse: float) -> TensorCode | None:
    """``entropy.uniform_code`` of ``flat`` at ``target_mse``, as a tensor record (None: no step fits)."""
    return entropy.uniform_code(flat, target_mse, lambda table, symbols, step_qmin: TensorCode(
        "uniform", "float32", table, symbols, uniform=step_qmin))


def uniform_or_codebook(flat: np.ndarray, code: TensorCode, quantizer: str) -> TensorCode:
    """``code`` (a lossy k-means codebook) or, for quantizer uniform / auto when its record is
    smaller, uniform quantization at the same mean squared error with entropy-coded integers
    (``quantization.entropy``): no codebook to store, and about 0.47 bit per weight less than a
    fixed-rate quantizer of a Gaussian at equal error (Gish and Pierce 1968)."""
    if quantizer == "kmeans" or not entropy.available():
        return code
    target = float(np.mean((code.dequantize().astype(np.float64) - flat) ** 2))
    uniform = _uniform_record(flat, target)
    if uniform is None or quantizer == "uniform":
        return uniform or code
    codebook_bytes = code.values.size * np.dtype(code.dtype).itemsize + packed_size(code.count, code.bits)
    return uniform if len(entropy.encode_record(uniform)[1]) < codebook_bytes else code


def uniform_at_bits(flat: np.ndarray, bits: int, quantizer: str) -> TensorCode | None:
    """A matrix too small for a 2**bits codebook, at B bits' precision: uniform quantization with
    mean squared error at most var(w) / 4**bits (B bits of a uniformly spread matrix of the same
    variance: step = sqrt(12) std / 2**bits), its integers ANS-coded (``quantization.entropy``);
    None with quantizer kmeans, without the coder, or when the record is not smaller than raw
    float32. Tied to the spread rather than the range, the record is about the same size whether
    the weights are freshly initialised (what rate control sizes the network with) or trained
    (peaked, with a few large ones): measured on the small matrices of chi and neghip at ratio 400,
    trained records are 1.01 of fresh ones' bytes, 0.94 tied to the range.

    Without it such a matrix is stored raw float32, 32 bits a weight however few bits were asked
    for: in a network of width 6 to 13 (a 32^3 to 64^3 volume at ratios 100 to 400) the hidden
    matrices are 36 to 169 weights, and raw float32 took most of the file.
    """
    if quantizer == "kmeans" or not entropy.available() or flat.size == 0:
        return None
    variance = float(np.var(flat, dtype=np.float64))
    code = _uniform_record(flat, variance / 4.0 ** int(bits))
    if code is None or len(entropy.encode_record(code)[1]) >= flat.size * 4:
        return None
    return code


def _small(flat: np.ndarray, bits: int, quantizer: str) -> TensorCode:
    """Where a codebook cannot beat raw float32: ``uniform_at_bits``, else raw float32 (exact)."""
    return uniform_at_bits(flat, bits, quantizer) or TensorCode("raw", "float32", flat.copy())


def quantize_tensor(values: np.ndarray, bits: int, codebook_dtype: str = "float16",
                    max_iters: int = MAX_ITERS, seed: int = 0, quantizer: str = "auto") -> TensorCode:
    """k-means ``values`` (flattened) to 2**bits centroids stored as ``codebook_dtype``.

    With at most 2**bits distinct values the tensor is stored losslessly instead, as a float32
    codebook of the distinct values with ceil(log2(K))-bit indices, when that beats raw float32.
    Where no codebook beats raw float32 (a matrix of fewer weights than about 1.5 x 2**bits, or 16
    bits on a 256x256 one), the quantizer kmeans stores it raw float32 (lossless), the others as a
    uniform record at B bits' precision when smaller (``uniform_at_bits``). A lossy codebook may
    become a uniform record (``uniform_or_codebook``, ``quantizer``).
    """
    flat = np.asarray(values, dtype=np.float32).reshape(-1)
    k = 1 << int(bits)
    if k * np.dtype(codebook_dtype).itemsize + packed_size(flat.size, bits) >= flat.size * 4 \
            and np.unique(flat).size > k:  # a full codebook cannot beat raw float32: skip k-means
        return _small(flat, bits, quantizer)
    res = kmeans_1d(flat, bits, max_iters, seed)
    if res.exact:
        k = res.codebook.size
        b = max(1, math.ceil(math.log2(k))) if k > 1 else 1
        if flat.size * 4 <= k * 4 + packed_size(flat.size, b):
            return _small(flat, bits, quantizer)
        return frequency_order(TensorCode("codebook", "float32", res.codebook, res.indices.reshape(-1), b))
    codebook, dt = _round_to(res.codebook, codebook_dtype)
    if codebook.size * np.dtype(dt).itemsize + packed_size(flat.size, bits) >= flat.size * 4:
        return _small(flat, bits, quantizer)  # about one weight per centroid
    indices = res.indices.reshape(-1)
    if dt == "float16":  # rounding can move a centroid; re-assign to the nearest stored value
        indices = assign(flat, codebook).astype(np.uint16)
    return uniform_or_codebook(flat, frequency_order(TensorCode("codebook", dt, codebook, indices, int(bits))),
                               quantizer)


def quantize_network(model: Neurcomp, volume_info: VolumeInfo, bits: int,
                     options: EncoderOptions | None = None, seed: int = 0, source: str = "network") -> CompressedNetwork:
    """Quantize every linear layer of ``model`` as ``options`` says (nothing is written).

    Deterministic given ``seed`` (used only by k-means' k-means++ start). A network with NaN or
    infinite weights, or a volume record the file could not hold, is an InputError naming ``source``."""
    opts = (options or EncoderOptions()).validate()
    if not 1 <= int(bits) <= 16:
        raise ValueError(f"bits must be in 1..16, got {bits}")
    problem = volume_problem(volume_info)
    if problem:
        raise InputError(f"{source}: cannot quantize: the volume record has a {problem}")
    linears = model.linears()
    tensors = []
    for i, lin in enumerate(linears):
        w = lin.weight.detach().cpu().numpy().astype(np.float32).reshape(-1)
        b = lin.bias.detach().cpu().numpy().astype(np.float32).reshape(-1)
        if not (np.isfinite(w).all() and np.isfinite(b).all()):
            raise InputError(f"{source}: cannot quantize: linear layer {i} holds NaN or infinite weights "
                             "(the network diverged)")
        edge = i in (0, len(linears) - 1)
        if edge and not opts.quantize_first_last:
            wt = raw_tensor(w, opts.raw_dtype)
        else:
            wt = quantize_tensor(w, bits, opts.codebook_dtype, opts.max_iters, seed + 2 * i, opts.quantizer)
        bt = quantize_tensor(b, bits, opts.codebook_dtype, opts.max_iters, seed + 2 * i + 1, opts.quantizer) \
            if opts.bias == "quantized" \
            else raw_tensor(b, opts.bias)
        tensors.append((wt, bt))
    settings = QuantSettings(bits=int(bits), codebook_dtype=opts.codebook_dtype, bias=opts.bias,
                             quantize_first_last=opts.quantize_first_last, raw_dtype=opts.raw_dtype,
                             compression=opts.compression, finetune_passes=0)
    return CompressedNetwork(arch=model.arch, volume=volume_info, settings=settings, tensors=tensors)


def with_compression(net: CompressedNetwork, method: str) -> CompressedNetwork:
    """``net`` set up for payload coding ``method``: byte-plane indices when entropy coded
    (byte-aligned symbols for the compressor's literal coder), bit-packed when stored plainly."""
    layout = "packed" if method == "none" else "planes"
    tensors = [tuple(replace(t, layout=layout) if t.kind == "codebook" else t for t in pair) for pair in net.tensors]
    return replace(net, tensors=tensors, settings=replace(net.settings, compression=method))


def choose_compression(net: CompressedNetwork, level: int | None = None) -> str:
    """The payload coding giving the smallest file among none, zstd and lzma."""
    sizes = {}
    for method in COMPRESSIONS:
        try:
            sizes[method] = len(compress(raw_payload(with_compression(net, method)), method, level))
        except ImportError:  # zstandard not installed
            continue
    return min(sizes, key=lambda m: (sizes[m], COMPRESSIONS.index(m)))


def encode_network(net: CompressedNetwork, level: int | None = None) -> bytes:
    """Serialise; a ``compression`` of "auto" is resolved to the smallest coding first."""
    method = net.settings.compression
    if method == "auto":
        method = choose_compression(net, level)
    return serialize(with_compression(net, method), level)


def encode_model(model: Neurcomp, volume_info: VolumeInfo, bits: int, options: EncoderOptions | None = None) -> bytes:
    """Quantize ``model`` to ``bits`` bits per index and return the complete file."""
    opts = (options or EncoderOptions()).validate()
    return encode_network(quantize_network(model, volume_info, bits, opts), opts.level)


# ----------------------------------------------------------------------------------------------
# quantization-aware fine-tuning

def dequantized_state(net: CompressedNetwork) -> list[tuple[np.ndarray, np.ndarray]]:
    """(weight (out, in), bias (out,)) float32 arrays of every linear layer."""
    out = []
    for (o, i), (w, b) in zip(net.arch.linear_shapes(), net.tensors):
        out.append((w.dequantize().reshape(o, i), b.dequantize().reshape(o)))
    return out


def load_into(model: Neurcomp, net: CompressedNetwork) -> Neurcomp:
    """Copy ``net``'s dequantized weights into ``model`` (same architecture) and return it."""
    with torch.no_grad():
        for lin, (w, b) in zip(model.linears(), dequantized_state(net)):
            lin.weight.copy_(torch.from_numpy(w))
            lin.bias.copy_(torch.from_numpy(b))
    return model


class _CodedTensor(nn.Module):
    """A stored tensor as trainable parameters: the codebook (indices fixed) or the raw values."""

    def __init__(self, code: TensorCode, shape, device):
        super().__init__()
        self.shape = tuple(shape)
        # a uniform record's values stay on its grid (q * step): fixed, like its integers
        self.param = nn.Parameter(torch.tensor(code.values, dtype=torch.float32, device=device),
                                  requires_grad=code.kind != "uniform")
        idx = None if code.kind == "raw" else torch.as_tensor(code.indices.astype(np.int64), device=device)
        self.register_buffer("idx", idx)

    def forward(self) -> torch.Tensor:
        v = self.param if self.idx is None else self.param[self.idx]
        return v.reshape(self.shape)


@torch.no_grad()
def normalized_psnr(model: nn.Module, reference) -> float:
    """PSNR of the network over the whole grid, in normalised units (range 2, equal to physical PSNR).

    ``reference``: the normalised values (Z, Y, X), a tensor on any device or an array, or a volume
    (``data.volume.Volume``, ``data.lazy.LazyVolume``), normalised slab by slab. The prediction
    comes to the host and the error is summed there in float64, one slab at a time: no float64
    copy of the volume, and nothing but the network on the device.
    """
    from neurcomp.data.metrics import psnr
    from neurcomp.data.volume import normalize, z_slabs
    from neurcomp.model.inference import predict_volume

    if hasattr(reference, "vmin"):  # a volume in physical units
        lo, hi = reference.vmin, reference.vmax
        slabs = ((z0, np.clip(normalize(slab, lo, hi), -1.0, 1.0)) for z0, slab in z_slabs(reference.values))
    else:
        values = reference.detach().cpu().numpy() if torch.is_tensor(reference) else np.asarray(reference)
        slabs = z_slabs(values)
    pred = predict_volume(model, tuple(int(n) for n in reference.shape))
    sq_sum, gt_min, gt_max = 0.0, math.inf, -math.inf
    for z0, gt in slabs:
        diff = pred[z0:z0 + gt.shape[0]].astype(np.float64) - gt.astype(np.float64)
        sq_sum += float(np.dot(diff.reshape(-1), diff.reshape(-1)))
        gt_min, gt_max = min(gt_min, float(gt.min())), max(gt_max, float(gt.max()))
    mse = sq_sum / pred.size
    return psnr(mse, gt_max - gt_min)


def finetune_codebooks(model: Neurcomp, assignments: CompressedNetwork, sampler, passes: float, *,
                       points_per_step: int = 16384, lr: float = 1e-5, num_voxels: int | None = None,
                       evaluate: bool = True, keep_best: bool = True, reference=None, log=print) -> dict:
    """Quantization-aware fine-tuning: train the centroids with the assignments fixed, plus biases
    (uniform records stay as they are: their values must remain multiples of their step).

    Every stored tensor becomes a parameter: each codebook (weights = codebook[indices], the
    indices never change) and every raw tensor (biases; unquantized first/last layers). Adam with
    learning rate ``lr`` minimises the MSE on ``sampler`` batches of ``points_per_step`` points for
    ``passes`` passes (one pass = as many samples as voxels). Afterwards the values are rounded
    back to their stored dtypes and written into ``assignments`` (in place) and ``model``.

    ``sampler`` is any of ``training.sampling``'s (float32, native or bricks). With ``evaluate`` the
    PSNR over the whole grid is measured before and after, against ``reference`` (the volume, or
    its normalised values; default: a float32 sampler's resident grid), on the host
    (``normalized_psnr``); with ``keep_best`` the fine-tuned values are kept only if they improve
    it. Returns {"steps", "psnr_before", "psnr_after", "kept", "seconds"}.
    """
    t0 = time.perf_counter()
    grid = reference if reference is not None else sampler.grid[0, 0]
    num_voxels = int(num_voxels or np.prod(tuple(grid.shape)))
    device = sampler.device
    shapes = assignments.arch.linear_shapes()
    work = build_network(assignments.arch).to(device)
    load_into(work, assignments)
    psnr_before = normalized_psnr(work, grid) if evaluate else float("nan")

    coded = nn.ModuleList()
    for (o, i), (w, b) in zip(shapes, assignments.tensors):
        coded.append(_CodedTensor(w, (o, i), device))
        coded.append(_CodedTensor(b, (o,), device))
    # the network's weights become plain tensors recomputed from the codebooks at every step
    # (cheaper than torch.func.functional_call, whose first use imports the compiler stack)
    shadow = build_network(assignments.arch).to(device)
    linears = shadow.linears()
    for lin in linears:
        del lin.weight, lin.bias
    steps = max(1, math.ceil(passes * num_voxels / points_per_step - 1e-9)) if passes > 0 else 0
    opt = torch.optim.Adam(coded.parameters(), lr=lr)
    shadow.train()
    for _ in range(steps):
        for k, lin in enumerate(linears):
            lin.weight = coded[2 * k]()
            lin.bias = coded[2 * k + 1]()
        coords, targets, _ = sampler.sample(points_per_step)
        pred = shadow(coords)
        loss = torch.mean((pred - targets) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    tuned = []
    for k, (w, b) in enumerate(assignments.tensors):
        pair = []
        for code, mod in ((w, coded[2 * k]), (b, coded[2 * k + 1])):
            vals, dt = _round_to(mod.param.detach().cpu().numpy(), code.dtype)
            pair.append(code if code.kind == "uniform" else replace(code, values=vals, dtype=dt))
        tuned.append(tuple(pair))
    candidate = replace(assignments, tensors=tuned)
    psnr_after = float("nan")
    kept = True
    if evaluate:
        load_into(work, candidate)
        psnr_after = normalized_psnr(work, grid)
        kept = not keep_best or psnr_after >= psnr_before
    if kept:
        assignments.tensors = tuned
        assignments.settings = replace(assignments.settings, finetune_passes=float(passes))
    load_into(model, assignments)
    result = {"steps": steps, "psnr_before": psnr_before, "psnr_after": psnr_after if kept else psnr_before,
              "psnr_tuned": psnr_after, "kept": kept, "seconds": time.perf_counter() - t0}
    if log:
        if evaluate:
            log(f"fine-tuning: {steps} steps, PSNR {psnr_before:.3f} -> {psnr_after:.3f} dB"
                + ("" if kept else " (worse: kept the k-means codebooks)"))
        else:
            log(f"fine-tuning: {steps} steps")
    return result
