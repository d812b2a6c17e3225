"""Experiment tracking: one MLflow run and one TensorBoard run per training.

MLflow: the store is ``mlflow_tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else a local SQLite
store ``<basedir>/mlflow.db`` with artifacts under ``<basedir>/mlartifacts``; the experiment is
``mlflow_experiment``, else ``$MLFLOW_EXPERIMENT_NAME``, else ``neurcomp``. Any other store keeps its
own artifact location (a tracking server its artifact store), so artifacts never land on the client.
TensorBoard: events go to ``<Tensorboard_log_dir or basedir>/<expname>``, so ``tensorboard --logdir``
on that folder lists the run by its expname. ``--tracking none`` writes neither.
"""

from __future__ import annotations

import logging
import math
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

DEFAULT_EXPERIMENT = "neurcomp"
# logged at the end of a run under their info.json names: the whole volume, physical units
FINAL_METRICS = ("psnr", "mse", "rmse", "l1_diff", "max_abs_error", "compression_ratio", "num_parameters",
                 "file_bytes", "file_ratio")


def default_mlflow_uri(basedir: str | Path) -> str:
    return "sqlite:///" + str(Path(basedir).resolve() / "mlflow.db")


def mlflow_target(uri: str, experiment: str, basedir: str | Path) -> tuple[str, str, str | None]:
    """(tracking URI, experiment name, artifact location for a new experiment): an option that is set
    wins over the MLflow environment variables, which win over the local defaults."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    experiment = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME", "") or DEFAULT_EXPERIMENT
    if uri:
        return uri, experiment, None
    return default_mlflow_uri(basedir), experiment, (Path(basedir).resolve() / "mlartifacts").as_uri()


def _slice_coordinates(shape_zyx, dim: int, device) -> torch.Tensor:
    """(x, y, z) coordinates in [-1, 1] of the middle slice across axis ``dim`` (0 = z, 1 = y, 2 = x)."""
    from neurcomp.model.inference import axis

    axes = [axis(n, device) for n in shape_zyx]
    mid = shape_zyx[dim] // 2
    axes[dim] = axes[dim][mid:mid + 1]
    zz, yy, xx = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([xx, yy, zz], dim=-1).reshape(-1, 3)


@torch.no_grad()
def middle_slices(model: torch.nn.Module, volume, info) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(ground truth, prediction) in physical units of the middle XY, XZ and YZ slices.

    Only the slices' voxels go through the network, so this stays cheap at every checkpoint."""
    from neurcomp.model.inference import CHUNK_POINTS

    shape = tuple(int(s) for s in volume.shape)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    slices = {}
    for dim, name in ((0, "xy"), (1, "xz"), (2, "yz")):
        coords = _slice_coordinates(shape, dim, device)
        pred = torch.cat([model(c).reshape(-1) for c in coords.split(CHUNK_POINTS)])
        cut = [slice(None)] * 3
        cut[dim] = shape[dim] // 2
        truth = np.asarray(volume.values[tuple(cut)], dtype=np.float32)
        slices[name] = truth, info.denormalize(pred).float().cpu().numpy().reshape(truth.shape)
    model.train(was_training)
    return slices


