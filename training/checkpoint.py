"""Checkpoints that rebuild the network without the config file.

A checkpoint is a ``torch.save``d dict of plain values (dicts, lists, tensors, numbers, strings),
so ``torch.load(weights_only=True)`` reads it without running any pickled code:
  format_version, architecture (Architecture.to_dict()), model_state,
  volume: {shape (Z,Y,X), spacing (x,y,z), origin, source_dtype, vmin, vmax, path},
  and, for training checkpoints, trainer (optimizer, schedule, sampler and pass state, step),
  config (flat option dict), tracking_run_id, tag, and pruning (``training.phases``).
"""

from __future__ import annotations

import math
import pickle
import re
import warnings
import zipfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from neurcomp.config.errors import ConfigError, InputError
from neurcomp.data.atomic import atomic_path
from neurcomp.data.volume import VolumeInfo
from neurcomp.model.architecture import Architecture
from neurcomp.model.fvsrn import build_network
from neurcomp.model.neurcomp import Neurcomp

FORMAT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"


def atomic_torch_save(obj, path: Path) -> None:
    """``torch.save`` through a Python file: a failed write is an OSError with its errno (a full disk is then
    one line, ``data.atomic``), not the C++ writer's "unexpected pos"."""
    with atomic_path(path) as tmp, open(tmp, "wb") as file:
        torch.save(obj, file)


def save_checkpoint(path: Path, model: Neurcomp, volume: VolumeInfo, **extra) -> None:
    """Write model, architecture and volume info (plus any training state in ``extra``) atomically.

    Under torch.distributed only rank 0 writes (the ranks hold the same network); the others return.
    """
    from neurcomp.training.distributed import is_main_process

    if not is_main_process():
        return
    state = {"format_version": FORMAT_VERSION, "architecture": model.arch.to_dict(),
             "model_state": model.state_dict(), "volume": asdict(volume), **extra}
    atomic_torch_save(portable(state), path)


def portable(obj):
    """``obj`` with what ``torch.load(weights_only=True)`` refuses turned into what it takes: numpy
    scalars and arrays into numbers and tensors, paths and other objects into strings."""
    if isinstance(obj, dict):
        return {k if isinstance(k, (str, int)) else str(k): portable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(portable(v) for v in obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor, torch.dtype, torch.device)):
        return obj
    return str(obj)


def tensors_finite(*states) -> bool:
    """Whether every floating-point tensor in the (nested) states is finite: a checkpoint of a
    network that blew up must never replace a good one."""
    for state in states:
        if torch.is_tensor(state):
            if state.is_floating_point() and not bool(state.isfinite().all()):
                return False
        elif isinstance(state, dict):
            if not tensors_finite(*state.values()):
                return False
        elif isinstance(state, (list, tuple)):
            if not tensors_finite(*state):
                return False
        elif isinstance(state, float) and not math.isfinite(state):
            return False
    return True


def read_checkpoint(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    try:
        with warnings.catch_warnings():  # torch warns of a plain pickle's protocol: the error says it in one line
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise InputError(f"{path}: {_refused_pickle(path, str(exc))}") from None
    except Exception as exc:  # torch raises many types for corrupt files
        if not _torch_file(path):
            raise InputError(f"{path}: not a readable checkpoint (not a torch.save file)") from None
        first_line = (str(exc).strip().splitlines() or [""])[0][:200]
        raise InputError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {first_line})") from None
    if not isinstance(state, dict) or not {"architecture", "model_state", "volume"} <= set(state):
        raise InputError(f"{path}: not a Neurcomp checkpoint (no architecture, model_state or volume)")
    return state


_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")  # torch names the object it refused: "GLOBAL posix.system"
_LEGACY_MAGIC = pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=2)[:-1]  # torch.save before 1.6


def _torch_file(path: Path) -> bool:
    """Whether ``path`` is laid out as torch.save writes: a zip archive, or the legacy format's magic number."""
    try:
        with open(path, "rb") as file:
            return file.read(len(_LEGACY_MAGIC)) == _LEGACY_MAGIC or zipfile.is_zipfile(file)
    except OSError:
        return False


def _refused_pickle(path: Path, message: str) -> str:
    """Why ``torch.load(weights_only=True)`` refused ``path``: objects (code) in a torch.save file, a torch.save
    file it cannot read, or not a torch.save file at all (e.g. a plain pickle)."""
    torch_file = _torch_file(path)
    found = _GLOBAL.search(message)
    if found or "Unsupported global" in message:
        what = f" ({found.group(1)[:80]})" if found else ""
        return (f"holds Python objects besides tensors and plain values{what}: "
                f"{'a torch.save file' if torch_file else 'a pickle'}, but a weights-only load refuses pickled objects "
                "(code); not loaded, since unpickling them could run code (a checkpoint of an older version, or not ours)")
    if torch_file:
        detail = next((line.strip() for line in message.splitlines() if line.strip().startswith("Unsupported")), "")
        return (f"a torch.save file whose pickled data a weights-only load cannot read{f' ({detail[:80]})' if detail else ''}; "
                "not loaded, since unpickling it could run code")
    return "not a torch.save file (a plain pickle? not loaded, since unpickling it could run code)"


