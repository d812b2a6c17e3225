"""``lr = auto``: the training recipe that adapts to the network and the volume.

An explicit ``lr`` trains exactly as the original code did (Lu et al. 2021: Adam, step decay every
``pass_decay`` passes, ``max_pass`` passes). With ``lr = auto`` three things change:

1. **The learning rate follows the network.** Adam moves every weight by about ``lr`` per step,
   whatever its gradient's scale. A sine layer's pre-activation omega_0 (W x + b) sums ``fan_in``
   such moves, each amplified by omega_0, so keeping the per-step change of the pre-activations
   at a fixed size gives

       lr = C / (omega_0 * fan_in) * sqrt(4 / n_layers) * (1/2 if grad_lambda > 0)

   with ``fan_in`` the widest layer's input width. C = 1.75 was fitted on learning-rate sweeps at
   equal steps (``benchmarks/lr_sweep.py``, table in the README): the best fixed lr was
   5e-3 to 1e-2 at widths 6 to 14 (C = 1.8 to 2.1; 1e-2 at width 6 in a sweep without the mean
   start, beyond the README table's range), 2e-3 at width 28 (C = 1.7) and 5e-4 to 1e-3
   at width 82 (C = 1.2 to 2.5), while C of 3.6 or more failed at every width. The depth and
   gradient-loss factors follow the same argument and were not fitted: more layers add more
   moving pre-activations in series, and the gradient loss differentiates the network once more
   in the coordinates, which multiplies every layer's sensitivity by about omega_0 again.
2. **The output starts at the data's mean** (the output layer's bias): the first steps then fit
   structure instead of moving the whole output, and a run that learns nothing still predicts the
   mean rather than the middle of the value range.
3. **At least ``min_steps`` optimizer steps.** A pass of a 40^3 volume is only 4 steps of 16k
   points, so 75 passes are 300 steps, far too few for Adam. The run is stretched to ``min_steps``
   and the pass-based schedule (decay, checkpoints) with it, in proportion.

The loop itself (``training.trainer``) recovers from divergence for any lr: it tracks the best
state on a fixed validation sample of voxels, and on a blow-up restores it and halves the learning
rate.
"""

from __future__ import annotations

import math

from neurcomp.config.options import OptimConfig
from neurcomp.model.architecture import Architecture

LR_CONSTANT = 1.75  # C above, fitted by benchmarks/lr_sweep.py
REFERENCE_DEPTH = 4  # n_layers of the original's configs, where C was measured
GRADIENT_LOSS_FACTOR = 0.5


def auto_learning_rate(arch: Architecture, grad_lambda: float = 0.0) -> float:
    """The learning rate ``lr = auto`` uses for a network of shape ``arch`` (see the module doc)."""
    fan_in = max(arch.widths)
    depth = math.sqrt(max(1, arch.n_layers) / REFERENCE_DEPTH)
    lr = LR_CONSTANT / (arch.omega_0 * fan_in * depth)
    return lr * (GRADIENT_LOSS_FACTOR if grad_lambda > 0 else 1.0)


def learning_rate(optim: OptimConfig, arch: Architecture) -> float:
    """The configured lr, or the automatic one."""
    return auto_learning_rate(arch, optim.grad_lambda) if optim.auto else float(optim.lr)


def steps_for(passes: float, num_voxels: int, points_per_step: int) -> tuple[int, float]:
    """(number of steps, steps per pass) for ``passes`` passes over ``num_voxels`` samples."""
    steps_per_pass = num_voxels / points_per_step
    return max(1, math.ceil(passes * steps_per_pass - 1e-9)), steps_per_pass


def schedule_steps(optim: OptimConfig, num_voxels: int) -> tuple[int, float]:
    """``steps_for`` the configured ``max_pass``; with lr = auto, at least ``min_steps`` steps, and a
    pass then counts ``num_steps / max_pass`` steps, so ``pass_decay`` and ``checkpoint_every`` keep
    their place in the run."""
    num_steps, steps_per_pass = steps_for(optim.max_pass, num_voxels, optim.points_per_step)
    if optim.auto and num_steps < optim.min_steps:
        num_steps = int(optim.min_steps)
        steps_per_pass = num_steps / optim.max_pass
    return num_steps, steps_per_pass
