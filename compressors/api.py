"""The compressed file from Python (notebooks): compress an array, decompress bytes or a file,
read the header. The same functions the entry scripts use do the work: training (``training.run``,
with ``target_file_ratio`` writing the file), ``quantization.bounded`` for an error bound, and
``quantization.decode.decode_volume`` for whole volumes, boxes and other resolutions.

    import numpy as np
    from neurcomp.compressors import api
    data = api.compress(values, spacing=(1, 1, 2), ratio=50, max_rel_error=1e-2)
    box = api.decompress(data, region=(0, 32, 0, 32, 0, 32))
    api.read_header(data)["error_bound"]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from neurcomp.config.errors import InputError
from neurcomp.data import atomic
from neurcomp.quantization import latent_format
from neurcomp.quantization.decode import decode_volume
from neurcomp.quantization.format import parse, parse_header
from neurcomp.quantization.region import make_grid


def _bytes(source, what: str = "source") -> tuple[bytes, str]:
    """(file bytes, name for messages) of bytes or a path."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), "<bytes>"
    from neurcomp.data.readers.base import require_file

    path = Path(source)
    require_file(path, "compressed file")
    return path.read_bytes(), str(path)


def compress(values, spacing=(1.0, 1.0, 1.0), *, ratio: float | None = None, max_abs_error: float | None = None,
             max_rel_error: float | None = None, path=None, quant_bits: int = 9, n_layers: int = 4, steps: int = 0,
             device: str = "auto", seed: int = 0, work_dir=None, network: str | None = None) -> bytes:
    """Train a network on ``values`` ((Z, Y, X), physical units, ``spacing`` (x, y, z)) and return the
    compressed file's bytes (also written to ``path`` if given).

    ``ratio``: the file's target compression ratio (voxels x 4 / bytes); without it the network is
    sized by the default ``compression_ratio``. ``max_abs_error`` / ``max_rel_error`` (at most one):
    every voxel decodes within that error (corrections are added to the file, which grows); a bound
    without ``ratio`` searches the network size whose file, network plus corrections, is the
    smallest (``training.bound_search``). A ``ratio`` of 800 or more, or a bound without ``ratio``,
    trains the latent grid (``network = latent``: config.options.LATENT_FROM_RATIO and
    LATENT_FOR_A_BOUND_ALONE), whose file ``decompress`` reads too.
    ``steps`` > 0 trains that many steps instead of the training defaults (quick trials).
    ``network`` ("neurcomp" or "latent") overrides that choice, as the config's ``network`` does.
    """
    from neurcomp.config.options import parse_config
    from neurcomp.data.writers import write_vti
    from neurcomp.training.run import train

    values = _checked_values(values, spacing)
    flags = ["--quant_bits", str(quant_bits), "--n_layers", str(n_layers), "--device", device, "--seed", str(seed),
             "--tracking", "none", "--checkpoint_every", "0", "--quiet", "true"]
    for name, value in (("target_file_ratio", ratio), ("max_abs_error", max_abs_error), ("max_rel_error", max_rel_error)):
        if value is not None:
            flags += [f"--{name}", repr(float(value))]
    if network is not None:
        flags += ["--network", str(network)]
    if steps:
        passes = steps * 1024 * 16 / values.size
        flags += ["--max_pass", repr(passes), "--pass_decay", repr(passes / 3), "--min_steps", str(steps),
                  "--latent_steps", str(steps)]
    if path is not None:
        path = atomic.check_output_file(Path(path), "path")
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        write_vti(Path(tmp) / "volume.vti", values, tuple(float(s) for s in spacing))
        cfg = parse_config(["--data", str(Path(tmp) / "volume.vti"), "--basedir", tmp, "--expname", "api", *flags])
        info = train(cfg, progress=False)
        # target_file_ratio, or a bound alone (training.bound_search), writes the file; else quantize here
        data = (cfg.experiment_dir / info["file"]).read_bytes() if "file" in info else _quantize(cfg, values)
    if path is not None:
        atomic.atomic_write_bytes(path, data)
    return data


