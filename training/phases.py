"""The phases of a training run (``training.session`` runs them in turn).

A phase is a model transform (``enter``), a learning rate, a schedule and a step count, run by the
Trainer. A plain run is ``[train]``. A pruning run is:

1. ``prune``: ``prune_fraction`` of the ``max_pass`` passes with the method's gates and loss
   (``model.pruning``), learning rate ``lr`` and the usual pass-based schedule;
2. ``shrink`` (no steps): removed neurons are sliced out and the gates folded in; the result is a
   plain Neurcomp with uneven widths, computing what the gated network computed in eval mode;
3. ``finetune``: the remaining passes on the pruned network at ``lr / 100``, with a fresh Adam
   optimizer and its own schedule (decay every ``pass_decay`` passes counted from its start).

Checkpoints: ``architecture`` / ``model_state`` always describe a plain Neurcomp that
``training.checkpoint.load_model`` can load: during the prune phase the network as it would be
pruned now (so a mid-phase checkpoint can be visualised), afterwards the pruned network being
fine-tuned. ``trainer.phase`` says which phase; ``pruning`` holds what resuming needs (the gated
network's architecture and full state during the prune phase; the before-pruning summary after).
"""

from __future__ import annotations

import torch

from neurcomp.config.errors import ConfigError
from neurcomp.data.volume import mean_value, normalize
from neurcomp.model.architecture import Architecture, build_architecture, count_parameters
from neurcomp.model.neurcomp import Neurcomp
from neurcomp.model.pruning import PrunableNeurcomp, build_pruning
from neurcomp.training import distributed
from neurcomp.training.file_target import initial_architecture
from neurcomp.training.recipe import learning_rate, schedule_steps
from neurcomp.training.session import evaluate
from neurcomp.training.trainer import Trainer

FINETUNE_LR_FACTOR = 0.01
PRUNE_PHASE, FINETUNE_PHASE = "prune", "finetune"


def announce_recipe(cfg, arch: Architecture, lr: float, num_steps: int) -> None:
    """One line saying what lr = auto chose, so a user sees it before the run."""
    if cfg.optim.auto and distributed.is_main_process():
        print(f"lr = auto: {lr:.3g} for widths {arch.widths}; {num_steps} steps; output starts at the data's mean")


def start_at_mean(cfg, model: Neurcomp, volume, info) -> None:
    """lr = auto: the output starts at the data's normalised mean (training.recipe)."""
    if cfg.optim.auto:
        model.start_at(float(normalize(mean_value(volume.values), info.vmin, info.vmax)))


def training_report(cfg, trainer: Trainer) -> dict:
    """How the run was trained, for info.json: the lr used and any recovery from divergence."""
    return {"lr": trainer.phase.lr, "lr_auto": cfg.optim.auto, "lr_scale_final": trainer.lr_scale,
            "recoveries": trainer.recoveries, "best_step": (trainer.best or {}).get("step"),
            "restored_best_step": trainer.restored_best_step,
            "compiled": trainer.compiled, "compile_graphs": trainer.compile_graphs}


class TrainPhase:
    """Train the configured network (a plain run's only phase)."""

    name, trains, keep_best, trainer_cls = "train", True, True, Trainer
    step_offset, save_at_start, save_at_end = 0, None, True

    def __init__(self, architecture: Architecture | None, num_steps: int):
        self.architecture, self.num_steps = architecture, num_steps

    def lr(self, session, model) -> float:
        return learning_rate(session.cfg.optim, self.architecture)

    def params(self, session) -> dict:
        return {"network_layer_sizes": self.architecture.layer_sizes(),
                "num_parameters": count_parameters(self.architecture), "lr_used": self.lr(session, None)}

    def regularizer(self, model):
        return None

    def enter(self, session, model, resumed: dict | None):
        cfg = session.cfg
        model = Neurcomp(self.architecture)
        start_at_mean(cfg, model, session.volume, session.info)
        model = model.to(session.device)
        announce_recipe(cfg, self.architecture, self.lr(session, model), self.num_steps)
        start = resumed or session.warm
        if start is not None:
            model.load_state_dict(start["model_state"])
        return model

    def checkpoint(self, session, trainer) -> tuple[Neurcomp, dict]:
        return trainer.model, {}

    def leave(self, session, trainer):
        return trainer.model

    def report(self, session, trainer) -> dict:
        return training_report(session.cfg, trainer)


