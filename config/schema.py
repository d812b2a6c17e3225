"""Every option of every entry script, defined once: in a dataclass field with its help and check.

Option names follow the original research code (Lu et al. 2021 / Bussler's NeurcompCompression),
so its config files run unchanged. ``parse_config`` reads a ``key = value`` file plus command-line
overrides (``config.options``), validates every value and returns a ``NeurcompConfig``;
``NeurcompConfig.flat()`` gives the option names and values back (config.txt, MLflow parameters,
the checkpoint's ``config``). Each pruning method defines its own option group in its own module
(``model.pruning.*``) and registers it here with ``register_method_options``.

Defaults are the original parser's real defaults (its code, not its help texts), except:

=====================  ================  ============================  =====================================
option                 original          ours                          why
=====================  ================  ============================  =====================================
expname, data          required          neurcomp, bundled volume      the quickstart runs with no arguments
basedir                /experiments/     experiments                   the same folder: the original joined
                                                                       cwd + basedir (see the basedir rule)
lr                     5e-4              auto                          issue 16's measurements (training.recipe);
                                                                       an explicit lr trains as the original
n_layers               8                 4                            issue 16's measurements (lr = auto, the
                                                                       rate-distortion tables) are at 4 layers;
                                                                       11 of the original's 13 configs use 4,
                                                                       and all set it
binary_threshold       0.9 (pruning_     0.5                           the original tested sigmoid(M) >= t with
                       threshold)                                      M ~ U(0, 1): t = 0.9 switched every mask
                                                                       off; 0.5 is M >= 0. An original config's
                                                                       pruning_threshold still applies
grad_lambda            1e-3              0                             all 13 original configs set it (1e-7 ..
                                                                       1e-3), so they run as the original did;
                                                                       the term keeps finite-difference targets
                                                                       beside a float32 volume (16 instead of 4
                                                                       bytes per voxel on the device, README
                                                                       "Device memory") and adds an input-gradient
                                                                       pass per step; our measured quickstart and
                                                                       recipe (issue 16) train without it
=====================  ================  ============================  =====================================

``tests/test_config.py::test_defaults_are_the_originals`` checks this table against the code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from neurcomp.config.fields import (INT_LIMIT, at_least, between, exactly, non_negative, option, options_of,
                           parse_bool, parse_lr, positive, shown)

MAX_LAYERS = 1024  # far beyond any SIREN that trains (the original used 8); the sizing walks every layer


# pruning methods: technique name -> its options dataclass or None (filled by model.pruning)
METHOD_OPTIONS: dict[str, type | None] = {}
OPTION_PROVIDERS = ("neurcomp.model.pruning",)  # modules that register option groups when imported


def register_method_options(names, options_cls) -> None:
    """Register pruning technique names and their own option group (a dataclass of ``option``
    fields, or None for a method without options)."""
    for name in names:
        METHOD_OPTIONS[name] = options_cls


def load_option_providers() -> None:
    """Import the modules that register option groups (by name: config does not depend on them)."""
    import importlib

    for module in OPTION_PROVIDERS:
        importlib.import_module(module)


NAME_MAX = 255  # bytes in one file or folder name (Linux, macOS; Windows counts 255 characters)


def _long_name(name: str) -> str | None:
    size = len(os.fsencode(name))
    return f"a folder name holds at most {NAME_MAX} bytes, not {size}" if size > NAME_MAX else None


def _check_expname(v: str):
    if not v or v == "." or ".." in v or "/" in v or "\\" in v:  # both separators, whatever the OS
        return "must be a plain folder name (no path separator, no ..)"
    if "\0" in v:
        return "must not hold a NUL character"
    return _long_name(v)


def _check_folder(v: str):
    """A folder path (basedir, Tensorboard_log_dir): no NUL, no name over NAME_MAX bytes."""
    if "\0" in v:
        return "must not hold a NUL character"
    return next((f"holds {shown(part)}: {why}" for part in Path(v).parts if (why := _long_name(part))), None)


def _parse_trackers(v) -> tuple[str, ...]:
    if isinstance(v, (tuple, list)):
        return tuple(v)
    names = tuple(t.strip().lower() for t in str(v).replace("+", ",").split(",") if t.strip())
    return () if names in ((), ("none",)) else names


def _check_trackers(v):
    bad = [t for t in v if t not in ("mlflow", "tensorboard")]
    return f"use mlflow, tensorboard, both (mlflow+tensorboard) or none, not {shown(bad[0])}" if bad else None


@dataclass
class DataConfig:
    GROUP = "data"
    path: str = option("datasets/marschner_lobb_f3_64.npy", "volume file: .npy .raw .h5/.hdf5 .cvol .vti", name="data",
                       original=None, deviation="required in the original; the bundled volume lets the quickstart run")
    data_key: str = option("", "HDF5 dataset, CVOL feature or VTI array name")
    channel: int | None = option(None, "channel of a multi-channel volume (-1: none)", type=int,
                                 convert=lambda v: None if v is None or v < 0 else v,
                                 render=lambda v: -1 if v is None else v)
    raw_shape: tuple[int, int, int] | None = option(
        None, "dims of a .raw file whose name does not carry them", type=int, nargs=3, metavar=("X", "Y", "Z"),
        convert=lambda v: tuple(v) if v else None, render=lambda v: list(v) if v else None,
        check=lambda v: None if v is None or min(v) >= 1 else "dims must be >= 1")
    raw_dtype: str = option("", "dtype of a .raw file whose name does not carry it (e.g. uint8, float32)")
    raw_endian: str = option("little", "byte order of a .raw file", choices=("little", "big"))


@dataclass
class NetworkConfig:
    GROUP = "network"
    network: str = option("neurcomp", "neurcomp (residual SIREN, Lu et al. 2021) or fvsrn (a trainable latent grid "
                          "feeding a small SiLU MLP, Weiss et al. 2022: model.fvsrn), sized from compression_ratio "
                          "or target_file_ratio; or latent (multi-resolution integer latents, a tiny MLP and a "
                          "learned entropy model, Cool-chic: model.latent_grid; needs target_file_ratio or an error "
                          "bound alone, which searches it, and training writes its .nclg file). Not set, with target_file_ratio >= 800 or "
                          "an error bound alone: latent, the winner of the README's rate-distortion and error-bounded "
                          "tables there", choices=("neurcomp", "fvsrn", "latent"))
    latent_steps: int = option(0, "network = latent: training steps; 0: 3000 up to 2^19 voxels, 1500 above "
                               "(a 128^3 volume in under 5 minutes; docs/latent_grid.md)", type=int,
                               check=between(0, INT_LIMIT))
    latent_upsampler: str = option("cubic", "network = latent: how a level reaches the voxels: cubic "
                                   "(cubic B-spline) or linear (trilinear); docs/latent_grid.md",
                                   choices=("linear", "cubic"))
    n_layers: int = option(4, "hidden layers: a sine layer plus n_layers-1 residual blocks", type=int,
                           check=between(1, MAX_LAYERS), original=8,
                           deviation="issue 16's measurements (lr = auto, rate-distortion) are at 4 layers; 11 of the "
                                     "original's 13 configs use 4 and all set it")
    residual: bool = option(True, "residual sine blocks (true) or a plain SIREN (false); --dont_use_resnet also "
                            "switches them off", name="use_resnet", type=parse_bool, original=True)
    omega_0: float = option(30.0, "SIREN frequency omega_0", type=float, check=positive, original=30)
    d_in: int = option(3, "input dimension (coordinates); only 3 is implemented", type=int,
                       check=exactly(3, "only 3 (x, y, z) is implemented"), original=3)
    d_out: int = option(1, "output dimension; only 1 (a scalar volume) is implemented", type=int,
                        check=exactly(1, "only 1 (a scalar value) is implemented"), original=1)
    compression_ratio: float = option(50.0, "target voxels / parameters; sets the width", type=float,
                                      check=positive, original=50.0)
    features_per_layer: int = option(0, "fixed width (overrides compression_ratio; 0: from the ratio)", type=int,
                                     check=at_least(0), original=0)
    feature_list: list[int] | None = option(None, "explicit per-layer widths (overrides both)", type=int, nargs="+",
                                            check=lambda v: None if v is None or min(v) >= 1 else "widths must be >= 1",
                                            original=None)


@dataclass
class OptimConfig:
    GROUP = "training"
    lr: float | None = option(None, "Adam learning rate, or auto: chosen from the network's widths, depth, omega_0 "
                              "and gradient loss, with the output starting at the data's mean and at least "
                              "min_steps steps (training.recipe); an explicit lr trains exactly as the original "
                              "code did", type=parse_lr, render=lambda v: "auto" if v is None else v,
                              check=lambda v: None if v is None else positive(v) and "must be a finite number > 0 or auto",
                              original=5e-4, deviation="issue 16's measurements: auto (training.recipe)")
    max_pass: float = option(75.0, "training length in passes (one pass = as many samples as voxels)", type=float,
                             check=positive, original=75)
    min_steps: int = option(2000, "with lr = auto: train at least this many steps (small volumes), stretching the "
                            "pass schedule", type=int, check=at_least(0))
    pass_decay: float = option(20.0, "multiply the learning rate by lr_decay every pass_decay passes", type=float,
                               check=positive, original=20)
    lr_decay: float = option(0.2, "learning-rate decay factor", type=float, check=between(0, 1, open_lo=True),
                             original=0.2)
    smallify_decay: int = option(0, "> 0: plateau schedule instead (factor lr_decay, patience smallify_decay "
                                 "passes, a whole number: 0.5 is refused, not read as 0)", type=int, check=at_least(0), original=0)
    batch_size: int = option(1024, "batches of sample_size points per step", type=int, check=at_least(1), original=1024)
    sample_size: int = option(16, "points per batch entry; a step sees batch_size x sample_size points", type=int,
                              check=at_least(1), original=16)
    sample_points: str = option("anywhere", "where training samples the volume: anywhere (uniform positions, "
                                "trilinear values) or voxels (the voxel centres, where PSNR is measured; the "
                                "network need not fit the kinks trilinear interpolation puts between them)",
                                choices=("anywhere", "voxels"))
    grad_lambda: float = option(0.0, "weight of the gradient loss against finite differences (0: off)", type=float,
                                check=non_negative, original=1e-3,
                                deviation="all 13 original configs set it (1e-7 .. 1e-3); the term keeps "
                                "finite-difference targets beside a float32 volume (16 instead of 4 bytes per voxel "
                                "on the device) and adds an input-gradient pass per step; our measured quickstart "
                                "and recipe (issue 16) train without it")

    @property
    def points_per_step(self) -> int:
        return self.batch_size * self.sample_size

    @property
    def auto(self) -> bool:
        """lr = auto: the adaptive recipe of ``training.recipe`` (else the original's exact training)."""
        return self.lr is None


def _check_technique(v):
    names = ("", "none", *METHOD_OPTIONS)
    return None if v in names else f"choose one of {', '.join(n for n in names if n)}"


class PruningConfig:
    """The chosen method, the options every method shares, and each method's own option group.

    ``options(cls)`` is a method's options (a dataclass registered by its module). Keyword arguments
    that are not shared options set that field in every method group having it (``threshold=0.5``
    sets each method's threshold, as the original's ``pruning_threshold`` did).
    """

    GROUP = "pruning"

    def __init__(self, technique: str = "", methods: dict | None = None, **kwargs):
        load_option_providers()
        self.technique = technique
        shared = {f: o for f, o in options_of(PruningShared)}
        for name, opt in shared.items():
            if name != "technique":
                setattr(self, name, kwargs.pop(name, opt.default))
        self.methods = dict(methods or {})
        for cls in method_option_groups():
            self.methods.setdefault(cls, cls())
        for key, value in kwargs.items():
            hits = [(inst, f) for inst in self.methods.values() for f, o in options_of(type(inst))
                    if key in (f, o.name, *o.aliases)]
            if not hits:
                raise TypeError(f"PruningConfig: unknown option {key!r}")
            for inst, f in hits:
                setattr(inst, f, value)

    def options(self, cls):
        """The options of the method whose group is the dataclass ``cls``."""
        return self.methods.setdefault(cls, cls())

    @property
    def enabled(self) -> bool:
        return self.technique not in ("", "none")

    def __eq__(self, other) -> bool:
        return isinstance(other, PruningConfig) and vars(self) == vars(other)

    def __repr__(self) -> str:
        shared = ", ".join(f"{f}={getattr(self, f)!r}" for f, _ in options_of(PruningShared))
        return f"PruningConfig(technique={self.technique!r}, {shared}, methods={list(self.methods.values())!r})"


@dataclass
class PruningShared:
    """The pruning options every method shares (the fields of ``PruningConfig`` itself)."""

    GROUP = "pruning"
    technique: str = option("", "pruning method: '' (none), binary, smallify, variational(_static), "
                            "variational_dynamic, sbp_log_normal", name="dropout_technique", choices=None,
                            convert=lambda v: str(v).strip().lower(), original="",
                            check=_check_technique)
    prune_fraction: float = option(2 / 3, "fraction of max_pass trained with pruning layers before pruning",
                                   type=float, check=between(0, 1, open_lo=True))
    lambda_betas: float = option(0.05, "binary, smallify: weight of the mask/switch sparsity penalty", type=float,
                                 check=non_negative, original=0.05)
    lambda_weights: float = option(5e-6, "binary, smallify: weight of the L1 penalty on weights and biases",
                                   type=float, check=non_negative, original=5e-6)


@dataclass
class ScalingConfig:
    """Speed, device memory and multi-process options (training.speed, training.distributed,
    training.sampler)."""

    GROUP = "speed and scaling"
    compile: str = option("auto", "torch.compile the training step (fuses the sine layers' elementwise work); "
                          "auto: for phases of at least 1000 steps, where the ~20 s of compiling pays off",
                          choices=("auto", "on", "off"))
    micro_batch: int = option(0, "points per forward/backward pass; a step's gradient is accumulated over its "
                              "micro-batches (same gradient, cache-sized work). 0: auto (CPU: about 2 MiB of "
                              "activations per layer; GPU: the whole step)", type=int, check=at_least(0))
    volume_storage: str = option("auto", "volume on the device: float32, native (stored precision, interpolated "
                                 "in float32), auto (native when smaller)", choices=("auto", "float32", "native"))
    stream_bricks: bool = option(False, "train from a memory-mapped file, streaming random bricks to the device "
                                 "(volumes larger than device memory)", type=parse_bool)
    brick_size: int = option(32, "brick streaming: cells per brick edge (a brick holds brick_size + 3 voxels per "
                             "axis)", type=int, check=at_least(2))
    bricks_resident: int = option(1024, "brick streaming: bricks held on the device at a time", type=int,
                                  check=at_least(1))
    brick_refresh_steps: int = option(16, "brick streaming: load a new set of random bricks every N steps", type=int,
                                      check=at_least(1))
    dist_backend: str = option("auto", "torch.distributed backend under torchrun (auto: nccl on CUDA, gloo on CPU)",
                               choices=("auto", "nccl", "gloo"))


@dataclass
class NeurcompConfig:
    GROUP = "experiment"
    expname: str = option("neurcomp", "experiment name: outputs go to <basedir>/<expname>/ (a plain folder name)",
                          check=_check_expname, original=None,
                          deviation="required in the original; a default lets the quickstart run")
    basedir: str = option("experiments", "folder holding experiment folders. From a config file an absolute path "
                          "is taken relative to the working directory unless its top-level folder exists (the "
                          "original joined cwd + basedir, so its /experiments/... stays inside; /tmp/x is /tmp/x); "
                          "from the command line as given", original="/experiments/", check=_check_folder,
                          deviation="the same folder: the original joined cwd + basedir")
    tensorboard_dir: str = option("", "TensorBoard log folder: the run logs into <it>/<expname> (default: <basedir>)",
                                  name="Tensorboard_log_dir", original="", check=_check_folder)
    checkpoint_path: str = option("", "warm start: load this checkpoint's network before training (a new run with "
                                  "a new schedule, as the original did)", original="")
    resume: str = option("", "continue this run exactly from its checkpoint (schedule, optimizer, random state)")
    checkpoint_every: int = option(5, "write a checkpoint every N passes (0: only at the end)", type=int,
                                   check=at_least(0))
    seed: int = option(0, "random seed (results are reproducible on CPU)", type=int, check=between(0, INT_LIMIT))
    device: str = option("auto", "training device; auto picks CUDA when available", choices=("auto", "cpu", "cuda"))
    quiet: bool = option(False, "no progress bars", type=parse_bool)
    trackers: tuple[str, ...] = option(("mlflow", "tensorboard"), "trackers: mlflow, tensorboard, both "
                                       "(mlflow+tensorboard or mlflow,tensorboard) or none", name="tracking",
                                       convert=_parse_trackers, render=lambda v: "+".join(v) if v else "none",
                                       check=_check_trackers)
    mlflow_tracking_uri: str = option("", "MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite database "
                                      "<basedir>/mlflow.db)")
    mlflow_experiment: str = option("", "MLflow experiment name (default: $MLFLOW_EXPERIMENT_NAME, else neurcomp)")
    mlflow_parent_run_id: str = option("", "log this training as a child of that MLflow run (used by the search)")
    num_workers: int = option(8, "accepted for compatibility with the original; sampling runs on the device, "
                              "no workers", type=int, check=at_least(0), original=8)
    quant_bits: int = option(9, "bits per weight index (1..16)", type=int, check=between(1, 16))
    target_file_ratio: float = option(0.0, ">0: size the network so the compressed file reaches this ratio",
                                      type=float, check=non_negative)
    outlier_share: float = option(0.01, "with target_file_ratio: share of the file kept for correcting the worst "
                                  "voxels after training (quantization.outliers; 0: none)", type=float,
                                  check=between(0, 0.5))
    vti_dtype: str = option("source", "type of ground_truth.vti and prediction.vti: source (the volume's own, "
                            "e.g. uint8: the ground truth exactly, the prediction rounded and clipped to it) or "
                            "float32 (the network's output as it is)", choices=("source", "float32"))
    vti_compression: str = option("zlib", ".vti outputs: zlib (lossless; ParaView and VTK read it) or none",
                                  choices=("zlib", "none"))
    max_abs_error: float = option(0.0, ">0: the compressed file keeps every voxel within this absolute error (physical "
                                  "units); corrections are stored where the network misses. Training writes the file; "
                                  "without compression_ratio, widths or target_file_ratio it searches the network size "
                                  "of the smallest file (training.bound_search)", type=float, check=non_negative)
    max_rel_error: float = option(0.0, ">0: as max_abs_error, as a fraction of the value range (vmax - vmin)",
                                  type=float, check=between(0, 1, open_hi=True))
    data: DataConfig = field(default_factory=DataConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    pruning: PruningConfig = field(default_factory=PruningConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    source: str = "command line"  # the config file it came from, for error messages
    origins: dict = field(default_factory=dict)  # option name -> "command line", the file, or "... (the default)"

    def origin(self, name: str) -> str:
        """Where option ``name``'s value came from, for an error message about that value."""
        return self.origins.get(name, self.source)

    def given(self, name: str) -> bool:
        """Whether option ``name`` (one ``origins`` records) was set, not left at its default."""
        return not self.origin(name).startswith("the default")

    @property
    def error_bound(self) -> tuple[str, float] | None:
        """("abs" | "rel", value) of the requested maximum error, or None."""
        if self.max_abs_error > 0:
            return "abs", self.max_abs_error
        return ("rel", self.max_rel_error) if self.max_rel_error > 0 else None

    @property
    def experiment_dir(self) -> Path:
        return Path(self.basedir) / self.expname

    def flat(self) -> dict:
        """Original option name -> value: what config.txt, MLflow parameters and checkpoints hold."""
        out = {}
        for section, obj in sections(self):
            for fname, opt in options_of(section):
                value = getattr(obj, fname)
                out[opt.name] = opt.render(value) if opt.render else value
        return out


def sections(cfg: NeurcompConfig | None = None):
    """(options dataclass, its instance in ``cfg`` or None) in --help order."""
    load_option_providers()
    p = cfg.pruning if cfg is not None else None
    yield NeurcompConfig, cfg
    yield DataConfig, cfg and cfg.data
    yield NetworkConfig, cfg and cfg.network
    yield OptimConfig, cfg and cfg.optim
    yield PruningShared, p
    for cls in method_option_groups():
        yield cls, p.options(cls) if p is not None else None
    yield ScalingConfig, cfg and cfg.scaling


def method_option_groups() -> list[type]:
    """Each registered method's option dataclass, once (variational_static and _dynamic share one)."""
    return [cls for cls in dict.fromkeys(METHOD_OPTIONS.values()) if cls is not None]