def _checked_values(values, spacing) -> np.ndarray:
    """``values`` as C-ordered float32, refused in one InputError line unless it is a real-valued 3D
    grid (integers or floats: not bool, complex, strings or objects) of at least 2 voxels per axis,
    finite, not constant and within float32's range; ``spacing`` three positive finite numbers."""
    from neurcomp.data.readers.base import check_grid, value_range

    try:
        array = np.asarray(values)
    except (ValueError, TypeError) as exc:  # a ragged nested list
        raise InputError(f"compress: values are not a rectangular array of numbers ({exc})") from None
    if array.dtype == np.bool_ or array.dtype.kind not in "iuf":
        raise InputError(f"compress: values of type {array.dtype} are not real numbers (integers or floats)")
    check_grid("compress: values", array.shape, array.dtype)
    value_range("compress: values", array)
    try:
        spacing = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        spacing = ()
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise InputError("compress: spacing must be three positive finite numbers (x, y, z)")
    return np.ascontiguousarray(array, dtype=np.float32)


def _quantize(cfg, values: np.ndarray) -> bytes:
    """The trained checkpoint as a file, as NeurcompQuantization.py writes it (plus the bound, if any)."""
    from neurcomp.quantization.bounded import encode_bounded
    from neurcomp.quantization.encode import encode_network, quantize_network
    from neurcomp.training.checkpoint import load_model

    model, info, _ = load_model(cfg.experiment_dir / "checkpoint.pt")
    net = quantize_network(model, info, cfg.quant_bits, seed=cfg.seed)
    if not cfg.error_bound:
        return encode_network(net)
    mode, value = cfg.error_bound
    return encode_bounded(net, values, mode, value, option=f"max_{mode}_error")[0]


def decompress(source, region=None, resolution=None, device: str = "cpu") -> np.ndarray:
    """The (Z, Y, X) float32 volume of a compressed file (bytes or a path): whole, a ``region``
    (x0, x1, y0, y1, z0, z1: voxel indices, half-open) or resampled at ``resolution`` (x, y, z)."""
    data, name = _bytes(source)
    if data[:len(latent_format.MAGIC)] == latent_format.MAGIC:
        return _decompress_latent(data, name, region, resolution)
    net = parse(data, name)
    return decode_volume(net, make_grid(net.volume.shape, region, resolution, "region"), device=device)[0]


def _decompress_latent(data: bytes, name: str, region, resolution) -> np.ndarray:
    """A latent-grid file (network = latent), decoded as NeurcompDequantization.py decodes it."""
    file = latent_format.read(data, name)
    return latent_format.volume_on(file, make_grid(file.model.shape, region, resolution, "region"), name)


def read_header(source) -> dict:
    """Shape (Z, Y, X), spacing and origin (x, y, z), value range, architecture, ratio and error bound
    of a compressed file, without running the network. The whole file is checked as ``decompress``
    checks it (length, both checksums, every record), so it refuses what ``decompress`` refuses
    short of the decode itself (the grid's memory, a volume that is not finite)."""
    data, name = _bytes(source)
    if data[:len(latent_format.MAGIC)] == latent_format.MAGIC:
        model, vmin, vmax, bound = latent_format.read(data, name)
        return {"version": data[len(latent_format.MAGIC)], "shape": model.shape, "value_range": (vmin, vmax),
                "architecture": model.describe(), "file_bytes": len(data),
                "compression_ratio": int(np.prod(model.shape)) * 4 / len(data),
                "error_bound": None if bound is None else {"mode": bound.mode, "requested": bound.requested,
                                                           "max_abs_error": bound.max_abs_error,
                                                           "count": int(bound.positions.size)}}  # as below
    parse(data, name)  # the whole file, as decompress reads it: length, checksums, records
    h = parse_header(data, name)
    v = h.volume
    bound = None if h.bound is None else {k: h.bound[k] for k in ("mode", "requested", "max_abs_error", "count")}
    return {"version": h.version, "shape": tuple(v.shape), "spacing": tuple(v.spacing), "origin": tuple(v.origin),
            "value_range": (v.vmin, v.vmax), "source_dtype": v.source_dtype, "architecture": h.arch.to_dict(),
            "quant_bits": h.settings.bits, "file_bytes": len(data), "compression_ratio": v.num_voxels * 4 / len(data),
            "error_bound": bound}