class PruningTrainer(Trainer):
    """Trainer for a PrunableNeurcomp: the method may replace the MSE data term (variational
    likelihood), and every pass logs live neurons per layer and gate histograms."""

    def loss(self, coords, targets, target_grads):
        reg = self.phase.regularizer
        grad_lambda = self.phase.optim.grad_lambda
        if grad_lambda > 0:  # through DistributedDataParallel under torchrun
            pred, grads = self.forward_with_input_gradient(coords)
        else:
            pred = self.forward(coords)
        mse = torch.mean((pred - targets) ** 2)
        data = reg.data_loss(self.model, coords, pred, targets)
        loss = mse if data is None else data
        extras = {} if data is None else {"nll": data.detach()}
        if grad_lambda > 0:
            grad_loss = torch.mean((grads - target_grads) ** 2)
            loss = loss + grad_lambda * grad_loss
            extras["grad_loss"] = grad_loss.detach()
        penalty, metrics = reg.loss(self.model, self.step)
        extras.update(metrics)
        return loss + penalty, mse, extras

    def _end_of_pass(self, loss, mse, extras, bar) -> None:
        live = self.model.live_neurons()
        extras = {**extras, "live_neurons": sum(live.values()),
                  **{f"live_neurons/{name}": n for name, n in live.items()}}
        super()._end_of_pass(loss, mse, extras, bar)
        if self.tracker:
            step = self.step_offset + self.step
            for name, gate in self.model.named_gates():
                for kind, values in gate.histograms().items():
                    self.tracker.log_histogram(f"pruning/{kind}/{name}", values.float().cpu(), step)


def noise_states(gated: PrunableNeurcomp) -> list:
    """Every rank's noise state, for the checkpoint (a collective, as ``Trainer.state_dict``)."""
    return distributed.all_gather_object(gated.noise_state())


def summary_arch(summary: dict, model: Neurcomp) -> dict:
    """The architecture before pruning (what lr = auto was chosen for), from the pruning summary."""
    sizes = summary.get("network_layer_sizes_before_pruning")
    if not sizes:
        return model.arch.to_dict()
    return {**model.arch.to_dict(), "widths": list(sizes[1:-1])}


def passes_split(cfg, num_voxels: int) -> tuple[int, int]:
    """(prune-phase steps, fine-tune steps) for ``cfg`` on a volume of ``num_voxels``."""
    total, _ = schedule_steps(cfg.optim, num_voxels)
    prune = min(total, max(1, round(cfg.pruning.prune_fraction * total)))
    return prune, total - prune


class PrunePhase(TrainPhase):
    """Train with the pruning method's gates and loss (``model.pruning.PrunableNeurcomp``)."""

    name, keep_best, trainer_cls, save_at_end = PRUNE_PHASE, False, PruningTrainer, False

    def __init__(self, architecture, num_steps: int, method, prune_residual_width: bool, total_steps: int):
        super().__init__(architecture, num_steps)
        self.method, self.prune_residual_width, self.total_steps = method, prune_residual_width, total_steps

    def params(self, session) -> dict:
        return {"network_layer_sizes": self.architecture.layer_sizes(),
                "num_parameters": count_parameters(self.architecture),
                "prune_residual_width": self.prune_residual_width}

    def regularizer(self, model):
        return model.regularizer

    def enter(self, session, model, resumed: dict | None):
        cfg = session.cfg
        announce_recipe(cfg, self.architecture, self.lr(session, None), self.total_steps)
        gated = PrunableNeurcomp(self.architecture, self.method, prune_residual_width=self.prune_residual_width,
                                 seed=distributed.rank_seed(cfg.seed))
        start_at_mean(cfg, gated.net, session.volume, session.info)
        gated = gated.to(session.device)
        if resumed is not None:
            rstate = resumed["pruning"]
            gated.load_state_dict(rstate["state"])
            # each rank continues its own noise stream (variational), as its sampler does
            gated.load_noise_state(distributed.rank_state(rstate.get("noise_state_ranks"), rstate.get("noise_state")),
                                   step=int(resumed["trainer"]["step"]))
        elif session.warm is not None:
            gated.net.load_state_dict(session.warm["model_state"])
        return gated

    def checkpoint(self, session, trainer):
        gated = trainer.model
        snapshot, _ = gated.prune()
        return snapshot, {"pruning": {"phase": PRUNE_PHASE, "technique": self.method.name,
                                      "architecture": gated.arch.to_dict(), "state": gated.state_dict(),
                                      "noise_state": gated.noise_state(), "noise_state_ranks": noise_states(gated),
                                      "prune_residual_width": self.prune_residual_width}}

    def leave(self, session, trainer):
        session.totals = {"steps": trainer.step, "samples_seen": trainer.samples_seen,
                          "train_seconds": trainer.train_seconds}
        return trainer.model


