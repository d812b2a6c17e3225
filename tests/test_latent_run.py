"""network = latent through the user's commands (training.latent_run): the same outputs, tracking,
resume and decoding as a Neurcomp run, on a real volume."""

import json

import numpy as np
import pytest
import torch

from conftest import run_script, shared_volume
from neurcomp.config.errors import ConfigError, InputError
from neurcomp.config.options import parse_config
from neurcomp.training import latent_run
from neurcomp.training.latent_fit import FitStopped, LatentFitOptions, fit
from neurcomp.training.run import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def config(tmp_path, volume, **extra):
    opts = {"data": volume, "basedir": tmp_path / "exp", "expname": "lat", "network": "latent",
            "target_file_ratio": 40, "latent_steps": 60, "tracking": "mlflow+tensorboard", **extra}
    return parse_config([f"--{k}={v}" for k, v in opts.items()])


def test_training_writes_the_file_volumes_tracking_and_decodes_to_the_same_psnr(tmp_path):
    from mlflow import MlflowClient
    from vtkmodules.vtkIOXML import vtkXMLImageDataReader

    bucky = shared_volume("bucky_32x32x32_uint8.raw")
    info = train(config(tmp_path, bucky), progress=False)
    out = tmp_path / "exp" / "lat"
    for name in ("lat.nclg", "checkpoint.pt", "config.txt", "info.json", "info.txt", "slices.png",
                 "ground_truth.vti", "prediction.vti", "error.vti"):
        assert (out / name).is_file(), name
    assert info["file_bytes"] == (out / "lat.nclg").stat().st_size <= 32 ** 3 * 4 / 40
    values = np.fromfile(bucky, np.uint8).astype(np.float64)
    mean_psnr = 20 * np.log10(255 / values.std())
    assert info["psnr"] > mean_psnr + 3  # better than predicting the mean
    reader = vtkXMLImageDataReader()
    reader.SetFileName(str(out / "prediction.vti"))
    reader.Update()
    assert reader.GetOutput().GetDimensions() == (32, 32, 32)
    assert list(out.glob("events.out.tfevents.*"))
    client = MlflowClient(tracking_uri="sqlite:///" + str(tmp_path / "exp" / "mlflow.db"))
    run = client.search_runs([client.get_experiment_by_name("neurcomp").experiment_id])[0]
    assert run.info.status == "FINISHED" and abs(run.data.metrics["psnr"] - info["psnr"]) < 1e-9
    assert run.data.params["network"] == "latent" and {"train_psnr", "sampled_psnr"} <= set(run.data.metrics)

    # the user's decoder: the same PSNR as training measured, and a box equal to the whole's slice
    metrics = out / "m.json"
    done = run_script("NeurcompDequantization.py", "--compressed_file", out / "lat.nclg", "--volume", bucky,
                      "--decompressed_file", out / "d.npy", "--metrics_json", metrics)
    assert done.returncode == 0, done.stderr
    assert abs(json.loads(metrics.read_text())["psnr"] - info["psnr"]) < 1e-6
    done = run_script("NeurcompDequantization.py", "--compressed_file", out / "lat.nclg", "--region",
                      3, 20, 0, 9, 5, 32, "--decompressed_file", out / "box.npy")
    assert done.returncode == 0, done.stderr
    assert np.array_equal(np.load(out / "box.npy"), np.load(out / "d.npy")[5:32, 0:9, 3:20])
    # the checkpoint is not a Neurcomp network: one line saying where the file is
    done = run_script("NeurcompVisualization.py", "--config", out / "config.txt")
    assert done.returncode != 0 and "lat.nclg" in done.stderr and "Traceback" not in done.stderr


def test_a_stopped_fit_resumes_exactly():
    values = np.fromfile(shared_volume("nucleon_41x41x41_uint8.raw"), np.uint8).reshape(41, 41, 41)
    options = LatentFitOptions(steps=40)
    budget = values.size * 4 // 60
    whole, *_ = fit(values, budget, options)
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] > 25

    with pytest.raises(FitStopped) as stopped:
        fit(values, budget, options, stop=stop)
    assert stopped.value.state["step"] == 25
    resumed, *_ = fit(values, budget, options, resume=stopped.value.state)
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


def test_an_interrupted_run_saves_its_state_and_resume_continues_it(tmp_path, monkeypatch):
    bucky = shared_volume("bucky_32x32x32_uint8.raw")

    class StopAfter(latent_run.StopSignals):  # as a Ctrl-C after 20 steps would
        checks = 0

        @property
        def requested(self):
            StopAfter.checks += 1
            return StopAfter.checks > 20

        @requested.setter
        def requested(self, value):
            pass

    monkeypatch.setattr(latent_run, "StopSignals", StopAfter)
    with pytest.raises(KeyboardInterrupt):
        train(config(tmp_path, bucky, tracking="none"), progress=False)
    checkpoint = tmp_path / "exp" / "lat" / "checkpoint.pt"
    assert torch.load(checkpoint, weights_only=True)["latent_fit"]["step"] == 20
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="other latent-grid options"):
        train(config(tmp_path, bucky, tracking="none", resume=checkpoint, latent_steps=61), progress=False)
    resumed = train(config(tmp_path, bucky, tracking="none", resume=checkpoint), progress=False)
    fresh = train(config(tmp_path, bucky, tracking="none", expname="fresh"), progress=False)
    assert resumed["file_bytes"] == fresh["file_bytes"] and resumed["psnr"] == pytest.approx(fresh["psnr"], abs=1e-9)
    with pytest.raises(ConfigError, match="not an interrupted latent-grid run"):  # the finished run's checkpoint
        train(config(tmp_path, bucky, tracking="none", resume=checkpoint), progress=False)


