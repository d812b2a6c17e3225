"""The main job end to end: config file -> trained network, outputs, MLflow, TensorBoard, resume."""

import json

import numpy as np
import pytest
import torch

from config.options import parse_config
from tests.conftest import run_script
from training import run as run_module
from training.checkpoint import load_model, read_checkpoint
from model.inference import predict_volume
from training.run import train
from training.trainer import TrainingDiverged


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
    assert run.data.metrics["final_psnr"] == pytest.approx(info["psnr"], abs=1e-6)
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 6  # one per pass
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"info.json", "prediction.vti", "slices.png"} <= artifacts

    # TensorBoard: event files with loss, learning rate and PSNR
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    assert {"loss", "lr", "psnr"} <= set(acc.Tags()["scalars"])
    assert len(acc.Scalars("psnr")) == 6

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
    assert not (tmp_path / "exp" / "tiny" / "tensorboard").exists()
    assert not (tmp_path / "exp" / "mlflow.db").exists()


def test_reproducible_under_seed(tmp_path, tiny_volume):
    a = train(parse_config(tiny_config(tmp_path, tiny_volume, max_pass=2, expname="a")), progress=False)
    b = train(parse_config(tiny_config(tmp_path, tiny_volume, max_pass=2, expname="b")), progress=False)
    c = train(parse_config(tiny_config(tmp_path, tiny_volume, max_pass=2, expname="c", seed=1)), progress=False)
    assert a["psnr"] == b["psnr"] != c["psnr"]


def test_resume_after_interrupt_matches_uninterrupted_run(tmp_path, tiny_volume, monkeypatch):
    full = train(parse_config(tiny_config(tmp_path, tiny_volume, expname="full")), progress=False)

    # interrupt (as Ctrl-C would) after 8 of its 16 steps
    real_sample = run_module.VolumeSampler.sample
    calls = {"n": 0}

    def interrupting_sample(self, n):
        calls["n"] += 1
        if calls["n"] > 8:
            raise KeyboardInterrupt
        return real_sample(self, n)

    monkeypatch.setattr(run_module.VolumeSampler, "sample", interrupting_sample)
    with pytest.raises(KeyboardInterrupt):
        train(parse_config(tiny_config(tmp_path, tiny_volume, expname="cut")), progress=False)
    monkeypatch.setattr(run_module.VolumeSampler, "sample", real_sample)
    ckpt = tmp_path / "exp" / "cut" / "checkpoint.pt"
    assert read_checkpoint(ckpt)["trainer"]["step"] == 8

    resumed = train(parse_config(tiny_config(tmp_path, tiny_volume, expname="cut", checkpoint_path=ckpt)),
                    progress=False)
    assert resumed["steps"] == full["steps"]
    a = load_model(tmp_path / "exp" / "full" / "checkpoint.pt")[0].state_dict()
    b = load_model(ckpt)[0].state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
    assert resumed["psnr"] == pytest.approx(full["psnr"], abs=1e-4)


def test_nan_loss_stops_with_clear_message_and_keeps_checkpoint(tmp_path, tiny_volume, monkeypatch):
    real_sample = run_module.VolumeSampler.sample
    calls = {"n": 0}

    def poisoned(self, n):
        calls["n"] += 1
        coords, targets, grads = real_sample(self, n)
        return (coords, targets * float("nan"), grads) if calls["n"] > 10 else (coords, targets, grads)

    monkeypatch.setattr(run_module.VolumeSampler, "sample", poisoned)
    # every restore (at half the lr) meets the NaN again: after MAX_RECOVERIES the run gives up
    with pytest.raises(TrainingDiverged, match=r"loss became nan .* after 8 restores at lower learning rates"):
        train(parse_config(tiny_config(tmp_path, tiny_volume, checkpoint_every=1, max_pass=40)), progress=False)
    state = read_checkpoint(tmp_path / "exp" / "tiny" / "checkpoint.pt")
    assert 0 < state["trainer"]["step"] <= 10
    assert all(torch.isfinite(v).all() for v in state["model_state"].values())


def test_gradient_loss_and_plain_siren_train(tmp_path, tiny_volume):
    info = train(parse_config(tiny_config(tmp_path, tiny_volume, max_pass=2, grad_lambda=0.1,
                                          use_resnet="false")), progress=False)
    assert np.isfinite(info["psnr"]) and info["residual"] is False


def test_plateau_schedule_lowers_lr(tmp_path, tiny_volume):
    cfg = parse_config(tiny_config(tmp_path, tiny_volume, max_pass=8, smallify_decay=1, lr=0.05))
    info = train(cfg, progress=False)
    assert np.isfinite(info["psnr"])


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
