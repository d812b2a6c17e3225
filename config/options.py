"""The one option definition shared by every entry script, and its typed form.

Option names follow the original research code (Lu et al. 2021 / NeurcompCompression), so its
config files run unchanged. ``parse_config`` reads a ``key = value`` file plus command-line
overrides, validates every value and returns a ``NeurcompConfig``; the packages never see the
argparse namespace.
"""

from __future__ import annotations

import argparse
import difflib
import math
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import configargparse

from config.errors import ConfigError

DROPOUT_TECHNIQUES = ("", "none", "binary", "smallify", "variational", "variational_static",
                      "variational_dynamic")


def parse_bool(value: str) -> bool:
    """true/yes/on/1 or false/no/off/0, for boolean options in config files and on the command line."""
    v = str(value).strip().lower()
    if v in ("true", "yes", "on", "1"):
        return True
    if v in ("false", "no", "off", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def parse_lr(value: str) -> float | None:
    """A learning rate, or ``auto`` (None): chosen from the network by ``training.recipe``."""
    if str(value).strip().lower() == "auto":
        return None
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or auto, got {value!r}") from None


class _Parser(configargparse.ArgumentParser):
    """Raise ConfigError (naming the file when the bad key came from it) instead of exiting."""

    config_path: str | None = None
    file_keys: set[str] = set()

    def error(self, message):
        key = re.search(r"--(\w+)", message)
        in_file = key is not None and key.group(1) in self.file_keys and f"--{key.group(1)}" not in sys.argv
        source = self.config_path if (in_file and self.config_path) else "command line"
        raise ConfigError(f"{source}: {message}")


def build_parser(description: str = "Neurcomp") -> configargparse.ArgumentParser:
    p = _Parser(description=description, config_file_parser_class=configargparse.DefaultConfigFileParser,
                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", is_config_file=True, help="config file of 'key = value' lines")

    g = p.add_argument_group("experiment")
    g.add_argument("--expname", default="neurcomp", help="experiment name: outputs go to <basedir>/<expname>/")
    g.add_argument("--basedir", default="experiments", help="folder holding experiment folders (relative to the working directory)")
    g.add_argument("--Tensorboard_log_dir", default="", help="TensorBoard log folder (default: <basedir>/<expname>/tensorboard)")
    g.add_argument("--checkpoint_path", default="", help="checkpoint to warm-start from: its weights, a new run (new schedule, new MLflow run)")
    g.add_argument("--resume", default="", help="checkpoint of an interrupted run to continue exactly (same step, optimizer, sampler, MLflow run)")
    g.add_argument("--checkpoint_every", type=int, default=5, help="write a checkpoint every N passes (0: only at the end)")
    g.add_argument("--seed", type=int, default=0, help="random seed (results are reproducible on CPU)")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="training device; auto picks CUDA when available")
    g.add_argument("--tracking", default="mlflow,tensorboard", help="comma list of trackers: mlflow, tensorboard, or none")
    g.add_argument("--mlflow_tracking_uri", default="", help="MLflow store (default: sqlite database <basedir>/mlflow.db)")
    g.add_argument("--mlflow_experiment", default="neurcomp", help="MLflow experiment name")
    g.add_argument("--mlflow_parent_run_id", default="", help="log this training as a child of that MLflow run (used by the search)")
    g.add_argument("--num_workers", type=int, default=0, help="accepted for compatibility with the original; sampling runs on the device, no workers")

    g = p.add_argument_group("data")
    g.add_argument("--data", default="datasets/marschner_lobb_f3_64.npy", help="volume file: .npy .raw .h5/.hdf5 .cvol .vti")
    g.add_argument("--data_key", default="", help="HDF5 dataset, CVOL feature or VTI array name")
    g.add_argument("--channel", type=int, default=-1, help="channel of a multi-channel volume (-1: none)")
    g.add_argument("--raw_shape", type=int, nargs=3, default=None, metavar=("X", "Y", "Z"), help="dims of a .raw file whose name does not carry them")
    g.add_argument("--raw_dtype", default="", help="dtype of a .raw file whose name does not carry it (e.g. uint8, float32)")

    g = p.add_argument_group("network")
    g.add_argument("--d_in", type=int, default=3, help="input dimension (coordinates)")
    g.add_argument("--d_out", type=int, default=1, help="output dimension (scalar value)")
    g.add_argument("--n_layers", type=int, default=4, help="hidden layers: a sine layer plus n_layers-1 residual blocks")
    g.add_argument("--omega_0", type=float, default=30.0, help="SIREN frequency omega_0")
    g.add_argument("--compression_ratio", type=float, default=50.0, help="target voxels / parameters; sets the width")
    g.add_argument("--features_per_layer", type=int, default=0, help="fixed width (overrides compression_ratio; 0: from the ratio)")
    g.add_argument("--feature_list", type=int, nargs="+", default=None, help="explicit per-layer widths (overrides both)")
    g.add_argument("--use_resnet", type=parse_bool, default=True, help="residual sine blocks (true) or a plain SIREN (false)")
    g.add_argument("--dont_use_resnet", action="store_true", help="build a plain SIREN: 2 n_layers - 1 sine layers, as the original")

    g = p.add_argument_group("training")
    g.add_argument("--lr", type=parse_lr, default=None,
                   help="Adam learning rate, or auto: chosen from the network's widths, depth, omega_0 and gradient "
                        "loss, with the output starting at the data's mean and at least min_steps steps "
                        "(training.recipe); an explicit lr trains exactly as the original code did")
    g.add_argument("--max_pass", type=float, default=75, help="training length in passes (one pass = as many samples as voxels)")
    g.add_argument("--min_steps", type=int, default=2000,
                   help="with lr = auto: train at least this many steps (small volumes), stretching the pass schedule")
    g.add_argument("--pass_decay", type=float, default=20, help="multiply the learning rate by lr_decay every pass_decay passes")
    g.add_argument("--lr_decay", type=float, default=0.2, help="learning-rate decay factor")
    g.add_argument("--smallify_decay", type=float, default=0, help=">0: plateau schedule instead (factor lr_decay, patience smallify_decay passes)")
    g.add_argument("--batch_size", type=int, default=1024, help="batches of sample_size points per step")
    g.add_argument("--sample_size", type=int, default=16, help="points per batch entry; a step sees batch_size x sample_size points")
    g.add_argument("--grad_lambda", type=float, default=0.0, help="weight of the gradient loss against finite differences (0: off)")

    g = p.add_argument_group("pruning")
    g.add_argument("--dropout_technique", default="", help="pruning method: '' (none), binary, smallify, variational(_static), variational_dynamic")
    g.add_argument("--prune_fraction", type=float, default=2 / 3, help="fraction of max_pass trained with pruning layers before pruning")
    g.add_argument("--lambda_betas", type=float, default=0.0, help="weight of the mask/switch sparsity penalty")
    g.add_argument("--lambda_weights", type=float, default=0.0, help="weight of the L1 penalty on weights and biases")
    g.add_argument("--pruning_momentum", type=float, default=0.02, help="Smallify: momentum of the sign-variance moving average")
    g.add_argument("--pruning_threshold", type=float, default=0.9, help="pruning threshold (meaning depends on the method)")
    g.add_argument("--variational_sigma", type=float, default=-6.9, help="variational: fixed log sigma of the Gaussian likelihood (static)")
    g.add_argument("--variational_init_droprate", type=float, default=0.5, help="variational: initial drop rate p")
    g.add_argument("--variational_dkl_multiplier", type=float, default=1e-4, help="variational: KL weight grows by (1 + this) per step")
    g.add_argument("--variational_lambda_dkl", type=float, default=1.0, help="variational: weight of the KL term")
    g.add_argument("--variational_lambda_weight", type=float, default=1.0, help="variational: weight of the weight L1 term")
    g.add_argument("--variational_lambda_entropy", type=float, default=0.0, help="variational: weight of the drop-rate entropy term")

    g = p.add_argument_group("speed and scaling")
    g.add_argument("--compile", default="auto", choices=["auto", "on", "off"],
                   help="torch.compile the training step (fuses the sine layers' elementwise work); "
                        "auto: for phases of at least 1000 steps, where the ~20 s of compiling pays off")
    g.add_argument("--micro_batch", type=int, default=0,
                   help="points per forward/backward pass; a step's gradient is accumulated over its micro-batches "
                        "(same gradient, cache-sized work). 0: auto (CPU: about 2 MiB of activations per layer; "
                        "GPU: the whole step)")
    g.add_argument("--volume_storage", default="auto", choices=["auto", "float32", "native"],
                   help="volume on the device: float32, native (stored precision, interpolated in float32), auto (native when smaller)")
    g.add_argument("--stream_bricks", type=parse_bool, default=False,
                   help="train from a memory-mapped file, streaming random bricks to the device (volumes larger than device memory)")
    g.add_argument("--brick_size", type=int, default=32, help="brick streaming: cells per brick edge (a brick holds brick_size + 3 voxels per axis)")
    g.add_argument("--bricks_resident", type=int, default=1024, help="brick streaming: bricks held on the device at a time")
    g.add_argument("--brick_refresh_steps", type=int, default=16, help="brick streaming: load a new set of random bricks every N steps")
    g.add_argument("--dist_backend", default="auto", choices=["auto", "nccl", "gloo"],
                   help="torch.distributed backend under torchrun (auto: nccl on CUDA, gloo on CPU)")

    g = p.add_argument_group("quantization")
    g.add_argument("--quant_bits", type=int, default=9, help="bits per weight index (1..16)")
    g.add_argument("--target_file_ratio", type=float, default=0.0, help=">0: size the network so the compressed file reaches this ratio")
    return p


@dataclass
class DataConfig:
    path: str
    data_key: str = ""
    channel: int | None = None
    raw_shape: tuple[int, int, int] | None = None
    raw_dtype: str = ""


@dataclass
class NetworkConfig:
    n_layers: int = 4
    residual: bool = True
    omega_0: float = 30.0
    d_in: int = 3
    d_out: int = 1
    compression_ratio: float = 50.0
    features_per_layer: int = 0
    feature_list: list[int] | None = None


@dataclass
class OptimConfig:
    lr: float | None = None  # None: auto (training.recipe)
    max_pass: float = 75
    min_steps: int = 2000  # with lr = auto
    pass_decay: float = 20
    lr_decay: float = 0.2
    smallify_decay: float = 0
    batch_size: int = 1024
    sample_size: int = 16
    grad_lambda: float = 0.0

    @property
    def points_per_step(self) -> int:
        return self.batch_size * self.sample_size

    @property
    def auto(self) -> bool:
        """lr = auto: the adaptive recipe of ``training.recipe`` (else the original's exact training)."""
        return self.lr is None


@dataclass
class PruningConfig:
    technique: str = ""
    prune_fraction: float = 2 / 3
    lambda_betas: float = 0.0
    lambda_weights: float = 0.0
    momentum: float = 0.02
    threshold: float = 0.9
    variational_sigma: float = -6.9
    variational_init_droprate: float = 0.5
    variational_dkl_multiplier: float = 1e-4
    variational_lambda_dkl: float = 1.0
    variational_lambda_weight: float = 1.0
    variational_lambda_entropy: float = 0.0

    @property
    def enabled(self) -> bool:
        return self.technique not in ("", "none")


@dataclass
class ScalingConfig:
    """Speed, device memory and multi-process options (training.speed, training.distributed,
    training.sampling)."""

    compile: str = "auto"  # auto | on | off
    micro_batch: int = 0  # 0: auto
    volume_storage: str = "auto"  # auto | float32 | native
    stream_bricks: bool = False
    brick_size: int = 32
    bricks_resident: int = 1024
    brick_refresh_steps: int = 16
    dist_backend: str = "auto"  # auto | nccl | gloo


@dataclass
class NeurcompConfig:
    expname: str
    basedir: str
    data: DataConfig
    network: NetworkConfig
    optim: OptimConfig
    pruning: PruningConfig
    tensorboard_dir: str = ""
    checkpoint_path: str = ""
    resume: str = ""
    checkpoint_every: int = 5
    seed: int = 0
    device: str = "auto"
    trackers: tuple[str, ...] = ("mlflow", "tensorboard")
    mlflow_tracking_uri: str = ""
    mlflow_experiment: str = "neurcomp"
    mlflow_parent_run_id: str = ""
    quant_bits: int = 9
    target_file_ratio: float = 0.0
    source: str = "command line"  # the config file it came from, for error messages
    raw: dict = field(default_factory=dict, repr=False)  # flat option values, for writing config.txt
    scaling: ScalingConfig = field(default_factory=ScalingConfig)

    @property
    def experiment_dir(self) -> Path:
        return Path(self.basedir) / self.expname

    def flat(self) -> dict:
        return dict(self.raw)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("raw")
        return d


def _check(cond: bool, source: str, key: str, value, why: str) -> None:
    if not cond:
        raise ConfigError(f"{source}: {key} = {value!r} is invalid: {why}")


def _config_file_keys(parser, path: str | None) -> set[str]:
    if not path:
        return set()
    if not Path(path).is_file():
        raise ConfigError(f"{path}: config file not found")
    with open(path) as f:
        items = configargparse.DefaultConfigFileParser().parse(f)
    known = {a.dest for a in parser._actions} | {s.lstrip("-") for a in parser._actions for s in a.option_strings}
    for key in items:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{path}: unknown key {key!r}{hint}")
    return set(items)


def _find_config_arg(argv: list[str]) -> str | None:
    for i, a in enumerate(argv):
        if a == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--config="):
            return a.split("=", 1)[1]
    return None


def parse_namespace(parser, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse argv (default sys.argv[1:]), checking config-file keys first so errors name the file."""
    argv = list(sys.argv[1:] if argv is None else argv)
    path = _find_config_arg(argv)
    parser.config_path = path
    parser.file_keys = _config_file_keys(parser, path)
    ns = parser.parse_args(argv)
    ns._config_path = path
    return ns


def config_from_namespace(ns: argparse.Namespace) -> NeurcompConfig:
    """Validate the flat namespace and build the typed configuration."""
    src = getattr(ns, "_config_path", None) or "command line"
    _check(ns.compression_ratio > 0, src, "compression_ratio", ns.compression_ratio, "must be > 0")
    _check(ns.max_pass > 0, src, "max_pass", ns.max_pass, "must be > 0")
    _check(ns.pass_decay > 0, src, "pass_decay", ns.pass_decay, "must be > 0")
    _check(0 < ns.lr_decay <= 1, src, "lr_decay", ns.lr_decay, "must be in (0, 1]")
    _check(ns.smallify_decay >= 0, src, "smallify_decay", ns.smallify_decay, "must be >= 0")
    _check(ns.lr is None or (math.isfinite(ns.lr) and ns.lr > 0), src, "lr", ns.lr, "must be a finite number > 0 or auto")
    _check(ns.min_steps >= 0, src, "min_steps", ns.min_steps, "must be >= 0")
    _check(ns.batch_size > 0, src, "batch_size", ns.batch_size, "must be > 0")
    _check(ns.sample_size > 0, src, "sample_size", ns.sample_size, "must be > 0")
    _check(ns.n_layers >= 1, src, "n_layers", ns.n_layers, "must be >= 1")
    _check(ns.d_in >= 1 and ns.d_out >= 1, src, "d_in/d_out", (ns.d_in, ns.d_out), "must be >= 1")
    _check(math.isfinite(ns.omega_0) and ns.omega_0 > 0, src, "omega_0", ns.omega_0, "must be a finite number > 0")
    _check(ns.features_per_layer >= 0, src, "features_per_layer", ns.features_per_layer, "must be >= 0")
    _check(ns.grad_lambda >= 0, src, "grad_lambda", ns.grad_lambda, "must be >= 0")
    _check(ns.checkpoint_every >= 0, src, "checkpoint_every", ns.checkpoint_every, "must be >= 0")
    _check(ns.num_workers >= 0, src, "num_workers", ns.num_workers, "must be >= 0")
    if ns.feature_list is not None:
        plain = not (ns.use_resnet and not ns.dont_use_resnet)  # the original takes a plain network's list as it is
        _check((plain or len(ns.feature_list) == ns.n_layers) and min(ns.feature_list) >= 1, src, "feature_list",
               ns.feature_list, f"needs n_layers = {ns.n_layers} positive widths (a plain network: any number)")
    technique = ns.dropout_technique.strip().lower()
    _check(technique in DROPOUT_TECHNIQUES, src, "dropout_technique", ns.dropout_technique,
           f"choose one of {', '.join(t for t in DROPOUT_TECHNIQUES if t)}")
    _check(0 < ns.prune_fraction <= 1, src, "prune_fraction", ns.prune_fraction, "must be in (0, 1]")
    _check(ns.lambda_betas >= 0, src, "lambda_betas", ns.lambda_betas, "must be >= 0")
    _check(ns.lambda_weights >= 0, src, "lambda_weights", ns.lambda_weights, "must be >= 0")
    _check(0 <= ns.pruning_momentum <= 1, src, "pruning_momentum", ns.pruning_momentum, "must be in [0, 1]")
    _check(0 <= ns.pruning_threshold <= 1 or technique not in ("binary", "variational", "variational_static", "variational_dynamic"),
           src, "pruning_threshold", ns.pruning_threshold, "must be in [0, 1] for this method")
    _check(ns.pruning_threshold >= 0, src, "pruning_threshold", ns.pruning_threshold, "must be >= 0")
    _check(0 < ns.variational_init_droprate < 1, src, "variational_init_droprate", ns.variational_init_droprate, "must be in (0, 1)")
    _check(ns.variational_dkl_multiplier >= 0, src, "variational_dkl_multiplier", ns.variational_dkl_multiplier, "must be >= 0")
    for key in ("variational_lambda_dkl", "variational_lambda_weight", "variational_lambda_entropy"):
        _check(getattr(ns, key) >= 0, src, key, getattr(ns, key), "must be >= 0")
    _check(1 <= ns.quant_bits <= 16, src, "quant_bits", ns.quant_bits, "must be in 1..16")
    _check(ns.target_file_ratio >= 0, src, "target_file_ratio", ns.target_file_ratio, "must be >= 0")
    _check(ns.target_file_ratio == 0 or technique in ("", "none"), src, "target_file_ratio", ns.target_file_ratio,
           "cannot be combined with a dropout_technique: pruning changes the size after the network is sized")
    _check(ns.micro_batch >= 0, src, "micro_batch", ns.micro_batch, "must be >= 0 (0: auto)")
    _check(ns.brick_size >= 2, src, "brick_size", ns.brick_size, "must be >= 2")
    _check(ns.bricks_resident >= 1, src, "bricks_resident", ns.bricks_resident, "must be >= 1")
    _check(ns.brick_refresh_steps >= 1, src, "brick_refresh_steps", ns.brick_refresh_steps, "must be >= 1")
    trackers = tuple(t.strip().lower() for t in ns.tracking.split(",") if t.strip())
    trackers = () if trackers in ((), ("none",)) else trackers
    for t in trackers:
        _check(t in ("mlflow", "tensorboard"), src, "tracking", ns.tracking, "use mlflow, tensorboard, both (comma list) or none")
    if ns.raw_shape is not None:
        _check(min(ns.raw_shape) >= 1, src, "raw_shape", ns.raw_shape, "dims must be >= 1")

    raw = {k: v for k, v in vars(ns).items() if not k.startswith("_") and k != "config"}
    raw["use_resnet"] = ns.use_resnet and not ns.dont_use_resnet
    return NeurcompConfig(
        expname=ns.expname, basedir=ns.basedir,
        data=DataConfig(path=ns.data, data_key=ns.data_key, channel=None if ns.channel < 0 else ns.channel,
                        raw_shape=tuple(ns.raw_shape) if ns.raw_shape else None, raw_dtype=ns.raw_dtype),
        network=NetworkConfig(n_layers=ns.n_layers, residual=ns.use_resnet and not ns.dont_use_resnet,
                              omega_0=ns.omega_0, d_in=ns.d_in, d_out=ns.d_out,
                              compression_ratio=ns.compression_ratio,
                              features_per_layer=ns.features_per_layer, feature_list=ns.feature_list),
        optim=OptimConfig(lr=ns.lr, max_pass=ns.max_pass, min_steps=ns.min_steps, pass_decay=ns.pass_decay, lr_decay=ns.lr_decay,
                          smallify_decay=ns.smallify_decay, batch_size=ns.batch_size,
                          sample_size=ns.sample_size, grad_lambda=ns.grad_lambda),
        pruning=PruningConfig(technique=technique, prune_fraction=ns.prune_fraction,
                              lambda_betas=ns.lambda_betas, lambda_weights=ns.lambda_weights,
                              momentum=ns.pruning_momentum, threshold=ns.pruning_threshold,
                              variational_sigma=ns.variational_sigma,
                              variational_init_droprate=ns.variational_init_droprate,
                              variational_dkl_multiplier=ns.variational_dkl_multiplier,
                              variational_lambda_dkl=ns.variational_lambda_dkl,
                              variational_lambda_weight=ns.variational_lambda_weight,
                              variational_lambda_entropy=ns.variational_lambda_entropy),
        tensorboard_dir=ns.Tensorboard_log_dir, checkpoint_path=ns.checkpoint_path, resume=ns.resume,
        checkpoint_every=ns.checkpoint_every, seed=ns.seed, device=ns.device, trackers=trackers,
        mlflow_tracking_uri=ns.mlflow_tracking_uri, mlflow_experiment=ns.mlflow_experiment,
        mlflow_parent_run_id=ns.mlflow_parent_run_id, quant_bits=ns.quant_bits,
        target_file_ratio=ns.target_file_ratio, source=src, raw=raw,
        scaling=ScalingConfig(compile=ns.compile, micro_batch=ns.micro_batch,
                              volume_storage=ns.volume_storage, stream_bricks=ns.stream_bricks,
                              brick_size=ns.brick_size, bricks_resident=ns.bricks_resident,
                              brick_refresh_steps=ns.brick_refresh_steps, dist_backend=ns.dist_backend),
    )


def parse_config(argv: list[str] | None = None, parser=None) -> NeurcompConfig:
    parser = parser or build_parser()
    return config_from_namespace(parse_namespace(parser, argv))


def format_config_file(raw: dict) -> str:
    """Render flat option values as a config file every entry script accepts."""
    lines = []
    for key, value in raw.items():
        if key == "lr" and value is None:
            value = "auto"
        if value is None or key in ("config", "dont_use_resnet"):
            continue
        if isinstance(value, (list, tuple)):
            value = "[" + ", ".join(str(v) for v in value) + "]"
        lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n"
