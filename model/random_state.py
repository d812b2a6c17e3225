"""Random generator states that survive a change of device (the sampler's and the variational noise's).

A CPU generator's state is 5056 bytes (Mersenne Twister), a CUDA one's 16 (Philox seed and offset),
and neither takes the other's. Checkpoints store the device type beside each state (older ones are
told apart by the size). On a mismatch the stream restarts from a seed derived from the run's seed
and step, with a one-line warning: the run goes on, deterministically, but not sample for sample as
an uninterrupted run would.
"""

from __future__ import annotations

import sys

import torch

CUDA_GENERATOR_STATE_BYTES = 16
RESEED_STRIDE = 7919  # a stream restarted at step s uses seed + 7919 s (as training.trainer for extra ranks)


def generator_state(generator: torch.Generator) -> dict:
    """The generator's state with its device type, as checkpoints store it."""
    return {"generator": generator.get_state(), "device_type": generator.device.type}


def saved_device_type(state: torch.Tensor, device_type: str | None = None) -> str:
    """The device type a saved generator state comes from (older checkpoints: by its size)."""
    if device_type:
        return str(device_type)
    return "cuda" if state.numel() == CUDA_GENERATOR_STATE_BYTES else "cpu"


def restore_generator(generator: torch.Generator, state: torch.Tensor, device_type: str | None,
                      fallback_seed: int, what: str) -> bool:
    """Set ``generator`` to ``state``; if it comes from another device type, warn and reseed with
    ``fallback_seed`` instead. Returns whether the saved state was used."""
    saved = saved_device_type(state, device_type)
    if saved == generator.device.type:
        generator.set_state(state)
        return True
    print(f"warning: {what}: the checkpoint's random state comes from a {saved} generator and this run draws "
          f"on {generator.device.type}; its stream restarts from seed {fallback_seed} (deterministic, but not "
          "the samples of an uninterrupted run)", file=sys.stderr)
    generator.manual_seed(int(fallback_seed))
    return False


def reseed_value(seed: int, step: int) -> int:
    return int(seed) + RESEED_STRIDE * int(step)
