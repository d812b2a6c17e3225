"""Divergence is recovered, not just stopped (used by ``training.trainer.Trainer``).

A phase with a ``validation`` sample (``training.validation``) evaluates it about ``EVALS_PER_PHASE``
times and keeps the best state (model and optimizer). When the validation MSE blows up
(``DIVERGENCE_FACTOR`` times the best) or the loss or a weight becomes non-finite, that state is
restored and the learning rate halved; after ``MAX_RECOVERIES`` the run stops with
``TrainingDiverged``.
"""

from __future__ import annotations

import copy
import math
import sys

import torch

from neurcomp.config.errors import NeurcompError
from neurcomp.data.metrics import psnr
from neurcomp.training.portable_state import load_optimizer_state

DIVERGENCE_FACTOR = 4.0  # validation MSE this many times the best (6 dB worse) counts as a blow-up
MAX_RECOVERIES = 8  # restores (each halving the lr) before giving up
RECOVERY_LR_FACTOR = 0.5
class TrainingDiverged(NeurcompError):
    """The loss became NaN or infinite, or the final network is not finite."""


def psnr_from_normalised_mse(mse: float) -> float:
    return psnr(mse, 2.0)  # values live in [-1, 1]: range 2


def weights_finite(module: torch.nn.Module) -> bool:
    return bool(torch.stack([p.detach().isfinite().all() for p in module.parameters()]).all())


class Recovery:
    """The best-state bookkeeping and restores of a ``Trainer`` (model, optimizer, phase, plateau,
    tracker, step, lr_scale, recoveries, best, validation_log are the trainer's)."""

    def _weights_finite(self) -> bool:
        return weights_finite(self.model)

    def _validate(self, bar=None) -> bool:
        """Evaluate the validation sample; keep the best state, or recover from a blow-up (True)."""
        val_mse = self.phase.validation.mse(self.model)
        self.validation_log.append((self.step, val_mse))
        best = self.best
        blew_up = best is not None and self.phase.keep_best and val_mse > DIVERGENCE_FACTOR * best["val_mse"]
        if not math.isfinite(val_mse) or blew_up:
            self._recover(f"validation PSNR fell to {psnr_from_normalised_mse(val_mse):.2f} dB", bar)
            return True
        # a regularized phase trades MSE for sparsity: its reference is the latest sound state
        if best is None or not self.phase.keep_best or val_mse < best["val_mse"]:
            self.best = {"step": self.step, "val_mse": val_mse, "lr_scale": self.lr_scale,
                         "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
                         "optimizer": copy.deepcopy(self.optimizer.state_dict())}
        if self.tracker:
            self.tracker.log_metrics({"val_psnr": psnr_from_normalised_mse(val_mse)}, self.step_offset + self.step)
        return False

    def _recover(self, reason: str, bar=None) -> None:
        """Restore the best state and halve the learning rate, or give up with TrainingDiverged."""
        self.recoveries += 1
        where = f"{self.phase.name}: {reason} near pass {self.current_pass():.2f} (step {self.step})"
        if self.best is None or self.recoveries > MAX_RECOVERIES:
            tried = f" after {self.recoveries - 1} restores at lower learning rates" if self.recoveries > 1 else ""
            raise TrainingDiverged(f"{where}{tried}; lower lr or grad_lambda")
        self.model.load_state_dict(self.best["model"])
        load_optimizer_state(self.optimizer, self.best["optimizer"])
        self.lr_scale *= RECOVERY_LR_FACTOR
        if self.plateau is not None:  # the plateau scheduler owns the lr: scale the restored one
            for g in self.optimizer.param_groups:
                g["lr"] *= self.lr_scale / self.best["lr_scale"]
        message = (f"warning: {where}; restored the state of step {self.best['step']} and lowered the "
                   f"learning rate to {self.lr_scale:g} x the schedule")
        (bar.write if bar is not None else print)(message, file=sys.stderr)
        if self.tracker:
            self.tracker.log_metrics({"recoveries": self.recoveries}, self.step_offset + self.step)
