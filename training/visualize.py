"""Reproduce a trained network's volume: load the checkpoint, write .vti, print the metrics.

Every check (output folder, ``--resolution``, the ground truth's shape) runs before the first file
is written, so a refused run leaves an existing ``prediction.vti`` as it was.
"""

from __future__ import annotations

from pathlib import Path

from neurcomp.config.errors import ConfigError, InputError
from neurcomp.config.limits import machine_memory
from neurcomp.data.atomic import check_output_folder, make_output_folder
from neurcomp.config.options import build_parser, config_from_namespace, parse_namespace
from neurcomp.data.metrics import volume_metrics
from neurcomp.training.checkpoint import load_model
from neurcomp.model.inference import predict_volume
from neurcomp.training.session import CHECKPOINT_NAME, load_training_volume, resolve_device

# Bytes per output voxel at the peak of writing: the float32 prediction and the copy that
# data.writers.write_vti reorders for VTK (X fastest).
BYTES_PER_VOXEL = 8


def build_visualization_parser():
    p = build_parser("Write the volume a trained Neurcomp network represents as .vti.")
    g = p.add_argument_group("visualization")
    g.add_argument("--resolution", type=int, nargs=3, default=None, metavar=("X", "Y", "Z"),
                   help="sample the continuous network on another grid (default: the volume's)")
    g.add_argument("--output_dir", default="", help="where to write the .vti files (default: the experiment folder)")
    g.add_argument("--no_ground_truth", action="store_true", help="do not read or write the ground-truth volume")
    return p


def check_resolution(resolution) -> None:
    """Refuse a ``--resolution`` with an axis under 2 samples or an output that cannot fit in memory."""
    if min(resolution) < 2:
        raise ConfigError(f"--resolution {' '.join(map(str, resolution))} is invalid: every axis needs >= 2 samples")
    need = BYTES_PER_VOXEL * resolution[0] * resolution[1] * resolution[2]
    have = machine_memory()
    if have is not None and need > have:
        raise ConfigError(f"--resolution {' '.join(map(str, resolution))} is too large: its output needs "
                          f"{need / 2 ** 30:.3g} GiB of memory, this machine has {have / 2 ** 30:.3g} GiB")


def visualize_main(argv=None) -> dict:
    ns = parse_namespace(build_visualization_parser(), argv)
    cfg = config_from_namespace(ns)
    if ns.resolution:
        check_resolution(ns.resolution)
    out_option = "--output_dir" if ns.output_dir else "the experiment folder"
    out_dir = Path(ns.output_dir or cfg.experiment_dir)
    check_output_folder(out_dir, out_option)  # created once the inputs are known to be good
    ckpt = Path(cfg.checkpoint_path or cfg.experiment_dir / CHECKPOINT_NAME)
    device = resolve_device(cfg.device)
    model, info, _ = load_model(ckpt, map_location=device)
    volume = None
    if not ns.no_ground_truth and not ns.resolution:
        volume = load_training_volume(cfg)
        if tuple(volume.shape) != tuple(info.shape):
            raise InputError(f"{cfg.data.path}: shape {tuple(volume.shape)} differs from the network's volume "
                             f"{tuple(info.shape)} ({ckpt}); nothing written")
    make_output_folder(out_dir, out_option)
    from neurcomp.data.writers import write_vti

    if ns.resolution:
        shape = tuple(ns.resolution[::-1])  # X Y Z -> (Z, Y, X)
        # same world extent, (n - 1) * spacing, sampled with m points
        spacing = tuple(sp * (n - 1) / (m - 1) for sp, n, m in zip(info.spacing, info.shape[::-1], ns.resolution))
        name = "prediction_{}x{}x{}.vti".format(*ns.resolution)
    else:
        shape, spacing, name = info.shape, info.spacing, "prediction.vti"
    prediction = predict_volume(model, shape, info, progress=True)
    write_vti(out_dir / name, prediction, spacing, info.origin, compression=cfg.vti_compression)
    print(f"wrote {out_dir / name}")
    metrics = {}
    if volume is not None:
        write_vti(out_dir / "ground_truth.vti", volume.values, volume.spacing, volume.origin,
                  name=volume.name or "value", compression=cfg.vti_compression)
        metrics = volume_metrics(volume.values, prediction)
        print(f"PSNR {metrics['psnr']:.2f} dB, RMSE {metrics['rmse']:.6g}, mean abs error (l1_diff) {metrics['l1_diff']:.6g}, "
              f"max abs error {metrics['max_abs_error']:.6g}")
    return metrics
