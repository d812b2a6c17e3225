"""The search loop: Ax suggests trial settings, the runner trains them, outputs follow every trial.

``python NeurcompSearch.py --config <base config> --search_space <file> --trials N --output_dir <dir>``

The objectives are PSNR and compression ratio, both maximised; ``--min_psnr`` and ``--min_ratio``
become Ax objective thresholds (the original search used 30 dB and 100). The generation strategy is
Ax's default: quasi-random Sobol trials first, then Bayesian optimisation (Ax's multi-objective
default acquisition, qLogNEHVI); ``--method random`` keeps to Sobol. The Ax state and the trial
records are saved after every trial, so running the same command again resumes the search.

Output in ``--output_dir``: ``ax_state.json`` (Ax's own snapshot), ``search.json`` (trial records),
``trials.csv``, ``pareto.json``, ``pareto.png``, ``best_configs/ratio_<X>.txt`` (the best PSNR
with a compression ratio of at least X, as a config file NeurcompTraining.py runs as it is) and
``trials/trial_<n>/`` (each trial's experiment folder and ``train.log``).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import math
import os
import signal
import sys
from pathlib import Path

from config.errors import ConfigError, NeurcompError
from search.runner import TrialResult, TrialRunner, sharing_note, visible_gpus
from search.space import SearchSpace, check_against_config, format_value, load_search_space, overrides

AX_STATE = "ax_state.json"
SEARCH_STATE = "search.json"
OBJECTIVES = ("psnr", "compression_ratio")
DEFAULT_BUCKETS = (10, 20, 50, 100, 200, 500, 1000)
INSTALL_HINT = "pip install -r requirements-search.txt"


class SearchError(NeurcompError):
    """The search could not go on (Ax missing, no trial could be generated, every trial failed)."""

    exit_code = 1


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise ConfigError(f"command line: {message}")


def build_search_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="NeurcompSearch.py", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                description="Multi-objective hyperparameter search (PSNR and compression ratio) with Ax.")
    p.add_argument("--config", required=True, help="base training config; every trial starts from it")
    p.add_argument("--search_space", required=True, help="search-space JSON file (see search/space.py)")
    p.add_argument("--trials", type=int, default=20, help="total number of trials (completed and failed) in the search")
    p.add_argument("--output_dir", required=True, help="search folder; an existing search there is resumed")
    p.add_argument("--parallel", type=int, default=1, help="trials trained at once (one GPU each when several exist; more trials than GPUs share them)")
    p.add_argument("--min_ratio", type=float, default=None, help="objective threshold: compression ratio >= this")
    p.add_argument("--min_psnr", type=float, default=None, help="objective threshold: PSNR >= this (dB)")
    p.add_argument("--method", choices=["bayesian", "random"], default="bayesian",
                   help="bayesian: Sobol start then Ax's Bayesian optimisation; random: quasi-random Sobol only")
    p.add_argument("--init_trials", type=int, default=None,
                   help="quasi-random trials before the Bayesian phase (None: Ax's default, 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of Ax's quasi-random and Bayesian generation")
    p.add_argument("--trial_timeout", type=float, default=0, help="fail a trial after this many seconds (0: no limit)")
    p.add_argument("--ratio_buckets", default=",".join(map(str, DEFAULT_BUCKETS)),
                   help="write best_configs/ratio_<X>.txt: the best PSNR at a ratio of at least X, for each X")
    p.add_argument("--verbose", action="store_true", help="show Ax's log messages")
    return p


def _check_args(args) -> list[float]:
    if args.trials < 1:
        raise ConfigError(f"command line: --trials {args.trials} is invalid: must be >= 1")
    if args.parallel < 1:
        raise ConfigError(f"command line: --parallel {args.parallel} is invalid: must be >= 1")
    if args.init_trials is not None and args.init_trials < 1:
        raise ConfigError(f"command line: --init_trials {args.init_trials} is invalid: must be >= 1")
    if args.trial_timeout < 0:
        raise ConfigError(f"command line: --trial_timeout {args.trial_timeout} is invalid: must be >= 0")
    if args.min_ratio is not None and args.min_ratio <= 0:
        raise ConfigError(f"command line: --min_ratio {args.min_ratio} is invalid: must be > 0")
    try:
        buckets = sorted({float(b) for b in args.ratio_buckets.split(",") if b.strip()})
    except ValueError:
        raise ConfigError(f"command line: --ratio_buckets {args.ratio_buckets!r} is invalid: "
                          f"expected comma-separated numbers") from None
    if any(not (b > 0 and math.isfinite(b)) for b in buckets):
        raise ConfigError(f"command line: --ratio_buckets {args.ratio_buckets!r} is invalid: numbers must be > 0")
    if args.min_ratio is not None and args.min_ratio not in buckets:
        buckets = sorted(buckets + [args.min_ratio])
    if Path(args.output_dir).exists() and not Path(args.output_dir).is_dir():
        raise ConfigError(f"command line: --output_dir {args.output_dir} exists and is not a folder")
    return buckets


def _import_ax(verbose: bool = False):
    if not verbose:  # Ax announces its SQL storage at import time, before its log level can be set
        logging.getLogger("ax.storage.sqa_store.with_db_settings_base").addFilter(
            lambda record: record.levelno >= logging.WARNING)
    try:
        from ax.api.client import Client
    except ImportError as exc:
        raise SearchError(f"the search needs Ax (ax-platform), which is not installed ({exc}): "
                          f"{INSTALL_HINT}") from None
    return Client


def _quiet_ax(verbose: bool) -> None:
    if verbose:
        return
    import warnings

    warnings.filterwarnings("ignore", module=r"(ax|botorch|gpytorch|linear_operator)(\.|$)")
    try:
        from ax.utils.common.logger import ROOT_STREAM_HANDLER

        ROOT_STREAM_HANDLER.setLevel(logging.WARNING)
    except ImportError:
        logging.getLogger("ax").setLevel(logging.WARNING)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _objective_constraints(args) -> list[str]:
    out = []
    if args.min_psnr is not None:
        out.append(f"psnr >= {args.min_psnr!r}")
    if args.min_ratio is not None:
        out.append(f"compression_ratio >= {args.min_ratio!r}")
    return out


# ---------------------------------------------------------------- MLflow parent run

class SearchTracking:
    """The search's own MLflow run; every trial is logged as its child run."""

    def __init__(self, tracking_uri: str, experiment: str, artifact_dir: Path | None):
        import mlflow
        from mlflow import MlflowClient

        logging.getLogger("mlflow").setLevel(logging.WARNING)
        self.uri = tracking_uri
        self.experiment = experiment
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self._mlflow = mlflow
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            self.experiment_id = self.client.create_experiment(
                experiment, artifact_location=artifact_dir.resolve().as_uri() if artifact_dir else None)
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


