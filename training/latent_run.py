"""``network = latent``: a training run of the latent-grid network (``model.latent_grid``; Cool-chic,
Ladune et al. 2023), one call of ``training.latent_fit.fit`` at the file size of ``target_file_ratio``.

The same command, outputs and tracking as a Neurcomp run (``training.session``): ``config.txt``;
the compressed file ``<expname>.nclg`` (``quantization.latent_format``, what
``NeurcompDequantization.py`` decodes); ``checkpoint.pt``; ``info.json`` / ``info.txt``;
``ground_truth.vti``, ``prediction.vti``, ``error.vti`` and ``slices.png``; MLflow and TensorBoard
(the fit's PSNR, rate and lambda every 50 steps, then the final metrics). The prediction written
and measured is the file's own decoded volume, so ``psnr`` is the file's. With ``max_abs_error`` or
``max_rel_error`` the file also holds the corrections that keep every voxel within the bound
(``quantization.bounded.encode_latent_bounded``, verified before the file is written).

Ctrl-C or SIGTERM stop the fit between two steps: ``checkpoint.pt`` then holds the fit's whole
state (``latent_fit``) and ``--resume checkpoint.pt`` continues it exactly (exit 130 / 143).
"""

from __future__ import annotations

import math
import signal
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

from neurcomp.config.errors import ConfigError
from neurcomp.config.options import NeurcompConfig, format_config_file
from neurcomp.data.atomic import (atomic_write_bytes, atomic_write_text, check_output_folder,
                                  make_output_folder, remove_stale_temporaries)
from neurcomp.data.metrics import volume_metrics
from neurcomp.data.volume import VolumeInfo
from neurcomp.quantization import latent_format
from neurcomp.training.checkpoint import CHECKPOINT_NAME, atomic_torch_save, portable, read_checkpoint
from neurcomp.training.latent_fit import FitStopped, LatentFitOptions, fit
from neurcomp.training.outputs import save_slices_png, versions, write_info, write_volumes
from neurcomp.training.session import StopSignals, load_training_volume, resolve_device
from neurcomp.training.tracking import FINAL_METRICS, Tracker, tracked
from neurcomp.training.trainer import Interrupted

FLOAT32_BYTES = 4  # the file ratio is float32 bytes / file bytes, as for Neurcomp files


def fit_options(cfg: NeurcompConfig, device) -> LatentFitOptions:
    return LatentFitOptions(steps=cfg.network.latent_steps, upsampler=cfg.network.latent_upsampler, seed=cfg.seed,
                            device=str(device))


def save_latent_checkpoint(path: Path, info: VolumeInfo, describe: dict, model_state: dict, **extra) -> None:
    """A checkpoint ``read_checkpoint`` accepts; ``architecture.network = latent`` marks it."""
    atomic_torch_save(portable({"format_version": 1, "architecture": describe, "model_state": model_state,
                                "volume": asdict(info), **extra}), path)


def is_latent_checkpoint(state: dict) -> bool:
    return (state.get("architecture") or {}).get("network") == "latent"


def load_latent_model(state: dict, source: str):
    """The trained network of a finished latent-grid run's checkpoint, with its value range:
    (model with the file's quantized weights, vmin, vmax)."""
    from neurcomp.model.latent_grid import LatentGrid

    a, volume = state.get("architecture") or {}, state.get("volume") or {}
    if "levels" not in a or "latent_fit" in state:
        raise ConfigError(f"{source}: an interrupted latent-grid run; finish it with --resume first")
    try:
        model = LatentGrid(tuple(volume["shape"]), a["levels"], a["channels"], a["hidden"], a["layers"],
                           a["weight_bits"], a["finest"], a["context_hidden"], bool(a["skip"]),
                           a.get("upsampler", "linear"))
        model.load_state_dict(state["model_state"])
    except (KeyError, TypeError, RuntimeError) as exc:
        raise ConfigError(f"{source}: not a latent-grid checkpoint this version reads ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:120]})") from None
    model.quantized_weights = True
    vmin, vmax = state.get("value_range") or (volume["vmin"], volume["vmax"])
    return model, float(vmin), float(vmax)


def resumed_state(cfg: NeurcompConfig, options: LatentFitOptions) -> dict | None:
    if not cfg.resume:
        return None
    state = read_checkpoint(cfg.resume)
    fit_state = state.get("latent_fit")
    if not isinstance(fit_state, dict):
        raise ConfigError(f"{cfg.resume}: not an interrupted latent-grid run (no latent_fit state) to resume")
    if fit_state.get("options") != asdict(options):
        changed = sorted(k for k, v in asdict(options).items() if fit_state.get("options", {}).get(k) != v)
        raise ConfigError(f"{cfg.resume}: was trained with other latent-grid options ({', '.join(changed)}); "
                          "resume it with its own config.txt")
    return state


