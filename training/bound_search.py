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

``network = latent`` (``training.latent_run``) is sized by its file: its ladder is the
latent file's ``target_file_ratio`` r = LATENT_START x 2^k, each candidate a fit of
``latent_steps`` x SEARCH_SHARE steps (at least MIN_LATENT_SEARCH_STEPS), encoded with the
corrections of the bound. The latent file that is smallest with its corrections is often one the
bound alone would never suggest: on nucleon at 1e-2 of the range, the 200x file (11,502
corrections) makes a smaller total than the 50x one (14,410), which the fit cannot make closer.
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
LATENT_START = 200.0  # network = latent: target_file_ratio of rung 0 (the probe in docs/latent_grid.md, eighth round)
LATENT_RUNGS = (-3, 3)  # from 25 to 1600
MIN_LATENT_SEARCH_STEPS = 400  # a latent candidate's fit: its last fifth trains on rounded latents
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


def latent_search_steps(cfg: NeurcompConfig) -> int:
    steps = cfg.network.latent_steps
    return min(steps, max(MIN_LATENT_SEARCH_STEPS, int(round(steps * SEARCH_SHARE))))


def candidate_config(cfg: NeurcompConfig, ratio: float, share: float) -> NeurcompConfig:
    """A short (``share`` of the schedule), quiet, untracked training in the search folder."""
    sized = with_ratio(cfg, ratio)
    if size_key(cfg) == "target_file_ratio":
        sized = replace(sized, network=replace(sized.network, latent_steps=latent_search_steps(cfg)))
    else:
        o = cfg.optim
        sized = replace(sized, optim=replace(o, max_pass=o.max_pass * share, pass_decay=o.pass_decay * share,
                                             min_steps=max(1, int(round(o.min_steps * share)))))
    return replace(sized, basedir=str(cfg.experiment_dir / SEARCH_FOLDER), expname=f"ratio_{ratio:g}", trackers=(),
                   checkpoint_every=0, quiet=True, resume="", tensorboard_dir="", mlflow_parent_run_id="")


def choose_ratio(cfg: NeurcompConfig, train, progress: bool = True) -> tuple[NeurcompConfig, dict]:
    """(cfg with the winning compression_ratio, the search's report); ``train`` trains one config."""
    from tqdm.auto import tqdm

    from neurcomp.training import distributed
    from neurcomp.training.session import load_training_volume

    if distributed.get_world_size() > 1:
        raise ConfigError(f"{cfg.source}: an error bound without a ratio searches the network size, which runs "
                          f"in one process: set compression_ratio or target_file_ratio under torchrun")
    num_voxels = load_training_volume(cfg).num_voxels
    latent = size_key(cfg) == "target_file_ratio"
    key = size_key(cfg)
    share = schedule_share(cfg, num_voxels) if not latent else latent_search_steps(cfg) / cfg.network.latent_steps
    mode, value = cfg.error_bound
    c0, rungs = (LATENT_START, LATENT_RUNGS) if latent else (cfg.network.compression_ratio, RUNGS)
    bar = tqdm(total=None, desc=f"bound search (max_{mode}_error {value:g})", unit="network",
               disable=not progress or cfg.quiet)
    candidates, sizes = [], {}  # sizes: network widths -> file bytes (ratios that clamp to one network)

    def total_bytes(rung: int) -> float | None:
        c = c0 * 2.0 ** rung
        bar.set_postfix({key: f"{c:g}"})
        candidate = candidate_config(cfg, c, share)
        quiet = contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO())
        widths = None
        try:
            with quiet[0], quiet[1]:  # the candidates' own report lines and width warnings
                if not latent:  # the latent grid is sized by its fit, not by a width rule
                    widths = tuple(build_architecture(candidate.network, num_voxels,
                                                      candidate.origin("compression_ratio")).widths)
                if widths in sizes:  # the same network as a rung already trained: the same file
                    candidates.append({key: c, "file_bytes": sizes[widths], "same_network_as_ratio":
                                       next(d[key] for d in candidates if d.get("widths") == list(widths))})
                    return sizes[widths]
                info = train(candidate, progress=False)
        except (ConfigError, InputError) as exc:  # a network that cannot be built or bounded at c
            candidates.append({key: c, "file_bytes": None, "why": str(exc)})
            return None
        finally:
            shutil.rmtree(cfg.experiment_dir / SEARCH_FOLDER, ignore_errors=True)
            bar.update(1)
        candidates.append({key: c, **({"widths": list(widths)} if widths else {}),
                           "num_parameters": info["num_parameters"], "file_bytes": info["file_bytes"],
                           "bits": info.get("file_bits"),
                           "network_bytes": info.get("file_network_bytes", info.get("network_bytes")),
                           "corrections": info.get("file_corrections", info.get("corrections"))})
        bar.set_postfix({key: f"{c:g}", "kbytes": f"{info['file_bytes'] / 1000:.1f}"})
        if widths is None:
            return float(info["file_bytes"])
        sizes[widths] = float(info["file_bytes"])
        return sizes[widths]

    try:
        best, _ = downhill(total_bytes, *rungs)
    except ValueError:
        raise InputError(f"{cfg.source}: max_{mode}_error = {value:g}: no network size could be trained and "
                         f"bounded ({candidates[-1].get('why', '')})") from None
    finally:
        bar.close()
    c = c0 * 2.0 ** best
    report = {f"chosen_{key}": c, "search_share_of_schedule": share, "network": cfg.network.network,
              "candidates": sorted(candidates, key=lambda d: d[key])}
    return with_ratio(cfg, c), report


def resumed_ratio(cfg: NeurcompConfig) -> NeurcompConfig:
    """A resumed bound-only run keeps the size its search chose (the checkpoint's config; an
    interrupted latent-grid run saves it too)."""
    import math

    from neurcomp.training.checkpoint import read_checkpoint

    saved = read_checkpoint(cfg.resume).get("config", {}) or {}
    c = saved.get(size_key(cfg))
    if isinstance(c, (int, float)) and math.isfinite(c) and c > 0:
        return with_ratio(cfg, float(c))
    return cfg
