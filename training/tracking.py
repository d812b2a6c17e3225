"""Experiment tracking: one MLflow run and one TensorBoard event stream per training.

MLflow defaults to a local SQLite store ``<basedir>/mlflow.db`` with artifacts under
``<basedir>/mlartifacts`` (view with ``mlflow ui --backend-store-uri sqlite:///experiments/mlflow.db``).
``--tracking none`` writes neither.
"""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from pathlib import Path


def default_mlflow_uri(basedir: str | Path) -> str:
    return "sqlite:///" + str(Path(basedir).resolve() / "mlflow.db")


class Tracker:
    """Logs params, scalars, histograms and artifacts to whichever backends are enabled."""

    def __init__(self, trackers, experiment_dir: Path, run_name: str, mlflow_uri: str = "",
                 tensorboard_dir: str = "", mlflow_experiment: str = "neurcomp", parent_run_id: str | None = None,
                 resume_run_id: str | None = None):
        self.mlflow = None
        self.writer = None
        self.run_id = None
        from training.distributed import is_main_process

        if not is_main_process():  # under torch.distributed only rank 0 logs
            trackers = ()
        if "tensorboard" in trackers:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(tensorboard_dir or Path(experiment_dir) / "tensorboard"))
        if "mlflow" in trackers:
            import mlflow

            logging.getLogger("mlflow").setLevel(logging.WARNING)  # keep the console for the progress bar
            basedir = Path(experiment_dir).parent
            mlflow.set_tracking_uri(mlflow_uri or default_mlflow_uri(basedir))
            exp = mlflow.get_experiment_by_name(mlflow_experiment)
            if exp is None:
                exp_id = mlflow.create_experiment(mlflow_experiment,
                                                  artifact_location=(basedir.resolve() / "mlartifacts").as_uri())
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
        if self.mlflow:
            flat = {k: ("" if v is None else str(v))[:500] for k, v in params.items()}
            self.mlflow.log_params(flat)

    def log_metrics(self, metrics: dict, step: int) -> None:
        finite = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
        if self.mlflow:
            self.mlflow.log_metrics(finite, step=step)
        if self.writer:
            for k, v in finite.items():
                self.writer.add_scalar(k, v, step)

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
            self.mlflow = None


@contextmanager
def tracked(tracker: Tracker):
    """Close ``tracker`` on leaving the block, its run marked FINISHED, KILLED (Ctrl-C) or FAILED."""
    status = "FAILED"
    try:
        yield tracker
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracker.close(status)