# ---------------------------------------------------------------- state

class SearchState:
    """search.json: what the search was started with, and one record per finished trial."""

    def __init__(self, path: Path, data: dict):
        self.path = path
        self.data = data

    @property
    def records(self) -> dict[int, dict]:
        return {int(k): v for k, v in self.data.setdefault("trials", {}).items()}

    def record(self, result: TrialResult) -> None:
        self.data.setdefault("trials", {})[str(result.index)] = result.to_dict()

    def save(self) -> None:
        _atomic_write(self.path, json.dumps(self.data, indent=2, default=str) + "\n")


def _save_ax(client, out: Path) -> None:
    tmp = out / (AX_STATE + ".tmp")
    client.save_to_json_file(str(tmp))
    os.replace(tmp, out / AX_STATE)


def _save(client, state: SearchState, out: Path) -> None:
    # Records first: a trial that Ax still calls RUNNING but has a record is settled from it on resume.
    state.save()
    _save_ax(client, out)


def _new_search(Client, args, space: SearchSpace, out: Path):
    client = Client(random_seed=args.seed)
    client.configure_experiment(parameters=space.ax_parameters(), name=f"neurcomp_search_{out.name}",
                                description=space.description or None)
    client.configure_optimization(objective=", ".join(OBJECTIVES), outcome_constraints=_objective_constraints(args))
    if args.method == "random":
        client.configure_generation_strategy(method="random_search", initialization_random_seed=args.seed,
                                             initialize_with_center=False)
    else:
        client.configure_generation_strategy(method="fast", initialization_budget=args.init_trials,
                                             initialization_random_seed=args.seed,
                                             allow_exceeding_initialization_budget=True)
    state = SearchState(out / SEARCH_STATE, {
        "version": 1,
        "base_config": str(Path(args.config).resolve()),
        "base_config_sha256": _sha256(args.config),
        "search_space_file": str(Path(args.search_space).resolve()),
        "search_space": json.loads(json.dumps(space.to_dict())),
        "method": args.method,
        "init_trials": args.init_trials,
        "seed": args.seed,
        "cwd": os.getcwd(),
        "mlflow": None,
        "trials": {},
    })
    return client, state


