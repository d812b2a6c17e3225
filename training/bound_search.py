"""An error bound alone (``max_abs_error`` / ``max_rel_error``, no ratio): train the network whose
file, network plus corrections, is the smallest.

SZ3, SPERR and ZFP users ask for a bound and get the smallest file that keeps it. Here the file is
T(c) = the network, c voxels per parameter, plus the corrections of the voxels it misses by more
than the bound (``quantization.bound``), which grow as the network shrinks. A short training per
candidate (``SEARCH_SHARE`` of the schedule, at least ``MIN_SEARCH_STEPS`` steps: a barely trained
small network misses far more voxels than it will) measures T on the ladder c = c0 x 2^k, c0 the
default ``compression_ratio`` (k = 0 is the network the user would get without the search),
walking downhill from k = 0 (``quantization.size_search``); each candidate's file takes the index
bits that make it smallest (``quantization.bounded.smallest_bounded``). The winner then trains
with the whole schedule and ``compression_ratio = c``, so its config.txt reproduces the run. The
candidates' sizes go to info.json (``bound_search``).

The search runs only where nothing else sizes the network: an explicit ``compression_ratio``,
``features_per_layer``, ``feature_list`` or ``target_file_ratio`` keeps its network (plus
corrections), and pruning runs keep theirs.

``network = latent`` (``training.latent_run``) is sized by its file, so its ladder is the latent
file's ``target_file_ratio`` r = LATENT_START x 2^k (``choose_latent_ratio``). Each candidate is a
whole fit (``latent_fit.fit``, in memory) encoded with the bound's corrections, and the winner's
fit is the run's: no second training. Short fits ranked the sizes wrongly: after 400 of 1500
steps a fit has not yet used its budget (nucleon at r = 200 and 1e-1: 1055 bytes, the whole fit
1423), so the search chose files up to 1.4x larger than a whole-fit search finds (bucky at 1e-2:
r = 200, 12,393 bytes, where r = 50 makes 9,045; docs/latent_grid.md, eighth round).
"""

from __future__ import annotations

import contextlib
import io
import shutil
from dataclasses import replace

from neurcomp.config.errors import ConfigError, InputError
from neurcomp.config.options import NeurcompConfig
from neurcomp.model.architecture import build_architecture
from neurcomp.quantization.size_search import downhill

SEARCH_SHARE = 0.25  # of the schedule (max_pass, pass_decay, min_steps): the candidates' short trainings
MIN_SEARCH_STEPS = 1000  # but no shorter than this, or than the whole run
RUNGS = (-3, 6)  # compression_ratio from c0 / 8 to 64 c0
LATENT_START = 100.0  # network = latent: target_file_ratio of rung 0
# one rung past a rise: Isabel at 1e-1 gave 4,539 / 4,706 bytes at r = 400 / 800 and stopped, where
# an earlier run of the same fits (summed in another order) had 4,473 / 4,342 and then 3,026 at 1600
LATENT_PATIENCE = 1
LATENT_RUNGS = (-2, 8)  # from 25 to 25,600: hydrogen at 1e-1 was still falling at 1600 (3,129 bytes, 800: 9,605)
SEARCH_FOLDER = "bound_search"  # inside the experiment folder, removed after each candidate


def applies(cfg: NeurcompConfig) -> bool:
    """A bound and nothing that sizes the network."""
    net = cfg.network
    if net.network == "latent":  # check_latent refuses Neurcomp's widths and pruning
        return cfg.error_bound is not None and cfg.target_file_ratio <= 0
    return (cfg.error_bound is not None and cfg.target_file_ratio <= 0 and not cfg.given("compression_ratio")
            and not net.feature_list and not net.features_per_layer and not cfg.pruning.enabled)


def size_key(cfg: NeurcompConfig) -> str:
    """The option the search sets: Neurcomp's compression_ratio or the latent file's target_file_ratio."""
    return "target_file_ratio" if cfg.network.network == "latent" else "compression_ratio"


def with_ratio(cfg: NeurcompConfig, ratio: float) -> NeurcompConfig:
    """``cfg`` with the size the search chose (``size_key``)."""
    origins = {**cfg.origins, size_key(cfg): "the bound's size search"}
    if size_key(cfg) == "target_file_ratio":
        return replace(cfg, target_file_ratio=ratio, origins=origins)
    return replace(cfg, network=replace(cfg.network, compression_ratio=ratio), origins=origins)


