"""What a training run leaves in its experiment folder: info.json/.txt, .vti volumes (ground truth,
prediction, error), slice PNG."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np

from neurcomp.data.atomic import atomic_path, atomic_write_text


def versions() -> dict:
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}


def final_info(cfg, volume, info, model, metrics: dict, totals: dict, steps_per_pass: float, device,
               extra_info: dict) -> dict:
    """What info.json holds about a finished run (the original's keys, then ours)."""
    import torch

    from neurcomp.model.architecture import count_parameters
    from neurcomp.training import distributed, precision

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
    """info.json (machine-readable, exact) and info.txt in the original's format (`info_text`)."""
    atomic_write_text(experiment_dir / "info.json", json.dumps(info, indent=2, default=str) + "\n")
    atomic_write_text(experiment_dir / "info.txt", info_text(info))


def info_text(info: dict) -> str:
    """One `key = value` line per entry, as the original wrote info.txt, so that its analysis helper
    (spaces stripped, split at '=', then int, float, a list of numbers when there is a comma, else
    the string) reads every line: nested dicts and lists of non-numbers become one line per item
    (`versions_torch`, `pruning_layers_0_name`), and a text value's ',' and '=' become ';' and ':'."""
    lines = []

    def add(key: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                add(f"{key}_{k}", v)
        elif isinstance(value, (list, tuple)) and not all(map(_is_number, value)):
            for i, v in enumerate(value):
                add(f"{key}_{i}", v)
        elif isinstance(value, (list, tuple)):
            lines.append(f"{key} = [{', '.join(map(str, value))}]")
        else:
            lines.append(f"{key} = {' '.join(str(value).split()).replace(',', ';').replace('=', ':')}")

    for key, value in info.items():
        add(key, value)
    return "\n".join(lines) + "\n"


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def write_volumes(out_dir: Path, volume, prediction: np.ndarray, dtype: str = "source",
                  compression: str = "zlib") -> list[Path]:
    """ground_truth.vti and prediction.vti under the volume's array name, in its source dtype
    (``dtype = source``, the prediction rounded and clipped to it) or float32, and error.vti:
    prediction minus ground truth as written, exact (float32, float64 beyond 16-bit integers)."""
    from neurcomp.data.writers import vti_dtype, write_vti

    target = vti_dtype(volume.source_dtype) if dtype == "source" else np.dtype(np.float32)
    truth, pred = _in_dtype(volume.values, target), _in_dtype(prediction, target)
    error_dtype = np.result_type(target, np.float32)
    error = pred.astype(error_dtype) - truth.astype(error_dtype)
    name = volume.name or "value"
    paths = {"ground_truth.vti": (truth, name), "prediction.vti": (pred, name), "error.vti": (error, "error")}
    for file, (values, array_name) in paths.items():
        write_vti(out_dir / file, values, volume.spacing, volume.origin, name=array_name, compression=compression)
    return [out_dir / file for file in paths]


def _in_dtype(values, dtype: np.dtype) -> np.ndarray:
    """``values`` as ``dtype``; rounded and clipped to its range for an integer type."""
    values = np.asarray(values)
    if np.issubdtype(dtype, np.integer) and not np.issubdtype(values.dtype, np.integer):
        limits = np.iinfo(dtype)
        values = np.clip(np.rint(values), limits.min, limits.max)
    return values.astype(dtype, copy=False)


def save_slices_png(path: Path, ground_truth: np.ndarray, prediction: np.ndarray, title: str = "",
                    spacing=(1.0, 1.0, 1.0)) -> None:
    """`slices_figure` as a PNG."""
    fig = slices_figure(ground_truth, prediction, title, spacing)
    import matplotlib.pyplot as plt  # after slices_figure chose the Agg backend

    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)


def slices_figure(ground_truth: np.ndarray, prediction: np.ndarray, title: str = "", spacing=(1.0, 1.0, 1.0)):
    """Three middle slices (XY, XZ, YZ) of ground truth, prediction and absolute error, each drawn
    over its physical extent (``spacing`` (x, y, z)), so an anisotropic grid keeps its proportions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nz, ny, nx = ground_truth.shape
    sx, sy, sz = (float(s) for s in spacing)
    # name: (cut, (horizontal, vertical) axis labels and lengths of the slice)
    cuts = {"XY (z mid)": (lambda v: v[nz // 2], ("x", nx * sx), ("y", ny * sy)),
            "XZ (y mid)": (lambda v: v[:, ny // 2], ("x", nx * sx), ("z", nz * sz)),
            "YZ (x mid)": (lambda v: v[:, :, nx // 2], ("y", ny * sy), ("z", nz * sz))}
    vmin, vmax = float(ground_truth.min()), float(ground_truth.max())
    error = np.abs(prediction - ground_truth)
    emax = float(error.max()) or 1.0
    fig, axes = plt.subplots(3, 3, figsize=(10, 10), constrained_layout=True)
    for col, (name, (cut, (hname, width), (vname, height))) in enumerate(cuts.items()):
        for row, (label, vol, kw) in enumerate([
                ("ground truth", ground_truth, dict(cmap="viridis", vmin=vmin, vmax=vmax)),
                ("prediction", prediction, dict(cmap="viridis", vmin=vmin, vmax=vmax)),
                ("|error|", error, dict(cmap="magma", vmin=0.0, vmax=emax))]):
            ax = axes[row, col]
            im = ax.imshow(cut(vol), origin="lower", extent=(0.0, width, 0.0, height), aspect="equal", **kw)
            ax.set_title(f"{label}, {name}", fontsize=9)
            ax.set_xlabel(hname, fontsize=8, labelpad=1)
            ax.set_ylabel(vname, fontsize=8, labelpad=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 2:
                fig.colorbar(im, ax=ax, shrink=0.8)
    if title:
        fig.suptitle(title)
    return fig
