"""NeurcompVisualization.py: refusals come before any file is written (issue 12.9, 12.10)."""

import numpy as np
import pytest
import torch

from neurcomp.config.cli import run_cli
from neurcomp.config.errors import ConfigError, InputError
from neurcomp.model.architecture import Architecture
from neurcomp.model.neurcomp import Neurcomp
from neurcomp.training import visualize
from neurcomp.data.volume import VolumeInfo
from neurcomp.training.checkpoint import save_checkpoint
from neurcomp.training.visualize import visualize_main


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """An (untrained) network's checkpoint for a 12 x 14 x 16 volume: (folder, its config file)."""
    tmp = tmp_path_factory.mktemp("vis")
    z, y, x = np.meshgrid(np.linspace(-1, 1, 12), np.linspace(-1, 1, 14), np.linspace(-1, 1, 16), indexing="ij")
    values = ((np.sin(2 * x) * np.cos(3 * y) + 0.5 * z ** 2) * 10 + 3).astype(np.float32)
    np.save(tmp / "tiny.npy", values)
    opts = {"data": tmp / "tiny.npy", "basedir": tmp / "exp", "expname": "v", "tracking": "none", "device": "cpu"}
    (tmp / "v.txt").write_text("".join(f"{k} = {v}\n" for k, v in opts.items()))
    (tmp / "exp" / "v").mkdir(parents=True)
    torch.manual_seed(0)
    info = VolumeInfo(shape=values.shape, spacing=(1.0, 1.0, 1.0), vmin=float(values.min()), vmax=float(values.max()))
    save_checkpoint(tmp / "exp" / "v" / "checkpoint.pt", Neurcomp(Architecture.uniform(8, 2)), info)
    return tmp, str(tmp / "v.txt")


def test_writes_prediction_and_ground_truth(trained, tmp_path):
    _, config = trained
    metrics = visualize_main(["--config", config, "--output_dir", str(tmp_path / "new" / "folder")])
    assert {p.name for p in (tmp_path / "new" / "folder").iterdir()} == {"prediction.vti", "ground_truth.vti"}
    assert np.isfinite(metrics["psnr"])


@pytest.mark.parametrize("where", ["file", "below_file"])
def test_output_dir_on_a_file_is_one_line(trained, tmp_path, capsys, where):
    _, config = trained
    (tmp_path / "taken").write_text("not a folder")
    target = tmp_path / "taken" if where == "file" else tmp_path / "taken" / "sub" / "dir"
    with pytest.raises(InputError, match=r"--output_dir .*taken.*not a folder"):
        visualize_main(["--config", config, "--output_dir", str(target)])
    assert run_cli(visualize_main, ["--config", config, "--output_dir", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --output_dir") and err.count("\n") == 1 and "Traceback" not in err
    assert (tmp_path / "taken").read_text() == "not a folder"


def test_mismatched_data_refused_before_writing(trained, tmp_path):
    tmp, config = trained
    out = tmp_path / "out"
    out.mkdir()
    (out / "prediction.vti").write_text("an earlier prediction")
    np.save(tmp_path / "other.npy", np.arange(10 * 14 * 16, dtype=np.float32).reshape(10, 14, 16))
    with pytest.raises(InputError, match=r"other\.npy: shape \(10, 14, 16\) differs .* \(12, 14, 16\)"):
        visualize_main(["--config", config, "--data", str(tmp_path / "other.npy"), "--output_dir", str(out)])
    assert (out / "prediction.vti").read_text() == "an earlier prediction"
    assert [p.name for p in out.iterdir()] == ["prediction.vti"]


def test_resolution_that_cannot_fit_in_memory_is_refused(trained, tmp_path, monkeypatch):
    _, config = trained
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=r"--resolution 100000 100000 100000 is too large: .*GiB"):
        visualize_main(["--config", config, "--resolution", "100000", "100000", "100000", "--output_dir", str(out)])
    assert not out.exists()
    # the limit is the machine's memory: 40^3 voxels fit in 1 MiB, not in 100 kiB
    monkeypatch.setattr(visualize, "machine_memory", lambda: 100 * 1024)
    with pytest.raises(ConfigError, match="--resolution 40 40 40 is too large"):
        visualize_main(["--config", config, "--resolution", "40", "40", "40", "--output_dir", str(out)])
    monkeypatch.setattr(visualize, "machine_memory", lambda: 1 << 20)
    visualize_main(["--config", config, "--resolution", "40", "40", "40", "--output_dir", str(out)])
    assert [p.name for p in out.iterdir()] == ["prediction_40x40x40.vti"]
    with pytest.raises(ConfigError, match="--resolution 1 40 40 is invalid"):
        visualize_main(["--config", config, "--resolution", "1", "40", "40", "--output_dir", str(out)])