def schedule_share(cfg: NeurcompConfig, num_voxels: int) -> float:
    """The share of the run's schedule a candidate trains."""
    from neurcomp.training.recipe import schedule_steps

    steps = schedule_steps(cfg.optim, num_voxels)[0]
    return min(1.0, max(SEARCH_SHARE, MIN_SEARCH_STEPS / max(steps, 1)))


def candidate_config(cfg: NeurcompConfig, compression_ratio: float, share: float) -> NeurcompConfig:
    """A short (``share`` of the schedule), quiet, untracked training in the search folder."""
    o = cfg.optim
    optim = replace(o, max_pass=o.max_pass * share, pass_decay=o.pass_decay * share,
                    min_steps=max(1, int(round(o.min_steps * share))))
    return replace(with_ratio(cfg, compression_ratio), optim=optim, basedir=str(cfg.experiment_dir / SEARCH_FOLDER),
                   expname=f"ratio_{compression_ratio:g}", trackers=(), checkpoint_every=0, quiet=True, resume="",
                   tensorboard_dir="", mlflow_parent_run_id="")


def choose_ratio(cfg: NeurcompConfig, train, progress: bool = True) -> tuple[NeurcompConfig, dict]:
    """(cfg with the winning compression_ratio, the search's report); ``train`` trains one config."""
    from tqdm.auto import tqdm

    from neurcomp.training import distributed
    from neurcomp.training.session import load_training_volume

    if distributed.get_world_size() > 1:
        raise ConfigError(f"{cfg.source}: an error bound without a ratio searches the network size, which runs "
                          f"in one process: set compression_ratio or target_file_ratio under torchrun")
    num_voxels = load_training_volume(cfg).num_voxels
    share = schedule_share(cfg, num_voxels)
    mode, value = cfg.error_bound
    c0 = cfg.network.compression_ratio
    bar = tqdm(total=None, desc=f"bound search (max_{mode}_error {value:g})", unit="network",
               disable=not progress or cfg.quiet)
    candidates, sizes = [], {}  # sizes: network widths -> file bytes (ratios that clamp to one network)

    def total_bytes(rung: int) -> float | None:
        c = c0 * 2.0 ** rung
        bar.set_postfix(compression_ratio=f"{c:g}")
        candidate = candidate_config(cfg, c, share)
        quiet = contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO())
        try:
            with quiet[0], quiet[1]:  # the candidates' own report lines and width warnings
                widths = tuple(build_architecture(candidate.network, num_voxels, candidate.origin("compression_ratio")).widths)
                if widths in sizes:  # the same network as a rung already trained: the same file
                    candidates.append({"compression_ratio": c, "file_bytes": sizes[widths], "same_network_as_ratio":
                                       next(d["compression_ratio"] for d in candidates if d.get("widths") == list(widths))})
                    return sizes[widths]
                info = train(candidate, progress=False)
        except (ConfigError, InputError) as exc:  # a network that cannot be built or bounded at c
            candidates.append({"compression_ratio": c, "file_bytes": None, "why": str(exc)})
            return None
        finally:
            shutil.rmtree(cfg.experiment_dir / SEARCH_FOLDER, ignore_errors=True)
            bar.update(1)
        candidates.append({"compression_ratio": c, "widths": list(widths), "num_parameters": info["num_parameters"],
                           "file_bytes": info["file_bytes"], "bits": info.get("file_bits"),
                           "network_bytes": info.get("file_network_bytes"), "corrections": info.get("file_corrections")})
        bar.set_postfix(compression_ratio=f"{c:g}", kbytes=f"{info['file_bytes'] / 1000:.1f}")
        sizes[widths] = float(info["file_bytes"])
        return sizes[widths]

    best = walk(total_bytes, RUNGS, bar, cfg, candidates, "network size could be trained")
    c = c0 * 2.0 ** best
    report = {"chosen_compression_ratio": c, "search_share_of_schedule": share,
              "candidates": sorted(candidates, key=lambda d: d["compression_ratio"])}
    return with_ratio(cfg, c), report


def walk(total_bytes, rungs: tuple[int, int], bar, cfg: NeurcompConfig, candidates: list, what: str,
         patience: int = 0) -> int:
    """The best rung of ``downhill`` over ``rungs`` (closing the progress bar); a one-line error if
    no rung gave a file (the last candidate's reason)."""
    mode, value = cfg.error_bound
    try:
        return downhill(total_bytes, *rungs, patience=patience)[0]
    except ValueError:
        raise InputError(f"{cfg.source}: max_{mode}_error = {value:g}: no {what} and bounded "
                         f"({candidates[-1].get('why', '')})") from None
    finally:
        bar.close()


