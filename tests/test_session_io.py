"""What a training run prints and cleans up: log lines off a terminal, --quiet, stale temporaries,
and the raw_endian option reaching the reader."""

import json

import numpy as np
import pytest

from neurcomp.config.options import parse_config
from tests.conftest import run_script
from tests.test_training import tiny_config
from neurcomp.training.run import train


def test_log_lines_instead_of_a_bar_when_not_a_terminal(tmp_path, tiny_volume, capsys):
    train(parse_config(tiny_config(tmp_path, tiny_volume, max_pass=2)), progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err  # no bar redraws in a log file
    assert any(line.startswith("train: step ") and "/" in line for line in err.splitlines())


def test_quiet_prints_no_progress(tmp_path, tiny_volume, capsys):
    train(parse_config(tiny_config(tmp_path, tiny_volume, max_pass=2, quiet="true")), progress=True)
    err = capsys.readouterr().err
    assert "step " not in err and "\r" not in err


def test_stale_temporaries_removed_at_start(tmp_path, tiny_volume):
    out = tmp_path / "exp" / "tiny"
    out.mkdir(parents=True)
    stale = out / ".checkpoint.pt.999999999.0123abcd.tmp"  # a writer killed with kill -9 (no such pid)
    stale.write_bytes(b"half a checkpoint")
    foreign = out / "notes.tmp"  # not ours: kept
    foreign.write_text("keep")
    train(parse_config(tiny_config(tmp_path, tiny_volume, max_pass=1)), progress=False)
    assert not stale.exists() and foreign.exists()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp") and p != foreign]


def test_raw_endian_reaches_the_reader(tmp_path):
    values = np.linspace(0.0, 3.0, 6 * 7 * 8, dtype=np.float32).reshape(8, 7, 6) ** 2
    path = tmp_path / "vol_6x7x8_float32.raw"
    values.astype(">f4").tofile(path)
    info = train(parse_config(tiny_config(tmp_path, path, max_pass=1, raw_endian="big")), progress=False)
    assert info["volume_max"] == 9.0 and info["volume_min"] == 0.0
    stored = json.loads((tmp_path / "exp" / "tiny" / "info.json").read_text())
    assert stored["volume_max"] == 9.0


@pytest.mark.parametrize("extra, option", [
    ({"basedir": "{f}"}, "basedir/expname"),
    ({"basedir": "{f}/sub"}, "basedir/expname"),
    ({"basedir": "{d}", "expname": "afile"}, "basedir/expname"),
    ({"Tensorboard_log_dir": "{f}", "tracking": "tensorboard"}, "Tensorboard_log_dir"),
])
def test_unwritable_output_folders_are_one_line(tmp_path, tiny_volume, extra, option):
    (tmp_path / "afile").write_text("a file where a folder should be")
    extra = {k: v.format(f=tmp_path / "afile", d=tmp_path) for k, v in extra.items()}
    proc = run_script("NeurcompTraining.py", *tiny_config(tmp_path, tiny_volume, max_pass=1, **extra))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith(f"error: {option} ") and proc.stderr.strip().count("\n") == 0
