"""The optimisation loop: on-device sampling, MSE (+ gradient) loss, Adam, pass-based schedule.

A *pass* is as many samples as the volume has voxels; a step sees batch_size x sample_size points.
The loop is resumable: everything it depends on (model, optimizer, plateau scheduler, sampler
generator, step) is in the checkpoint, and the learning rate is a function of the step.

Under torch.distributed (``training.distributed``) the model is wrapped in DistributedDataParallel;
every rank draws its share of the step's points with its own generator, the loss is weighted so the
all-reduced gradient is the mean over all the step's points, pass metrics are averaged over ranks,
checkpoints carry every rank's sampler state, and only rank 0 shows the progress bar.

Divergence is recovered, not just stopped (``training.recovery``). A ``keep_best`` phase ends on
its best validated state, so the network written out is never worse than an earlier point of the
same run. Subclasses
must compute predictions with ``self.forward(coords)`` (``self.model`` is the bare module, whose
gradients would not be synchronised); the first step checks that they do.
"""

from __future__ import annotations

import math
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch

from neurcomp.config.options import OptimConfig
from neurcomp.training import distributed
from neurcomp.training.portable_state import load_optimizer_state
from neurcomp.training.progress import phase_progress
from neurcomp.training.recovery import Recovery, psnr_from_normalised_mse
from neurcomp.training.sampling import VolumeSampler
from neurcomp.training.speed import (compile_step, graphs_compiled, is_device_failure, micro_batch_size, recompile_room,
                            reserve_room, should_compile, strict_recompiles)

NAN_CHECK_EVERY = 16  # steps between loss checks (each check synchronises with the device)
EVALS_PER_PHASE = 50  # validation evaluations per phase (~2 % of the run between two)


class Interrupted(KeyboardInterrupt):
    """Training stopped between two steps on SIGINT (exit code 130) or SIGTERM (143), after the
    checkpoint was written and its one-line message printed (``reported``)."""

    def __init__(self, signum: int | None = None):
        super().__init__()
        self.signum = signum
        self.exit_code = 143 if signum == signal.SIGTERM else 130
        self.reported = False


class Regularizer(Protocol):
    """Extra loss terms and per-step bookkeeping (used by the pruning methods)."""

    def loss(self, model: torch.nn.Module, step: int) -> tuple[torch.Tensor, dict]: ...

    def after_step(self, model: torch.nn.Module, step: int) -> None: ...


@dataclass
class Phase:
    """One stretch of training with its own optimizer and learning-rate schedule."""

    name: str
    num_steps: int
    lr: float
    steps_per_pass: float
    optim: OptimConfig
    regularizer: Regularizer | None = None
    history: list = field(default_factory=list)
    validation: object | None = None  # training.validation.ValidationSet: best-state tracking, recovery
    keep_best: bool = True  # end on the best validated state (off while a regularizer trades MSE for sparsity)