def train_latent(cfg: NeurcompConfig, progress: bool = True, extra_info: dict | None = None,
                 fitted: tuple | None = None) -> dict:
    """Train ``network = latent`` as ``cfg`` says and write every output; returns the info dict.
    ``fitted``: the fit already done, (model, vmin, vmax, report) of ``latent_fit.fit`` at this
    cfg (the bound's size search, ``training.bound_search``, whose report ``extra_info`` adds)."""
    progress = progress and not cfg.quiet
    out_dir = cfg.experiment_dir
    check_output_folder(out_dir, "basedir/expname")
    if "tensorboard" in cfg.trackers and cfg.tensorboard_dir:
        check_output_folder(Path(cfg.tensorboard_dir), "Tensorboard_log_dir")
    volume = load_training_volume(cfg)
    device = resolve_device(cfg.device)
    options = fit_options(cfg, device)
    resumed = resumed_state(cfg, options)
    info = VolumeInfo.from_volume(volume)
    budget = int(volume.num_voxels * FLOAT32_BYTES / cfg.target_file_ratio)
    make_output_folder(out_dir, "basedir/expname")
    remove_stale_temporaries(out_dir)
    ckpt_path = out_dir / CHECKPOINT_NAME
    atomic_write_text(out_dir / "config.txt", format_config_file({**cfg.flat(), "checkpoint_path": "", "resume": ""}))
    tracker = Tracker(cfg.trackers, out_dir, cfg.expname, cfg.mlflow_tracking_uri, cfg.tensorboard_dir,
                      mlflow_experiment=cfg.mlflow_experiment, parent_run_id=cfg.mlflow_parent_run_id or None,
                      resume_run_id=(resumed or {}).get("tracking_run_id"))
    stop = StopSignals()
    with tracked(tracker), stop:
        tracker.log_params({**cfg.flat(), **{f"latent_{k}": v for k, v in asdict(options).items()},
                            "budget_bytes": budget})
        stop.armed = fitted is None
        try:
            model, vmin, vmax, report = fitted or fit(np.asarray(volume.values), budget, options, progress=progress,
                                                      stop=lambda: stop.requested,
                                                      resume=resumed["latent_fit"] if resumed else None)
        except FitStopped as stopped:
            save_latent_checkpoint(ckpt_path, info, {"network": "latent"}, stopped.state["model"],
                                   latent_fit=stopped.state, config=cfg.flat(), tracking_run_id=tracker.run_id,
                                   tag="interrupt")
            how = "terminated (SIGTERM)" if stop.signum == signal.SIGTERM else "interrupted"
            print(f"\n{how} at step {stopped.state['step']}: checkpoint saved to {ckpt_path}; "
                  f"resume with --resume {ckpt_path}", file=sys.stderr)
            interrupted = Interrupted(stop.signum)
            interrupted.reported = True
            raise interrupted from None
        finally:
            stop.armed = False
        for h in report["history"]:
            tracker.log_metrics({"sampled_psnr": h["psnr"], "train_psnr": h["train_psnr"], "rate_bits": h["bits"],
                                 "lambda": h["lambda"]}, h["step"])
        file = out_dir / f"{cfg.expname}.nclg"
        bound = None
        if cfg.error_bound:  # the network at the ratio, plus the corrections that keep the bound
            from neurcomp.quantization.bounded import encode_latent_bounded

            mode, value = cfg.error_bound
            payload, bound = encode_latent_bounded(model, vmin, vmax, np.asarray(volume.values), mode, value,
                                                   option=f"max_{mode}_error")
        else:
            payload = latent_format.encode(model, vmin, vmax)
        prediction = latent_format.decode_volume(payload, source=str(file))
        metrics = volume_metrics(np.asarray(volume.values), prediction)
        if not math.isfinite(metrics["mse"]):
            raise ConfigError(f"{cfg.expname}: the latent-grid fit decodes to non-finite values; no outputs written")
        atomic_write_bytes(file, payload)
        ratio = volume.num_voxels * FLOAT32_BYTES / len(payload)
        result = {"expname": cfg.expname, "data": cfg.data.path, "network": "latent",
                  "volume_size": list(volume.shape[::-1]), "volume_num_voxels": volume.num_voxels,
                  "volume_dtype": volume.source_dtype, "volume_min": info.vmin, "volume_max": info.vmax,
                  "spacing": list(volume.spacing), "latent_grid": model.describe(),
                  "num_parameters": sum(p.numel() for p in model.parameters()),
                  **{k: metrics[k] for k in ("psnr", "mse", "rmse", "l1_diff", "max_abs_error")},
                  "file": file.name, "file_bytes": len(payload), "file_ratio": ratio, "compression_ratio": ratio,
                  "target_file_ratio": cfg.target_file_ratio, "budget_bytes": budget,
                  "steps": report["steps"] + report["extra_steps"], "extra_steps": report["extra_steps"],
                  "training_time_s": report["train_seconds"], "device": str(device), "seed": cfg.seed,
                  "versions": versions()}
        if bound is not None:
            result.update({"error_bound": bound["max_abs_error_bound"], "corrections": bound["corrections"],
                           "network_bytes": bound["network_bytes"],
                           "max_abs_error_verified": bound["max_abs_error_verified"]})
        result.update(extra_info or {})
        save_latent_checkpoint(ckpt_path, info, model.describe(), model.state_dict(), config=cfg.flat(),
                               tracking_run_id=tracker.run_id, tag="final", file=file.name, value_range=[vmin, vmax])
        write_info(out_dir, result)
        vti_paths = write_volumes(out_dir, volume, prediction, cfg.vti_dtype, cfg.vti_compression)
        save_slices_png(out_dir / "slices.png", volume.values, prediction,
                        title=f"{cfg.expname}: PSNR {metrics['psnr']:.2f} dB, file ratio {ratio:.1f}",
                        spacing=volume.spacing)
        tracker.log_final({k: result[k] for k in FINAL_METRICS if k in result}, result["steps"])
        tracker.log_artifacts([out_dir / n for n in ("info.json", "info.txt", "config.txt", "slices.png")]
                              + vti_paths + [ckpt_path, file])
        print(f"{cfg.expname}: PSNR {metrics['psnr']:.2f} dB, file ratio {ratio:.1f} ({len(payload)} bytes), "
              f"outputs in {out_dir}")
    return result
