"""The shared config definition: original option names, typed values, errors naming key and file."""

import pytest

from config.errors import ConfigError
from config.options import build_parser, format_config_file, parse_config
from model.pruning.smallify import SmallifyOptions
from model.pruning.variational import VariationalOptions
from tests.conftest import run_script

ORIGINAL_CONFIG = """\
expname = mhd_p_original
data = volume.npy
basedir = ./experiments/
Tensorboard_log_dir = runs/
d_in = 3
d_out = 1
grad_lambda = 0
n_layers = 4
checkpoint_path =
feature_list = [32, 32, 32, 32]
use_resnet = True
omega_0 = 30
lr = 1.7e-4
max_pass = 100
pass_decay = 20
lr_decay = 0.2
smallify_decay = 0
compression_ratio = 100
features_per_layer = 0
batch_size = 2048
sample_size = 16
num_workers = 8
dropout_technique = smallify
lambda_betas = 1e-6
lambda_weights = 5e-6
pruning_momentum = 0.025
pruning_threshold = 0.75
variational_sigma = -2.5
variational_init_droprate = 0.1
variational_dkl_multiplier = 5e-5
variational_lambda_dkl = 3
variational_lambda_weight = 1
variational_lambda_entropy = 1
"""


def write(tmp_path, text, name="c.txt"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_original_option_names_parse(tmp_path):
    cfg = parse_config(["--config", str(write(tmp_path, ORIGINAL_CONFIG))])
    assert cfg.expname == "mhd_p_original"
    assert cfg.network.feature_list == [32, 32, 32, 32] and cfg.network.residual
    assert cfg.optim.lr == pytest.approx(1.7e-4) and cfg.optim.points_per_step == 2048 * 16
    assert cfg.pruning.technique == "smallify" and cfg.pruning.options(SmallifyOptions).momentum == pytest.approx(0.025)
    assert cfg.pruning.options(SmallifyOptions).threshold == pytest.approx(0.75)
    assert cfg.pruning.options(VariationalOptions).lambda_entropy == 1
    assert cfg.tensorboard_dir == "runs/"


def test_command_line_overrides_file(tmp_path):
    cfg = parse_config(["--config", str(write(tmp_path, ORIGINAL_CONFIG)), "--lr", "1e-3", "--dont_use_resnet"])
    assert cfg.optim.lr == pytest.approx(1e-3)
    assert not cfg.network.residual


def test_written_config_round_trips(tmp_path):
    cfg = parse_config(["--config", str(write(tmp_path, ORIGINAL_CONFIG)), "--raw_shape", "4", "5", "6",
                        "--dont_use_resnet", "--seed", "7"])
    again = parse_config(["--config", str(write(tmp_path, format_config_file(cfg.flat()), "out.txt"))])
    assert again.to_dict() | {"source": ""} == cfg.to_dict() | {"source": ""}


@pytest.mark.parametrize("text, match", [
    ("lrr = 1\n", r"unknown key 'lrr' \(did you mean 'lr'\?\)"),
    ("lr = fast\n", r"argument --lr: expected a number or auto"),
    ("compression_ratio = -3\n", r"compression_ratio = -3.0 is invalid"),
    ("max_pass = 0\n", r"max_pass = 0.0 is invalid"),
    ("dropout_technique = magic\n", r"dropout_technique = 'magic' is invalid"),
    ("feature_list = [8, 8]\n", r"feature_list .* needs n_layers = 8"),
    ("tracking = wandb\n", r"tracking"),
])
def test_bad_values_name_key_and_file(tmp_path, text, match):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=match) as info:
        parse_config(["--config", str(path)])
    assert str(info.value).startswith(str(path))


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        parse_config(["--config", str(tmp_path / "nope.txt")])


def test_every_option_has_help():
    for action in build_parser()._actions:
        assert action.help, action.dest


def test_cli_bad_config_is_one_line_without_traceback(tmp_path):
    path = write(tmp_path, "max_pass = 0\n")
    proc = run_script("NeurcompTraining.py", "--config", path)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and str(path) in proc.stderr
