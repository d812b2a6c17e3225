"""The main job: volume file + config -> trained network, metrics, volumes, tracking.

``train`` is a session (``training.session``: volume, device, tracker, checkpoints, signals,
outputs) running the phases the config asks for (``training.phases``).
"""

from __future__ import annotations

from neurcomp.config.options import NeurcompConfig
from neurcomp.training import bound_search, distributed, precision
from neurcomp.training.experiment_lock import locking
from neurcomp.training.phases import plan
from neurcomp.training.session import Session, resolve_device


@locking  # one run at a time per experiment folder (a second is refused in one line)
def train(cfg: NeurcompConfig, progress: bool = True, prune_residual_width: bool = False) -> dict:
    """Train a network as ``cfg`` says and write every output; returns the info dict.

    ``prune_residual_width`` (pruning runs, not a config option): gate the residual stream's width
    too (``model.pruning.PrunableNeurcomp``), as ``benchmarks/pruning_bench.py`` compares.
    """
    latent = cfg.network.network == "latent"
    if not latent:
        # under torchrun: join the process group (training.distributed); a single process: nothing
        distributed.init_from_env(resolve_device(cfg.device), cfg.scaling.dist_backend)
        precision.use_full_float32()  # no TF32: it caps a SIREN's PSNR (training.precision)
    search = fitted = None
    if bound_search.applies(cfg):  # a bound alone: the network size that makes the smallest file
        if cfg.resume:
            cfg = bound_search.resumed_ratio(cfg)
        elif latent:  # the winner's fit is the run's
            cfg, search, fitted = bound_search.choose_latent_ratio(cfg, progress)
        else:
            cfg, search = bound_search.choose_ratio(cfg, train, progress)
    if latent:  # its own fit and file (training.latent_run)
        from neurcomp.training.latent_run import train_latent

        return train_latent(cfg, progress, extra_info={"bound_search": search} if search is not None else None,
                            fitted=fitted)
    session = Session(cfg, progress)
    if search is not None:
        session.extra_info["bound_search"] = search
    result = session.run(plan(session, prune_residual_width))
    # under torchrun, ranks leave together: a rank that exits (tearing down its gloo threads) while
    # rank 0 still writes the outputs aborts with "terminate called without an active exception"
    distributed.barrier()
    return result
