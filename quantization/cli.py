"""The options of NeurcompQuantization.py and NeurcompDequantization.py, and decoding.

Both parse with the shared option definition (``config.options.build_parser``) plus their own
group, so the data options (``--data_key``, ``--raw_shape`` ...) and ``--quant_bits`` mean the same
everywhere. ``dequantize_main`` needs nothing but the file; ``quantize_main`` reads a training
checkpoint and may fine-tune with training's sampler, so it lives in NeurcompQuantization.py
(quantization does not import training). User errors are ``ConfigError``/``InputError``; the
scripts run under ``config.cli.run_cli``, which prints them as one line and exits non-zero.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from neurcomp.config.errors import ConfigError, InputError
from neurcomp.config.options import build_parser, config_from_namespace, parse_bool, parse_namespace
from neurcomp.data import atomic
from neurcomp.model.device import resolve_device

CHECKPOINT_NAME = "checkpoint.pt"
DEFAULT_SUFFIX = ".ncq"


def add_quantization_arguments(parser):
    """NeurcompQuantization.py's own options (``--quant_bits`` is in the shared parser)."""
    from neurcomp.quantization.encode import QUANTIZERS, EncoderOptions

    d = EncoderOptions()
    g = parser.add_argument_group("compressed file")
    g.add_argument("--filename", default="",
                   help=f"compressed file name, written into the experiment folder (default: <expname>_<bits>bit{DEFAULT_SUFFIX})")
    g.add_argument("--output", default="", help="write the compressed file here instead (a path; overrides --filename)")
    g.add_argument("--finetune_passes", type=float, default=0.0,
                   help="quantization-aware fine-tuning of the centroids (assignments fixed) and biases, in passes over the volume; needs --data")
    g.add_argument("--finetune_lr", type=float, default=1e-5, help="Adam learning rate of the fine-tuning")
    g.add_argument("--codebook_dtype", default=d.codebook_dtype, choices=["float16", "float32"], help="storage of the centroids")
    g.add_argument("--bias_format", default=d.bias, choices=["float16", "float32", "quantized"], help="storage of the biases")
    g.add_argument("--quantize_first_last", type=parse_bool, default=d.quantize_first_last,
                   help="k-means the first and last layers too (false: store them raw as --first_last_dtype)")
    g.add_argument("--first_last_dtype", default=d.raw_dtype, choices=["float16", "float32"],
                   help="storage of the first/last layers when --quantize_first_last is false")
    g.add_argument("--quantizer", default=d.quantizer, choices=list(QUANTIZERS),
                   help="per quantized matrix: kmeans (codebook + bit-packed indices), uniform (ANS-coded uniform "
                   "integers at the k-means error) or auto (the smaller of the two; docs/quantization.md)")
    g.add_argument("--entropy_coder", default=d.compression, choices=["auto", "lzma", "zstd", "none"],
                   help="payload coding; auto keeps the smallest of lzma, zstd and none")
    g.add_argument("--snap_to_integers", type=parse_bool, default=False,
                   help="integer volumes: decode once against --data and set the file's flag to round decoded "
                   "voxels to integers if that lowers the error (quantization/snap.py; training's "
                   "target_file_ratio always checks)")
    g.add_argument("--kmeans_seed", type=int, default=0, help="seed of the k-means++ start (k-means is deterministic given it)")
    return parser


def add_dequantization_arguments(parser):
    g = parser.add_argument_group("decompression")
    g.add_argument("--compressed_file", required=True, help="file written by NeurcompQuantization.py")
    g.add_argument("--volume", default="", help="ground-truth volume: print PSNR, RMSE, MAE, max abs error (read with --data_key, --raw_shape ...)")
    g.add_argument("--decompressed_file", default="",
                   help="reconstruction to write: .vti, .npy, .raw or .cvol by its suffix (default: <compressed_file>.vti)")
    g.add_argument("--metrics_json", default="", help="also write the metrics as JSON here (needs --volume)")
    g.add_argument("--region", type=int, nargs=6, metavar=("X0", "X1", "Y0", "Y1", "Z0", "Z1"), default=None,
                   help="decode only this box (voxel indices, half-open, x first as ParaView's extents); "
                        "costs the box's voxels only; a .vti keeps the box's true origin")
    g.add_argument("--resolution", type=int, nargs=3, metavar=("X", "Y", "Z"), default=None,
                   help="sample the field (of the --region box, or the whole volume) on X x Y x Z points; the "
                        "spacing is scaled so the box keeps its extent (corrections apply at native resolution only)")
    return parser


