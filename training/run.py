"""The main job: volume file + config -> trained network, metrics, volumes, tracking."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from config.errors import ConfigError
from config.options import NeurcompConfig, format_config_file
from data.metrics import volume_metrics
from data.volume import mean_value, normalize
from model.architecture import Architecture, count_parameters
from model.neurcomp import Neurcomp
from training.checkpoint import VolumeInfo, read_checkpoint, save_checkpoint
from training.inference import predict_volume
from training import distributed
from training.file_target import initial_architecture, write_compressed_file
from training.recipe import learning_rate, schedule_steps
from training.outputs import atomic_write_text, save_slices_png, versions, write_info
from training import precision
from training.sampler import VolumeSampler, make_sampler  # noqa: F401 (tests patch run.VolumeSampler)
from training.tracking import Tracker, tracked
from training.trainer import Phase, Trainer, TrainingDiverged
from training.validation import ValidationSet

CHECKPOINT_NAME = "checkpoint.pt"


def resolve_device(name: str) -> torch.device:
    """The training device; under torchrun each process gets its own GPU (cuda:LOCAL_RANK)."""
    if name == "auto":
        return distributed.device_for_rank(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device = cuda was requested but no CUDA device is available (use auto or cpu)")
    return distributed.device_for_rank(torch.device(name))


def load_training_volume(cfg: NeurcompConfig):
    from data.readers import read_volume

    d = cfg.data
    if cfg.scaling.stream_bricks:  # memory-mapped: bricks are streamed to the device (training.sampler)
        from data.lazy import open_volume_lazily

        return open_volume_lazily(d.path, data_key=d.data_key or None, raw_shape=d.raw_shape,
                                  raw_dtype=d.raw_dtype or None, channel=d.channel)
    return read_volume(d.path, data_key=d.data_key or None, raw_shape=d.raw_shape,
                       raw_dtype=d.raw_dtype or None, channel=d.channel)


def validation_set(cfg: NeurcompConfig, volume, info: VolumeInfo, device) -> ValidationSet:
    return ValidationSet(volume.values, info.vmin, info.vmax, device, seed=cfg.seed)


def announce_recipe(cfg: NeurcompConfig, arch: Architecture, lr: float, num_steps: int) -> None:
    """One line saying what lr = auto chose, so a user sees it before the run."""
    if cfg.optim.auto and distributed.is_main_process():
        print(f"lr = auto: {lr:.3g} for widths {arch.widths}; {num_steps} steps; output starts at the data's mean")


def start_at_mean(cfg: NeurcompConfig, model: Neurcomp, volume, info: VolumeInfo) -> None:
    """lr = auto: the output starts at the data's normalised mean (training.recipe)."""
    if cfg.optim.auto:
        model.start_at(float(normalize(mean_value(volume.values), info.vmin, info.vmax)))


def evaluate(model: torch.nn.Module, volume, info: VolumeInfo) -> tuple[np.ndarray, dict]:
    """Full-volume prediction in physical units and its error metrics against the ground truth.

    Under torch.distributed every rank must call it: the ranks share the grid, rank 0 gets the
    prediction (the others None) and every rank gets the metrics.
    """
    pred = predict_volume(model, volume.shape, info, split=True)
    metrics = volume_metrics(volume.values, pred) if pred is not None else None
    return pred, distributed.broadcast_object(metrics)


def write_volumes(out_dir: Path, volume, prediction: np.ndarray) -> list[Path]:
    from data.writers import write_vti

    paths = [out_dir / "ground_truth.vti", out_dir / "prediction.vti"]
    write_vti(paths[0], volume.values, volume.spacing, volume.origin)
    write_vti(paths[1], prediction, volume.spacing, volume.origin)
    return paths


def train(cfg: NeurcompConfig, progress: bool = True) -> dict:
    """Train a network as ``cfg`` says and write every output; returns the info dict."""
    # under torchrun: join the process group (training.distributed); a single process: nothing
    distributed.init_from_env(resolve_device(cfg.device), cfg.scaling.dist_backend)
    precision.use_full_float32()  # no TF32: it caps a SIREN's PSNR (training.precision)
    if cfg.pruning.enabled:  # gates, prune, fine-tune: training.pruning_schedule
        from training.pruning_schedule import train_with_pruning

        result = train_with_pruning(cfg, progress)
    else:
        result = train_plain(cfg, progress)
    # under torchrun, ranks leave together: a rank that exits (tearing down its gloo threads) while
    # rank 0 still writes the outputs aborts with "terminate called without an active exception"
    distributed.barrier()
    return result


