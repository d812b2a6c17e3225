"""The search's own MLflow run: parameters of the search, every trial logged as its child run."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from neurcomp.search.runner import TrialResult
from neurcomp.training.tracking import mlflow_target


class SearchTracking:
    """The search's own MLflow run; every trial is logged as its child run."""

    def __init__(self, tracking_uri: str, experiment: str, artifact_location: str | None):
        from mlflow import MlflowClient

        logging.getLogger("mlflow").setLevel(logging.WARNING)
        self.client = MlflowClient(tracking_uri=tracking_uri)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=artifact_location)
        else:
            self.experiment_id = exp.experiment_id
        self.run_id: str | None = None

    def start(self, run_id: str | None, name: str, params: dict) -> str:
        if run_id:
            try:
                self.client.get_run(run_id)
                self.client.update_run(run_id, status="RUNNING")
                self.run_id = run_id
                return run_id
            except Exception:  # noqa: BLE001 - store replaced: start a new parent run
                print(f"warning: MLflow run {run_id} of this search is gone; starting a new one", file=sys.stderr)
        run = self.client.create_run(self.experiment_id, run_name=name, tags={"neurcomp.kind": "search"})
        self.run_id = run.info.run_id
        for k, v in params.items():
            self.client.log_param(self.run_id, k, str(v)[:500])
        return self.run_id

    def log_trial(self, result: TrialResult, done: int) -> None:
        if result.status == "completed":
            self.client.log_metric(self.run_id, "trial_psnr", result.psnr, step=result.index)
            self.client.log_metric(self.run_id, "trial_compression_ratio", result.compression_ratio, step=result.index)
        self.client.log_metric(self.run_id, "trials_done", done, step=result.index)

    def log_outputs(self, paths, front_size: int, completed: int, failed: int) -> None:
        self.client.log_metric(self.run_id, "pareto_front_size", front_size)
        self.client.log_metric(self.run_id, "trials_completed", completed)
        self.client.log_metric(self.run_id, "trials_failed", failed)
        for p in paths:
            if Path(p).is_file():
                self.client.log_artifact(self.run_id, str(p))

    def end(self, status: str) -> None:
        if self.run_id:
            self.client.set_terminated(self.run_id, status=status)


def start_tracking(base_cfg, state, space, out: Path, args) -> tuple[SearchTracking | None, list[str]]:
    """The parent run (resumed from ``search.json`` when it has one) and the trials' extra arguments
    that make them its child runs; (None, []) when the base config does not track with MLflow."""
    if "mlflow" not in base_cfg.trackers:
        return None, []
    saved = state.data.get("mlflow") or {}
    uri, experiment, artifact_location = mlflow_target(base_cfg.mlflow_tracking_uri, base_cfg.mlflow_experiment, out)
    uri, experiment = saved.get("tracking_uri") or uri, saved.get("experiment") or experiment
    tracking = SearchTracking(uri, experiment, artifact_location)
    run_id = tracking.start(saved.get("parent_run_id"), f"search_{out.name}", {
        "base_config": state.data["base_config"], "search_space": state.data["search_space_file"],
        "method": args.method, "seed": args.seed, "init_trials": args.init_trials,
        **{f"space.{p.name}": json.dumps(p.to_dict()) for p in space.parameters},
        **{f"fixed.{k}": v for k, v in space.fixed.items()}})
    tracking.client.set_tag(run_id, "trials_requested", args.trials)
    tracking.client.set_tag(run_id, "output_dir", str(out))
    state.data["mlflow"] = {"tracking_uri": uri, "experiment": experiment, "parent_run_id": run_id}
    return tracking, [f"--mlflow_tracking_uri={uri}", f"--mlflow_experiment={experiment}",
                      f"--mlflow_parent_run_id={run_id}"]
