"""MLflow and TensorBoard as their users expect: the MLflow environment variables, a tracking server
with its own artifact store, one metric naming scheme, TensorBoard slice images, hparams and run names."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from neurcomp.config.options import parse_config
from neurcomp.data.readers import read_volume
from neurcomp.data.volume import VolumeInfo
from neurcomp.model import Architecture, Neurcomp
from neurcomp.model.inference import predict_volume
from neurcomp.training.run import train
from neurcomp.training.tracking import DEFAULT_EXPERIMENT, middle_slices, mlflow_target, slice_image


def config(tmp_path, volume, **extra):
    opts = {"data": volume, "basedir": tmp_path / "exp", "expname": "tiny", "features_per_layer": 12, "n_layers": 2,
            "max_pass": 2, "batch_size": 64, "sample_size": 16, "lr": 1e-3, "checkpoint_every": 1,
            "tracking": "none", **extra}
    return parse_config([f"--{k}={v}" for k, v in opts.items() if v is not None])


@pytest.fixture
def no_mlflow_env(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.chdir(tmp_path)  # MLflow's own default artifact folder (./mlruns) would land here


def test_mlflow_target_option_then_environment_then_local_default(no_mlflow_env, monkeypatch, tmp_path):
    uri, experiment, artifacts = mlflow_target("", "", tmp_path)
    assert uri == "sqlite:///" + str(tmp_path.resolve() / "mlflow.db") and experiment == DEFAULT_EXPERIMENT
    assert artifacts == (tmp_path.resolve() / "mlartifacts").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "from_env")
    # a store the user chose keeps its own artifact location: never a folder on this client
    assert mlflow_target("", "", tmp_path) == ("http://127.0.0.1:1", "from_env", None)
    assert mlflow_target("sqlite:///x.db", "mine", tmp_path) == ("sqlite:///x.db", "mine", None)


def test_training_honours_the_mlflow_environment_unless_the_config_sets_it(no_mlflow_env, monkeypatch, tmp_path,
                                                                          tiny_volume):
    from mlflow import MlflowClient

    store = "sqlite:///" + str(tmp_path / "env.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "from_env")
    train(config(tmp_path, tiny_volume, tracking="mlflow", max_pass=1, checkpoint_every=0), progress=False)
    train(config(tmp_path, tiny_volume, tracking="mlflow", max_pass=1, checkpoint_every=0, expname="explicit",
                 mlflow_experiment="explicit"), progress=False)
    assert not (tmp_path / "exp" / "mlflow.db").exists()
    client = MlflowClient(tracking_uri=store)
    for experiment, run_name in (("from_env", "tiny"), ("explicit", "explicit")):
        runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
        assert [r.info.run_name for r in runs] == [run_name] and runs[0].info.status == "FINISHED"


def test_metric_names_per_pass_validation_and_final(tmp_path, tiny_volume, no_mlflow_env):
    from mlflow import MlflowClient

    info = train(config(tmp_path, tiny_volume, tracking="mlflow"), progress=False)
    assert "MLFLOW_TRACKING_URI" not in os.environ  # the next training in this process picks its own store
    client = MlflowClient(tracking_uri="sqlite:///" + str(tmp_path / "exp" / "mlflow.db"))
    run = client.search_runs([client.get_experiment_by_name(DEFAULT_EXPERIMENT).experiment_id])[0]
    metrics = run.data.metrics
    assert {"train/loss", "train/mse", "train/psnr", "train/lr", "val_psnr"} <= metrics.keys()
    # the final metrics carry info.json's names and values (physical units, whole volume)
    for key in ("psnr", "mse", "rmse", "l1_diff", "max_abs_error", "compression_ratio", "num_parameters"):
        assert metrics[key] == pytest.approx(info[key], rel=1e-6), key
    assert not {"final_psnr", "final_mse", "loss", "mae"} & metrics.keys()
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"checkpoint.pt", "info.json", "config.txt", "slices.png"} <= artifacts


def test_slices_are_the_middle_slices_of_the_full_volume_prediction(tiny_volume):
    volume = read_volume(str(tiny_volume))
    info = VolumeInfo.from_volume(volume)
    torch.manual_seed(0)
    model = Neurcomp(Architecture.uniform(8, 2))
    full = predict_volume(model, volume.shape, info)
    nz, ny, nx = volume.shape
    slices = middle_slices(model, volume, info)
    expected = {"xy": full[nz // 2], "xz": full[:, ny // 2], "yz": full[:, :, nx // 2]}
    for name, (truth, pred) in slices.items():
        np.testing.assert_allclose(pred, expected[name], rtol=1e-5, atol=1e-5)
        assert truth.shape == pred.shape
        image = slice_image(truth, pred, info.vmin, info.vmax)
        assert image.shape == (truth.shape[0], 3 * truth.shape[1], 3) and 0 <= image.min() <= image.max() <= 1
    np.testing.assert_array_equal(slices["xy"][0], volume.values[nz // 2])


def test_tensorboard_run_is_the_expname_with_slices_lr_and_hparams(tmp_path, tiny_volume):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
    from tensorboard.plugins.hparams import plugin_data_pb2

    info = train(config(tmp_path, tiny_volume, tracking="tensorboard"), progress=False)
    # `tensorboard --logdir <basedir>` lists the run as <expname>
    mux = EventMultiplexer().AddRunsFromDirectory(str(tmp_path / "exp"))
    assert list(mux.Runs()) == ["tiny"]
    acc = EventAccumulator(str(tmp_path / "exp" / "tiny"), size_guidance={"images": 0})
    acc.Reload()
    assert {"train/lr", "train/loss", "psnr"} <= set(acc.Tags()["scalars"])
    assert [e.value for e in acc.Scalars("train/lr")] == pytest.approx([1e-3, 1e-3])
    # one image per checkpoint (after pass 1, final) and slice: ground truth | prediction | error
    assert {"slices/xy", "slices/xz", "slices/yz"} <= set(acc.Tags()["images"])
    xy = acc.Images("slices/xy")
    assert len(xy) == 2 and xy[-1].step == info["steps"] and (xy[-1].width, xy[-1].height) == (3 * 16, 14)
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    assert start.session_start_info.hparams["n_layers"].number_value == 2
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in experiment.metric_infos} >= {"psnr", "compression_ratio"}
    assert acc.Scalars("psnr")[-1].value == pytest.approx(info["psnr"], rel=1e-6)


def test_tensorboard_log_dir_holds_the_run_under_its_expname(tmp_path, tiny_volume):
    train(config(tmp_path, tiny_volume, tracking="tensorboard", max_pass=1, Tensorboard_log_dir=tmp_path / "tb"),
          progress=False)
    assert list((tmp_path / "tb" / "tiny").glob("events.out.tfevents*"))
    assert not list((tmp_path / "exp").rglob("events.out.tfevents*"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """``mlflow server`` on 127.0.0.1 with its own backend store and served artifact store."""
    port, root = free_port(), tmp_path / "server"
    root.mkdir()
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", "sqlite:///" + str(root / "backend.db"),
           "--artifacts-destination", str(root / "store")]
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.skip(f"mlflow server did not start within 60 s: {(root / 'server.log').read_text()[-300:]}")
            time.sleep(0.5)
        yield url, root / "store"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.mark.slow
def test_tracking_server_gets_params_metrics_artifacts_and_status(mlflow_server, tmp_path, tiny_volume,
                                                                  no_mlflow_env):
    from mlflow import MlflowClient

    url, store = mlflow_server
    cfg = config(tmp_path, tiny_volume, tracking="mlflow", mlflow_tracking_uri=url, mlflow_experiment="served",
                 target_file_ratio=2, quant_bits=8, features_per_layer=None)
    info = train(cfg, progress=False)
    client = MlflowClient(tracking_uri=url)
    runs = client.search_runs([client.get_experiment_by_name("served").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny"
    assert run.data.params["n_layers"] == "2" and run.data.params["target_file_ratio"] == "2.0"
    assert run.data.metrics["psnr"] == pytest.approx(info["psnr"], rel=1e-6)
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 2
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"checkpoint.pt", info["file"], "info.json", "slices.png", "prediction.vti"} <= artifacts
    # the artifacts are in the server's artifact store, byte for byte, and nowhere on the client
    local = client.download_artifacts(run.info.run_id, "checkpoint.pt", str(tmp_path / "download"))
    assert Path(local).read_bytes() == (cfg.experiment_dir / "checkpoint.pt").read_bytes()
    assert [p.name for p in store.rglob("checkpoint.pt")] == ["checkpoint.pt"]
    assert not (tmp_path / "exp" / "mlartifacts").exists() and not (tmp_path / "mlruns").exists()
