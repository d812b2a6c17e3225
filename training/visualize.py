"""Reproduce a trained network's volume: load the checkpoint, write .vti, print the metrics."""

from __future__ import annotations

from pathlib import Path

from config.errors import ConfigError
from config.options import build_parser, config_from_namespace, parse_namespace
from data.metrics import volume_metrics
from training.checkpoint import load_model
from model.inference import predict_volume
from training.session import CHECKPOINT_NAME, load_training_volume, resolve_device


def build_visualization_parser():
    p = build_parser("Write the volume a trained Neurcomp network represents as .vti.")
    g = p.add_argument_group("visualization")
    g.add_argument("--resolution", type=int, nargs=3, default=None, metavar=("X", "Y", "Z"),
                   help="sample the continuous network on another grid (default: the volume's)")
    g.add_argument("--output_dir", default="", help="where to write the .vti files (default: the experiment folder)")
    g.add_argument("--no_ground_truth", action="store_true", help="do not read or write the ground-truth volume")
    return p


def visualize_main(argv=None) -> dict:
    ns = parse_namespace(build_visualization_parser(), argv)
    cfg = config_from_namespace(ns)
    ckpt = Path(cfg.checkpoint_path or cfg.experiment_dir / CHECKPOINT_NAME)
    device = resolve_device(cfg.device)
    model, info, _ = load_model(ckpt, map_location=device)
    out_dir = Path(ns.output_dir or cfg.experiment_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    from data.writers import write_vti

    if ns.resolution:
        if min(ns.resolution) < 2:
            raise ConfigError(f"{cfg.source}: resolution {ns.resolution} is invalid: every axis needs >= 2 samples")
        shape = tuple(ns.resolution[::-1])  # X Y Z -> (Z, Y, X)
        # same world extent, (n - 1) * spacing, sampled with m points
        spacing = tuple(sp * (n - 1) / (m - 1) for sp, n, m in zip(info.spacing, info.shape[::-1], ns.resolution))
        name = "prediction_{}x{}x{}.vti".format(*ns.resolution)
    else:
        shape, spacing, name = info.shape, info.spacing, "prediction.vti"
    prediction = predict_volume(model, shape, info, progress=True)
    write_vti(out_dir / name, prediction, spacing, info.origin)
    print(f"wrote {out_dir / name}")
    metrics = {}
    if not ns.no_ground_truth and not ns.resolution:
        volume = load_training_volume(cfg)
        if volume.shape != tuple(info.shape):
            raise ConfigError(f"{cfg.data.path}: shape {volume.shape} differs from the network's volume {info.shape}")
        write_vti(out_dir / "ground_truth.vti", volume.values, volume.spacing, volume.origin)
        metrics = volume_metrics(volume.values, prediction)
        print(f"PSNR {metrics['psnr']:.2f} dB, RMSE {metrics['rmse']:.6g}, mean abs error {metrics['mae']:.6g}, "
              f"max abs error {metrics['max_abs_error']:.6g}")
    return metrics
