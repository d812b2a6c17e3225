"""lr = auto and the loop's recovery: learning rate from the network, mean start, minimum steps,
divergence recovered with the best state kept (training.recipe, training.validation, training.trainer)."""

import math

import numpy as np
import pytest
import torch

from neurcomp.config.options import OptimConfig, parse_config
from neurcomp.data.readers import read_volume
from neurcomp.model.architecture import Architecture
from neurcomp.model.neurcomp import Neurcomp
from neurcomp.training import phases as phases_module
from neurcomp.training import session as session_module
from neurcomp.data.volume import VolumeInfo
from neurcomp.training.checkpoint import read_checkpoint
from neurcomp.model.inference import predict_volume
from neurcomp.training.recipe import auto_learning_rate, learning_rate, schedule_steps
from neurcomp.training.run import train
from neurcomp.training.trainer import Trainer
from neurcomp.data.volume import mean_value
from neurcomp.training.validation import ValidationSet, gather_voxels


def config(tmp_path, volume, **extra) -> list[str]:
    opts = {"data": volume, "basedir": tmp_path / "exp", "expname": "r", "features_per_layer": 12, "n_layers": 2,
            "max_pass": 6, "batch_size": 64, "sample_size": 16, "pass_decay": 2, "lr_decay": 0.5,
            "checkpoint_every": 0, "tracking": "none", "min_steps": 40, **extra}
    return [a for k, v in opts.items() for a in (f"--{k}", str(v))]


def test_auto_lr_follows_the_network():
    narrow, wide = Architecture.uniform(10, 4), Architecture.uniform(80, 4)
    assert auto_learning_rate(narrow) > auto_learning_rate(wide)
    assert auto_learning_rate(narrow) == pytest.approx(8 * auto_learning_rate(wide))
    assert auto_learning_rate(narrow, grad_lambda=0.1) < auto_learning_rate(narrow)
    deep = Architecture.uniform(10, 8)
    assert auto_learning_rate(deep) < auto_learning_rate(narrow)
    slow = Architecture.uniform(10, 4, omega_0=15.0)
    assert auto_learning_rate(slow) == pytest.approx(2 * auto_learning_rate(narrow))
    # an explicit lr is taken as it is
    assert learning_rate(OptimConfig(lr=3e-4), wide) == 3e-4
    assert learning_rate(OptimConfig(lr=None), wide) == auto_learning_rate(wide)


def test_config_lr_auto_is_default_and_explicit_lr_kept(tmp_path):
    assert parse_config(["--data", "x.npy"]).optim.auto
    assert parse_config(["--data", "x.npy", "--lr", "auto"]).optim.lr is None
    assert parse_config(["--data", "x.npy", "--lr", "2e-4"]).optim.lr == 2e-4
    from neurcomp.config.errors import ConfigError
    for bad in ("inf", "nan", "-1"):
        with pytest.raises(ConfigError, match="lr"):
            parse_config(["--data", "x.npy", "--lr", bad])


def test_minimum_steps_only_with_auto():
    small = 41 ** 3
    auto = OptimConfig(lr=None, max_pass=75, min_steps=2000)
    steps, per_pass = schedule_steps(auto, small)
    assert steps == 2000 and per_pass == pytest.approx(2000 / 75)
    explicit = OptimConfig(lr=5e-4, max_pass=75, min_steps=2000)
    steps, per_pass = schedule_steps(explicit, small)  # the original's pass-based count
    assert steps == math.ceil(75 * small / 16384) and per_pass == pytest.approx(small / 16384)
    big = 255 ** 3  # the original's volumes are unaffected
    assert schedule_steps(auto, big) == schedule_steps(explicit, big)


def test_auto_starts_at_the_mean_and_explicit_lr_does_not(tmp_path, tiny_volume):
    volume = read_volume(tiny_volume)
    info = VolumeInfo.from_volume(volume)
    mean = float(volume.values.mean())
    for lr, starts_at_mean in (("auto", True), ("1e-3", False)):
        cfg = parse_config(config(tmp_path, tiny_volume, lr=lr))
        torch.manual_seed(0)
        model = Neurcomp(Architecture.uniform(12, 2))
        before = model.output.bias.clone()
        phases_module.start_at_mean(cfg, model, volume, info)
        pred = predict_volume(model, volume.shape, info)
        if starts_at_mean:
            assert abs(float(pred.mean()) - mean) < 0.1 * (info.vmax - info.vmin)
        else:
            assert torch.equal(model.output.bias, before)