def load_model(path: str | Path, map_location="cpu") -> tuple[Neurcomp, VolumeInfo, dict]:
    """Rebuild the trained network from a checkpoint alone: (model in eval mode, volume info, raw state)."""
    return model_from_state(read_checkpoint(path, map_location), path)


def model_from_state(state: dict, path) -> tuple[Neurcomp, VolumeInfo, dict]:
    """``load_model`` on a checkpoint already read (``read_checkpoint``); ``path`` names it in errors."""
    if (state.get("architecture") or {}).get("network") == "latent":
        raise InputError(f"{path}: a latent-grid run (network = latent): its training wrote the compressed "
                         f"{state.get('file') or '<expname>.nclg'} beside it; decode that with "
                         "NeurcompDequantization.py --compressed_file (NeurcompQuantization.py re-encodes it "
                         "only to add corrections: --max_abs_error / --max_rel_error)")
    try:
        model = build_network(Architecture.from_dict(state["architecture"]))
        model.load_state_dict(state["model_state"])
        info = VolumeInfo.from_dict(state["volume"])
    except Exception as exc:  # a damaged or hand-made file: any of its records can be wrong
        first_line = (str(exc).strip().splitlines() or [""])[0][:200]
        raise InputError(f"{path}: inconsistent checkpoint ({type(exc).__name__}: {first_line})") from None
    if not tensors_finite(model.state_dict()):
        raise InputError(f"{path}: the network's weights are not all finite (NaN or Inf); not used")
    model.eval()
    return model, info, state


def trained_architecture(state: dict) -> Architecture:
    """The network a training checkpoint's run trains: during a pruning run's prune phase the gated
    network, afterwards the network before pruning (``training.phases``), else ``architecture``."""
    pruning = state.get("pruning") or {}
    if pruning.get("phase") == "prune" and "architecture" in pruning:
        return Architecture.from_dict(pruning["architecture"])
    arch = Architecture.from_dict(state["architecture"])
    sizes = (pruning.get("summary") or {}).get("network_layer_sizes_before_pruning")
    if sizes:
        arch.widths = [int(w) for w in sizes[1:-1]]
    return arch


def checkpoint_technique(state: dict) -> str:
    """The pruning technique of a training checkpoint's run ('none' without pruning)."""
    pruning = state.get("pruning") or {}
    return str(pruning.get("technique") or (pruning.get("summary") or {}).get("pruning_technique") or "none")


def architecture_differences(have: Architecture, want: Architecture) -> list[str]:
    pairs = [("n_layers", have.n_layers, want.n_layers), ("widths", list(have.widths), list(want.widths)),
             ("residual", have.residual, want.residual), ("omega_0", have.omega_0, want.omega_0),
             ("network", have.network, want.network), ("grid", have.grid, want.grid),
             ("channels", have.channels, want.channels), ("activation", have.activation, want.activation)]
    return [f"{name} {a} (config: {b})" for name, a, b in pairs if a != b]


def check_compatible(path, state: dict, arch: Architecture, volume: VolumeInfo | None = None,
                     technique: str | None = None, action: str = "resume") -> None:
    """Refuse, in one line naming the checkpoint and what differs, a checkpoint whose network
    (architecture), volume (shape, min, max) or pruning technique is not the configured one."""
    have = trained_architecture(state) if technique is not None else Architecture.from_dict(state["architecture"])
    problems = architecture_differences(have, arch)
    if volume is not None:
        saved = state.get("volume") or {}
        for name, a, b in (("volume shape", tuple(saved.get("shape", ())), tuple(volume.shape)),
                           ("volume min", saved.get("vmin"), volume.vmin), ("volume max", saved.get("vmax"), volume.vmax)):
            if a != b:
                problems.append(f"{name} {a} (data: {b})")
    saved_technique = checkpoint_technique(state)
    if technique is not None and saved_technique != technique:
        problems.append(f"not a checkpoint of a training with pruning (config: dropout_technique {technique})"
                        if saved_technique == "none" else f"dropout_technique {saved_technique} (config: {technique})")
    if problems:
        raise ConfigError(f"{path}: cannot {action} from this checkpoint: {'; '.join(problems)}")
