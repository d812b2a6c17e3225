"""The bundled Marschner-Lobb default volume: values, generation on first use and the CLI."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from neurcomp.data.readers import read_volume
from neurcomp.datasets import DEFAULT_VOLUME, GENERATED_VOLUMES, ensure_default_volume
from neurcomp.datasets.marschner_lobb import marschner_lobb

REPO = Path(__file__).resolve().parents[1]


def test_known_values():
    values = marschner_lobb((5, 5, 5))  # odd size: the centre (0, 0, 0) is a grid point
    assert values.dtype == np.float32 and values.shape == (5, 5, 5)
    # rho_r(0) = cos(12 pi) = 1, so at x = y = 0: rho = (1 - sin(pi z / 2) + 0.5) / 2.5
    assert values[2, 2, 2] == pytest.approx(0.6)  # z = 0
    assert values[0, 2, 2] == pytest.approx(1.0)  # z = -1 is index 0 of the (Z, Y, X) array
    assert values[4, 2, 2] == pytest.approx(0.2)  # z = +1
    assert values[0, 2, 4] == pytest.approx(1.0)  # r = 1: rho_r = cos(0) = 1


def test_default_shape_and_range():
    values = marschner_lobb((64, 64, 64))
    assert values.shape == (64, 64, 64)
    assert 0.0 <= values.min() < 0.05 and 0.95 < values.max() <= 1.0


def test_registry_names_the_default():
    assert DEFAULT_VOLUME.name == "marschner_lobb_f3_64.npy"
    assert GENERATED_VOLUMES["marschner_lobb_64.npy"][1] == (64, 64, 64)
    generate, shape = GENERATED_VOLUMES[DEFAULT_VOLUME.name]
    assert shape == (64, 64, 64)
    np.testing.assert_array_equal(generate((9, 9, 9)), marschner_lobb((9, 9, 9), f_m=3.0))
    # f_M = 3 is half the standard ripple: its values differ from the standard signal off the axis
    assert not np.array_equal(generate((9, 9, 9)), marschner_lobb((9, 9, 9)))


def test_ensure_generates_once(tmp_path):
    path = tmp_path / "marschner_lobb_32.npy"
    assert ensure_default_volume(path) is True
    assert ensure_default_volume(path) is False
    assert ensure_default_volume(tmp_path / "something_else.npy") is False
    assert not (tmp_path / "something_else.npy").exists()
    np.testing.assert_array_equal(np.load(path), marschner_lobb((32, 32, 32)))


def test_training_loader_generates_missing_default(tmp_path):
    from neurcomp.config.options import parse_config
    from neurcomp.training.session import load_training_volume

    volume = load_training_volume(parse_config(["--data", str(tmp_path / "sub" / "marschner_lobb_64.npy")]))
    assert volume.shape == (64, 64, 64) and volume.source_dtype == "float32"
    np.testing.assert_array_equal(volume.values, marschner_lobb((64, 64, 64)))


def test_cli(tmp_path):
    output = tmp_path / "ml_8.npy"
    result = subprocess.run(
        [sys.executable, "-m", "neurcomp.datasets.marschner_lobb", "--size", "8", "--output", str(output)],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0 and "Warning" not in result.stderr, result.stderr
    np.testing.assert_array_equal(np.load(output), marschner_lobb((8, 8, 8)))


def test_generated_files_are_gitignored():
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    result = subprocess.run(["git", "check-ignore", "-q", "datasets/marschner_lobb_64.npy"], cwd=REPO)
    assert result.returncode == 0