def _resume_search(Client, args, space: SearchSpace, out: Path):
    if not (out / SEARCH_STATE).is_file():
        raise ConfigError(f"{out}: has {AX_STATE} but no {SEARCH_STATE}; use a new --output_dir")
    try:
        data = json.loads((out / SEARCH_STATE).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{out / SEARCH_STATE}: unreadable ({exc}); use a new --output_dir") from None
    state = SearchState(out / SEARCH_STATE, data)
    if data.get("search_space") != json.loads(json.dumps(space.to_dict())):
        raise ConfigError(f"{out} holds a search over another space ({data.get('search_space_file')}); "
                          f"resume with that space or use a new --output_dir")
    if data.get("base_config_sha256") != _sha256(args.config):
        raise ConfigError(f"{out} holds a search from another base config (or {args.config} changed since: "
                          f"was {data.get('base_config')}); use a new --output_dir")
    if data.get("method") != args.method:
        raise ConfigError(f"{out} holds a --method {data.get('method')} search; resume it with that method")
    try:
        client = Client.load_from_json_file(str(out / AX_STATE))
    except Exception as exc:  # noqa: BLE001 - a corrupt or foreign file
        raise ConfigError(f"{out / AX_STATE}: cannot be loaded by Ax ({type(exc).__name__}: {exc})") from None
    # Thresholds may change between runs: they only shape the front and the Bayesian phase.
    client.configure_optimization(objective=", ".join(OBJECTIVES), outcome_constraints=_objective_constraints(args))
    return client, state


def _tell_ax(client, result: TrialResult) -> None:
    if result.status == "completed":
        client.complete_trial(result.index, raw_data={"psnr": result.psnr,
                                                      "compression_ratio": result.compression_ratio})
    else:
        client.mark_trial_failed(result.index, failed_reason=result.error or "failed")


def _trial_statuses(client) -> dict[int, str]:
    return {i: t.status.name for i, t in client._experiment.trials.items()}


# ---------------------------------------------------------------- outputs

def pareto_front(records: dict[int, dict], thresholds: dict) -> list[int]:
    """Trial indices on the observed Pareto front, by increasing ratio.

    Completed trials meeting the thresholds that no other such trial beats in both PSNR and ratio.
    (Ax's ``get_pareto_frontier`` fits a model even for observed values, and without thresholds it
    infers some from that model, which can drop real front points; this is the plain definition.)
    """
    ok = {i: r for i, r in records.items() if r["status"] == "completed"
          and r["psnr"] >= thresholds.get("psnr", -math.inf)
          and r["compression_ratio"] >= thresholds.get("compression_ratio", -math.inf)}

    def dominated(i):
        a = ok[i]
        return any(b["psnr"] >= a["psnr"] and b["compression_ratio"] >= a["compression_ratio"]
                   and (b["psnr"] > a["psnr"] or b["compression_ratio"] > a["compression_ratio"])
                   for j, b in ok.items() if j != i)

    return sorted((i for i in ok if not dominated(i)), key=lambda i: (ok[i]["compression_ratio"], i))


def write_trials_csv(path: Path, records: dict[int, dict], space: SearchSpace, front: list[int], nodes: dict) -> None:
    names = [p.name for p in space.parameters]
    cols = ["trial", "status", "psnr", "compression_ratio", "num_parameters", "network_layer_sizes", "on_front",
            *names, "generation_node", "seconds", "device", "folder", "error"]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for i in sorted(records):
            r = records[i]
            sizes = r.get("network_layer_sizes")
            w.writerow([i, r["status"], r.get("psnr"), r.get("compression_ratio"), r.get("num_parameters"),
                        " ".join(map(str, sizes)) if sizes else "", i in front,
                        *[r["parameters"].get(n) for n in names], nodes.get(i, ""), r.get("seconds"),
                        r.get("device", ""), r.get("folder"), r.get("error", "")])
    os.replace(tmp, path)


def write_pareto_png(path: Path, records: dict[int, dict], front: list[int], thresholds: dict, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    completed = {i: r for i, r in records.items() if r["status"] == "completed"}
    fig = Figure(figsize=(7, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    others = [r for i, r in completed.items() if i not in front]
    ax.scatter([r["compression_ratio"] for r in others], [r["psnr"] for r in others], c="0.6", s=25,
               label="trial", zorder=2)
    if front:
        fr = [completed[i] for i in front]
        ax.plot([r["compression_ratio"] for r in fr], [r["psnr"] for r in fr], "-", c="tab:red", lw=1, zorder=3)
        ax.scatter([r["compression_ratio"] for r in fr], [r["psnr"] for r in fr], c="tab:red", s=45,
                   edgecolors="k", label="Pareto front", zorder=4)
        for i in front:
            ax.annotate(str(i), (completed[i]["compression_ratio"], completed[i]["psnr"]),
                        textcoords="offset points", xytext=(4, 4), fontsize=8)
    if "compression_ratio" in thresholds:
        ax.axvline(thresholds["compression_ratio"], ls="--", c="tab:blue", lw=1, label="ratio threshold")
    if "psnr" in thresholds:
        ax.axhline(thresholds["psnr"], ls="--", c="tab:green", lw=1, label="PSNR threshold")
    ratios = [r["compression_ratio"] for r in completed.values()]
    if ratios and min(ratios) > 0:
        from matplotlib.ticker import FuncFormatter, NullFormatter

        ax.set_xscale("log")
        plain = FuncFormatter(lambda v, _: f"{v:g}")
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(plain if max(ratios) < 10 * min(ratios) else NullFormatter())
    ax.set_xlabel("compression ratio (voxels / parameters)")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    if completed:
        ax.legend(fontsize=8)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp)
    os.replace(tmp, path)


def best_config_text(base_config: str, fixed: dict, parameters: dict, expname: str, header: str) -> str:
    """A complete config file: the base config with the trial's settings, for NeurcompTraining.py."""
    from config.options import build_parser, config_from_namespace, format_config_file, parse_namespace

    cfg = config_from_namespace(parse_namespace(build_parser(), ["--config", base_config, *overrides(fixed),
                                                                 *overrides(parameters)]))
    raw = cfg.flat()
    raw["expname"] = expname
    return header + format_config_file(raw)


def write_best_configs(folder: Path, records: dict[int, dict], buckets: list[float], thresholds: dict,
                       base_config: str, fixed: dict) -> dict:
    """best_configs/ratio_<X>.txt for each bucket X that some completed trial reaches."""
    folder.mkdir(exist_ok=True)
    for old in folder.glob("ratio_*.txt"):
        old.unlink()
    completed = [r for r in records.values() if r["status"] == "completed"
                 and r["psnr"] >= thresholds.get("psnr", -math.inf)]
    written = {}
    for x in buckets:
        fits = [r for r in completed if r["compression_ratio"] >= x]
        if not fits:
            continue
        best = max(fits, key=lambda r: (r["psnr"], r["compression_ratio"]))
        tag = f"{x:g}"
        path = folder / f"ratio_{tag}.txt"
        header = (f"# best PSNR at compression ratio >= {tag} in this search: trial {best['index']}, "
                  f"PSNR {best['psnr']:.3f} dB, ratio {best['compression_ratio']:.2f}\n"
                  f"# settings: {json.dumps({**fixed, **best['parameters']})}\n")
        _atomic_write(path, best_config_text(base_config, fixed, best["parameters"], f"best_ratio_{tag}", header))
        written[tag] = {"trial": best["index"], "file": str(path.relative_to(folder.parent)),
                        "psnr": best["psnr"], "compression_ratio": best["compression_ratio"]}
    return written


def write_outputs(client, state: SearchState, space: SearchSpace, out: Path, args,
                  buckets) -> tuple[list[int], list[Path]]:
    records = state.records
    thresholds = {}
    if args.min_psnr is not None:
        thresholds["psnr"] = args.min_psnr
    if args.min_ratio is not None:
        thresholds["compression_ratio"] = args.min_ratio
    front = pareto_front(records, thresholds)
    try:
        df = client.summarize()
        nodes = {int(t): str(n) for t, n in zip(df["trial_index"], df["generation_node"])}
    except Exception:  # noqa: BLE001 - the column is a convenience
        nodes = {}
    write_trials_csv(out / "trials.csv", records, space, front, nodes)
    best = write_best_configs(out / "best_configs", records, buckets, thresholds, state.data["base_config"],
                              space.fixed)
    completed = sum(r["status"] == "completed" for r in records.values())
    failed = sum(r["status"] == "failed" for r in records.values())
    pareto = {
        "objectives": {"psnr": "maximize", "compression_ratio": "maximize"},
        "thresholds": thresholds,
        "base_config": state.data["base_config"],
        "search_space": state.data["search_space_file"],
        "fixed": space.fixed,
        "trials_completed": completed,
        "trials_failed": failed,
        "front": [{"trial": i, "psnr": records[i]["psnr"], "compression_ratio": records[i]["compression_ratio"],
                   "num_parameters": records[i].get("num_parameters"),
                   "network_layer_sizes": records[i].get("network_layer_sizes"),
                   "parameters": records[i]["parameters"], "folder": records[i]["folder"]} for i in front],
        "best_configs": best,
    }
    _atomic_write(out / "pareto.json", json.dumps(pareto, indent=2, default=str) + "\n")
    write_pareto_png(out / "pareto.png", records, front, thresholds,
                     f"{out.name}: {completed} trials, {len(front)} on the Pareto front"
                     + (f", {failed} failed" if failed else ""))
    return front, [out / "trials.csv", out / "pareto.json", out / "pareto.png"]


# ---------------------------------------------------------------- the loop

def _describe(result: TrialResult) -> str:
    params = ", ".join(f"{k}={format_value(v) if not isinstance(v, float) else f'{v:.4g}'}"
                       for k, v in result.parameters.items())
    if result.status == "completed":
        return (f"trial {result.index}: PSNR {result.psnr:.2f} dB, ratio {result.compression_ratio:.1f} "
                f"({params})")
    return f"trial {result.index} failed: {result.error} ({params}; log: {Path(result.folder) / 'train.log'})"


def run_search(args) -> dict:
    buckets = _check_args(args)
    from config.options import parse_config

    space = load_search_space(args.search_space)
    check_against_config(space, args.config)
    base_cfg = parse_config(["--config", args.config])
    Client = _import_ax(args.verbose)
    _quiet_ax(args.verbose)
    out = Path(args.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)

    resumed = (out / AX_STATE).is_file()
    if resumed:
        client, state = _resume_search(Client, args, space, out)
    else:
        client, state = _new_search(Client, args, space, out)

    tracking = None
    extra = []
    if "mlflow" in base_cfg.trackers:
        saved = state.data.get("mlflow") or {}
        uri = saved.get("tracking_uri") or base_cfg.mlflow_tracking_uri or ("sqlite:///" + str(out / "mlflow.db"))
        tracking = SearchTracking(uri, base_cfg.mlflow_experiment,
                                  out / "mlartifacts" if not base_cfg.mlflow_tracking_uri else None)
        run_id = tracking.start(saved.get("parent_run_id"), f"search_{out.name}", {
            "base_config": state.data["base_config"], "search_space": state.data["search_space_file"],
            "method": args.method, "seed": args.seed, "init_trials": args.init_trials,
            **{f"space.{p.name}": json.dumps(p.to_dict()) for p in space.parameters},
            **{f"fixed.{k}": v for k, v in space.fixed.items()}})
        tracking.client.set_tag(run_id, "trials_requested", args.trials)
        tracking.client.set_tag(run_id, "output_dir", str(out))
        state.data["mlflow"] = {"tracking_uri": uri, "experiment": base_cfg.mlflow_experiment, "parent_run_id": run_id}
        extra = [f"--mlflow_tracking_uri={uri}", f"--mlflow_experiment={base_cfg.mlflow_experiment}",
                 f"--mlflow_parent_run_id={run_id}"]
    _save(client, state, out)

    runner = TrialRunner(state.data["base_config"], out / "trials", fixed=space.fixed, extra_args=extra,
                         parallel=args.parallel, gpus=visible_gpus(base_cfg.device), timeout_s=args.trial_timeout,
                         cwd=state.data.get("cwd"))
    note = sharing_note(runner.parallel, runner.gpus)
    if note:
        print(note, file=sys.stderr)

    # Settle trials a stopped search left RUNNING: recorded ones are told to Ax, the others run again.
    records = state.records
    pending: list[int] = []
    for i, status in sorted(_trial_statuses(client).items()):
        if status != "RUNNING":
            continue
        if i in records:
            _tell_ax(client, TrialResult(**records[i]))
        else:
            pending.append(i)
    _save(client, state, out)
    done = len(state.records)
    if resumed:
        again = f", {len(pending)} to run again" if pending else ""
        print(f"resuming the search in {out}: {done} trials done{again}", file=sys.stderr)

    from tqdm import tqdm

    bar = tqdm(total=max(args.trials, done), initial=done, desc="search", unit="trial", dynamic_ncols=True)
    front: list[int] = []
    paths: list[Path] = []
    status = "FAILED"
    try:
        while True:
            while runner.free_slots > 0 and done + len(runner.running) < args.trials:
                if pending:
                    i = pending.pop(0)
                    runner.start(i, space.cast(client._experiment.trials[i].arm.parameters))
                    continue
                want = min(runner.free_slots, args.trials - done - len(runner.running))
                try:
                    new = client.get_next_trials(max_trials=want)
                except Exception as exc:  # noqa: BLE001 - Ax raises many kinds when it cannot suggest
                    if runner.running:
                        break  # more data may let it go on
                    raise SearchError(f"Ax could not suggest another trial ({type(exc).__name__}: {exc}); "
                                      f"is the search space exhausted?") from None
                if not new:
                    if runner.running:
                        break
                    raise SearchError("Ax suggested no further trial; is the search space exhausted?")
                _save(client, state, out)
                for i, params in sorted(new.items()):
                    runner.start(i, space.cast(params))
            if not runner.running:
                break
            for result in runner.wait_any():
                _tell_ax(client, result)
                state.record(result)
                _save(client, state, out)
                done += 1
                bar.write(_describe(result))
                bar.update(1)
                front, paths = write_outputs(client, state, space, out, args, buckets)
                bar.set_postfix(front=len(front))
                if tracking:
                    tracking.log_trial(result, done)
        front, paths = write_outputs(client, state, space, out, args, buckets)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        print(f"\nsearch stopped; run the same command again to resume it (state in {out / AX_STATE})",
              file=sys.stderr)
        raise
    finally:
        bar.close()
        if runner.running:  # stopped or crashed: interrupted trials stay RUNNING in Ax and run again on resume
            runner.stop_all()
            _save(client, state, out)
        if tracking:
            records = state.records
            failed = sum(r["status"] == "failed" for r in records.values())
            if status == "FINISHED" and records and failed == len(records):
                status = "FAILED"
            tracking.log_outputs(paths, len(front), len(records) - failed, failed)
            tracking.end(status)

    records = state.records
    completed = [r for r in records.values() if r["status"] == "completed"]
    print(f"search: {len(completed)} of {len(records)} trials completed, {len(front)} on the Pareto front; "
          f"outputs in {out} (trials.csv, pareto.json, pareto.png, best_configs/)")
    if records and not completed:
        raise SearchError(f"all {len(records)} trials failed; see trials.csv and the trials' train.log files in {out}")
    return {"output_dir": str(out), "front": front, "records": records}


def main(argv=None) -> None:
    args = build_search_parser().parse_args(argv)

    def _term(signum, frame):  # a stop by SIGTERM saves the state like Ctrl-C
        raise KeyboardInterrupt

    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, _term)
    except ValueError:  # not the main thread
        pass
    try:
        run_search(args)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