def choose_latent_ratio(cfg: NeurcompConfig, progress: bool = True,
                        fits: dict | None = None) -> tuple[NeurcompConfig, dict, tuple]:
    """network = latent: (cfg with the winning target_file_ratio, the search's report, the winner's
    fit (model, vmin, vmax, fit report), which ``latent_run.train_latent`` writes as the run).

    ``fits``: fits already made for this volume and these options, by target bytes, and filled with
    the new ones. The fit does not depend on the bound, so a caller that compresses one volume at
    several bounds (``benchmarks.error_bound_bench``) fits each size once; such candidates say
    ``"reused": true``."""
    import time

    import numpy as np
    from tqdm.auto import tqdm

    from neurcomp.data.atomic import check_output_folder
    from neurcomp.quantization.bounded import encode_latent_bounded
    from neurcomp.training.latent_fit import fit
    from neurcomp.training.latent_run import FLOAT32_BYTES, fit_options
    from neurcomp.training.recovery import TrainingDiverged
    from neurcomp.training.session import load_training_volume, resolve_device

    check_output_folder(cfg.experiment_dir, "basedir/expname")  # before the fits, not after
    volume = load_training_volume(cfg)
    values = np.asarray(volume.values)
    options = fit_options(cfg, resolve_device(cfg.device))
    mode, value = cfg.error_bound
    bar = tqdm(total=None, desc=f"bound search (max_{mode}_error {value:g})", unit="fit",
               disable=not progress or cfg.quiet)
    candidates, best = [], {}
    t0 = time.perf_counter()

    def fit_once(budget: int) -> tuple:
        """(the fit at ``budget`` bytes or the error it ended with, whether ``fits`` already held it)."""
        if fits is not None and budget in fits:
            return fits[budget], True
        try:
            fitted = fit(values, budget, options, progress=progress and not cfg.quiet)
        except (InputError, TrainingDiverged) as exc:  # a size that cannot be fitted is not tried again
            fitted = exc
        if fits is not None:
            fits[budget] = fitted
        return fitted, False

    def total_bytes(rung: int) -> float | None:
        r = LATENT_START * 2.0 ** rung
        bar.set_postfix(target_file_ratio=f"{r:g}")
        fitted, reused = fit_once(int(volume.num_voxels * FLOAT32_BYTES / r))
        entry = {"target_file_ratio": r, **({"reused": True} if reused else {})}
        try:
            if isinstance(fitted, Exception):
                raise fitted
            data, bound = encode_latent_bounded(*fitted[:3], values, mode, value, option=f"max_{mode}_error",
                                                verify=False)  # the run verifies the winner's file
        except (InputError, TrainingDiverged) as exc:  # a file too small for the network, or a collapsed fit
            candidates.append({**entry, "file_bytes": None, "why": str(exc)})
            return None
        finally:
            bar.update(1)
        candidates.append({**entry, "file_bytes": len(data), "network_bytes": bound["network_bytes"],
                           "corrections": bound["corrections"], "fit_seconds": fitted[3]["train_seconds"]})
        bar.set_postfix(target_file_ratio=f"{r:g}", kbytes=f"{len(data) / 1000:.1f}")
        if not best or len(data) < best["bytes"]:
            best.update(bytes=len(data), fitted=fitted)
        return float(len(data))

    rung = walk(total_bytes, LATENT_RUNGS, bar, cfg, candidates, "latent-grid file size could be fitted",
                patience=LATENT_PATIENCE)
    r = LATENT_START * 2.0 ** rung
    report = {"chosen_target_file_ratio": r, "network": "latent", "search_seconds": time.perf_counter() - t0,
              "candidates": sorted(candidates, key=lambda d: d["target_file_ratio"])}
    return with_ratio(cfg, r), report, best["fitted"]


def resumed_ratio(cfg: NeurcompConfig) -> NeurcompConfig:
    """A resumed bound-only run keeps the size its search chose (the checkpoint's config)."""
    import math

    from neurcomp.training.checkpoint import read_checkpoint

    saved = read_checkpoint(cfg.resume).get("config", {}) or {}
    c = saved.get(size_key(cfg))
    if isinstance(c, (int, float)) and math.isfinite(c) and c > 0:
        return with_ratio(cfg, float(c))
    return cfg