class ShrinkPhase:
    """No steps: prune the gated network (decided on rank 0 under torchrun) and report it."""

    name, trains = "shrink", False

    def __init__(self, prune: PrunePhase):
        self.prune = prune
        self.summary: dict = {}

    def enter(self, session, gated, resumed):
        volume, info, cfg = session.volume, session.info, session.cfg
        _, metrics_before = evaluate(gated, volume, info, progress=session.progress)
        model, report = distributed.prune_once(gated)
        _, metrics_after = evaluate(model, volume, info, progress=session.progress)
        report_dict = report.to_dict()
        self.summary = {
            "pruning_technique": self.prune.method.name,
            "prune_fraction": cfg.pruning.prune_fraction,
            "prune_residual_width": self.prune.prune_residual_width,
            "num_parameters_before_pruning": report.num_parameters_before,
            "network_layer_sizes_before_pruning": report.architecture_before.layer_sizes(),
            "compression_ratio_before_pruning": volume.num_voxels / report.num_parameters_before,
            "kept_fraction_per_layer": {layer["name"]: layer["kept_fraction"] for layer in report_dict["layers"]},
            "pruning_layers": report_dict["layers"],
            "pruning_messages": report_dict["messages"],
            "psnr_before_pruning": metrics_before["psnr"],
            "psnr_after_pruning": metrics_after["psnr"],
            "passes_pruning": session.totals["steps"] / session.steps_per_pass,
        }
        print(f"pruned: {report.summary()}; PSNR {metrics_before['psnr']:.2f} dB (gated, eval) -> "
              f"{metrics_after['psnr']:.2f} dB (pruned)")
        for message in report.messages:
            print(f"warning: {message}")
        session.tracker.log_metrics({"psnr_before_pruning": metrics_before["psnr"],
                                     "psnr_after_pruning": metrics_after["psnr"],
                                     "num_parameters_after_pruning": report.num_parameters_after,
                                     "compression_ratio_after_pruning": volume.num_voxels / report.num_parameters_after},
                                    self.prune.num_steps)
        return model


class FinetunePhase(TrainPhase):
    """Fine-tune the pruned network at ``lr / 100`` with a fresh optimizer and schedule."""

    name, save_at_start = FINETUNE_PHASE, "pruned"  # resuming from "pruned" skips the prune phase

    def __init__(self, num_steps: int, shrink: ShrinkPhase):
        super().__init__(None, num_steps)
        self.shrink, self.step_offset = shrink, shrink.prune.num_steps

    def lr(self, session, model) -> float:
        # lr = auto: the unpruned network's rate (the pruned one is narrower, and fine-tuning is gentle)
        arch = Architecture.from_dict(summary_arch(self.shrink.summary, model))
        return learning_rate(session.cfg.optim, arch) * FINETUNE_LR_FACTOR

    def enter(self, session, model, resumed: dict | None):
        if resumed is None:
            return model
        rstate = resumed["pruning"]
        self.shrink.summary, session.totals = rstate["summary"], dict(rstate["prune_totals"])
        model = Neurcomp(Architecture.from_dict(resumed["architecture"])).to(session.device)
        model.load_state_dict(resumed["model_state"])
        return model

    def checkpoint(self, session, trainer):
        return trainer.model, {"pruning": {"phase": FINETUNE_PHASE, "summary": self.shrink.summary,
                                           "prune_totals": dict(session.totals)}}

    def report(self, session, trainer) -> dict:
        return {**self.shrink.summary, "passes_finetuning": trainer.current_pass(), "finetune_lr": trainer.phase.lr,
                **training_report(session.cfg, trainer)}


def plan(session, prune_residual_width: bool = False) -> list:
    """The phases ``session.cfg`` asks for: ``[train]``, or ``[prune, shrink, finetune]``."""
    cfg, num_voxels = session.cfg, session.volume.num_voxels
    if not cfg.pruning.enabled:
        return [TrainPhase(initial_architecture(cfg, num_voxels), session.num_steps)]
    rstate = (session.resumed or {}).get("pruning") or {}
    if rstate.get("phase") == PRUNE_PHASE:
        prune_residual_width = bool(rstate.get("prune_residual_width", False))
    if cfg.network.residual and cfg.network.n_layers < 2 and not prune_residual_width:
        raise ConfigError(f"{cfg.source}: dropout_technique = {cfg.pruning.technique} needs a layer to prune: "
                          f"n_layers = {cfg.network.n_layers} with residual blocks has none (use n_layers >= 2)")
    prune_steps, finetune_steps = passes_split(cfg, num_voxels)
    method = build_pruning(cfg.pruning.technique, cfg.pruning, dataset_size=num_voxels)
    prune = PrunePhase(build_architecture(cfg.network, num_voxels, cfg.source), prune_steps, method,
                       prune_residual_width, prune_steps + finetune_steps)
    shrink = ShrinkPhase(prune)
    return [prune, shrink, FinetunePhase(finetune_steps, shrink)]
