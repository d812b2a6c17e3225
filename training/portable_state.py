"""Adam's state across a change of device.

``Optimizer.load_state_dict`` replaces the param groups, ``fused`` and ``foreach`` included, so a
CUDA checkpoint would ask a CPU run for fused Adam (missing before torch 2.4) and a CPU checkpoint
would turn fusion off on CUDA. ``load_optimizer_state`` keeps the constructor's flags. (Generator
states: ``model.random_state``.)
"""

from __future__ import annotations

import torch


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
