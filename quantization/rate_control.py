"""Land the compressed file on a requested size: ratio = (voxels x 4 bytes) / file bytes.

Two stages:
  1. Before training, ``architecture_for_file_bytes`` sizes the network from a *prediction* of the
     file size: header + per tensor (12-byte record, float16 codebook, float16 biases) + weights x
     ``CODING_GAIN`` x B / 8, an assumed entropy-coding gain on the B-bit indices (what is left of
     the prediction's error, ``measured_architecture`` and stage 2 correct by measuring). The shared
     width is the largest that fits; the residual blocks' inner widths (or the last hidden width of
     a plain SIREN) then grow one neuron at a time, which moves the size in steps of about 2 w
     weights, far finer than the 5 % tolerance.
  2. After training, ``encode_to_size`` encodes at ``bits`` and *measures*; if the file misses the
     tolerance, it moves single layers to bits - 1 (too large) or bits + 1 (too small), largest
     layers first, re-measuring each time, so prediction errors are corrected from the real bytes.
"""

from __future__ import annotations

from dataclasses import replace

from neurcomp.model.architecture import FVSRN, MIN_WIDTH, NEURCOMP, Architecture, fvsrn_for_parameters, hidden_layers
from neurcomp.quantization import entropy
from neurcomp.quantization.bitpack import packed_size
from neurcomp.quantization.encode import EncoderOptions, encode_network, quantize_network, quantize_tensor

HEADER_BYTES = 160  # fixed header, architecture, volume and settings records, checksums (FORMAT.md)
TENSOR_RECORD_BYTES = 12
CODING_GAIN = 0.985  # assumed fraction of the B index bits per weight left after entropy coding
MAX_ROUNDS = 4  # rate control moves a layer at most this many bits from the requested ones
UNIFORM_EXTRA_BITS = 0.3  # measured: 9.3 bits a weight at 9 bits (399 weights, fresh and trained alike)


def predict_tensor_bytes(count: int, bits: int, codebook_item: int, quantizer: str = "auto") -> float:
    """Predicted stored bytes of one k-means'd tensor, following ``quantize_tensor``'s choices."""
    k = 1 << bits
    if k * codebook_item + packed_size(count, bits) >= count * 4:
        # no codebook beats raw float32: kmeans stores raw values, the others a uniform record of
        # about B + UNIFORM_EXTRA_BITS bits a weight (encode.uniform_at_bits), if that is smaller
        if quantizer == "kmeans" or not entropy.available():
            return count * 4.0
        return min(count * 4.0, entropy.HEAD_SIZE + count * (bits + UNIFORM_EXTRA_BITS) / 8)
    return k * codebook_item + count * CODING_GAIN * bits / 8


def predict_file_bytes(arch: Architecture, bits: int, options: EncoderOptions | None = None) -> float:
    """Predicted size of the compressed file of a network shaped ``arch`` at ``bits`` bits."""
    opts = options or EncoderOptions()
    cb_item = 2 if opts.codebook_dtype == "float16" else 4
    raw_item = 2 if opts.raw_dtype == "float16" else 4
    bias_item = {"float16": 2, "float32": 4}.get(opts.bias)
    size = HEADER_BYTES + 4 * arch.n_layers
    shapes = arch.linear_shapes()
    for k, (o, i) in enumerate(shapes):
        size += 2 * TENSOR_RECORD_BYTES
        if k in (0, len(shapes) - 1) and not opts.quantize_first_last:
            size += o * i * raw_item
        else:
            size += predict_tensor_bytes(o * i, bits, cb_item, opts.quantizer)
        size += o * bias_item if bias_item else predict_tensor_bytes(o, bits, cb_item, opts.quantizer)
    return size


def architecture_for_file_bytes(target_bytes: float, n_layers: int, bits: int, residual: bool = True,
                                options: EncoderOptions | None = None, d_in: int = 3, d_out: int = 1,
                                omega_0: float = 30.0, source: str = "config") -> Architecture:
    """The largest network whose predicted file fits ``target_bytes`` (uneven last widths fill the rest).

    A plain network has ``2 n_layers - 1`` hidden layers, as one sized by ``compression_ratio``."""
    from neurcomp.config.errors import ConfigError

    n_layers = hidden_layers(n_layers, residual)
    def arch(widths):
        return Architecture(widths=list(widths), residual=residual, d_in=d_in, d_out=d_out, omega_0=omega_0)

    def fits(widths) -> bool:
        return predict_file_bytes(arch(widths), bits, options) <= target_bytes

    if not fits([MIN_WIDTH] * n_layers):
        smallest = predict_file_bytes(arch([MIN_WIDTH] * n_layers), bits, options)
        raise ConfigError(f"{source}: target_file_ratio needs a file of {target_bytes:.0f} bytes, but the smallest "
                          f"network ({n_layers} layers of width {MIN_WIDTH}, {bits} bits) needs about "
                          f"{smallest:.0f}: lower the ratio or quant_bits")
    w = MIN_WIDTH
    while fits([w + 1] * n_layers):
        w += 1
    widths = [w] * n_layers
    # grow what can grow independently, round-robin, while the prediction still fits
    growable = list(range(1, n_layers)) if residual and n_layers > 1 else [n_layers - 1]
    grown = True
    while grown:
        grown = False
        for k in growable:
            trial = list(widths)
            trial[k] += 1
            if fits(trial):
                widths, grown = trial, True
    return arch(widths)


