"""Checks that need more than one option: where outputs go, and whether a run can fit in memory."""

from __future__ import annotations

import os
from pathlib import Path

from neurcomp.config.errors import ConfigError

BYTES = 4  # float32 everywhere in training
ACTIVATION_COPIES = 3  # forward values, their gradients, and the sine's saved input
OPTIMIZER_COPIES = 4  # weights, gradients, Adam's two moments
CPU_MICRO_BATCH_BYTES = 2 << 20  # auto micro-batch on the CPU: ~2 MiB of activations per layer


def resolve_basedir(basedir: str, from_file: bool) -> str:
    """The original wrote to ``cwd + basedir`` (string concatenation), so its configs' absolute-looking
    ``basedir = /experiments/...`` meant a folder inside the working directory. A basedir read from a
    config file is therefore taken relative to the working directory, unless its top-level folder
    exists (``/tmp/...``, ``/home/...``: a deliberate absolute location, created below it if need
    be). Command-line values are used as given."""
    if not from_file or not os.path.isabs(basedir):
        return basedir
    parts = Path(basedir).parts
    if len(parts) > 1 and os.path.isdir(os.path.join(parts[0], parts[1])):
        return basedir
    relative = Path(basedir).relative_to(Path(basedir).anchor)
    return str(relative) if str(relative) != "." else "."


def machine_memory() -> int | None:
    """Physical memory in bytes (Linux, most Unixes), or None where unknown (the check is skipped)."""
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    return pages * size if pages > 0 and size > 0 else None


def estimate_memory(cfg) -> dict[str, int]:
    """Bytes a training run needs at least, by cause: the step's points, activations, parameters,
    volume. Lower bounds: micro-batching (auto on CPU) is assumed wherever it can apply."""
    net, opt = cfg.network, cfg.optim
    widths = list(net.feature_list or [net.features_per_layer or 16] * net.n_layers)
    width, layers = max(widths), 2 * len(widths) + 1
    points = opt.points_per_step
    micro = cfg.scaling.micro_batch or max(1, CPU_MICRO_BATCH_BYTES // (BYTES * width))
    params = sum(2 * (w * w + w) for w in widths) + (net.d_in + 1) * widths[0] + (widths[-1] + 1) * net.d_out
    try:
        volume = os.path.getsize(cfg.data.path) if not cfg.scaling.stream_bricks else 0
    except OSError:
        volume = 0
    return {
        "points": points * (net.d_in + net.d_out) * BYTES * (2 if opt.grad_lambda > 0 else 1),
        "activations": min(points, micro) * width * layers * BYTES * ACTIVATION_COPIES,
        "parameters": params * BYTES * OPTIMIZER_COPIES,
        "volume": volume,
    }


def check_memory(cfg, source_of) -> None:
    """Refuse, before anything is allocated, a run that cannot fit in this machine's memory, naming
    the option responsible; ``source_of(key)`` says where a key's value came from."""
    total = machine_memory()
    if total is None:
        return
    need = estimate_memory(cfg)
    if sum(need.values()) <= total:
        return
    cause = max(need, key=need.get)
    gib = f"~{sum(need.values()) / 2 ** 30:.3g} GiB, this machine has {total / 2 ** 30:.3g} GiB"
    if cause in ("points", "activations"):
        o = cfg.optim
        key = "sample_size" if o.sample_size >= o.batch_size else "batch_size"
        value = getattr(o, key)
        why = f"batch_size x sample_size = {o.points_per_step} points per step need {gib}"
    elif cause == "parameters":
        key = "feature_list" if cfg.network.feature_list else "features_per_layer"
        value = getattr(cfg.network, key)
        why = f"a network this wide needs {gib}"
    else:
        key, value, why = "data", cfg.data.path, f"the volume needs {gib}"
    raise ConfigError(f"{source_of(key)}: {key} = {value!r} is invalid: {why}")