def slice_image(truth: np.ndarray, pred: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """Ground truth | prediction | absolute error side by side, colour-mapped as in slices.png (HWC, RGB)."""
    import matplotlib

    span = (vmax - vmin) or 1.0
    error = np.abs(pred - truth)
    viridis, magma = matplotlib.colormaps["viridis"], matplotlib.colormaps["magma"]
    panels = [viridis(np.clip((truth - vmin) / span, 0, 1)), viridis(np.clip((pred - vmin) / span, 0, 1)),
              magma(error / (float(error.max()) or 1.0))]
    return np.ascontiguousarray(np.concatenate(panels, axis=1)[::-1, :, :3])  # row 0 at the bottom


def _hparam(value):
    """A value TensorBoard's HPARAMS tab takes (number, bool or text)."""
    if isinstance(value, (bool, int, float, str)):
        return value
    return "" if value is None else str(value)


class Tracker:
    """Logs params, scalars, images, histograms and artifacts to whichever backends are enabled."""

    def __init__(self, trackers, experiment_dir: Path, run_name: str, mlflow_uri: str = "",
                 tensorboard_dir: str = "", mlflow_experiment: str = "", parent_run_id: str | None = None,
                 resume_run_id: str | None = None):
        self.mlflow = None
        self.writer = None
        self.run_id = None
        self.resumed = bool(resume_run_id)
        self.params: dict = {}
        from neurcomp.training.distributed import is_main_process

        if not is_main_process():  # under torch.distributed only rank 0 logs
            trackers = ()
        basedir = Path(experiment_dir).parent
        if "tensorboard" in trackers:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(Path(tensorboard_dir or basedir) / run_name))
        if "mlflow" in trackers:
            import mlflow

            logging.getLogger("mlflow").setLevel(logging.WARNING)  # keep the console for the progress bar
            uri, experiment, artifact_location = mlflow_target(mlflow_uri, mlflow_experiment, basedir)
            # set_tracking_uri also sets $MLFLOW_TRACKING_URI; close() restores it, else a later
            # training in this process would take this run's store for the user's choice
            self._user_uri = os.environ.get("MLFLOW_TRACKING_URI")
            mlflow.set_tracking_uri(uri)
            exp = mlflow.get_experiment_by_name(experiment)
            if exp is None:
                exp_id = mlflow.create_experiment(experiment, artifact_location=artifact_location)
            else:
                exp_id = exp.experiment_id
            tags = {"mlflow.parentRunId": parent_run_id} if parent_run_id else None
            if resume_run_id:  # a resumed training continues its own run
                run = mlflow.start_run(run_id=resume_run_id)
            else:
                run = mlflow.start_run(experiment_id=exp_id, run_name=run_name, tags=tags)
            self.run_id = run.info.run_id
            self.mlflow = mlflow

    def log_params(self, params: dict) -> None:
        """MLflow parameters (a resumed run has them already); kept for TensorBoard's hparams."""
        self.params = {k: _hparam(v) for k, v in params.items()}
        if self.mlflow and not self.resumed:
            flat = {k: ("" if v is None else str(v))[:500] for k, v in params.items()}
            self.mlflow.log_params(flat)

    def log_metrics(self, metrics: dict, step: int) -> None:
        finite = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
        if self.mlflow:
            self.mlflow.log_metrics(finite, step=step)
        if self.writer:
            for k, v in finite.items():
                self.writer.add_scalar(k, v, step)

    def log_final(self, metrics: dict, step: int) -> None:
        """The final metrics, and TensorBoard's hparams record of the run with them (HPARAMS tab)."""
        self.log_metrics(metrics, step)
        if self.writer:
            from torch.utils.tensorboard.summary import hparams

            finite = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
            for summary in hparams(self.params, finite):
                self.writer.file_writer.add_summary(summary)
            self.writer.flush()

    def log_slices(self, model: torch.nn.Module, volume, info, step: int) -> None:
        """The middle slices (ground truth, prediction, error) as TensorBoard images ``slices/xy`` ..."""
        if self.writer:
            for name, (truth, pred) in middle_slices(model, volume, info).items():
                self.writer.add_image(f"slices/{name}", slice_image(truth, pred, info.vmin, info.vmax), step,
                                      dataformats="HWC")
            self.writer.flush()

    def log_histogram(self, name: str, values, step: int) -> None:
        if self.writer:
            self.writer.add_histogram(name, values, step)

    def log_artifacts(self, paths) -> None:
        if self.mlflow:
            for p in paths:
                if Path(p).exists():
                    self.mlflow.log_artifact(str(p))

    def close(self, status: str = "FINISHED") -> None:
        if self.writer:
            self.writer.close()
            self.writer = None
        if self.mlflow:
            self.mlflow.end_run(status=status)
            self.mlflow.set_tracking_uri(self._user_uri)
            self.mlflow = None


@contextmanager
def tracked(tracker: Tracker):
    """Close ``tracker`` on leaving the block, its run marked FINISHED, KILLED (Ctrl-C, SIGTERM) or FAILED."""
    status = "FAILED"
    try:
        yield tracker
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracker.close(status)
