"""The main job end to end: config file -> trained network, outputs, MLflow, TensorBoard, resume."""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from neurcomp.config.errors import ConfigError, InputError
from neurcomp.config.options import parse_config
from tests.conftest import REPO, run_script
from neurcomp.training import session as session_module
from neurcomp.training.checkpoint import load_model, read_checkpoint
from neurcomp.model.inference import predict_volume
from neurcomp.training.phases import TrainPhase
from neurcomp.training.recovery import Recovery, TrainingDiverged
from neurcomp.training.run import train
from neurcomp.training.sampling import VolumeSampler
from neurcomp.training.trainer import Interrupted, Trainer


def tiny_config(tmp_path, volume, **extra) -> list[str]:
    opts = {"data": volume, "basedir": tmp_path / "exp", "expname": "tiny", "features_per_layer": 12,
            "n_layers": 2, "max_pass": 6, "batch_size": 64, "sample_size": 16, "lr": 1e-3, "pass_decay": 2,
            "lr_decay": 0.5, "checkpoint_every": 2, "tracking": "none", **extra}
    text = "".join(f"{k} = {v}\n" for k, v in opts.items())
    path = tmp_path / "tiny.txt"
    path.write_text(text)
    return ["--config", str(path)]


def read_vti_with_vtk(path) -> tuple[np.ndarray, tuple]:
    vtk = pytest.importorskip("vtk")
    from vtk.util.numpy_support import vtk_to_numpy

    reader = vtk.vtkXMLImageDataReader()
    reader.SetFileName(str(path))
    reader.Update()
    image = reader.GetOutput()
    nx, ny, nz = image.GetDimensions()
    values = vtk_to_numpy(image.GetPointData().GetArray(0)).reshape(nz, ny, nx)
    return values, image.GetSpacing()


def test_cli_end_to_end_with_tracking(tmp_path, tiny_volume):
    args = tiny_config(tmp_path, tiny_volume, tracking="mlflow,tensorboard")
    proc = run_script("NeurcompTraining.py", *args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "exp" / "tiny"
    for name in ("checkpoint.pt", "config.txt", "info.json", "info.txt", "ground_truth.vti", "prediction.vti",
                 "slices.png"):
        assert (out / name).is_file(), name
    info = json.loads((out / "info.json").read_text())
    for key in ("volume_size", "volume_num_voxels", "num_parameters", "network_layer_sizes", "compression_ratio",
                "psnr", "mse", "rmse", "l1_diff", "max_abs_error", "training_time_s", "samples_per_second",
                "device", "versions"):
        assert key in info, key
    assert info["volume_size"] == [16, 14, 12] and info["network_layer_sizes"] == [3, 12, 12, 1]

    # the .vti files open in VTK's own reader and hold physical values
    gt = np.load(tiny_volume)
    gt_vtk, _ = read_vti_with_vtk(out / "ground_truth.vti")
    np.testing.assert_allclose(gt_vtk, gt, rtol=1e-6)
    pred_vtk, _ = read_vti_with_vtk(out / "prediction.vti")
    model, vinfo, _ = load_model(out / "checkpoint.pt")
    np.testing.assert_allclose(pred_vtk, predict_volume(model, gt.shape, vinfo), rtol=1e-5, atol=1e-5)
    psnr = 20 * np.log10(gt.max() - gt.min()) - 10 * np.log10(np.mean((pred_vtk.astype(np.float64) - gt) ** 2))
    assert info["psnr"] == pytest.approx(psnr, abs=1e-3)

    # MLflow: a run with params, per-pass metrics and final metrics, in the default local store
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri="sqlite:///" + str(tmp_path / "exp" / "mlflow.db"))
    exp = client.get_experiment_by_name("neurcomp")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run = runs[0]
    assert run.data.params["n_layers"] == "2"
    assert run.data.metrics["psnr"] == pytest.approx(info["psnr"], abs=1e-6)
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 6  # one per pass
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"info.json", "prediction.vti", "slices.png"} <= artifacts

    # TensorBoard: event files with loss, learning rate and PSNR
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out))
    acc.Reload()
    assert {"train/loss", "train/lr", "train/psnr"} <= set(acc.Tags()["scalars"])
    assert len(acc.Scalars("train/psnr")) == 6

    # NeurcompVisualization.py reproduces the prediction from config.txt alone
    vis = run_script("NeurcompVisualization.py", "--config", out / "config.txt", "--output_dir", tmp_path / "vis",
                     "--tracking", "none")
    assert vis.returncode == 0, vis.stderr[-2000:]
    assert f"PSNR {info['psnr']:.2f} dB" in vis.stdout
    again, _ = read_vti_with_vtk(tmp_path / "vis" / "prediction.vti")
    np.testing.assert_allclose(again, pred_vtk, rtol=1e-6, atol=1e-6)

    # ... and samples the continuous network on another grid, keeping the world extent
    vis = run_script("NeurcompVisualization.py", "--config", out / "config.txt", "--output_dir", tmp_path / "vis",
                     "--resolution", 31, 27, 23)
    assert vis.returncode == 0, vis.stderr[-2000:]
    fine, spacing = read_vti_with_vtk(tmp_path / "vis" / "prediction_31x27x23.vti")
    assert fine.shape == (23, 27, 31)
    assert spacing == pytest.approx((15 / 30, 13 / 26, 11 / 22))


