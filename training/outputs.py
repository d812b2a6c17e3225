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
