"""The command line of the search (NeurcompSearch.py): arguments, their checks, and the run.

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

The loop and Ax's lifecycle are in ``search.ax_loop``, the saved state in ``search.state``, the
MLflow parent run in ``search.tracking`` and the outputs in ``search.reports``.
"""

from __future__ import annotations

import argparse
import math
import signal
from pathlib import Path

from neurcomp.config.errors import ConfigError
from neurcomp.search.ax_loop import run_search

DEFAULT_BUCKETS = (10, 20, 50, 100, 200, 500, 1000)


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


def check_args(args) -> list[float]:
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


def main(argv=None) -> None:
    args = build_search_parser().parse_args(argv)
    buckets = check_args(args)

    def _term(signum, frame):  # a stop by SIGTERM saves the state like Ctrl-C
        raise KeyboardInterrupt

    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, _term)
    except ValueError:  # not the main thread
        pass
    try:
        run_search(args, buckets)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
