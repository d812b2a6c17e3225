"""Checkpoints that rebuild the network without the config file.

A checkpoint is a ``torch.save``d dict:
  format_version, architecture (Architecture.to_dict()), model_state,
  volume: {shape (Z,Y,X), spacing (x,y,z), origin, source_dtype, vmin, vmax, path},
  and, for resumable training checkpoints, optimizer_state, scheduler_state, step, rng states,
  config (flat option dict).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from config.errors import InputError
from model.architecture import Architecture
from model.neurcomp import Neurcomp

FORMAT_VERSION = 1


@dataclass
class VolumeInfo:
    """What the network needs to know about the volume it encodes, to output physical units."""

    shape: tuple[int, int, int]  # (Z, Y, X)
    spacing: tuple[float, float, float]  # (x, y, z)
    vmin: float
    vmax: float
    source_dtype: str = "float32"
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    path: str = ""

    @property
    def num_voxels(self) -> int:
        return int(self.shape[0]) * int(self.shape[1]) * int(self.shape[2])

    def denormalize(self, normalized):
        """Map network output in [-1, 1] back to physical values."""
        return (normalized + 1.0) * 0.5 * (self.vmax - self.vmin) + self.vmin

    @classmethod
    def from_volume(cls, volume) -> "VolumeInfo":
        return cls(shape=tuple(int(s) for s in volume.shape), spacing=tuple(float(s) for s in volume.spacing),
                   vmin=float(volume.vmin), vmax=float(volume.vmax), source_dtype=str(volume.source_dtype),
                   origin=tuple(float(o) for o in volume.origin), path=str(volume.path))

    @classmethod
    def from_dict(cls, d: dict) -> "VolumeInfo":
        return cls(shape=tuple(d["shape"]), spacing=tuple(d["spacing"]), vmin=float(d["vmin"]),
                   vmax=float(d["vmax"]), source_dtype=d.get("source_dtype", "float32"),
                   origin=tuple(d.get("origin", (0.0, 0.0, 0.0))), path=d.get("path", ""))


def atomic_torch_save(obj, path: Path) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


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
