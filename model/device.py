"""The torch device a user named: auto, cpu, cuda or cuda:N."""

from __future__ import annotations

import torch

from neurcomp.config.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU; an unavailable CUDA request is a ConfigError.

    Training wraps this to give each torchrun process its own GPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(name).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device = {name} was requested but no CUDA device is available (use auto or cpu)")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device = {name!r} is not a device (use auto, cpu, cuda or cuda:N)") from None
