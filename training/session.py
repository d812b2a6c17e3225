"""A training session: what every training run shares, around a list of phases (``training.phases``).

The session holds the volume, the device, the sampler and validation sample, the tracker, the
checkpoint, the stop signals, and writes the final evaluation and outputs. A phase is a model
transform, a learning rate, a schedule and a step count, run by ``training.trainer.Trainer``:
a plain run is ``[train]``, a pruning run ``[prune (train with gates), shrink, finetune]``.

Starting points (``cfg``):
* ``resume``: a checkpoint of an interrupted run, continued exactly (same phase, step, optimizer,
  sampler and pass state, MLflow run). Its network, volume and pruning technique must be the
  configured ones.
* ``checkpoint_path``: a warm start, as in the original code: the checkpoint's weights, then a new
  run (fresh optimizer and schedule from step 0, a new MLflow run). Its network must be the one the
  config gives on this volume; the volume may differ.

Stopping: SIGINT (Ctrl-C) and SIGTERM (scancel, timeout, docker stop) while a phase trains take
effect between two steps; the checkpoint then holds the state after the last complete step, the
MLflow run ends KILLED and the process exits 130 (SIGINT) or 143 (SIGTERM) (``config.cli``).
A checkpoint is written only when the network is finite, so a good checkpoint is never replaced
by one that blew up, and a run whose final network is not finite fails (``TrainingDiverged``).
"""

from __future__ import annotations

import math
import signal
import sys
import threading
from pathlib import Path

import numpy as np
import torch

from neurcomp.config.errors import ConfigError
from neurcomp.config.options import NeurcompConfig, format_config_file
from neurcomp.data.metrics import volume_metrics
from neurcomp.model.architecture import count_parameters
from neurcomp.model.device import resolve_device as model_device
from neurcomp.training import distributed
from neurcomp.data.atomic import check_output_folder, make_output_folder, remove_stale_temporaries
from neurcomp.data.volume import VolumeInfo
from neurcomp.training.checkpoint import CHECKPOINT_NAME, check_compatible, read_checkpoint, save_checkpoint, tensors_finite
from neurcomp.training.file_target import write_compressed_file
from neurcomp.model.inference import predict_volume
from neurcomp.training.outputs import atomic_write_text, final_info, save_slices_png, write_info, write_volumes
from neurcomp.training.progress import phase_progress
from neurcomp.training.recipe import schedule_steps
from neurcomp.training.recovery import TrainingDiverged, weights_finite
from neurcomp.training.sampling import make_sampler
from neurcomp.training.tracking import FINAL_METRICS, Tracker, tracked
from neurcomp.training.trainer import Interrupted, Phase
from neurcomp.training.validation import ValidationSet


def resolve_device(name: str) -> torch.device:
    """The training device (``model.device``); under torchrun each process gets its own GPU
    (cuda:LOCAL_RANK)."""
    return distributed.device_for_rank(model_device(name))


def load_training_volume(cfg: NeurcompConfig):
    """The volume ``cfg.data`` names: in memory, or memory-mapped when bricks are streamed
    (``training.sampling``). The bundled default volume is generated on first use (``datasets``)."""
    from neurcomp.data.readers import open_volume_lazily, read_volume
    from neurcomp.datasets import ensure_default_volume

    d = cfg.data
    ensure_default_volume(d.path)
    read = open_volume_lazily if cfg.scaling.stream_bricks else read_volume
    return read(d.path, data_key=d.data_key or None, raw_shape=d.raw_shape, raw_dtype=d.raw_dtype or None,
                raw_endian=d.raw_endian, channel=d.channel)


def validation_set(cfg: NeurcompConfig, volume, info: VolumeInfo, device) -> ValidationSet:
    return ValidationSet(volume.values, info.vmin, info.vmax, device, seed=cfg.seed)


def evaluate(model: torch.nn.Module, volume, info: VolumeInfo, progress: bool = False) -> tuple[np.ndarray, dict]:
    """Full-volume prediction in physical units and its error metrics against the ground truth.

    Under torch.distributed every rank must call it: the ranks share the grid, rank 0 gets the
    prediction (the others None) and every rank gets the metrics. ``progress``: rank 0 shows it as
    training does (``training.progress``: a bar on a terminal, a line every 30 s in a log).
    """
    bar = (lambda total: phase_progress(total, 0, "evaluation", True)) if progress else False
    pred = predict_volume(model, volume.shape, info, split=True, progress=bar)
    metrics = volume_metrics(volume.values, pred) if pred is not None else None
    return pred, distributed.broadcast_object(metrics)


class StopSignals:
    """SIGINT and SIGTERM while ``armed`` (a phase trains) set ``requested``: the loop stops after
    the step it is in. Otherwise, or on a second signal, they stop at once (``Interrupted``)."""

    def __init__(self):
        self.requested = False
        self.signum: int | None = None
        self.armed = False
        self._previous: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if self.armed and not self.requested:
            self.requested, self.signum = True, signum
            return
        raise Interrupted(signum)


