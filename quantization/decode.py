"""Compressed file -> network: everything needed comes from the file itself."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from config.errors import InputError
from model.neurcomp import Neurcomp
from quantization.encode import load_into
from quantization.format import CompressedNetwork, parse
from data.volume import VolumeInfo


def build_model(net: CompressedNetwork) -> Neurcomp:
    """The network with ``net``'s dequantized weights, in eval mode (CPU)."""
    model = Neurcomp(net.arch)
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
            "layers": layers}


def decode_bytes(data: bytes, source: str = "<file>") -> tuple[Neurcomp, VolumeInfo, dict]:
    """Rebuild (model, volume info, meta) from a complete file's bytes; InputError if it is not valid."""
    net = parse(data, source)
    return build_model(net), net.volume, describe(net, len(data))


def decode_file(path: str | Path) -> tuple[Neurcomp, VolumeInfo, dict]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: compressed file not found")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    return decode_bytes(data, str(path))