def train_plain(cfg: NeurcompConfig, progress: bool = True) -> dict:
    """Training without pruning (``train`` chooses)."""
    volume = load_training_volume(cfg)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    out_dir = cfg.experiment_dir
    out_dir.mkdir(parents=True, exist_ok=True)

    resume = read_checkpoint(cfg.checkpoint_path) if cfg.checkpoint_path else None
    if resume is not None:
        arch = Architecture.from_dict(resume["architecture"])
    else:
        arch = initial_architecture(cfg, volume.num_voxels)
    model = Neurcomp(arch)
    info = VolumeInfo.from_volume(volume)
    start_at_mean(cfg, model, volume, info)
    model = model.to(device)
    lr = learning_rate(cfg.optim, arch)
    num_steps, steps_per_pass = schedule_steps(cfg.optim, volume.num_voxels)
    announce_recipe(cfg, arch, lr, num_steps)
    sampler = make_sampler(volume, device, seed=cfg.seed, with_gradients=cfg.optim.grad_lambda > 0,
                           scaling=cfg.scaling)
    if distributed.is_main_process():
        atomic_write_text(out_dir / "config.txt", format_config_file({**cfg.flat(), "checkpoint_path": ""}))

    phase = Phase("train", num_steps, lr, steps_per_pass, cfg.optim,
                  validation=validation_set(cfg, volume, info, device))
    tracker = Tracker(cfg.trackers, out_dir, cfg.expname, cfg.mlflow_tracking_uri, cfg.tensorboard_dir,
                      mlflow_experiment=cfg.mlflow_experiment, parent_run_id=cfg.mlflow_parent_run_id or None,
                      resume_run_id=(resume or {}).get("tracking_run_id"))
    if resume is None:
        tracker.log_params({**cfg.flat(), "network_layer_sizes": arch.layer_sizes(),
                            "num_parameters": count_parameters(arch), "lr_used": lr})

    def checkpoint(trainer: Trainer, tag: str) -> None:
        save_checkpoint(out_dir / CHECKPOINT_NAME, trainer.model, info, trainer=trainer.state_dict(),
                        config=cfg.flat(), tracking_run_id=tracker.run_id, tag=tag)
        if tag == "interrupt" and distributed.is_main_process():
            print(f"\ninterrupted at step {trainer.step}: checkpoint saved to {out_dir / CHECKPOINT_NAME}; "
                  f"resume with --checkpoint_path {out_dir / CHECKPOINT_NAME}")

    trainer = Trainer(model, sampler, phase, tracker=tracker, checkpoint_fn=checkpoint,
                      checkpoint_every_passes=cfg.checkpoint_every, progress=progress,
                      compile=cfg.scaling.compile, micro_batch=cfg.scaling.micro_batch)
    if resume is not None:
        model.load_state_dict(resume["model_state"])
        trainer.load_state_dict(resume["trainer"])
    with tracked(tracker):
        with checkpoint_named_on_divergence(out_dir / CHECKPOINT_NAME):
            trainer.run()
        checkpoint(trainer, "final")
        return finish(cfg, model, volume, info, trainer, tracker, device, extra_info=training_report(cfg, trainer))


@contextmanager
def checkpoint_named_on_divergence(path: Path):
    """A run that cannot recover says where its last good checkpoint is (periodic checkpoints are
    written only after the weights were checked finite), or that there is none."""
    try:
        yield
    except TrainingDiverged as exc:
        if path.is_file():
            step = read_checkpoint(path).get("trainer", {}).get("step")
            raise TrainingDiverged(f"{exc}. The last good checkpoint is {path} (step {step})") from None
        raise TrainingDiverged(f"{exc}. No checkpoint was written before it diverged") from None


def training_report(cfg: NeurcompConfig, trainer: Trainer) -> dict:
    """How the run was trained, for info.json: the lr used and any recovery from divergence."""
    return {"lr": trainer.phase.lr, "lr_auto": cfg.optim.auto, "lr_scale_final": trainer.lr_scale,
            "recoveries": trainer.recoveries, "best_step": (trainer.best or {}).get("step"),
            "restored_best_step": trainer.restored_best_step,
            "compiled": trainer.compiled, "compile_graphs": trainer.compile_graphs}


def finish(cfg: NeurcompConfig, model: Neurcomp, volume, info: VolumeInfo, trainer: Trainer, tracker,
           device: torch.device, extra_info: dict | None = None) -> dict:
    """Evaluate on the whole volume, write info, volumes and slices, log them."""
    out_dir = cfg.experiment_dir
    prediction, metrics = evaluate(model, volume, info)
    num_parameters = count_parameters(model.arch)
    if cfg.target_file_ratio > 0 and distributed.is_main_process():
        extra_info = {**(extra_info or {}), **write_compressed_file(cfg, model, volume, info)}
    if not distributed.is_main_process():  # rank 0 writes the outputs
        return {"expname": cfg.expname, "rank": distributed.get_rank(), "num_parameters": num_parameters,
                "psnr": metrics["psnr"], "mse": metrics["mse"], "steps": trainer.step}
    result = {
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
        "passes": trainer.current_pass(), "steps": trainer.step,
        "training_time_s": trainer.train_seconds,
        "samples_per_second": trainer.samples_seen / trainer.train_seconds if trainer.train_seconds else None,
        "device": str(device) if device.type == "cpu" else f"{device} ({torch.cuda.get_device_name(device)})",
        "world_size": distributed.get_world_size(),
        "seed": cfg.seed,
        **precision.current(),
        "versions": versions(),
        **(extra_info or {}),
    }
    write_info(out_dir, result)
    vti_paths = write_volumes(out_dir, volume, prediction)
    save_slices_png(out_dir / "slices.png", volume.values, prediction,
                    title=f"{cfg.expname}: PSNR {metrics['psnr']:.2f} dB, ratio {result['compression_ratio']:.1f}")
    tracker.log_metrics({f"final_{k}": metrics[k] for k in ("psnr", "mse", "rmse", "l1_diff", "max_abs_error")},
                        trainer.step)
    tracker.log_artifacts([out_dir / n for n in ("info.json", "info.txt", "config.txt", "slices.png")] + vti_paths)
    print(f"{cfg.expname}: PSNR {metrics['psnr']:.2f} dB, compression ratio {result['compression_ratio']:.1f}, "
          f"{num_parameters} parameters, outputs in {out_dir}")
    return result