def test_no_tracking_writes_neither(tmp_path, tiny_volume):
    train(parse_config(tiny_config(tmp_path, tiny_volume, max_pass=1)), progress=False)
    assert not list((tmp_path / "exp").rglob("events.out.tfevents*"))
    assert not (tmp_path / "exp" / "mlflow.db").exists()


def test_reproducible_under_seed(tmp_path, tiny_volume):
    a = train(parse_config(tiny_config(tmp_path, tiny_volume, max_pass=2, expname="a")), progress=False)
    b = train(parse_config(tiny_config(tmp_path, tiny_volume, max_pass=2, expname="b")), progress=False)
    c = train(parse_config(tiny_config(tmp_path, tiny_volume, max_pass=2, expname="c", seed=1)), progress=False)
    assert a["psnr"] == b["psnr"] != c["psnr"]


def interrupt_after(monkeypatch, global_step: int, signum=signal.SIGINT) -> None:
    """Send this process ``signum`` (as Ctrl-C or kill would) right after step ``global_step``."""
    real = Trainer._step

    def step(self, bar):
        checked = real(self, bar)
        if self.step_offset + self.step == global_step:
            os.kill(os.getpid(), signum)
        return checked

    monkeypatch.setattr(Trainer, "_step", step)


def assert_same_weights(a_path, b_path) -> None:
    a, b = load_model(a_path)[0].state_dict(), load_model(b_path)[0].state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "weights differ"


def test_resume_after_interrupt_matches_uninterrupted_run(tmp_path, tiny_volume, monkeypatch, capsys):
    full = train(parse_config(tiny_config(tmp_path, tiny_volume, expname="full")), progress=False)
    # Ctrl-C at random steps of the 16 (after a pass end, mid-pass, after a checkpoint): the stop
    # takes effect between two steps and the resumed run is the same run, bit for bit
    for stop_at in sorted(random.Random(0).sample(range(1, 16), 3)) + [8]:
        expname = f"cut{stop_at}"
        interrupt_after(monkeypatch, stop_at)
        with pytest.raises(Interrupted) as stopped:
            train(parse_config(tiny_config(tmp_path, tiny_volume, expname=expname)), progress=False)
        monkeypatch.undo()
        assert stopped.value.exit_code == 130 and stopped.value.reported
        ckpt = tmp_path / "exp" / expname / "checkpoint.pt"
        state = read_checkpoint(ckpt)
        assert state["trainer"]["step"] == stop_at and state["tag"] == "interrupt"
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1] == (f"interrupted in phase train at step {stop_at}: checkpoint saved to {ckpt}; "
                           f"resume with --resume {ckpt}")

        resumed = train(parse_config(tiny_config(tmp_path, tiny_volume, expname=expname, resume=ckpt)),
                        progress=False)
        assert resumed["steps"] == full["steps"]
        assert_same_weights(tmp_path / "exp" / "full" / "checkpoint.pt", ckpt)
        assert resumed["psnr"] == full["psnr"]
        history = read_checkpoint(ckpt)["trainer"]["history"]
        assert history == read_checkpoint(tmp_path / "exp" / "full" / "checkpoint.pt")["trainer"]["history"]


def test_nan_loss_stops_with_clear_message_and_keeps_checkpoint(tmp_path, tiny_volume, monkeypatch):
    real_sample = VolumeSampler.sample
    calls = {"n": 0}

    def poisoned(self, n):
        calls["n"] += 1
        coords, targets, grads = real_sample(self, n)
        return (coords, targets * float("nan"), grads) if calls["n"] > 10 else (coords, targets, grads)

    monkeypatch.setattr(VolumeSampler, "sample", poisoned)
    # every restore (at half the lr) meets the NaN again: after MAX_RECOVERIES the run gives up
    with pytest.raises(TrainingDiverged, match=r"loss became nan .* after 8 restores at lower learning rates"):
        train(parse_config(tiny_config(tmp_path, tiny_volume, checkpoint_every=1, max_pass=40)), progress=False)
    state = read_checkpoint(tmp_path / "exp" / "tiny" / "checkpoint.pt")
    assert 0 < state["trainer"]["step"] <= 10
    assert all(torch.isfinite(v).all() for v in state["model_state"].values())