class Session:
    """One training run: ``run(phases)`` trains them in turn and writes every output."""

    def __init__(self, cfg: NeurcompConfig, progress: bool = True):
        self.cfg, self.progress = cfg, progress and not cfg.quiet
        self.out_dir = cfg.experiment_dir
        check_output_folder(self.out_dir, "basedir/expname")  # before any work: one line, not a traceback
        if "tensorboard" in cfg.trackers and cfg.tensorboard_dir:
            check_output_folder(Path(cfg.tensorboard_dir), "Tensorboard_log_dir")
        self.volume = load_training_volume(cfg)
        self.device = resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)
        make_output_folder(self.out_dir, "basedir/expname")
        remove_stale_temporaries(self.out_dir)  # left by a run killed mid-write (kill -9)
        self.ckpt_path = self.out_dir / CHECKPOINT_NAME
        self.info = VolumeInfo.from_volume(self.volume)
        self.resumed = read_checkpoint(cfg.resume) if cfg.resume else None
        if self.resumed is not None and not isinstance(self.resumed.get("trainer"), dict):
            raise ConfigError(f"{cfg.resume}: not a checkpoint of a training run (no trainer state) to resume; "
                              "start from its weights with checkpoint_path instead")
        self.warm = read_checkpoint(cfg.checkpoint_path) if cfg.checkpoint_path else None
        # the checkpoint a failure can point to: (path, step), the resumed one until this run saves
        self.last_good = (Path(cfg.resume), self.resumed["trainer"].get("step")) if self.resumed else None
        self.sampler = make_sampler(self.volume, self.device, seed=cfg.seed,
                                    with_gradients=cfg.optim.grad_lambda > 0, scaling=cfg.scaling,
                                    at_voxels=cfg.optim.sample_points == "voxels")
        self.num_steps, self.steps_per_pass = schedule_steps(cfg.optim, self.volume.num_voxels)
        self.validation = validation_set(cfg, self.volume, self.info, self.device)
        self.stop = StopSignals()
        self.tracker: Tracker | None = None
        self.totals = {"steps": 0, "samples_seen": 0, "train_seconds": 0.0}  # of the phases before this one
        self.extra_info: dict = {}  # what the caller adds to info.json (training.bound_search's report)

    # -- the run ---------------------------------------------------------------------------------
    def run(self, phases: list) -> dict:
        cfg = self.cfg
        technique = cfg.pruning.technique if cfg.pruning.enabled else "none"
        if self.resumed is not None:
            check_compatible(cfg.resume, self.resumed, phases[0].architecture, self.info, technique)
        first = self._first_phase(phases)
        if self.warm is not None:
            check_compatible(cfg.checkpoint_path, self.warm, phases[0].architecture, action="warm-start")
        if distributed.is_main_process():
            atomic_write_text(self.out_dir / "config.txt",
                              format_config_file({**cfg.flat(), "checkpoint_path": "", "resume": ""}))
        self.tracker = Tracker(cfg.trackers, self.out_dir, cfg.expname, cfg.mlflow_tracking_uri, cfg.tensorboard_dir,
                               mlflow_experiment=cfg.mlflow_experiment,
                               parent_run_id=cfg.mlflow_parent_run_id or None,
                               resume_run_id=(self.resumed or {}).get("tracking_run_id"))
        with tracked(self.tracker), self.stop:
            self.tracker.log_params({**cfg.flat(), **phases[0].params(self)})
            model = trainer = None
            for i, phase in enumerate(phases[first:], first):
                resumed = self.resumed if i == first else None
                model = phase.enter(self, model, resumed)  # the phase's model transform
                if phase.trains:
                    trainer = self._train(phase, model, resumed)
                    model = phase.leave(self, trainer)
            return self.finish(model, trainer, phases[-1].report(self, trainer))

    def _first_phase(self, phases: list) -> int:
        if self.resumed is None:
            return 0
        name = (self.resumed.get("trainer") or {}).get("phase")
        for i, phase in enumerate(phases):
            if phase.trains and phase.name == name:
                return i
        if self.cfg.pruning.enabled:
            raise ConfigError(f"{self.cfg.resume}: not a checkpoint of a training with pruning "
                              f"(phase {name!r}); resume it without dropout_technique")
        raise ConfigError(f"{self.cfg.resume}: a checkpoint of phase {name!r}, which a run without pruning "
                          "does not have; resume it with its dropout_technique")

    def _train(self, phase, model, resumed: dict | None):
        cfg = self.cfg
        spec = Phase(phase.name, phase.num_steps, phase.lr(self, model), self.steps_per_pass, cfg.optim,
                     regularizer=phase.regularizer(model), validation=self.validation, keep_best=phase.keep_best)
        trainer = phase.trainer_cls(model, self.sampler, spec, tracker=self.tracker,
                                    checkpoint_fn=lambda t, tag: self.save(phase, t, tag),
                                    checkpoint_every_passes=cfg.checkpoint_every, step_offset=phase.step_offset,
                                    progress=self.progress, compile=cfg.scaling.compile,
                                    micro_batch=cfg.scaling.micro_batch, stop_flag=self.stop)
        if resumed is not None:
            trainer.load_state_dict(resumed["trainer"])
        elif phase.save_at_start:
            self.save(phase, trainer, phase.save_at_start)
        self.stop.armed = True
        try:
            trainer.run()
        except TrainingDiverged as exc:
            raise TrainingDiverged(f"{exc}. {self._last_good_text()}") from None
        finally:
            self.stop.armed = False
        if not weights_finite(trainer.model):
            raise TrainingDiverged(f"{phase.name}: the network is not finite at step {trainer.step}; nothing of it "
                                   f"was saved. {self._last_good_text()}")
        if phase.save_at_end:
            self.save(phase, trainer, "final")
        return trainer

    def _last_good_text(self) -> str:
        if self.last_good is None or not Path(self.last_good[0]).is_file():
            return "No checkpoint was written before it diverged"
        return f"The last good checkpoint is {self.last_good[0]} (step {self.last_good[1]})"

    # -- checkpoints -------------------------------------------------------------------------------
    def save(self, phase, trainer, tag: str) -> None:
        """Write the checkpoint of ``phase`` (every rank calls it: the state gathers are collectives),
        unless the network is not finite; an interrupt says how to resume, in one line."""
        model, extra = phase.checkpoint(self, trainer)
        state = trainer.state_dict()
        finite = tensors_finite(model.state_dict(), (extra.get("pruning") or {}).get("state"))
        if finite:
            save_checkpoint(self.ckpt_path, model, self.info, trainer=state, config=self.cfg.flat(),
                            tracking_run_id=self.tracker.run_id, tag=tag, **extra)
            self.last_good = (self.ckpt_path, trainer.step)
            self.tracker.log_slices(model, self.volume, self.info, trainer.step_offset + trainer.step)
        if not distributed.is_main_process():
            return
        where = f"in phase {trainer.phase.name} at step {trainer.step}"
        if tag == "interrupt":
            stopped = "terminated (SIGTERM)" if self.stop.signum == signal.SIGTERM else "interrupted"
            if finite:
                print(f"\n{stopped} {where}: checkpoint saved to {self.ckpt_path}; resume with --resume {self.ckpt_path}",
                      file=sys.stderr)
            else:
                print(f"\n{stopped} {where}: the network is not finite, no checkpoint saved; "
                      f"{self._last_good_text()}", file=sys.stderr)
        elif not finite:
            print(f"warning: {tag} checkpoint {where} not saved: the network is not finite", file=sys.stderr)

    # -- outputs ---------------------------------------------------------------------------------
    def finish(self, model, trainer, extra_info: dict) -> dict:
        """Evaluate on the whole volume, write info, volumes and slices, log them."""
        cfg, out_dir, volume, totals = self.cfg, self.out_dir, self.volume, self.totals_with(trainer)
        extra_info = {**self.extra_info, **extra_info}
        prediction, metrics = evaluate(model, volume, self.info, progress=self.progress)
        if not math.isfinite(metrics["mse"]):
            raise TrainingDiverged(f"{cfg.expname}: the trained network predicts non-finite values "
                                   f"(MSE {metrics['mse']}); no outputs written. {self._last_good_text()}")
        num_parameters = count_parameters(model.arch)
        if (cfg.target_file_ratio > 0 or cfg.error_bound) and distributed.is_main_process():
            extra_info = {**extra_info, **write_compressed_file(cfg, model, volume, self.info)}
        if not distributed.is_main_process():  # rank 0 writes the outputs
            return {"expname": cfg.expname, "rank": distributed.get_rank(), "num_parameters": num_parameters,
                    "psnr": metrics["psnr"], "mse": metrics["mse"], "steps": totals["steps"]}
        result = final_info(cfg, volume, self.info, model, metrics, totals, self.steps_per_pass, self.device,
                            extra_info)
        write_info(out_dir, result)
        vti_paths = write_volumes(out_dir, volume, prediction, cfg.vti_dtype, cfg.vti_compression)
        save_slices_png(out_dir / "slices.png", volume.values, prediction,
                        title=f"{cfg.expname}: PSNR {metrics['psnr']:.2f} dB, ratio {result['compression_ratio']:.1f}",
                        spacing=volume.spacing)
        self.tracker.log_final({k: result[k] for k in FINAL_METRICS if k in result}, totals["steps"])
        compressed = [out_dir / result["file"]] if "file" in result else []
        self.tracker.log_artifacts([out_dir / n for n in ("info.json", "info.txt", "config.txt", "slices.png")]
                                   + vti_paths + [self.ckpt_path] + compressed)
        print(f"{cfg.expname}: PSNR {metrics['psnr']:.2f} dB, compression ratio {result['compression_ratio']:.1f}, "
              f"{num_parameters} parameters, outputs in {out_dir}")
        return result

    def totals_with(self, trainer) -> dict:
        """Steps, samples and seconds of the whole run: the phases before plus ``trainer``'s."""
        t = self.totals
        if trainer is None:
            return dict(t)
        return {"steps": t["steps"] + trainer.step, "samples_seen": t["samples_seen"] + trainer.samples_seen,
                "train_seconds": t["train_seconds"] + trainer.train_seconds}