@pytest.mark.parametrize("extra, message", [
    ({"target_file_ratio": 0}, "set target_file_ratio .* or an error bound alone"),
    ({"dropout_technique": "binary"}, "network = latent"),
    ({"features_per_layer": 16}, "sized from target_file_ratio"),
])
def test_what_a_latent_run_does_not_do_is_one_line(tmp_path, extra, message):
    with pytest.raises(ConfigError, match=message):
        config(tmp_path, tmp_path / "v.npy", **extra)


def test_a_file_too_small_for_the_network_is_one_line(tmp_path):
    with pytest.raises(InputError, match="lower the ratio"):
        train(config(tmp_path, shared_volume("bucky_32x32x32_uint8.raw"), tracking="none", target_file_ratio=3000),
              progress=False)


def test_a_bounded_run_and_a_bounded_reencoding_keep_the_bound_at_every_voxel(tmp_path):
    """max_rel_error with network = latent: the file holds the corrections, the decoder (whole volume
    and a --region box) keeps the bound at every voxel; NeurcompQuantization.py adds a tighter bound
    to the trained network; a --resolution decode leaves the corrections (the file's grid) out."""
    bucky = shared_volume("bucky_32x32x32_uint8.raw")
    truth = np.fromfile(bucky, np.uint8).reshape(32, 32, 32).astype(np.float64)
    info = train(config(tmp_path, bucky, tracking="none", max_rel_error=0.02), progress=False)
    out = tmp_path / "exp" / "lat"
    bound = 0.02 * 255
    assert info["error_bound"] == pytest.approx(bound) and info["corrections"] > 0
    assert info["max_abs_error"] <= bound and info["file_bytes"] > info["network_bytes"]
    metrics = out / "m.json"
    done = run_script("NeurcompDequantization.py", "--compressed_file", out / "lat.nclg", "--volume", bucky,
                      "--decompressed_file", out / "d.npy", "--metrics_json", metrics)
    assert done.returncode == 0, done.stderr
    m = json.loads(metrics.read_text())
    assert m["bound_held"] and m["error_bound"] == pytest.approx(bound) and m["max_abs_error"] <= bound
    assert m["psnr"] == pytest.approx(info["psnr"], abs=1e-6)
    done = run_script("NeurcompDequantization.py", "--compressed_file", out / "lat.nclg", "--region",
                      3, 20, 0, 9, 5, 32, "--decompressed_file", out / "box.npy")
    assert done.returncode == 0, done.stderr
    assert np.abs(np.load(out / "box.npy") - truth[5:32, 0:9, 3:20]).max() <= bound
    done = run_script("NeurcompDequantization.py", "--compressed_file", out / "lat.nclg", "--resolution", 16, 16, 16,
                      "--decompressed_file", out / "half.npy")  # the corrections belong to the file's own grid
    assert done.returncode == 0, done.stderr
    assert np.load(out / "half.npy").shape == (16, 16, 16)

    done = run_script("NeurcompQuantization.py", "--config", out / "config.txt", "--max_rel_error", 0.005)
    assert done.returncode == 0, done.stderr
    tighter = out / "lat_bounded.nclg"
    assert tighter.stat().st_size > info["file_bytes"]
    done = run_script("NeurcompDequantization.py", "--compressed_file", tighter, "--volume", bucky,
                      "--decompressed_file", out / "t.npy", "--metrics_json", metrics)
    assert done.returncode == 0, done.stderr
    m = json.loads(metrics.read_text())
    assert m["bound_held"] and m["max_abs_error"] <= 0.005 * 255


def test_a_bound_alone_searches_the_latent_files_size_and_keeps_the_bound(tmp_path):
    """max_rel_error without target_file_ratio (training.bound_search): whole fits at ratios
    LATENT_START x 2^k, and the smallest file (latents plus corrections) is the run's."""
    from neurcomp.training import bound_search

    bucky = shared_volume("bucky_32x32x32_uint8.raw")
    truth = np.fromfile(bucky, np.uint8).reshape(32, 32, 32).astype(np.float64)
    cfg = config(tmp_path, bucky, tracking="none", target_file_ratio=0, max_rel_error=0.05)
    assert bound_search.applies(cfg) and cfg.network.network == "latent"
    info = train(cfg, progress=False)
    search = info["bound_search"]
    sizes = {c["target_file_ratio"]: c["file_bytes"] for c in search["candidates"] if c["file_bytes"]}
    chosen = search["chosen_target_file_ratio"]
    assert search["network"] == "latent" and len(search["candidates"]) >= 2 and sizes
    assert info["file_bytes"] == sizes[chosen] == min(sizes.values())
    assert all(c["corrections"] >= 0 and c["network_bytes"] < c["file_bytes"] for c in search["candidates"]
               if c["file_bytes"])
    out = tmp_path / "exp" / "lat"
    assert np.abs(api_decompress(out / "lat.nclg") - truth).max() <= 0.05 * 255
    assert f"target_file_ratio = {chosen:g}" in (out / "config.txt").read_text().replace(".0\n", "\n")
    resumed = config(tmp_path, bucky, tracking="none", target_file_ratio=0, max_rel_error=0.05,
                     resume=out / "checkpoint.pt")
    assert bound_search.resumed_ratio(resumed).target_file_ratio == chosen
    assert not list(out.glob(bound_search.SEARCH_FOLDER))  # the candidates' folders are gone


