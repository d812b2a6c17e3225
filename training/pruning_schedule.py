"""Training with pruning: train with gates, shrink the network, fine-tune the smaller one.

1. ``prune`` phase: ``prune_fraction`` of the ``max_pass`` passes with the method's gates and loss
   (``model.pruning``), learning rate ``lr`` and the usual pass-based schedule.
2. Pruning: removed neurons are sliced out and the gates folded in; the result is a plain
   Neurcomp with uneven widths, computing what the gated network computed in eval mode.
3. ``finetune`` phase: the remaining passes on the pruned network at ``lr / 100``, with a fresh
   Adam optimizer and its own schedule (decay every ``pass_decay`` passes counted from the start
   of the phase).

Checkpoints: ``architecture`` / ``model_state`` always describe a plain Neurcomp that
``training.checkpoint.load_model`` can load: during the prune phase the network as it would be
pruned now (so a mid-phase checkpoint can be visualised), afterwards the pruned network being
fine-tuned. ``trainer.phase`` says which phase; ``pruning`` holds what resuming needs (the gated
network's architecture and full state during the prune phase; the before-pruning summary after).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from config.errors import ConfigError
from config.options import NeurcompConfig, format_config_file
from model.architecture import Architecture, build_architecture, count_parameters
from model.neurcomp import Neurcomp
from model.pruning import PrunableNeurcomp, build_pruning
from training import distributed
from training.checkpoint import VolumeInfo, read_checkpoint, save_checkpoint
from training.outputs import atomic_write_text
from training.recipe import learning_rate, schedule_steps
from training.run import (CHECKPOINT_NAME, announce_recipe, evaluate, finish, load_training_volume, resolve_device, start_at_mean,
                          training_report, validation_set)
from training.sampler import make_sampler
from training.tracking import Tracker, tracked
from training.trainer import Phase, Trainer

FINETUNE_LR_FACTOR = 0.01
PRUNE_PHASE, FINETUNE_PHASE = "prune", "finetune"


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


def _kept_fractions(report: dict) -> dict:
    return {layer["name"]: layer["kept_fraction"] for layer in report["layers"]}


def train_with_pruning(cfg: NeurcompConfig, progress: bool = True,
                       prune_residual_width: bool | None = None) -> dict:
    """``training.run.train`` for configs with a ``dropout_technique``; returns the info dict."""
    if prune_residual_width is None:
        prune_residual_width = bool(getattr(cfg.pruning, "prune_residual_width", False))
    volume = load_training_volume(cfg)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    out_dir = cfg.experiment_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / CHECKPOINT_NAME

    resume = read_checkpoint(cfg.checkpoint_path) if cfg.checkpoint_path else None
    resumed_phase = None
    if resume is not None:
        resumed_phase = (resume.get("trainer") or {}).get("phase")
        if resumed_phase not in (PRUNE_PHASE, FINETUNE_PHASE) or "pruning" not in resume:
            raise ConfigError(f"{cfg.checkpoint_path}: not a checkpoint of a training with pruning "
                              f"(phase {resumed_phase!r}); resume it without dropout_technique")
    rstate = (resume or {}).get("pruning") or {}

    info = VolumeInfo.from_volume(volume)
    sampler = make_sampler(volume, device, seed=cfg.seed, with_gradients=cfg.optim.grad_lambda > 0,
                           scaling=cfg.scaling)
    if distributed.is_main_process():
        atomic_write_text(out_dir / "config.txt", format_config_file({**cfg.flat(), "checkpoint_path": ""}))
    _, steps_per_pass = schedule_steps(cfg.optim, volume.num_voxels)
    validation = validation_set(cfg, volume, info, device)
    prune_steps, finetune_steps = passes_split(cfg, volume.num_voxels)
    method = build_pruning(cfg.pruning.technique, cfg.pruning, dataset_size=volume.num_voxels)
    if cfg.network.residual and cfg.network.n_layers < 2 and not prune_residual_width:
        raise ConfigError(f"{cfg.source}: dropout_technique = {cfg.pruning.technique} needs a layer to prune: "
                          f"n_layers = {cfg.network.n_layers} with residual blocks has none (use n_layers >= 2)")

    tracker = Tracker(cfg.trackers, out_dir, cfg.expname, cfg.mlflow_tracking_uri, cfg.tensorboard_dir,
                      mlflow_experiment=cfg.mlflow_experiment, parent_run_id=cfg.mlflow_parent_run_id or None,
                      resume_run_id=(resume or {}).get("tracking_run_id"))
    with tracked(tracker):
        if resumed_phase != FINETUNE_PHASE:
            if resume is not None:
                arch = Architecture.from_dict(rstate["architecture"])
                prune_residual_width = bool(rstate.get("prune_residual_width", False))
            else:
                arch = build_architecture(cfg.network, volume.num_voxels, cfg.source)
                tracker.log_params({**cfg.flat(), "network_layer_sizes": arch.layer_sizes(),
                                    "num_parameters": count_parameters(arch),
                                    "prune_residual_width": prune_residual_width})
            announce_recipe(cfg, arch, learning_rate(cfg.optim, arch), prune_steps + finetune_steps)
            gated = PrunableNeurcomp(arch, method, prune_residual_width=prune_residual_width,
                                     seed=distributed.rank_seed(cfg.seed))
            start_at_mean(cfg, gated.net, volume, info)
            gated = gated.to(device)
            if resume is not None:
                gated.load_state_dict(rstate["state"])
                # each rank continues its own noise stream (variational), as its sampler does
                gated.load_noise_state(distributed.rank_state(rstate.get("noise_state_ranks"), rstate.get("noise_state")),
                                       step=int(resume["trainer"]["step"]))

            def checkpoint_prune(trainer: Trainer, tag: str) -> None:
                snapshot, _ = gated.prune()
                save_checkpoint(ckpt_path, snapshot, info, trainer=trainer.state_dict(), config=cfg.flat(),
                                tracking_run_id=tracker.run_id, tag=tag,
                                pruning={"phase": PRUNE_PHASE, "technique": method.name,
                                         "architecture": gated.arch.to_dict(), "state": gated.state_dict(),
                                         "noise_state": gated.noise_state(),
                                         "noise_state_ranks": noise_states(gated, trainer),
                                         "prune_residual_width": prune_residual_width})
                _interrupted_message(tag, trainer, ckpt_path)

            phase = Phase(PRUNE_PHASE, prune_steps, learning_rate(cfg.optim, arch), steps_per_pass, cfg.optim,
                          regularizer=gated.regularizer, validation=validation, keep_best=False)
            trainer = PruningTrainer(gated, sampler, phase, tracker=tracker, checkpoint_fn=checkpoint_prune,
                                     checkpoint_every_passes=cfg.checkpoint_every, progress=progress,
                                     compile=cfg.scaling.compile, micro_batch=cfg.scaling.micro_batch)
            if resume is not None:
                trainer.load_state_dict(resume["trainer"])
            trainer.run()

            _, metrics_before = evaluate(gated, volume, info)
            model, report = distributed.prune_once(gated)  # decided on rank 0, broadcast
            _, metrics_after = evaluate(model, volume, info)
            report_dict = report.to_dict()
            summary = {
                "pruning_technique": method.name,
                "prune_fraction": cfg.pruning.prune_fraction,
                "prune_residual_width": prune_residual_width,
                "num_parameters_before_pruning": report.num_parameters_before,
                "network_layer_sizes_before_pruning": report.architecture_before.layer_sizes(),
                "compression_ratio_before_pruning": volume.num_voxels / report.num_parameters_before,
                "kept_fraction_per_layer": _kept_fractions(report_dict),
                "pruning_layers": report_dict["layers"],
                "pruning_messages": report_dict["messages"],
                "psnr_before_pruning": metrics_before["psnr"],
                "psnr_after_pruning": metrics_after["psnr"],
                "passes_pruning": trainer.current_pass(),
            }
            prune_totals = {"steps": trainer.step, "samples_seen": trainer.samples_seen,
                            "train_seconds": trainer.train_seconds}
            print(f"pruned: {report.summary()}; PSNR {metrics_before['psnr']:.2f} dB (gated, eval) -> "
                  f"{metrics_after['psnr']:.2f} dB (pruned)")
            for message in report.messages:
                print(f"warning: {message}")
            tracker.log_metrics({"psnr_before_pruning": metrics_before["psnr"],
                                 "psnr_after_pruning": metrics_after["psnr"],
                                 "num_parameters_after_pruning": report.num_parameters_after,
                                 "compression_ratio_after_pruning": volume.num_voxels / report.num_parameters_after},
                                prune_steps)
            del gated, trainer
        else:
            model = Neurcomp(Architecture.from_dict(resume["architecture"])).to(device)
            model.load_state_dict(resume["model_state"])
            summary, prune_totals = rstate["summary"], rstate["prune_totals"]

        def checkpoint_finetune(trainer: Trainer, tag: str) -> None:
            save_checkpoint(ckpt_path, trainer.model, info, trainer=trainer.state_dict(), config=cfg.flat(),
                            tracking_run_id=tracker.run_id, tag=tag,
                            pruning={"phase": FINETUNE_PHASE, "summary": summary, "prune_totals": prune_totals})
            _interrupted_message(tag, trainer, ckpt_path)

        # lr = auto: the unpruned network's rate (the pruned one is narrower, and fine-tuning is gentle)
        base_lr = learning_rate(cfg.optim, Architecture.from_dict(summary_arch(summary, model)))
        phase = Phase(FINETUNE_PHASE, finetune_steps, base_lr * FINETUNE_LR_FACTOR, steps_per_pass, cfg.optim,
                      validation=validation)
        trainer = Trainer(model, sampler, phase, tracker=tracker, checkpoint_fn=checkpoint_finetune,
                          checkpoint_every_passes=cfg.checkpoint_every, step_offset=prune_steps, progress=progress,
                          compile=cfg.scaling.compile, micro_batch=cfg.scaling.micro_batch)
        if resumed_phase == FINETUNE_PHASE:
            trainer.load_state_dict(resume["trainer"])
        else:
            checkpoint_finetune(trainer, "pruned")  # resuming from here skips the prune phase
        trainer.run()
        checkpoint_finetune(trainer, "final")

        steps = prune_totals["steps"] + trainer.step
        seconds = prune_totals["train_seconds"] + trainer.train_seconds
        totals = SimpleNamespace(step=steps, samples_seen=prune_totals["samples_seen"] + trainer.samples_seen,
                                 train_seconds=seconds, current_pass=lambda: steps / steps_per_pass)
        extra = {**summary, "passes_finetuning": trainer.current_pass(),
                 "finetune_lr": phase.lr, **training_report(cfg, trainer)}
        result = finish(cfg, model, volume, info, totals, tracker, device, extra_info=extra)
        return result


def noise_states(gated: PrunableNeurcomp, trainer: Trainer) -> list | None:
    """Every rank's noise state, for the checkpoint (a collective, as ``Trainer.state_dict``); None
    after an interrupt that did not stop all ranks together."""
    return None if trainer._interrupted else distributed.all_gather_object(gated.noise_state())


def _interrupted_message(tag: str, trainer: Trainer, path) -> None:
    if tag == "interrupt" and distributed.is_main_process():
        print(f"\ninterrupted in phase {trainer.phase.name} at step {trainer.step}: checkpoint saved to {path}; "
              f"resume with --checkpoint_path {path}")


def summary_arch(summary: dict, model: Neurcomp) -> dict:
    """The architecture before pruning (what lr = auto was chosen for), from the pruning summary."""
    sizes = summary.get("network_layer_sizes_before_pruning")
    if not sizes:
        return model.arch.to_dict()
    return {**model.arch.to_dict(), "widths": list(sizes[1:-1])}


def passes_split(cfg: NeurcompConfig, num_voxels: int) -> tuple[int, int]:
    """(prune-phase steps, fine-tune steps) for ``cfg`` on a volume of ``num_voxels``."""
    total, _ = schedule_steps(cfg.optim, num_voxels)
    prune = min(total, max(1, round(cfg.pruning.prune_fraction * total)))
    return prune, total - prune