def _read_volume(path, cfg):
    from neurcomp.data.readers import read_volume

    d = cfg.data
    return read_volume(path, data_key=d.data_key or None, raw_shape=d.raw_shape, raw_dtype=d.raw_dtype or None,
                       raw_endian=d.raw_endian, channel=d.channel)


def atomic_write_bytes(path: Path, data: bytes, option: str = "output") -> None:
    """Write ``path`` atomically (``data.atomic``); an unwritable path is one InputError naming the option."""
    path = atomic.check_output_file(path, option)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.atomic_write_bytes(path, data)
    except OSError as exc:
        raise InputError(f"{option} {path}: cannot write ({exc.strerror or exc})") from None


def human_bytes(n: int) -> str:
    return f"{n} bytes ({n / 1000:.1f} KB)"


def itemsize(dtype_name: str) -> int:
    try:
        return np.dtype(dtype_name).itemsize
    except TypeError:
        return 4


def stored_compression(data: bytes) -> str:
    from neurcomp.quantization.format import parse

    return parse(data).settings.compression


def dequantize_main(argv=None, parser=None) -> dict:
    """Decode a compressed file, reconstruct the volume, write it, and compare with ground truth."""
    from neurcomp.quantization.decode import decode_volume, read_file
    from neurcomp.quantization.memory import check_decode_memory
    from neurcomp.quantization.region import make_grid

    if parser is None:
        parser = add_dequantization_arguments(build_parser("Decode a compressed Neurcomp file into a volume"))
    ns = parse_namespace(parser, argv)
    cfg = config_from_namespace(ns)
    if ns.metrics_json and not ns.volume:
        raise ConfigError("command line: --metrics_json needs --volume (the ground truth to compare with)")
    path = Path(ns.compressed_file)
    out = Path(ns.decompressed_file) if ns.decompressed_file else path.with_suffix(".vti")
    atomic.check_output_file(out, "--decompressed_file")  # before the (possibly long) decoding
    if ns.metrics_json:
        atomic.check_output_file(Path(ns.metrics_json), "--metrics_json")
    if _is_latent_file(path):  # network = latent: quantization.latent_format
        return _dequantize_latent(ns, cfg, path, out)
    t0 = time.perf_counter()
    net, file_bytes = read_file(path)
    info = net.volume
    t_decode = time.perf_counter() - t0
    grid = make_grid(info.shape, ns.region, ns.resolution)
    device = resolve_device(cfg.device)
    check_decode_memory(net.arch, grid.samples, str(path), device.type)  # before the ground truth is read
    ground_truth = _ground_truth(ns, cfg, info.shape, grid)  # before the (possibly long) inference: fails fast
    t1 = time.perf_counter()
    prediction, spacing, origin = decode_volume(net, grid, device=device)
    t_infer = time.perf_counter() - t1
    return _write_and_compare(ns, path, out, prediction, spacing, origin, grid, ground_truth, file_bytes, info,
                              net.bound, t_decode, t_infer)


def _ground_truth(ns, cfg, shape, grid):
    """The --volume to compare with (None without one), checked against the file's grid."""
    if not ns.volume:
        return None
    if not grid.native():
        raise ConfigError("command line: --volume compares voxel by voxel: it cannot be combined with a "
                          "--resolution other than the file's own grid")
    ground_truth = _read_volume(ns.volume, cfg)
    if tuple(ground_truth.shape) != tuple(shape):
        raise InputError(f"{ns.volume}: volume shape {ground_truth.shape} (Z, Y, X) differs from the "
                         f"compressed network's {tuple(shape)}")
    return ground_truth


def _is_latent_file(path: Path) -> bool:
    from neurcomp.quantization.latent_format import MAGIC

    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False  # read_file says what is wrong with it