def test_fits_shared_across_bounds_are_fitted_once_and_give_the_same_files(tmp_path):
    """choose_latent_ratio(fits=...): the fit does not depend on the bound, so a second bound's
    search reuses every size the first one fitted, and its file is the one a fresh search finds."""
    from neurcomp.training import bound_search

    nucleon = shared_volume("nucleon_41x41x41_uint8.raw")
    fits = {}

    def search(rel, fits):
        cfg = config(tmp_path, nucleon, tracking="none", target_file_ratio=0, max_rel_error=rel, latent_steps=40)
        return bound_search.choose_latent_ratio(cfg, False, fits=fits)[1]

    first = search(0.05, fits)
    assert not any(c.get("reused") for c in first["candidates"]) and len(fits) == len(first["candidates"])
    assert any(c["file_bytes"] is None for c in first["candidates"])  # a failed size is remembered too
    shared, fresh = search(0.1, fits), search(0.1, None)
    fitted = {c["target_file_ratio"] for c in first["candidates"]}
    assert all(c.get("reused") == (c["target_file_ratio"] in fitted) for c in shared["candidates"])
    assert [(c["target_file_ratio"], c["file_bytes"]) for c in shared["candidates"]] == \
        [(c["target_file_ratio"], c["file_bytes"]) for c in fresh["candidates"]]


def api_decompress(path):
    from neurcomp.compressors import api

    return api.decompress(path).astype(np.float64)


def test_reencoding_a_latent_run_without_a_bound_is_one_line(tmp_path):
    bucky = shared_volume("bucky_32x32x32_uint8.raw")
    train(config(tmp_path, bucky, tracking="none", latent_steps=20), progress=False)
    done = run_script("NeurcompQuantization.py", "--config", tmp_path / "exp" / "lat" / "config.txt")
    assert done.returncode != 0 and "max_abs_error" in done.stderr and "Traceback" not in done.stderr


def test_the_upsampler_option_reaches_the_file_and_its_default_is_the_fits(tmp_path):
    from neurcomp.config.schema import NetworkConfig
    from neurcomp.quantization import latent_format

    assert NetworkConfig().latent_upsampler == LatentFitOptions().upsampler
    bucky = shared_volume("bucky_32x32x32_uint8.raw")
    for upsampler in ("linear", "cubic"):
        cfg = config(tmp_path / upsampler, bucky, tracking="none", latent_steps=30, latent_upsampler=upsampler)
        train(cfg, progress=False)
        model, _, _ = latent_format.decode((tmp_path / upsampler / "exp" / "lat" / "lat.nclg").read_bytes())
        assert model.upsampler == upsampler
    with pytest.raises(ConfigError, match="latent_upsampler"):
        config(tmp_path, bucky, latent_upsampler="nearest")


def test_target_file_ratio_picks_the_network_that_wins_at_that_ratio_unless_one_is_set(tmp_path):
    from neurcomp.config.options import LATENT_FROM_RATIO
    from neurcomp.config.schema import NetworkConfig, options_of

    help_text = dict(options_of(NetworkConfig))["network"].help
    assert f"target_file_ratio >= {LATENT_FROM_RATIO:g}" in help_text

    bucky = shared_volume("bucky_32x32x32_uint8.raw")
    base = {"data": bucky, "basedir": tmp_path / "exp", "expname": "auto", "tracking": "none"}
    parse = lambda **o: parse_config([f"--{k}={v}" for k, v in {**base, **o}.items()]).network.network
    assert parse(target_file_ratio=LATENT_FROM_RATIO) == "latent"
    assert parse(target_file_ratio=LATENT_FROM_RATIO / 2) == "neurcomp"
    assert parse(target_file_ratio=LATENT_FROM_RATIO, network="neurcomp") == "neurcomp"  # an explicit choice stays
    assert parse(target_file_ratio=LATENT_FROM_RATIO, grad_lambda=0.1) == "neurcomp"  # what only Neurcomp does
    assert parse(compression_ratio=LATENT_FROM_RATIO) == "neurcomp"  # a network size, not a file size
    config_file = tmp_path / "c.txt"
    config_file.write_text(f"network = neurcomp\ntarget_file_ratio = {LATENT_FROM_RATIO}\n")
    assert parse_config(["--config", str(config_file), f"--data={bucky}"]).network.network == "neurcomp"
