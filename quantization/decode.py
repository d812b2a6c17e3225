"""Compressed file -> network -> volume: everything needed comes from the file itself.

``decode_volume`` is the one path from a parsed file to voxels, for NeurcompDequantization.py, the
Python API (``compressors.api``), training's ``target_file_ratio`` file and the encoder's own check
of an error-bounded file: the network on the grid (``model.inference.predict_volume`` for the whole
grid, ``quantization.region`` for a box or another resolution), then the corrections.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from neurcomp.config.errors import InputError
from neurcomp.data.volume import VolumeInfo
from neurcomp.model.fvsrn import build_network
from neurcomp.model.neurcomp import Neurcomp
from neurcomp.quantization import bound as error_bound
from neurcomp.quantization import snap
from neurcomp.quantization.encode import load_into
from neurcomp.quantization.format import CompressedNetwork, parse
from neurcomp.quantization.memory import check_decode_memory
from neurcomp.quantization.region import Grid, geometry, make_grid, predict_grid


def build_model(net: CompressedNetwork) -> Neurcomp:
    """The network with ``net``'s dequantized weights, in eval mode (CPU)."""
    model = build_network(net.arch)
    load_into(model, net)
    model.eval()
    return model


def describe(net: CompressedNetwork, file_bytes: int) -> dict:
    """Metadata of a decoded file: settings, sizes and per-layer storage."""
    layers = []
    for (o, i), (w, b) in zip(net.arch.linear_shapes(), net.tensors):
        layers.append({"shape": [o, i], "weight": w.kind, "weight_dtype": w.dtype, "index_bits": w.bits,
                       "centroids": int(w.values.size) if w.kind == "codebook" else 0,
                       "bias": b.kind, "bias_dtype": b.dtype})
    return {"settings": asdict(net.settings), "architecture": net.arch.to_dict(), "file_bytes": int(file_bytes),
            "num_voxels": net.volume.num_voxels, "compression_ratio": net.volume.num_voxels * 4 / file_bytes,
            "layers": layers, "error_bound": net.bound.describe() if net.bound else None,
            "snap_to_integers": bool(net.flags & snap.FLAG_SNAP_TO_INTEGERS)}


def decode_volume(net: CompressedNetwork, grid: Grid | None = None, device=None, model: Neurcomp | None = None,
                  progress: bool = False) -> tuple[np.ndarray, tuple, tuple]:
    """(values (Z, Y, X) float32 in physical units, spacing, origin) of ``grid`` (default: the whole
    volume); corrections are applied on the file's own grid (native resolution), so the bound holds.
    InputError (naming ``net.source``) for a grid that does not fit in the available memory, checked
    before anything is allocated, and for a decoded volume that is not finite."""
    from neurcomp.model.inference import predict_volume

    info = net.volume
    grid = grid or make_grid(info.shape)
    where = torch.device(device) if device is not None else \
        next(model.parameters()).device if model is not None else torch.device("cpu")
    check_decode_memory(net.arch, grid.samples, net.source, where.type)
    model = model or build_model(net)
    if device is not None:
        model = model.to(device)
    if grid == make_grid(info.shape):  # the whole grid: the same path as training's evaluation
        values = predict_volume(model, info.shape, info, device=device, progress=progress)
    else:
        values = predict_grid(model, info, grid, device=device)
    snap.apply(net, values)  # integer sources, when the encoder measured that rounding helps
    if grid.native():
        with np.errstate(over="ignore"):  # an overflowing correction is refused just below
            error_bound.apply(net.bound, values, info.shape, grid.box)
    check_finite(values, net.source)
    spacing, origin = geometry(info, grid)
    return values, spacing, origin


def check_finite(values: np.ndarray, source: str, block: int = 1 << 22) -> None:
    """Refuse a decoded volume with a NaN or infinite voxel: every stored number passed its checks,
    but the network's sums still overflowed float32 (a crafted file; no encoder writes one). In
    blocks, so the check needs no volume-sized mask."""
    flat = values.reshape(-1)
    bad = sum(int(np.count_nonzero(~np.isfinite(flat[i:i + block]))) for i in range(0, flat.size, block))
    if bad:
        raise InputError(f"{source}: decoded volume is not finite ({bad} of {flat.size} voxels NaN or infinite): "
                         "the file's numbers overflow float32 (corrupt or crafted file)")


def decode_bytes(data: bytes, source: str = "<file>") -> tuple[Neurcomp, VolumeInfo, dict]:
    """Rebuild (model, volume info, meta) from a complete file's bytes; InputError if it is not valid."""
    net = parse(data, source)
    return build_model(net), net.volume, describe(net, len(data))


def read_file(path: str | Path) -> tuple[CompressedNetwork, int]:
    """(parsed file, its size in bytes); InputError if it is missing, unreadable or not valid."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: compressed file not found")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    return parse(data, str(path)), len(data)


def decode_file(path: str | Path) -> tuple[Neurcomp, VolumeInfo, dict]:
    net, size = read_file(path)
    return build_model(net), net.volume, describe(net, size)
