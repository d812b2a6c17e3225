"""Encode with a guaranteed maximum error, and check that a decoded volume keeps it.

The encoder decodes its own file exactly as the decoder will (``decode.decode_volume``), adds the
corrections (``quantization.bound``), and decodes the final file once more to verify every voxel
before it returns the bytes.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from neurcomp.config.errors import InputError
from neurcomp.quantization.bound import F32_MAX, MARGIN, absolute_bound, corrections_for
from neurcomp.quantization.decode import decode_volume
from neurcomp.quantization.encode import encode_network
from neurcomp.quantization.format import CompressedNetwork, parse, serialize


def check_bound_option(mode: str, requested: float, option: str) -> None:
    if not (math.isfinite(requested) and requested > 0) or (mode == "rel" and requested >= 1):
        limit = "in (0, 1)" if mode == "rel" else "finite and > 0"
        raise InputError(f"{option} = {requested!r} is invalid: must be {limit}")


def max_error(truth: np.ndarray, decoded: np.ndarray) -> float:
    """Largest |truth - decoded| over every voxel, in float64, slab by slab (no float64 volume copy)."""
    worst = 0.0
    for z in range(0, truth.shape[0], 64):
        d = np.abs(np.asarray(truth[z:z + 64], np.float64) - decoded[z:z + 64].astype(np.float64))
        worst = max(worst, float(d.max()))
    return worst


def encode_bounded(net: CompressedNetwork, truth: np.ndarray, mode: str, requested: float, *, level=None,
                   device=None, option: str = "max_abs_error", verify: bool = True) -> tuple[bytes, dict]:
    """The file of ``net`` plus the corrections that keep every voxel within the bound of ``truth``
    (physical values, (Z, Y, X)); returns (bytes, report). Refuses a bound the float32 output cannot keep.
    ``verify`` False skips the final decode (``verify_bound``): for sizing trials, never for a file
    that is written."""
    check_bound_option(mode, requested, option)
    info = net.volume
    if tuple(truth.shape) != tuple(info.shape):
        raise InputError(f"{option}: the volume's shape {tuple(truth.shape)} differs from the network's {tuple(info.shape)}")
    plain_data = encode_network(net, level)
    plain = parse(plain_data, "<encoder>")  # the network exactly as the decoder reads it
    decoded, _, _ = decode_volume(plain, device=device)
    bound_abs = _bound_in_float32(mode, requested, info.vmin, info.vmax, option)
    data = serialize(replace(plain, bound=corrections_for(truth, decoded, mode, requested, bound_abs)), level)
    report = {"error_bound_mode": mode, "error_bound_requested": requested, "max_abs_error_bound": bound_abs,
              "corrections": int(parse(data, "<encoder>").bound.positions.size), "network_bytes": len(plain_data)}
    if verify:
        report["max_abs_error_verified"] = verify_bound(data, truth, bound_abs, requested, device, option)
    return data, report


def verify_bound(data: bytes, truth: np.ndarray, bound_abs: float, requested: float, device, option: str) -> float:
    """Decode ``data`` as the decoder will and return its largest error; refuse it above the bound."""
    return _kept(max_error(truth, decode_volume(parse(data, "<encoder>"), device=device)[0]), bound_abs, requested,
                 option)


def _bound_in_float32(mode: str, requested: float, vmin: float, vmax: float, option: str) -> float:
    """E in physical units; refused where the correction step 2 MARGIN E is beyond float32 (the
    decoder refuses such a step)."""
    bound_abs = absolute_bound(mode, requested, vmin, vmax)
    if 2 * MARGIN * bound_abs > F32_MAX:
        raise InputError(f"{option} = {requested:g}: a bound of {bound_abs:.6g} needs a correction step beyond "
                         f"float32 ({F32_MAX:.4g})")
    return bound_abs


def _kept(worst: float, bound_abs: float, requested: float, option: str) -> float:
    """The decoded file's largest error ``worst``, refused above the bound."""
    if not worst <= bound_abs:
        raise InputError(f"{option} = {requested:g}: the decoded file still misses the bound ({worst:.6g} > "
                         f"{bound_abs:.6g}): the bound is below the float32 precision of the values")
    return worst


def encode_latent_bounded(model, vmin: float, vmax: float, truth: np.ndarray, mode: str, requested: float, *,
                          option: str = "max_abs_error", verify: bool = True) -> tuple[bytes, dict]:
    """A latent-grid file (``quantization.latent_format``) plus the corrections that keep every
    voxel within the bound of ``truth``, exactly as ``encode_bounded`` does for Neurcomp files: the
    plain file is decoded as the decoder will, the corrections computed from that, and the final
    file decoded once more and refused above the bound."""
    from neurcomp.quantization import latent_format

    check_bound_option(mode, requested, option)
    if tuple(truth.shape) != tuple(model.shape):
        raise InputError(f"{option}: the volume's shape {tuple(truth.shape)} differs from the network's {tuple(model.shape)}")
    plain = latent_format.encode(model, vmin, vmax)
    decoded = latent_format.decode_volume(plain, source="<encoder>")
    bound_abs = _bound_in_float32(mode, requested, vmin, vmax, option)
    bound = corrections_for(truth, decoded, mode, requested, bound_abs)
    data = latent_format.encode(model, vmin, vmax, bound)
    report = {"error_bound_mode": mode, "error_bound_requested": requested, "max_abs_error_bound": bound_abs,
              "corrections": int(bound.positions.size), "network_bytes": len(plain)}
    if verify:
        report["max_abs_error_verified"] = _kept(max_error(truth, latent_format.decode_volume(data, source="<encoder>")),
                                                 bound_abs, requested, option)
    return data, report


BITS_RANGE = (3, 12)  # the index bits the bound-only encoder tries (k-means at 2^12 centroids at most)


def smallest_bounded(quantize, truth: np.ndarray, mode: str, requested: float, start_bits: int, *, device=None,
                     option: str = "max_abs_error", progress: bool = True) -> tuple[bytes, dict]:
    """The smallest bounded file over the index bits B: ``quantize(B)`` gives the network at B bits,
    each is encoded with its corrections (``encode_bounded``), walking B downhill from
    ``start_bits`` (``quantization.size_search``); only the smallest is decoded again to verify the
    bound. Returns (bytes, report with every B tried)."""
    from tqdm.auto import tqdm

    from neurcomp.quantization.size_search import downhill

    lo, hi = BITS_RANGE
    start = min(max(start_bits, lo), hi)
    files: dict[int, tuple[bytes, dict]] = {}
    bar = tqdm(desc=f"bits search ({option} {requested:g})", unit="encoding", disable=not progress)

    def size(k: int) -> float:
        bits = start + k
        files[bits] = encode_bounded(quantize(bits), truth, mode, requested, device=device, option=option,
                                     verify=False)
        bar.update(1)
        bar.set_postfix(bits=bits, kbytes=f"{len(files[bits][0]) / 1000:.1f}")
        return float(len(files[bits][0]))

    try:
        best, _ = downhill(size, lo - start, hi - start)
    finally:
        bar.close()
    data, report = files[start + best]
    report["max_abs_error_verified"] = verify_bound(data, truth, report["max_abs_error_bound"], requested, device, option)
    tried = {b: {"file_bytes": len(d), "network_bytes": r["network_bytes"], "corrections": r["corrections"]}
             for b, (d, r) in sorted(files.items())}
    return data, {**report, "bits": start + best, "bits_tried": tried}