class Trainer(Recovery):
    """Trains ``model`` on ``sampler`` for one phase; ``checkpoint_fn(trainer, tag)`` writes checkpoints.

    ``compile`` (auto | on | off) and ``micro_batch`` (points per forward/backward, 0: auto) only
    change speed, see ``training.speed``.
    """

    def __init__(self, model: torch.nn.Module, sampler: VolumeSampler, phase: Phase, *, tracker=None,
                 checkpoint_fn: Callable | None = None, checkpoint_every_passes: int = 0,
                 step_offset: int = 0, progress: bool = True, compile: str = "off", micro_batch: int = 0,
                 stop_flag=None):
        self.model = model
        self.sampler = sampler
        self.phase = phase
        self.tracker = tracker
        self.checkpoint_fn = checkpoint_fn
        self.checkpoint_every_passes = checkpoint_every_passes
        self.step_offset = step_offset  # global step of this phase's first step, for logging
        self.progress = progress
        self.ddp = distributed.wrap_model(model, sampler.device)  # None in a single process
        self._forward_calls = 0
        self.stop_flag = stop_flag  # an object whose ``requested`` asks the loop to stop (training.session)
        self._pass_sums: list | None = None
        # the pass whose end comes next; not moved by a recovery, so after one at a pass end every
        # step is checked until a pass ends cleanly
        self._next_pass_end: int | None = None
        self._t0 = 0.0
        self.step = 0
        self.samples_seen = 0
        self.train_seconds = 0.0
        self.lr_scale = 1.0  # halved on each recovery from divergence
        self.recoveries = 0
        self.best: dict | None = None  # {step, val_mse, model, optimizer, lr_scale}
        self.restored_best_step: int | None = None
        self.validation_log: list[tuple[int, float]] = []  # (step, validation MSE) of every evaluation
        self.eval_every = max(1, phase.num_steps // EVALS_PER_PHASE)
        self.micro_batch = micro_batch_size(micro_batch, distributed.local_points(phase.optim.points_per_step),
                                            max(model.arch.widths), sampler.device)
        # only the base class's pure data terms are compiled (subclasses' losses keep Python state)
        self.compiled = should_compile(compile, phase.num_steps) and type(self).loss is Trainer.loss
        self._data_terms = compile_step(self.data_terms) if self.compiled else self.data_terms
        self._recompile_limit = reserve_room() if self.compiled else 0
        self._compile_checked = not self.compiled
        self.compile_graphs = 0  # graphs dynamo compiled while this trainer ran (training.speed)
        # the fused Adam kernel saves a launch per parameter on CUDA
        self.optimizer = torch.optim.Adam(model.parameters(), lr=phase.lr, fused=sampler.device.type == "cuda")
        self.plateau = None
        if phase.optim.smallify_decay > 0:
            self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer, mode="min", factor=phase.optim.lr_decay, patience=int(phase.optim.smallify_decay))

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Resumable state. Under torch.distributed every rank must call it (it gathers each rank's
        sampler state)."""
        sampler_state = self.sampler.state_dict()
        world_size = distributed.get_world_size()
        ranks = distributed.all_gather_object(sampler_state) if world_size > 1 else None
        sums = self._pass_sums or [0.0, 0.0, 0]
        sums = [float(sums[0]), float(sums[1]), int(sums[2])]  # this rank's loss and MSE sums of the pass so far
        sums_ranks = distributed.all_gather_object(sums) if world_size > 1 else None
        return {"phase": self.phase.name, "step": self.step, "samples_seen": self.samples_seen,
                "train_seconds": self.train_seconds, "optimizer": self.optimizer.state_dict(),
                "plateau": self.plateau.state_dict() if self.plateau else None,
                "sampler": sampler_state, "sampler_ranks": ranks, "world_size": world_size,
                "history": self.phase.history, "lr_scale": self.lr_scale, "recoveries": self.recoveries,
                "best": self.best, "validation_log": [list(x) for x in self.validation_log],
                "pass_sums": sums, "pass_sums_ranks": sums_ranks, "next_pass_end": self._next_pass_end}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.samples_seen = int(state.get("samples_seen", 0))
        self.train_seconds = float(state.get("train_seconds", 0.0))
        load_optimizer_state(self.optimizer, state["optimizer"])  # keeps this device's fused/foreach
        if self.plateau and state.get("plateau"):
            self.plateau.load_state_dict(state["plateau"])
        self._load_sampler_state(state)
        self.phase.history = list(state.get("history", []))
        self.lr_scale = float(state.get("lr_scale", 1.0))
        self.recoveries = int(state.get("recoveries", 0))
        self.best = state.get("best")
        self.validation_log = [tuple(x) for x in state.get("validation_log", [])]
        sums = distributed.rank_state(state.get("pass_sums_ranks"), state.get("pass_sums"))
        if sums is not None:  # the pass the checkpoint was written in goes on
            device = self.sampler.device
            self._pass_sums = [torch.tensor(sums[0], device=device), torch.tensor(sums[1], device=device), int(sums[2])]
        self._next_pass_end = state.get("next_pass_end")

    def _load_sampler_state(self, state: dict) -> None:
        """This rank's sampler state; a rank the checkpoint has none for (another world size, an
        interrupt under torchrun) restarts its stream from its seed and the step."""
        rank, world_size = distributed.get_rank(), distributed.get_world_size()
        ranks = state.get("sampler_ranks")
        if ranks and len(ranks) == world_size:
            self.sampler.load_state_dict(ranks[rank], step=self.step)
        elif rank == 0:
            self.sampler.load_state_dict(state["sampler"], step=self.step)
        else:
            self.sampler.reseed(self.sampler.seed + 7919 * self.step)

    # -- schedule --------------------------------------------------------------------------------
    def current_pass(self) -> float:
        return self.step / self.phase.steps_per_pass

    def scheduled_lr(self) -> float:
        if self.plateau is not None:
            return self.optimizer.param_groups[0]["lr"]
        decays = math.floor(self.current_pass() / self.phase.optim.pass_decay)
        return self.phase.lr * self.lr_scale * self.phase.optim.lr_decay ** decays

    # -- loop ------------------------------------------------------------------------------------
    def forward(self, coords: torch.Tensor, **kwargs):
        """The model's prediction, through DistributedDataParallel when distributed."""
        if not torch.compiler.is_compiling():  # a counter inside a compiled graph would recompile it
            self._forward_calls += 1
        return self.model(coords, **kwargs) if self.ddp is None else self.ddp(coords, **kwargs)

    def forward_with_input_gradient(self, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(predictions, d predictions / d coords) for the gradient loss: written out by the model
        when it can (first-order, so compilable), else by autograd's double backward."""
        if hasattr(self.model, "value_and_input_gradient"):
            return self.forward(coords, input_gradient=True)
        coords = coords.detach().requires_grad_(True)
        pred = self.forward(coords)
        return pred, torch.autograd.grad(pred.sum(), coords, create_graph=True)[0]

    def data_terms(self, coords, targets, target_grads) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(data loss, MSE, gradient loss or None) of a batch of points."""
        grad_lambda = self.phase.optim.grad_lambda
        if grad_lambda > 0:
            pred, grads = self.forward_with_input_gradient(coords)
        else:
            pred = self.forward(coords)
        mse = torch.mean((pred - targets) ** 2)
        if grad_lambda <= 0:
            return mse, mse, None
        grad_loss = torch.mean((grads - target_grads) ** 2)
        return mse + grad_lambda * grad_loss, mse, grad_loss

    def loss(self, coords, targets, target_grads) -> tuple[torch.Tensor, torch.Tensor, dict]:
        loss, mse, grad_loss = self._data_terms(coords, targets, target_grads)
        extras = {} if grad_loss is None else {"grad_loss": grad_loss.detach()}
        if self.phase.regularizer is not None:
            reg, reg_metrics = self.phase.regularizer.loss(self.model, self.step)
            loss = loss + reg
            extras.update(reg_metrics)
        return loss, mse, extras

    def accumulate_gradients(self, coords, targets, target_grads, weight: float) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Backward of the step's loss, one micro-batch at a time; each micro-batch's loss is weighted
        by its share of the points (times the rank's ``weight``), so the gradients sum to those of the
        whole step. Returns the step's (loss, MSE, extras) with the same weighting."""
        n = coords.shape[0]
        starts = range(0, n, self.micro_batch)
        loss_sum, mse_sum, extras_sum = 0.0, 0.0, {}
        for i, start in enumerate(starts):
            part = slice(start, start + self.micro_batch)
            share = (min(n, start + self.micro_batch) - start) / n
            calls = self._forward_calls
            # DDP all-reduces the gradients once, on the step's last backward
            sync = self.ddp is None or i == len(starts) - 1
            with nullcontext() if sync else self.ddp.no_sync():
                loss, mse, extras = self.loss(coords[part], targets[part],
                                              None if target_grads is None else target_grads[part])
                if self.ddp is not None and self._forward_calls == calls and not self.compiled:
                    raise RuntimeError(f"{type(self).__name__}.loss does not call self.forward(coords): under "
                                       "torch.distributed its gradients would not be synchronised")
                (loss * (share * weight)).backward()
            loss_sum = loss_sum + loss.detach() * (share * weight)
            mse_sum = mse_sum + mse.detach() * (share * weight)
            for k, v in extras.items():
                extras_sum[k] = extras_sum.get(k, 0.0) + v * share
        return loss_sum, mse_sum, extras_sum

    def _first_compiled_step(self, coords, targets, target_grads, weight):
        """The first step compiles; if the compiler fails (no C++ toolchain, an unsupported
        platform), say so once and train eagerly instead."""
        try:
            with strict_recompiles():  # past dynamo's recompile limit: an error here, not a silent eager step
                return self.accumulate_gradients(coords, targets, target_grads, weight)
        except Exception as exc:  # noqa: BLE001 - any compiler failure falls back to eager mode
            if is_device_failure(exc):  # out of memory, a device-side assert: not the compiler's fault
                raise
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            print(f"warning: torch.compile failed ({type(exc).__name__}: {first_line[:200]}); "
                  "training without compiling", file=sys.stderr)
            self.compiled = False
            self._data_terms = self.data_terms
            self.optimizer.zero_grad(set_to_none=True)
            return self.accumulate_gradients(coords, targets, target_grads, weight)
        finally:
            self._compile_checked = True

    def run(self) -> None:
        """Train until ``phase.num_steps``.

        A stop request (``stop_flag.requested``, set by the session's SIGINT/SIGTERM handler) takes
        effect between two complete steps: the checkpoint then holds the state after the last step,
        sampler and pass sums included, so the resumed run is the same run (bit-exact on the CPU).
        Under torchrun the ranks agree on the stop at the loss checks (``distributed.StopAgreement``).
        """
        phase, n = self.phase, self.phase.optim.points_per_step
        # this rank's share of the step's points; weighting its loss by n_local * W / n makes the
        # averaged gradient the mean over all n points even when W does not divide n
        n_local = distributed.local_points(n)
        self._share = (n_local, n_local * distributed.get_world_size() / n)
        self.model.train()
        bar = phase_progress(phase.num_steps, self.step, phase.name, self.progress and distributed.is_main_process())
        if self._pass_sums is None:
            self._reset_pass()
        if self._next_pass_end is None:
            self._next_pass_end = math.floor(self.current_pass()) + 1
        self._t0 = time.perf_counter()
        graphs0 = graphs_compiled() if self.compiled else 0
        if phase.validation is not None and self.best is None:
            self._validate(bar)  # the starting state is the first "best"
        stop = distributed.StopAgreement()  # under torchrun, Ctrl-C stops every rank at the same step
        # the recompile limit raised for this trainer's graphs only while its steps run
        room = recompile_room(self._recompile_limit) if self.compiled else nullcontext()
        try:
            with room:
                while self.step < phase.num_steps:
                    checked = self._step(bar)
                    if self._stop_requested(stop, checked):
                        self.train_seconds += time.perf_counter() - self._t0
                        stopped = Interrupted(getattr(self.stop_flag, "signum", None))
                        if self.checkpoint_fn:
                            self.checkpoint_fn(self, "interrupt")  # which says, in one line, how to resume
                            stopped.reported = True
                        raise stopped
        finally:
            stop.close()
            if self.compiled:
                self.compile_graphs += graphs_compiled() - graphs0
            bar.close()
        self.train_seconds += time.perf_counter() - self._t0
        if phase.keep_best and self.best is not None and self.best["step"] != self.step:
            # the last validation was at the last step: the best is strictly better than the end
            self.model.load_state_dict(self.best["model"])
            self.restored_best_step = int(self.best["step"])
        if self.ddp is not None:
            distributed.assert_in_sync(self.model, self.phase.name)

    def _stop_requested(self, stop, checked: bool) -> bool:
        """Whether to stop after this step: at once in a single process; under torchrun at the next
        loss check, where every rank asks the others (a collective)."""
        requested = bool(getattr(self.stop_flag, "requested", False))
        if not distributed.is_enabled():
            return requested
        if not checked:
            return False
        stop.requested = stop.requested or requested  # SIGTERM reaches the session's flag only
        return stop.agreed(self.sampler.device)

    def _reset_pass(self) -> None:
        zero = torch.zeros((), device=self.sampler.device)
        self._pass_sums = [zero.clone(), zero.clone(), 0]  # loss, MSE, steps of the pass so far

    def _step(self, bar) -> bool:
        """One optimizer step with its checks, validation and end-of-pass work; returns whether the
        loss was checked (where ranks may agree to stop)."""
        phase, n = self.phase, self.phase.optim.points_per_step
        n_local, weight = self._share
        for g in self.optimizer.param_groups:
            g["lr"] = self.scheduled_lr()
        coords, targets, target_grads = self.sampler.sample(n_local)
        self.optimizer.zero_grad(set_to_none=True)
        if self._compile_checked:
            loss, mse, extras = self.accumulate_gradients(coords, targets, target_grads, weight)
        else:
            loss, mse, extras = self._first_compiled_step(coords, targets, target_grads, weight)
        self.optimizer.step()
        if phase.regularizer is not None:
            phase.regularizer.after_step(self.model, self.step)
        self.step += 1
        self.samples_seen += n
        # accumulate on the device: reading a value every step would stall a GPU
        sums = self._pass_sums
        sums[0], sums[1], sums[2] = sums[0] + loss.detach(), sums[1] + mse.detach(), sums[2] + 1
        bar.update(1)
        end_of_pass = self.current_pass() >= self._next_pass_end or self.step == phase.num_steps
        checked = end_of_pass or self.step % NAN_CHECK_EVERY == 0
        if checked:
            # the mean over ranks: every rank sees a NaN at the same step, and the pass metrics
            # are those of all the pass's points
            totals = distributed.all_reduce_mean(torch.stack(sums[:2]))
            if not (math.isfinite(float(totals[0])) and self._weights_finite()):
                self._recover(f"the loss became {float(totals[0])}", bar)
                self._reset_pass()
                return checked
        if phase.validation is not None and (self.step % self.eval_every == 0 or self.step == phase.num_steps):
            if self._validate(bar):  # recovered: this pass's sums belong to the abandoned weights
                self._reset_pass()
                return checked
        if end_of_pass:
            self.train_seconds += time.perf_counter() - self._t0
            self._end_of_pass(float(totals[0]) / sums[2], float(totals[1]) / sums[2], extras, bar)
            self._t0 = time.perf_counter()
            self._reset_pass()
            self._next_pass_end = math.floor(self.current_pass()) + 1
        return checked

    def _end_of_pass(self, loss: float, mse: float, extras: dict, bar) -> None:
        passes = self.current_pass()
        psnr = psnr_from_normalised_mse(mse)
        lr = self.optimizer.param_groups[0]["lr"]
        metrics = {"loss": loss, "mse": mse, "psnr": psnr, "lr": lr,
                   **{k: float(v) for k, v in extras.items()}}
        self.phase.history.append({"pass": round(passes, 4), **metrics})
        bar.set_postfix(pass_=f"{passes:.1f}", loss=f"{loss:.2e}", psnr=f"{psnr:.2f}")
        if self.tracker:
            self.tracker.log_metrics({f"train/{k}": v for k, v in metrics.items()}, self.step_offset + self.step)
        if self.plateau is not None:
            self.plateau.step(loss)
        whole = math.floor(passes + 1e-9)
        if (self.checkpoint_fn and self.checkpoint_every_passes
                and whole > 0 and whole % self.checkpoint_every_passes == 0 and self.step < self.phase.num_steps):
            self.checkpoint_fn(self, "periodic")