def fvsrn_for_file_bytes(target_bytes: float, num_voxels: int, bits: int, options: EncoderOptions | None = None,
                         source: str = "config") -> Architecture:
    """The largest fvsrn network (``model.architecture.fvsrn_for_parameters``) whose predicted file
    fits ``target_bytes``: a bisection on the parameter budget."""
    from neurcomp.config.errors import ConfigError

    def size(budget: float) -> float:
        return predict_file_bytes(fvsrn_for_parameters(budget, num_voxels, source), bits, options)

    lo, hi = 0.0, max(2.0, 16.0 * target_bytes)  # every parameter costs more than 1/16 byte
    while hi - lo > 1:
        mid = (lo + hi) / 2
        try:
            fits = size(mid) <= target_bytes
        except ConfigError:  # below the smallest fvsrn network
            fits = True
        lo, hi = (mid, hi) if fits else (lo, mid)
    try:
        arch = fvsrn_for_parameters(lo, num_voxels, source)
    except ConfigError:
        arch = None
    if arch is None or predict_file_bytes(arch, bits, options) > target_bytes:
        raise ConfigError(f"{source}: target_file_ratio needs a file of {target_bytes:.0f} bytes, too small for the "
                          f"smallest fvsrn network at {bits} bits: lower the ratio or quant_bits")
    return arch


def measured_architecture(target_bytes: float, n_layers: int, bits: int, residual: bool = True,
                          options: EncoderOptions | None = None, rounds: int = 4, network: str = NEURCOMP,
                          num_voxels: int = 0, **arch_kwargs) -> Architecture:
    """``architecture_for_file_bytes`` corrected by measurement: encode a freshly initialised network
    of the predicted shape, compare its real size with the target and re-size with the corrected
    budget (which tensors the encoder stores raw, the header and codebooks are then exact; only the
    entropy coder's gain on trained weights remains predicted). ``network`` fvsrn: sized by
    ``fvsrn_for_file_bytes`` for a volume of ``num_voxels`` voxels."""
    import torch

    from neurcomp.model.fvsrn import build_network
    from neurcomp.quantization.encode import encode_model
    from neurcomp.data.volume import VolumeInfo

    dummy = VolumeInfo(shape=(2, 2, 2), spacing=(1.0, 1.0, 1.0), vmin=0.0, vmax=1.0)
    budget, best = target_bytes, None
    generator_state = torch.random.get_rng_state()  # leave the caller's random stream untouched
    try:
        torch.manual_seed(0)
        for _ in range(rounds):
            if network == FVSRN:
                arch = fvsrn_for_file_bytes(budget, num_voxels, bits, options, arch_kwargs.get("source", "config"))
            else:
                arch = architecture_for_file_bytes(budget, n_layers, bits, residual, options, **arch_kwargs)
            size = len(encode_model(build_network(arch), dummy, bits, options))
            if best is None or abs(size - target_bytes) < abs(best[1] - target_bytes):
                best = (arch, size)
            if abs(size / target_bytes - 1) < 0.01:
                break
            budget *= target_bytes / size
    finally:
        torch.random.set_rng_state(generator_state)
    return best[0]


def encode_to_size(model, volume_info, bits: int, target_bytes: float, options: EncoderOptions | None = None,
                   tolerance: float = 0.05, seed: int = 0) -> tuple[bytes, dict]:
    """Encode ``model`` so the file's ratio is within ``tolerance`` of the target, if bits allow.

    Returns (file bytes, report with per-layer bits, achieved bytes and whether it is within).
    """
    opts = (options or EncoderOptions()).validate()
    net = quantize_network(model, volume_info, bits, opts, seed)
    layer_bits = [bits] * len(net.tensors)
    weights = [lin.weight.detach().cpu().numpy().reshape(-1) for lin in model.linears()]
    # ratio within tolerance  <=>  bytes within [target / (1 + tol), target / (1 - tol)]
    lo_bytes, hi_bytes = target_bytes / (1 + tolerance), target_bytes / (1 - tolerance)
    data = encode_network(net, opts.level)
    order = sorted(range(len(weights)), key=lambda k: -weights[k].size)
    edge = {0, len(weights) - 1}
    for _ in range(MAX_ROUNDS):  # a round moves each layer by at most one bit
        changed = False
        for k in order:
            if lo_bytes <= len(data) <= hi_bytes:
                break
            if k in edge and not opts.quantize_first_last:
                continue
            step = -1 if len(data) > hi_bytes else 1
            new_bits = layer_bits[k] + step
            if not 1 <= new_bits <= 16:
                continue
            code = quantize_tensor(weights[k], new_bits, opts.codebook_dtype, opts.max_iters, seed + 2 * k, opts.quantizer)
            tensors = list(net.tensors)
            tensors[k] = (code, tensors[k][1])
            candidate = replace(net, tensors=tensors)
            candidate_data = encode_network(candidate, opts.level)
            if len(candidate_data) == len(data):
                continue  # the layer is already stored exactly: more bits change nothing
            overshoot = (step < 0 and len(candidate_data) < lo_bytes) or (step > 0 and len(candidate_data) > hi_bytes)
            if overshoot and abs(len(candidate_data) - target_bytes) >= abs(len(data) - target_bytes):
                continue  # this layer is too big a step; a smaller layer may fit
            net, data, layer_bits[k], changed = candidate, candidate_data, new_bits, True
        if not changed or lo_bytes <= len(data) <= hi_bytes:
            break
    report = {"layer_bits": layer_bits, "file_bytes": len(data), "target_bytes": target_bytes,
              "within_tolerance": bool(lo_bytes <= len(data) <= hi_bytes)}
    return data, report
