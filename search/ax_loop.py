"""The Ax lifecycle and the search loop: Ax suggests trial settings, the runner trains them.

A new search configures Ax's client (objectives, thresholds, generation strategy); a resumed one is
loaded from its snapshot after checking it is the same search. Trials Ax still calls RUNNING (a
stopped search) are settled from their records or run again.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

from neurcomp.config.errors import ConfigError, NeurcompError
from neurcomp.search.reports import write_outputs
from neurcomp.search.runner import TrialResult, TrialRunner, sharing_note, visible_gpus
from neurcomp.search.space import SearchSpace, check_against_config, format_value, load_search_space
from neurcomp.search.state import AX_STATE, SEARCH_STATE, SearchState, save, sha256
from neurcomp.search.tracking import start_tracking

OBJECTIVES = ("psnr", "compression_ratio")
INSTALL_HINT = "pip install -r requirements-search.txt"


class SearchError(NeurcompError):
    """The search could not go on (Ax missing, no trial could be generated, every trial failed)."""

    exit_code = 1


def import_ax(verbose: bool = False):
    if not verbose:  # Ax announces its SQL storage at import time, before its log level can be set
        logging.getLogger("ax.storage.sqa_store.with_db_settings_base").addFilter(
            lambda record: record.levelno >= logging.WARNING)
    try:
        from ax.api.client import Client
    except ImportError as exc:
        raise SearchError(f"the search needs Ax (ax-platform), which is not installed ({exc}): "
                          f"{INSTALL_HINT}") from None
    return Client


def quiet_ax(verbose: bool) -> None:
    if verbose:
        return
    import warnings

    warnings.filterwarnings("ignore", module=r"(ax|botorch|gpytorch|linear_operator)(\.|$)")
    try:
        from ax.utils.common.logger import ROOT_STREAM_HANDLER

        ROOT_STREAM_HANDLER.setLevel(logging.WARNING)
    except ImportError:
        logging.getLogger("ax").setLevel(logging.WARNING)


def objective_constraints(args) -> list[str]:
    out = []
    if args.min_psnr is not None:
        out.append(f"psnr >= {args.min_psnr!r}")
    if args.min_ratio is not None:
        out.append(f"compression_ratio >= {args.min_ratio!r}")
    return out


def new_search(Client, args, space: SearchSpace, out: Path):
    client = Client(random_seed=args.seed)
    client.configure_experiment(parameters=space.ax_parameters(), name=f"neurcomp_search_{out.name}",
                                description=space.description or None)
    client.configure_optimization(objective=", ".join(OBJECTIVES), outcome_constraints=objective_constraints(args))
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
        "base_config_sha256": sha256(args.config),
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


def resume_search(Client, args, space: SearchSpace, out: Path):
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
    if data.get("base_config_sha256") != sha256(args.config):
        raise ConfigError(f"{out} holds a search from another base config (or {args.config} changed since: "
                          f"was {data.get('base_config')}); use a new --output_dir")
    if data.get("method") != args.method:
        raise ConfigError(f"{out} holds a --method {data.get('method')} search; resume it with that method")
    try:
        client = Client.load_from_json_file(str(out / AX_STATE))
    except Exception as exc:  # noqa: BLE001 - a corrupt or foreign file
        raise ConfigError(f"{out / AX_STATE}: cannot be loaded by Ax ({type(exc).__name__}: {exc})") from None
    # Thresholds may change between runs: they only shape the front and the Bayesian phase.
    client.configure_optimization(objective=", ".join(OBJECTIVES), outcome_constraints=objective_constraints(args))
    return client, state


def tell_ax(client, result: TrialResult) -> None:
    if result.status == "completed":
        client.complete_trial(result.index, raw_data={"psnr": result.psnr,
                                                      "compression_ratio": result.compression_ratio})
    else:
        client.mark_trial_failed(result.index, failed_reason=result.error or "failed")


def trial_statuses(client) -> dict[int, str]:
    return {i: t.status.name for i, t in client._experiment.trials.items()}



def describe(result: TrialResult) -> str:
    params = ", ".join(f"{k}={format_value(v) if not isinstance(v, float) else f'{v:.4g}'}"
                       for k, v in result.parameters.items())
    if result.status == "completed":
        return (f"trial {result.index}: PSNR {result.psnr:.2f} dB, ratio {result.compression_ratio:.1f} "
                f"({params})")
    return f"trial {result.index} failed: {result.error} ({params}; log: {Path(result.folder) / 'train.log'})"


def run_search(args, buckets: list[float]) -> dict:
    """The search ``args`` (checked by ``search.cli``) ask for; resumes one found in ``--output_dir``."""
    from neurcomp.config.options import parse_config

    space = load_search_space(args.search_space)
    check_against_config(space, args.config)
    base_cfg = parse_config(["--config", args.config])
    Client = import_ax(args.verbose)
    quiet_ax(args.verbose)
    out = Path(args.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)

    resumed = (out / AX_STATE).is_file()
    if resumed:
        client, state = resume_search(Client, args, space, out)
    else:
        client, state = new_search(Client, args, space, out)

    tracking, extra = start_tracking(base_cfg, state, space, out, args)
    save(client, state, out)

    runner = TrialRunner(state.data["base_config"], out / "trials", fixed=space.fixed, extra_args=extra,
                         parallel=args.parallel, gpus=visible_gpus(base_cfg.device), timeout_s=args.trial_timeout,
                         cwd=state.data.get("cwd"))
    note = sharing_note(runner.parallel, runner.gpus)
    if note:
        print(note, file=sys.stderr)

    # Settle trials a stopped search left RUNNING: recorded ones are told to Ax, the others run again.
    records = state.records
    pending: list[int] = []
    for i, status in sorted(trial_statuses(client).items()):
        if status != "RUNNING":
            continue
        if i in records:
            tell_ax(client, TrialResult(**records[i]))
        else:
            pending.append(i)
    save(client, state, out)
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
                save(client, state, out)
                for i, params in sorted(new.items()):
                    runner.start(i, space.cast(params))
            if not runner.running:
                break
            for result in runner.wait_any():
                tell_ax(client, result)
                state.record(result)
                save(client, state, out)
                done += 1
                bar.write(describe(result))
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
            save(client, state, out)
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


