"""Checkpoints that rebuild the network without the config file.

A checkpoint is a ``torch.save``d dict:
  format_version, architecture (Architecture.to_dict()), model_state,
  volume: {shape (Z,Y,X), spacing (x,y,z), origin, source_dtype, vmin, vmax, path},
  and, for resumable training checkpoints, optimizer_state, scheduler_state, step, rng states,
  config (flat option dict).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from config.errors import InputError
from data.atomic import atomic_path
from data.volume import VolumeInfo
from model.architecture import Architecture
from model.neurcomp import Neurcomp

FORMAT_VERSION = 1


def atomic_torch_save(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_checkpoint(path: Path, model: Neurcomp, volume: VolumeInfo, **extra) -> None:
    """Write model, architecture and volume info (plus any training state in ``extra``) atomically.

    Under torch.distributed only rank 0 writes (the ranks hold the same network); the others return.
    """
    from training.distributed import is_main_process

    if not is_main_process():
        return
    state = {"format_version": FORMAT_VERSION, "architecture": model.arch.to_dict(),
             "model_state": model.state_dict(), "volume": asdict(volume), **extra}
    atomic_torch_save(state, path)


def read_checkpoint(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # torch raises many types for corrupt files
        raise InputError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or "architecture" not in state or "model_state" not in state:
        raise InputError(f"{path}: not a Neurcomp checkpoint (no architecture or model_state)")
    return state


def load_model(path: str | Path, map_location="cpu") -> tuple[Neurcomp, VolumeInfo, dict]:
    """Rebuild the trained network from a checkpoint alone: (model in eval mode, volume info, raw state)."""
    state = read_checkpoint(path, map_location)
    model = Neurcomp(Architecture.from_dict(state["architecture"]))
    model.load_state_dict(state["model_state"])
    model.eval()
    return model, VolumeInfo.from_dict(state["volume"]), state
