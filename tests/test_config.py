"""The shared config definition: original option names, typed values, errors naming key and file."""

from pathlib import Path

import pytest

from neurcomp.config.errors import ConfigError
from neurcomp.config.options import build_parser, format_config_file, parse_config
from neurcomp.model.pruning.smallify import SmallifyOptions
from neurcomp.model.pruning.variational import VariationalOptions
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
    assert again.flat() == cfg.flat()
    assert (again.network, again.optim, again.data, again.pruning, again.scaling) == \
        (cfg.network, cfg.optim, cfg.data, cfg.pruning, cfg.scaling)


@pytest.mark.parametrize("text, match", [
    ("lrr = 1\n", r"unknown key 'lrr' \(did you mean 'lr'\?\)"),
    ("lr = fast\n", r"argument --lr: expected a number or auto"),
    ("compression_ratio = -3\n", r"compression_ratio = -3.0 is invalid"),
    ("max_pass = 0\n", r"max_pass = 0.0 is invalid"),
    ("dropout_technique = magic\n", r"dropout_technique = 'magic' is invalid"),
    ("feature_list = [8, 8]\n", r"feature_list .* needs n_layers = 4"),
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


# -- options defined once, defaults of the original (issue 11.4, 13.4) ------------------------------
# The original parser's real defaults (its code, not its help texts; ../shared/original/README.md).
ORIGINAL_DEFAULTS = {
    "expname": None, "data": None, "basedir": "/experiments/", "Tensorboard_log_dir": "", "d_in": 3, "d_out": 1,
    "grad_lambda": 1e-3, "n_layers": 8, "checkpoint_path": "", "feature_list": None, "use_resnet": True,
    "omega_0": 30, "lr": 5e-4, "max_pass": 75, "pass_decay": 20, "lr_decay": 0.2, "smallify_decay": 0,
    "compression_ratio": 50, "features_per_layer": 0, "batch_size": 1024, "sample_size": 16, "num_workers": 8,
    "dropout_technique": "", "lambda_betas": 0.05, "lambda_weights": 5e-6,
    # pruning_momentum / pruning_threshold set each method's own option (original default 0.02 / 0.9)
    "smallify_momentum": 0.02, "smallify_threshold": 0.9, "variational_threshold": 0.9, "binary_threshold": 0.9,
    "variational_sigma": 0.0, "variational_init_droprate": 0.5, "variational_dkl_multiplier": 1e-8,
    "variational_lambda_dkl": 1e-5, "variational_lambda_weight": 1e-5, "variational_lambda_entropy": 1e-5,
}
DOCUMENTED_DEVIATIONS = {"expname", "data", "basedir", "lr", "binary_threshold", "grad_lambda", "n_layers"}


def all_options():
    from neurcomp.config.fields import options_of
    from neurcomp.config.schema import sections

    return {opt.name: opt for cls, _ in sections() for _, opt in options_of(cls)}


def test_defaults_are_the_originals():
    import config.schema

    options = all_options()
    assert set(ORIGINAL_DEFAULTS) <= set(options)
    deviating = set()
    for name, original in ORIGINAL_DEFAULTS.items():
        opt = options[name]
        assert opt.original == original, f"{name}: the recorded original default is wrong"
        if opt.default != original:
            deviating.add(name)
            assert opt.deviation, f"{name}: default {opt.default!r} differs from the original's {original!r} without a reason"
    assert deviating == DOCUMENTED_DEVIATIONS
    for name in deviating:  # each deviation is in the module's table
        assert name in config.schema.__doc__
    cfg = parse_config([])
    flat = cfg.flat()
    for name in set(ORIGINAL_DEFAULTS) - DOCUMENTED_DEVIATIONS - {"use_resnet"}:
        assert flat[name] == ORIGINAL_DEFAULTS[name], name


def test_config_has_no_second_source_of_truth():
    cfg = parse_config([])
    assert not hasattr(cfg, "raw")
    assert cfg.flat()["n_layers"] == cfg.network.n_layers and cfg.flat()["tracking"] == "mlflow+tensorboard"


ORIGINAL_CONFIGS = Path(__file__).resolve().parents[1] / ".." / "shared" / "original" / "experiment-config-files"


def original_config(name):
    path = ORIGINAL_CONFIGS / name
    if not path.exists():
        pytest.skip(f"{name} not found in ../shared/original (reference data beside the repository)")
    return path


def test_variational_original_config_without_variational_keys_gets_the_originals_defaults(tiny_volume):
    from neurcomp.model.pruning import build_pruning

    cfg = parse_config(["--config", str(original_config("mhd_p_basic.txt")), "--data", str(tiny_volume)])
    assert cfg.pruning.technique == "variational" and cfg.basedir == "experiments/Tests/mhd_p"
    method = build_pruning(cfg.pruning.technique, cfg.pruning, dataset_size=1000)
    o = method.opts
    assert (o.sigma, o.init_droprate, o.dkl_multiplier, o.lambda_dkl, o.lambda_weight, o.lambda_entropy) == \
        (0.0, 0.5, 1e-8, 1e-5, 1e-5, 1e-5)
    assert o.threshold == pytest.approx(0.6242357328578803)  # its pruning_threshold


def test_every_original_config_parses(tiny_volume):
    for path in sorted(original_config("mhd_p_basic.txt").parent.glob("*.txt")):
        cfg = parse_config(["--config", str(path), "--data", str(tiny_volume)])
        assert not Path(cfg.basedir).is_absolute() or Path(cfg.basedir).is_dir(), path.name


def test_pruning_threshold_sets_the_chosen_methods_threshold(tmp_path):
    from neurcomp.model.pruning import build_pruning
    from neurcomp.model.pruning.binary import BinaryOptions

    assert parse_config(["--dropout_technique", "binary"]).pruning.options(BinaryOptions).threshold == 0.5
    cfg = parse_config(["--config", str(write(tmp_path, "dropout_technique = binary\npruning_threshold = 0.7\n"))])
    assert build_pruning("binary", cfg.pruning).opts.threshold == 0.7
    assert cfg.pruning.options(SmallifyOptions).threshold == 0.7
    # the command line's own name overrides the file's original name
    cfg = parse_config(["--config", str(write(tmp_path, "pruning_threshold = 0.7\n")), "--binary_threshold", "0.6"])
    assert cfg.pruning.options(BinaryOptions).threshold == 0.6
    assert parse_config(["--pruning_momentum", "0.1"]).pruning.options(SmallifyOptions).momentum == 0.1
    with pytest.raises(ConfigError, match="set smallify_momentum or the original's name pruning_momentum, not both"):
        parse_config(["--pruning_momentum", "0.1", "--smallify_momentum", "0.2"])


def test_a_new_pruning_method_brings_its_options():
    from dataclasses import dataclass

    from neurcomp.config.fields import option
    from neurcomp.config.schema import METHOD_OPTIONS
    from neurcomp.model.pruning import PRUNING_METHODS, build_pruning, register_pruning
    from neurcomp.model.pruning.base import PruningMethod

    @dataclass
    class MagnitudeOptions:
        GROUP = "pruning: magnitude"
        keep: float = option(0.5, "magnitude: fraction of neurons kept", type=float, name="magnitude_keep")

    try:
        @register_pruning("magnitude")
        class Magnitude(PruningMethod):
            name = "magnitude"
            Options = MagnitudeOptions

        assert "--magnitude_keep" in build_parser().format_help()
        cfg = parse_config(["--magnitude_keep", "0.25"])
        assert build_pruning("magnitude", cfg.pruning).opts.keep == 0.25
        assert cfg.flat()["magnitude_keep"] == 0.25
    finally:
        PRUNING_METHODS.pop("magnitude", None)
        METHOD_OPTIONS.pop("magnitude", None)


def read_like_the_originals_analysis_helper(text):
    """What ../shared/original/README.md says the original's helper does with config.txt: strip spaces,
    split each line at '=', then int, float, a list of int or float when there is a comma, or string."""
    out = {}
    for line in text.splitlines():
        key, value = line.replace(" ", "").split("=")[:2]
        for parse in (int, float):
            try:
                out[key] = parse(value)
                break
            except ValueError:
                pass
        else:
            if "," in value:
                items = value.strip("[]").split(",")
                try:
                    out[key] = [int(x) for x in items]
                except ValueError:
                    out[key] = [float(x) for x in items]
            else:
                out[key] = value
    return out


def test_config_txt_reads_in_the_original_helper_and_back(tmp_path):
    cfg = parse_config(["--config", str(write(tmp_path, ORIGINAL_CONFIG)), "--raw_shape", "4", "5", "6",
                        "--tracking", "mlflow,tensorboard", "--checkpoint_path", "run/model.pth"])
    text = format_config_file(cfg.flat())
    d = read_like_the_originals_analysis_helper(text)
    assert d["feature_list"] == [32, 32, 32, 32] and d["checkpoint_path"] == "run/model.pth"
    assert d["tracking"] == "mlflow+tensorboard" and d["raw_shape"] == [4, 5, 6]
    again = parse_config(["--config", str(write(tmp_path, text, "out.txt"))])
    assert again.trackers == ("mlflow", "tensorboard") and again.flat() == cfg.flat()
    # an unset feature_list is written (empty: the default) and reads back as unset
    text = format_config_file(parse_config([]).flat())
    assert "\nfeature_list =\n" in text
    assert parse_config(["--config", str(write(tmp_path, text, "d.txt"))]).network.feature_list is None


def test_help_shows_the_scripts_own_options_first_and_each_default_once():
    import re

    from neurcomp.quantization.cli import add_quantization_arguments
    from neurcomp.training.visualize import build_visualization_parser

    for parser, own in ((add_quantization_arguments(build_parser("q")), "--filename"),
                        (build_visualization_parser(), "--resolution")):
        text = parser.format_help()
        options = text.split("\n\n", 2)[2]  # after usage and description
        assert options.index(own) < options.index("--expname") < options.index("--n_layers")
        flat = " ".join(text.split())
        assert not re.search(r"\(default[^()]*(\([^()]*\))?[^()]*\)\s*\(default", flat)
        assert "(default: 30.0)" in flat  # omega_0: defaults are shown


def test_readme_option_table_is_generated_from_the_code():
    from neurcomp.config.docs import options_markdown, readme_block

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert readme_block(readme) == options_markdown(), "regenerate: python -m config.docs"