def test_validation_sample_is_fixed_and_matches_the_grid(tiny_volume):
    volume = read_volume(tiny_volume)
    a = ValidationSet(volume.values, volume.vmin, volume.vmax, "cpu", seed=3, num_points=500)
    b = ValidationSet(volume.values, volume.vmin, volume.vmax, "cpu", seed=3, num_points=500)
    assert torch.equal(a.coords, b.coords) and len(a) == 500
    # exactly the coordinates full-volume inference gives the same voxels
    from neurcomp.model.inference import grid_coordinates
    full = ValidationSet(volume.values, volume.vmin, volume.vmax, "cpu", num_points=10 ** 6)  # every voxel
    assert torch.equal(full.coords, grid_coordinates(volume.shape, slice(None), "cpu"))
    # a voxel's coordinate maps back to the value stored there
    nz, ny, nx = volume.shape
    c = a.coords[0].numpy()
    ix, iy, iz = (int(round((c[k] + 1) / 2 * (n - 1))) for k, n in enumerate((nx, ny, nz)))
    expected = 2 * (volume.values[iz, iy, ix] - volume.vmin) / (volume.vmax - volume.vmin) - 1
    assert float(a.targets[0]) == pytest.approx(float(expected), abs=1e-6)
    assert mean_value(volume.values) == pytest.approx(float(volume.values.astype(np.float64).mean()))
    iz, iy, ix = np.array([0, 5, 11]), np.array([1, 2, 13]), np.array([15, 0, 3])
    assert np.allclose(gather_voxels(volume.values, iz, iy, ix), volume.values[iz, iy, ix])


def test_validation_does_not_change_the_training_stream(tmp_path, tiny_volume, monkeypatch):
    """The original's configs (explicit lr) train the same steps with or without the validation sample."""
    a = train(parse_config(config(tmp_path, tiny_volume, lr="1e-3", expname="a")), progress=False)
    monkeypatch.setattr(session_module, "validation_set", lambda *args: None)
    b = train(parse_config(config(tmp_path, tiny_volume, lr="1e-3", expname="b")), progress=False)
    ha = read_checkpoint(tmp_path / "exp" / "a" / "checkpoint.pt")["trainer"]["history"]
    hb = read_checkpoint(tmp_path / "exp" / "b" / "checkpoint.pt")["trainer"]["history"]
    assert [h["loss"] for h in ha] == [h["loss"] for h in hb]
    assert a["steps"] == b["steps"] == math.ceil(6 * 12 * 14 * 16 / 1024)


def test_diverging_run_recovers_and_keeps_its_best(tmp_path, tiny_volume, monkeypatch):
    """A learning rate forced far too high for a few steps: the run restores its best state, halves
    the lr, goes on, and ends no worse than before the blow-up."""
    real = Trainer.scheduled_lr
    seen = {}

    def sabotaged(self):
        if 20 <= self.step < 24 and self.recoveries == 0:
            return 5.0
        return real(self)

    original_recover = Trainer._recover

    def recover(self, reason, bar=None):
        seen.setdefault("best_before", self.best["val_mse"])
        return original_recover(self, reason, bar)

    monkeypatch.setattr(Trainer, "scheduled_lr", sabotaged)
    monkeypatch.setattr(Trainer, "_recover", recover)
    info = train(parse_config(config(tmp_path, tiny_volume, lr="auto")), progress=False)
    assert info["recoveries"] >= 1 and info["lr_scale_final"] == pytest.approx(0.5 ** info["recoveries"])
    state = read_checkpoint(tmp_path / "exp" / "r" / "checkpoint.pt")["trainer"]
    final_mse = min(m for _, m in state["validation_log"][-1:])
    assert final_mse <= seen["best_before"] * 1.0001
    assert math.isfinite(info["psnr"])


def test_best_state_is_what_is_written(tmp_path, tiny_volume):
    info = train(parse_config(config(tmp_path, tiny_volume, lr="auto", expname="best")), progress=False)
    state = read_checkpoint(tmp_path / "exp" / "best" / "checkpoint.pt")["trainer"]
    best = min(m for _, m in state["validation_log"])
    assert state["best"]["val_mse"] == best
    assert info["best_step"] == state["best"]["step"]
    assert info["lr_auto"] is True and info["lr"] == pytest.approx(auto_learning_rate(Architecture.uniform(12, 2)))


def test_run_that_cannot_recover_ends_in_one_line(tmp_path, tiny_volume):
    from tests.conftest import run_script

    args = config(tmp_path, tiny_volume, lr="1e6", max_pass=40)
    proc = run_script("NeurcompTraining.py", *args)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr
    assert last.startswith("error: train:") and "after 8 restores" in last
    assert "No checkpoint was written" in last
    # with periodic checkpoints, the message names the last good one, and it holds finite weights
    proc = run_script("NeurcompTraining.py", *config(tmp_path, tiny_volume, lr="1e6", max_pass=40, checkpoint_every=1,
                                                      expname="ck"))
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "The last good checkpoint is" in last
    state = read_checkpoint(tmp_path / "exp" / "ck" / "checkpoint.pt")
    assert all(torch.isfinite(v).all() for v in state["model_state"].values())


@pytest.mark.slow
def test_quickstart_convinces(tmp_path):
    """The README's first command: the bundled volume and quickstart.txt reach at least 35 dB."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    args = ["--config", str(repo / "experiment-config-files" / "quickstart.txt"), "--basedir", str(tmp_path),
            "--tracking", "none", "--data", str(repo / "datasets" / "marschner_lobb_f3_64.npy")]
    info = train(parse_config(args), progress=False)
    assert info["lr_auto"] and info["steps"] == 1200
    assert info["psnr"] >= 35.0
    assert (tmp_path / "quickstart" / "slices.png").stat().st_size > 10_000