def test_a_non_finite_network_never_replaces_a_good_checkpoint(tmp_path, tiny_volume, monkeypatch):
    """The issue's reproducer: 3 passes with a checkpoint every pass, then a resume at a huge lr.
    With the recovery and the best state switched off and NaN targets the weights become NaN: the
    periodic and final checkpoints are refused, the run fails (never PSNR nan in info.json) and
    names the good checkpoint."""
    args = tiny_config(tmp_path, tiny_volume, checkpoint_every=1)
    first = train(parse_config(args + ["--max_pass", "3"]), progress=False)
    ckpt = tmp_path / "exp" / "tiny" / "checkpoint.pt"
    good = read_checkpoint(ckpt)
    monkeypatch.setattr(Recovery, "_recover", lambda self, reason, bar=None: None)
    monkeypatch.setattr(Recovery, "_validate", lambda self, bar=None: False)
    monkeypatch.setattr(TrainPhase, "keep_best", False)  # as the prune phase: no return to the best state
    real_sample = VolumeSampler.sample  # a SIREN's sines keep even lr 1e6 finite: NaN targets make it NaN
    monkeypatch.setattr(VolumeSampler, "sample", lambda self, n: (lambda c, t, g: (c, t * float("nan"), g))(
        *real_sample(self, n)))
    with pytest.raises(TrainingDiverged, match=rf"not finite at step 16; nothing of it was saved. The last good "
                                               rf"checkpoint is .*checkpoint.pt \(step {first['steps']}\)"):
        train(parse_config(args + ["--max_pass", "6", "--lr", "1e6", "--resume", str(ckpt)]), progress=False)
    state = read_checkpoint(ckpt)
    assert state["trainer"]["step"] == first["steps"] and state["tag"] == "final"
    assert all(torch.equal(state["model_state"][k], good["model_state"][k]) for k in good["model_state"])
    assert json.loads((tmp_path / "exp" / "tiny" / "info.json").read_text())["psnr"] == first["psnr"]


def test_divergence_without_a_checkpoint_of_this_run_says_so(tmp_path, tiny_volume, monkeypatch):
    args = tiny_config(tmp_path, tiny_volume, checkpoint_every=0, max_pass=2)
    train(parse_config(args), progress=False)  # an earlier run's checkpoint stays in the folder
    monkeypatch.setattr(session_module, "validation_set", lambda *a: None)  # no best state to go back to
    monkeypatch.setattr(VolumeSampler, "sample", lambda self, n: (torch.zeros(n, 3), torch.full((n, 1), float("nan")),
                                                                   None))
    with pytest.raises(TrainingDiverged, match=r"loss became nan .*\. No checkpoint was written before it diverged$"):
        train(parse_config(args), progress=False)


def test_resume_refuses_another_network_volume_or_pruning(tmp_path, tiny_volume):
    args = tiny_config(tmp_path, tiny_volume, max_pass=1)
    train(parse_config(args), progress=False)
    ckpt = tmp_path / "exp" / "tiny" / "checkpoint.pt"
    other = tmp_path / "other.npy"
    np.save(other, np.load(tiny_volume) * 2)
    for extra, message in ([["--features_per_layer", "10"], "widths [12, 12] (config: [10, 10])"],
                           [["--n_layers", "3"], "n_layers 2 (config: 3)"],
                           [["--omega_0", "20"], "omega_0 30.0 (config: 20.0)"],
                           [["--data", str(other)], "volume min"],
                           [["--dropout_technique", "smallify"], "not a checkpoint of a training with pruning"]):
        with pytest.raises(ConfigError, match=f"^{re.escape(str(ckpt))}: cannot resume from this checkpoint: "
                                              f".*{re.escape(message)}"):
            train(parse_config(args + extra + ["--resume", str(ckpt)]), progress=False)
    # the command line: one line, no traceback, nothing of the checkpoint's run touched
    before = ckpt.read_bytes()
    proc = run_script("NeurcompTraining.py", *args, "--features_per_layer", "10", "--resume", ckpt)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: {ckpt}: cannot resume from this checkpoint: "
                                                f"widths [12, 12] (config: [10, 10])"]
    assert ckpt.read_bytes() == before


