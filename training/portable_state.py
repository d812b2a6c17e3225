"""Training state that survives a change of device: random generator states and Adam's flags.

* A CPU generator's state is 5056 bytes (Mersenne Twister), a CUDA one's 16 (Philox seed and
  offset), and neither takes the other's. Checkpoints store the device type beside each state
  (older ones are told apart by the size). On a mismatch the stream restarts from a seed derived
  from the run's seed and step, with a one-line warning: the run goes on, deterministically, but
  not sample for sample as an uninterrupted run would.
* ``Optimizer.load_state_dict`` replaces the param groups, ``fused`` and ``foreach`` included, so
  a CUDA checkpoint would ask a CPU run for fused Adam (missing before torch 2.4) and a CPU
  checkpoint would turn fusion off on CUDA. ``load_optimizer_state`` keeps the constructor's flags.
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


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """``optimizer.load_state_dict(state)``, keeping this optimizer's ``fused``/``foreach`` flags
    (the ones this run's device chose) and placing Adam's step counts where they expect them."""
    flags = [(g.get("fused"), g.get("foreach")) for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, (fused, foreach) in zip(optimizer.param_groups, flags):
        group["fused"], group["foreach"] = fused, foreach
        # fused and capturable kernels keep the step count on the parameter's device, the others on the CPU
        on_device = bool(fused) or bool(group.get("capturable"))
        for param in group["params"]:
            param_state = optimizer.state.get(param, {})
            step = param_state.get("step")
            if torch.is_tensor(step):
                param_state["step"] = step.to(device=param.device if on_device else "cpu", dtype=torch.float32)