def _dequantize_latent(ns, cfg, path: Path, out: Path) -> dict:
    """A latent-grid file: decoded on its own grid (a --region is cut from it, corrections and all,
    so an error bound holds in the box) or at --resolution (no corrections). The file holds no
    spacing or origin: the output has unit spacing, origin 0 (the box's corner)."""
    from neurcomp.data.volume import VolumeInfo
    from neurcomp.quantization import latent_format
    from neurcomp.quantization.region import make_grid

    t0 = time.perf_counter()
    data = path.read_bytes()
    file = latent_format.read(data, str(path))
    model, vmin, vmax, bound = file
    t_decode = time.perf_counter() - t0
    info = VolumeInfo(shape=model.shape, spacing=(1.0, 1.0, 1.0), vmin=vmin, vmax=vmax)
    grid = make_grid(info.shape, ns.region, ns.resolution)
    latent_format.check_grid(info.shape, grid, "command line: --region with --resolution")  # before reading --volume
    ground_truth = _ground_truth(ns, cfg, info.shape, grid)
    if ground_truth is not None:
        info = VolumeInfo(info.shape, info.spacing, vmin, vmax, str(ground_truth.source_dtype))
    t1 = time.perf_counter()
    prediction = latent_format.volume_on(file, grid, "command line")
    (x0, x1), (y0, y1), (z0, z1) = grid.box
    spacing = tuple(((b - a - 1) / max(m - 1, 1)) if m != b - a else 1.0 for (a, b), m in zip(grid.box, grid.samples))
    return _write_and_compare(ns, path, out, prediction, spacing, (float(x0), float(y0), float(z0)), grid,
                              ground_truth, len(data), info, bound if grid.native() else None, t_decode,
                              time.perf_counter() - t1)


def _write_and_compare(ns, path, out, prediction, spacing, origin, grid, ground_truth, file_bytes, info, bound,
                       t_decode, t_infer) -> dict:
    """Write the reconstruction, print and return the ratio and, with a ground truth, the metrics."""
    from neurcomp.data.metrics import volume_metrics
    from neurcomp.data.writers import write_volume, write_vti

    try:
        if out.suffix.lower() == ".vti":
            write_vti(out, prediction, spacing, origin)
        else:
            write_volume(out, prediction, spacing)
    except OSError as exc:
        raise InputError(f"--decompressed_file {out}: cannot write ({exc.strerror or exc})") from None
    ratio = info.num_voxels * 4 / file_bytes
    print(f"decoded {path}: {human_bytes(file_bytes)} in {t_decode:.3f} s; reconstructed {tuple(prediction.shape)[::-1]} "
          f"(X, Y, Z) in {t_infer:.2f} s -> {out}")
    result = {"file_bytes": file_bytes, "compression_ratio": ratio,
              "compression_ratio_vs_source_dtype": info.num_voxels * itemsize(info.source_dtype) / file_bytes,
              "decode_seconds": t_decode, "inference_seconds": t_infer, "output": str(out)}
    if ground_truth is not None:
        (x0, x1), (y0, y1), (z0, z1) = grid.box
        m = volume_metrics(np.asarray(ground_truth.values[z0:z1, y0:y1, x0:x1]), prediction)
        result.update(psnr=m["psnr"], rmse=m["rmse"], l1_diff=m["l1_diff"], max_abs_error=m["max_abs_error"])
        print(f"PSNR {m['psnr']:.3f} dB, RMSE {m['rmse']:.6g}, mean abs error (l1_diff) {m['l1_diff']:.6g}, max abs error {m['max_abs_error']:.6g}")
        if bound is not None:
            result.update(error_bound=bound.max_abs_error, bound_held=bool(m["max_abs_error"] <= bound.max_abs_error))
            print(f"error bound {bound.max_abs_error:.6g} ({bound.mode} {bound.requested:g}): "
                  f"{'held' if result['bound_held'] else 'NOT held'} at every voxel")
    print(f"compression ratio {ratio:.1f} (vs float32), {result['compression_ratio_vs_source_dtype']:.1f} "
          f"vs the original {info.source_dtype} volume")
    if ns.metrics_json:
        keys = ("psnr", "rmse", "l1_diff", "max_abs_error", "compression_ratio", "file_bytes",
                *(("error_bound", "bound_held") if bound is not None else ()))
        payload = {k: (None if isinstance(result[k], float) and not math.isfinite(result[k]) else result[k]) for k in keys}
        atomic_write_bytes(Path(ns.metrics_json), (json.dumps(payload, indent=2) + "\n").encode(), "--metrics_json")
    return result
