"""Hostile option values (issue 12 items 10-13): each is one ConfigError naming the value's source."""

import os

import pytest

from neurcomp.config.errors import ConfigError
from neurcomp.config.limits import machine_memory, resolve_basedir
from neurcomp.config.options import parse_config
from tests.conftest import run_script


def write(tmp_path, text, name="c.txt"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("args, match", [
    (["--max_pass", "inf"], r"^command line: max_pass = inf is invalid"),
    (["--sample_size", "1e9"], r"^command line: argument --sample_size: invalid int value: '1e9'"),
    (["--max_pass", "nan"], r"^command line: max_pass = nan is invalid"),
    (["--pass_decay", "inf"], r"^command line: pass_decay = inf is invalid"),
    (["--d_in", "2"], r"^command line: d_in = 2 is invalid: only 3"),
    (["--d_out", "3"], r"^command line: d_out = 3 is invalid: only 1"),
    (["--smallify_decay", "0.5"], r"^command line: argument --smallify_decay: invalid int value: '0.5'"),
    (["--expname", "../../x"], r"^command line: expname = '../../x' is invalid"),
    (["--expname", "a/b"], r"^command line: expname = 'a/b' is invalid"),
    (["--expname", "a\\b"], r"expname = .* is invalid"),
    (["--expname", ".."], r"expname = '..' is invalid"),
    (["--expname", ""], r"expname = '' is invalid"),
    (["--tracking", "mlflow,wandb"], r"tracking = 'mlflow,wandb' is invalid"),
    (["--resume", "no_such_checkpoint.pt"], r"resume = 'no_such_checkpoint.pt': no such checkpoint"),
])
def test_refused_on_the_command_line(args, match):
    with pytest.raises(ConfigError, match=match):
        parse_config(["--data", "x.npy", *args])


def test_smallify_decay_must_be_whole():
    assert parse_config(["--smallify_decay", "3"]).optim.smallify_decay == 3
    assert parse_config(["--smallify_decay", "0"]).optim.smallify_decay == 0
    with pytest.raises(ConfigError, match="smallify_decay"):
        parse_config(["--smallify_decay", "-1"])


def test_error_names_the_command_line_when_it_overrides_the_file(tmp_path):
    path = write(tmp_path, "lr = 5e-4\nmax_pass = 10\n")
    with pytest.raises(ConfigError) as info:
        parse_config(["--config", str(path), "--lr", "-1"])
    assert str(info.value).startswith("command line: lr = -1")
    with pytest.raises(ConfigError) as info:  # and the file when the file's value is bad
        parse_config(["--config", str(write(tmp_path, "lr = -1\n", "d.txt")), "--max_pass", "5"])
    assert str(info.value).startswith(f"{tmp_path / 'd.txt'}: lr = -1")
    with pytest.raises(ConfigError) as info:  # a type error on the command line, the key also in the file
        parse_config(["--config", str(path), "--max_pass", "many"])
    assert str(info.value).startswith("command line: argument --max_pass")


def test_binary_config_file_is_one_line(tmp_path):
    path = tmp_path / "c.txt"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ConfigError, match="not a text config file"):
        parse_config(["--config", str(path)])
    proc = run_script("NeurcompTraining.py", "--config", path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "not a text config file" in proc.stderr


def test_folder_as_config_says_folder(tmp_path):
    with pytest.raises(ConfigError, match=f"^{tmp_path}: is a folder, not a config file"):
        parse_config(["--config", str(tmp_path)])


@pytest.mark.skipif(machine_memory() is None, reason="machine memory unknown here: the check is skipped")
@pytest.mark.parametrize("args, key", [
    (["--sample_size", "1000000000"], "sample_size"),
    (["--batch_size", "1000000000"], "batch_size"),
    (["--features_per_layer", "100000"], "features_per_layer"),
])
def test_runs_that_cannot_fit_are_refused_before_allocating(args, key):
    with pytest.raises(ConfigError, match=rf"^command line: {key} = \d+ is invalid: .* GiB, this machine has"):
        parse_config(["--data", "x.npy", *args])


def test_sensible_runs_pass_the_memory_check():
    cfg = parse_config(["--data", "x.npy", "--features_per_layer", "512", "--batch_size", "4096"])
    assert cfg.network.features_per_layer == 512


def test_basedir_from_an_original_config_stays_in_the_working_directory(tmp_path):
    path = write(tmp_path, "expname = basic\nbasedir = /experiments/Tests/mhd_p/\n")
    cfg = parse_config(["--config", str(path)])
    assert not os.path.isabs(cfg.basedir) and cfg.experiment_dir.as_posix() == "experiments/Tests/mhd_p/basic"
    # an absolute folder whose top-level folder exists is meant as such, existing or not
    path = write(tmp_path, f"basedir = {tmp_path}\n", "d.txt")
    assert parse_config(["--config", str(path)]).basedir == str(tmp_path)
    path = write(tmp_path, f"basedir = {tmp_path / 'new' / 'exp'}\n", "e.txt")
    assert parse_config(["--config", str(path)]).basedir == str(tmp_path / "new" / "exp")
    # the command line is taken as given
    missing = str(tmp_path / "no" / "such" / "folder")  # absolute, not created
    assert parse_config(["--basedir", missing]).basedir == missing
    assert resolve_basedir("/", from_file=True) in (".", "/")


def test_new_options_of_other_helpers(tmp_path):
    cfg = parse_config([])
    assert (cfg.resume, cfg.data.raw_endian, cfg.quiet) == ("", "little", False)
    ckpt = write(tmp_path, "x", "ckpt.pt")
    cfg = parse_config(["--resume", str(ckpt), "--raw_endian", "big", "--quiet", "true"])
    assert (cfg.resume, cfg.data.raw_endian, cfg.quiet) == (str(ckpt), "big", True)
    with pytest.raises(ConfigError, match="raw_endian"):
        parse_config(["--raw_endian", "middle"])
    with pytest.raises(ConfigError, match="not both"):
        parse_config(["--resume", str(ckpt), "--checkpoint_path", str(ckpt)])


def test_original_threshold_is_checked_for_the_method_in_use_only(tmp_path):
    from neurcomp.model.pruning.smallify import SmallifyOptions

    cfg = parse_config(["--dropout_technique", "smallify", "--pruning_threshold", "1.5"])
    assert cfg.pruning.options(SmallifyOptions).threshold == 1.5  # a sign variance may exceed 1 in principle
    with pytest.raises(ConfigError, match=r"^command line: pruning_threshold = 1.5 is invalid: must be in \[0, 1\]"):
        parse_config(["--dropout_technique", "binary", "--pruning_threshold", "1.5"])
    with pytest.raises(ConfigError, match=r"binary_threshold = 1.5 is invalid"):  # its own name: always checked
        parse_config(["--binary_threshold", "1.5"])
    # an original name with one meaning is checked whatever the method
    with pytest.raises(ConfigError, match=r"pruning_momentum = 2.0 is invalid: must be in \[0, 1\]"):
        parse_config(["--pruning_momentum", "2"])
