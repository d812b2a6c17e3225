"""What a training run leaves in its experiment folder: info.json/.txt, .vti volumes, slice PNG."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np

from data.atomic import atomic_path, atomic_write_text


def versions() -> dict:
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}


def final_info(cfg, volume, info, model, metrics: dict, totals: dict, steps_per_pass: float, device,
               extra_info: dict) -> dict:
    """What info.json holds about a finished run (the original's keys, then ours)."""
    import torch

    from model.architecture import count_parameters
    from training import distributed, precision

    num_parameters = count_parameters(model.arch)
    seconds = totals["train_seconds"]
    return {
        "expname": cfg.expname,
        "data": cfg.data.path,
        "volume_size": list(volume.shape[::-1]),  # X, Y, Z as in the original
        "volume_num_voxels": volume.num_voxels,
        "volume_dtype": volume.source_dtype,
        "volume_min": info.vmin,
        "volume_max": info.vmax,
        "spacing": list(volume.spacing),
        "num_parameters": num_parameters,
        "network_layer_sizes": model.arch.layer_sizes(),
        "residual": model.arch.residual,
        "compression_ratio": volume.num_voxels / num_parameters,
        "psnr": metrics["psnr"], "mse": metrics["mse"], "rmse": metrics["rmse"],
        "l1_diff": metrics["l1_diff"], "max_abs_error": metrics["max_abs_error"],
        "passes": totals["steps"] / steps_per_pass, "steps": totals["steps"],
        "training_time_s": seconds,
        "samples_per_second": totals["samples_seen"] / seconds if seconds else None,
        "device": str(device) if device.type == "cpu" else f"{device} ({torch.cuda.get_device_name(device)})",
        "world_size": distributed.get_world_size(),
        "seed": cfg.seed,
        **precision.current(),
        "versions": versions(),
        **extra_info,
    }


def write_info(experiment_dir: Path, info: dict) -> None:
    """info.json (machine-readable) and info.txt (one 'key: value' per line)."""
    atomic_write_text(experiment_dir / "info.json", json.dumps(info, indent=2, default=str) + "\n")
    lines = [f"{k}: {json.dumps(v, default=str) if isinstance(v, (dict, list)) else v}" for k, v in info.items()]
    atomic_write_text(experiment_dir / "info.txt", "\n".join(lines) + "\n")


def save_slices_png(path: Path, ground_truth: np.ndarray, prediction: np.ndarray, title: str = "") -> None:
    """Three middle slices (XY, XZ, YZ) of ground truth, prediction and absolute error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nz, ny, nx = ground_truth.shape
    cuts = {"XY (z mid)": lambda v: v[nz // 2], "XZ (y mid)": lambda v: v[:, ny // 2],
            "YZ (x mid)": lambda v: v[:, :, nx // 2]}
    vmin, vmax = float(ground_truth.min()), float(ground_truth.max())
    error = np.abs(prediction - ground_truth)
    emax = float(error.max()) or 1.0
    fig, axes = plt.subplots(3, 3, figsize=(10, 10), constrained_layout=True)
    for col, (name, cut) in enumerate(cuts.items()):
        for row, (label, vol, kw) in enumerate([
                ("ground truth", ground_truth, dict(cmap="viridis", vmin=vmin, vmax=vmax)),
                ("prediction", prediction, dict(cmap="viridis", vmin=vmin, vmax=vmax)),
                ("|error|", error, dict(cmap="magma", vmin=0.0, vmax=emax))]):
            ax = axes[row, col]
            im = ax.imshow(cut(vol), origin="lower", **kw)
            ax.set_title(f"{label}, {name}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 2:
                fig.colorbar(im, ax=ax, shrink=0.8)
    if title:
        fig.suptitle(title)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)