def test_checkpoint_path_is_a_warm_start_and_resume_continues(tmp_path, tiny_volume):
    """checkpoint_path (the original's meaning): the weights, then a new run with a fresh schedule
    and its own MLflow run, also on another volume; resume continues the same run."""
    args = tiny_config(tmp_path, tiny_volume, max_pass=2, tracking="mlflow")
    first = train(parse_config(args), progress=False)
    ckpt = tmp_path / "exp" / "tiny" / "checkpoint.pt"
    start = read_checkpoint(ckpt)
    other = tmp_path / "other.npy"
    np.save(other, np.load(tiny_volume)[::-1].copy())
    # at an lr too small to move a weight, the warm-started network is the checkpoint's
    warm = train(parse_config(tiny_config(tmp_path, other, max_pass=2, expname="warm", tracking="mlflow", lr=1e-30,
                                          checkpoint_path=ckpt)), progress=False)
    args = tiny_config(tmp_path, tiny_volume, max_pass=2, tracking="mlflow")  # (the same config file)
    state = read_checkpoint(tmp_path / "exp" / "warm" / "checkpoint.pt")
    assert warm["steps"] == first["steps"] == state["trainer"]["step"]  # all steps again, from 0
    assert all(torch.equal(state["model_state"][k], start["model_state"][k]) for k in start["model_state"])
    assert state["tracking_run_id"] != start["tracking_run_id"]
    assert state["trainer"]["history"][0]["lr"] == 1e-30  # a fresh schedule at the new lr
    with pytest.raises(ConfigError, match=f"^{re.escape(str(ckpt))}: cannot warm-start from this checkpoint: n_layers 2 "):
        train(parse_config(args + ["--n_layers", "3", "--checkpoint_path", str(ckpt)]), progress=False)
    with pytest.raises(ConfigError, match="resume .* or checkpoint_path .*not both"):
        train(parse_config(args + ["--resume", str(ckpt), "--checkpoint_path", str(ckpt)]), progress=False)

    # resume: more passes in the same MLflow run
    resumed = train(parse_config(args + ["--max_pass", "3", "--resume", str(ckpt)]), progress=False)
    assert resumed["steps"] > first["steps"]
    assert read_checkpoint(ckpt)["tracking_run_id"] == start["tracking_run_id"]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri="sqlite:///" + str(tmp_path / "exp" / "mlflow.db"))
    runs = client.search_runs([client.get_experiment_by_name("neurcomp").experiment_id])
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    assert len(client.get_metric_history(start["tracking_run_id"], "train/loss")) == 3  # passes 1, 2 and 3


def test_checkpoints_load_with_weights_only(tmp_path, tiny_volume):
    train(parse_config(tiny_config(tmp_path, tiny_volume, max_pass=2)), progress=False)
    state = torch.load(tmp_path / "exp" / "tiny" / "checkpoint.pt", weights_only=True)
    assert state["trainer"]["step"] > 0 and state["config"]["n_layers"] == 2
    # a file holding other Python objects is refused in one line, never unpickled
    torch.save({**state, "volume": {**state["volume"], "vmin": np.float64(0.0)}}, tmp_path / "pickled.pt")
    with pytest.raises(InputError, match=r"pickled.pt: holds Python objects besides tensors and plain values"):
        read_checkpoint(tmp_path / "pickled.pt")


@pytest.mark.slow  # two entry-script runs
@pytest.mark.parametrize("signum, code, word", [(signal.SIGTERM, 143, "terminated (SIGTERM)"),
                                                 (signal.SIGINT, 130, "interrupted")])
def test_a_signal_saves_a_checkpoint_and_ends_the_mlflow_run_killed(tmp_path, tiny_volume, signum, code, word):
    """scancel, timeout and docker stop send SIGTERM: treated as Ctrl-C, with its own exit code."""
    args = tiny_config(tmp_path, tiny_volume, max_pass=100000, checkpoint_every=1, tracking="mlflow")
    proc = subprocess.Popen([sys.executable, str(REPO / "NeurcompTraining.py"), *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    ckpt = tmp_path / "exp" / "tiny" / "checkpoint.pt"
    deadline = time.time() + 120
    while not ckpt.is_file():  # training runs (its first periodic checkpoint is written)
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-2000:] if proc.poll() else "slow"
        time.sleep(0.2)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    state = read_checkpoint(ckpt)
    assert state["tag"] == "interrupt"
    lines = [line for line in err.splitlines() if line.strip() and "step/s" not in line and "%|" not in line
             and not re.match(r"^\w+: step \d+/\d+", line)]  # progress: a bar, or log lines off a terminal
    assert lines == [f"{word} in phase train at step {state['trainer']['step']}: checkpoint saved to {ckpt}; "
                     f"resume with --resume {ckpt}"]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri="sqlite:///" + str(tmp_path / "exp" / "mlflow.db"))
    runs = client.search_runs([client.get_experiment_by_name("neurcomp").experiment_id])
    assert [r.info.status for r in runs] == ["KILLED"]


def test_gradient_loss_and_plain_siren_train(tmp_path, tiny_volume):
    info = train(parse_config(tiny_config(tmp_path, tiny_volume, max_pass=2, grad_lambda=0.1,
                                          use_resnet="false")), progress=False)
    assert np.isfinite(info["psnr"]) and info["residual"] is False
    history = read_checkpoint(tmp_path / "exp" / "tiny" / "checkpoint.pt")["trainer"]["history"]
    assert all(h["grad_loss"] > 0 and h["loss"] > h["mse"] for h in history)  # the term is in the loss


def test_the_gradient_loss_changes_the_gradient(tiny_volume):
    """grad_lambda > 0 adds d(prediction)/d(coords) against the volume's gradient to the loss: the
    parameter gradient differs from the MSE's alone, by exactly grad_lambda x the term's gradient."""
    from neurcomp.config.options import OptimConfig
    from neurcomp.model.architecture import Architecture
    from neurcomp.model.neurcomp import Neurcomp
    from neurcomp.training.trainer import Phase

    values = np.load(tiny_volume)
    normalized = 2 * (values - values.min()) / (values.max() - values.min()) - 1
    grads = {}
    for grad_lambda in (0.0, 0.1, 0.2):
        torch.manual_seed(0)
        model = Neurcomp(Architecture.uniform(8, 2, residual=False))
        sampler = VolumeSampler(normalized, "cpu", seed=0, with_gradients=True)
        optim = OptimConfig(lr=1e-3, batch_size=16, sample_size=16, grad_lambda=grad_lambda)
        trainer = Trainer(model, sampler, Phase("t", 1, 1e-3, 1.0, optim), progress=False)
        coords, targets, target_grads = sampler.sample(256)
        trainer.accumulate_gradients(coords, targets, target_grads, 1.0)
        grads[grad_lambda] = torch.cat([p.grad.flatten() for p in model.parameters()])
    term = grads[0.1] - grads[0.0]
    assert term.abs().max() > 1e-3 * grads[0.0].abs().max()
    torch.testing.assert_close(grads[0.2] - grads[0.0], 2 * term, rtol=1e-3, atol=1e-6)


def test_plateau_schedule_lowers_lr(tmp_path, tiny_volume):
    cfg = parse_config(tiny_config(tmp_path, tiny_volume, max_pass=8, smallify_decay=1, lr=0.05))
    info = train(cfg, progress=False)
    assert np.isfinite(info["psnr"])
    lrs = [h["lr"] for h in read_checkpoint(tmp_path / "exp" / "tiny" / "checkpoint.pt")["trainer"]["history"]]
    assert lrs[-1] < lrs[0] and all(b <= a for a, b in zip(lrs, lrs[1:]))  # the plateau scheduler lowered it


@pytest.mark.parametrize("extra, message", [
    ({"data": "missing.npy"}, "missing.npy: file not found"),
    ({"compression_ratio": 100000, "features_per_layer": 0}, "largest possible ratio is"),
    ({"data": "{tmp}/volume.xyz"}, "unknown volume extension"),
])
def test_cli_bad_input_one_line_no_traceback(tmp_path, tiny_volume, extra, message):
    (tmp_path / "volume.xyz").write_bytes(b"\0" * 64)
    extra = {k: str(v).format(tmp=tmp_path) for k, v in extra.items()}
    proc = run_script("NeurcompTraining.py", *tiny_config(tmp_path, tiny_volume, **extra))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_stop_signals_wait_for_the_step_while_training_and_stop_at_once_otherwise():
    with session_module.StopSignals() as stop:
        with pytest.raises(Interrupted) as outside:  # no phase trains: at once (SIGTERM: exit 143)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
        assert outside.value.exit_code == 143 and not outside.value.reported
        stop.armed = True
        os.kill(os.getpid(), signal.SIGINT)  # while training: a request the loop sees after its step
        time.sleep(0.1)
        assert stop.requested and stop.signum == signal.SIGINT
        with pytest.raises(Interrupted) as again:  # a second Ctrl-C does not wait
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        assert again.value.exit_code == 130
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
