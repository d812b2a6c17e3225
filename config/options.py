"""The option parser, generated from the dataclass fields of ``config.schema``, and the typed config.

``parse_config(argv)`` reads a ``key = value`` config file (``--config``) plus command-line
overrides, checks every value where it is defined (``config.fields.option(check=...)``) and returns
a ``NeurcompConfig``. Errors are one-line ``ConfigError``s naming where the bad value came from: the
config file, or ``command line`` when an override set it. The original's option names
(``pruning_threshold``, ``pruning_momentum``, ``dont_use_resnet``) stay accepted.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
from pathlib import Path

import configargparse

from neurcomp.config.errors import ConfigError
from neurcomp.config.fields import options_of, parse_bool, parse_lr, representable, shown  # noqa: F401  (public: parse_bool, parse_lr)
from neurcomp.config.limits import check_memory, resolve_basedir
from neurcomp.config.schema import (METHOD_OPTIONS, DataConfig, NetworkConfig, NeurcompConfig, OptimConfig,  # noqa: F401
                           PruningConfig, PruningShared, ScalingConfig, method_option_groups,
                           register_method_options, sections)

__all__ = ["build_parser", "parse_namespace", "config_from_namespace", "parse_config", "format_config_file",
           "parse_bool", "parse_lr", "NeurcompConfig", "DataConfig", "NetworkConfig", "OptimConfig", "PruningConfig",
           "ScalingConfig", "register_method_options", "METHOD_OPTIONS"]

NEGATIONS = {"use_resnet": "dont_use_resnet"}  # the original's off-switch for a true-by-default option


class HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` once: not when the help already says its default, nor for empty ones."""

    def _get_help_string(self, action):
        text = action.help or ""
        d = action.default
        if "(default" in text or d is None or d is False or d is argparse.SUPPRESS or (isinstance(d, str) and not d) or \
                not action.option_strings:
            return text
        return text + " (default: %(default)s)"


class _Parser(configargparse.ArgumentParser):
    """Raises ConfigError naming the value's source; --help lists the script's own groups first."""

    config_path: str | None = None
    file_keys: set = set()
    cli_keys: set = set()

    def error(self, message):
        key = re.search(r"--(\w+)", message)
        in_file = key is not None and key.group(1) in self.file_keys and key.group(1) not in self.cli_keys
        source = self.config_path if (in_file and self.config_path) else "command line"
        raise ConfigError(f"{source}: {message}")

    def format_help(self):
        shared = getattr(self, "shared_groups", ())
        groups = self._action_groups
        own = [g for g in groups[2:] if g not in shared]
        self._action_groups = groups[:2] + own + [g for g in groups[2:] if g in shared]
        try:
            return super().format_help()
        finally:
            self._action_groups = groups


def _argparse_default(opt):
    return opt.render(opt.default) if opt.render else opt.default


def build_parser(description: str = "Neurcomp") -> configargparse.ArgumentParser:
    """The parser of every shared option; entry scripts add their own groups (listed first in --help)."""
    p = _Parser(description=description, config_file_parser_class=configargparse.DefaultConfigFileParser,
                formatter_class=HelpFormatter, allow_abbrev=False)
    p.add_argument("--config", is_config_file=True, help="config file of 'key = value' lines")
    aliases: dict[str, list] = {}
    groups = {}
    for cls, _ in sections():
        title = cls.GROUP
        g = groups.get(title) or p.add_argument_group(title)
        groups[title] = g
        for _, opt in options_of(cls):
            kw = {"dest": opt.name, "help": opt.help, "default": _argparse_default(opt)}
            if opt.flag:
                kw["action"] = "store_true"
            for k in ("type", "choices", "nargs", "metavar"):
                if getattr(opt, k) is not None:
                    kw[k] = getattr(opt, k)
            g.add_argument(f"--{opt.name}", **kw)
            if opt.name in NEGATIONS:
                neg = NEGATIONS[opt.name]
                g.add_argument(f"--{neg}", action="store_true", help=f"the original's switch: {opt.name} = false")
            for a in opt.aliases:
                aliases.setdefault(a, []).append(opt)
    aliases = {a: t for a, t in aliases.items() if f"--{a}" not in p._option_string_actions}  # another option: read its value
    if aliases:
        g = p.add_argument_group("the original's names (set each method's own option)")
        for a, targets in aliases.items():
            g.add_argument(f"--{a}", dest=a, default=None, type=targets[0].type, metavar=a.upper(),
                           help="sets " + ", ".join(t.name for t in targets))
    p.shared_groups = set(groups.values()) | ({g} if aliases else set())
    return p


def _read_config_file(parser, path: str | None) -> set[str]:
    """The keys of the config file, checked: it exists, is a text file, and names known options."""
    if not path:
        return set()
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{path}: is a folder, not a config file")
    if not p.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = p.read_bytes()
        if b"\0" in data:
            raise UnicodeDecodeError("utf-8", data, 0, 1, "NUL byte")
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text config file (binary data); expected 'key = value' lines") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror})") from None
    import io

    try:
        items = configargparse.DefaultConfigFileParser().parse(io.StringIO(text))
    except configargparse.ConfigFileParserException as exc:
        raise ConfigError(f"{path}: {exc}") from None
    known = {s.lstrip("-") for a in parser._actions for s in a.option_strings}
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
    """Parse argv (default sys.argv[1:]); records which keys came from the command line and the file."""
    argv = list(sys.argv[1:] if argv is None else argv)
    path = _find_config_arg(argv)
    parser.config_path = path
    parser.cli_keys = {a[2:].split("=", 1)[0] for a in argv if a.startswith("--")}
    parser.file_keys = _read_config_file(parser, path)
    ns = parser.parse_args(argv)
    ns._config_path = path
    ns._cli_keys = set(parser.cli_keys)
    ns._file_keys = set(parser.file_keys)
    return ns


class _Sources:
    """Where each option's value came from: ``command line``, the config file, or the default."""

    def __init__(self, ns):
        self.path = getattr(ns, "_config_path", None)
        self.cli = getattr(ns, "_cli_keys", set())
        self.file = getattr(ns, "_file_keys", set())

    def rank(self, key: str) -> int:
        return 2 if key in self.cli else 1 if key in self.file else 0

    def of(self, key: str) -> str:
        if key in self.cli:
            return "command line"
        if self.path and key in self.file:
            return self.path
        return f"the default (not set in {self.path})" if self.path else "the default"


def _fail(where: str, key: str, value, why: str):
    raise ConfigError(f"{where}: {key} = {shown(value)} is invalid: {why}")


def _is_option_name(name: str) -> bool:
    return any(o.name == name for cls, _ in sections() for _, o in options_of(cls))


def _value(ns, opt, src: _Sources):
    """(name the value was given under, raw value): the option itself, or an original alias set
    from a higher-priority source (command line over file)."""
    name, value, rank = opt.name, getattr(ns, opt.name), src.rank(opt.name)
    for a in opt.aliases:
        r = src.rank(a)
        if r > rank:
            name, value, rank = a, getattr(ns, a), r
        elif r and r == rank and not _is_option_name(a):  # another method's own option (config.txt): ours wins
            raise ConfigError(f"{src.of(a)}: set {opt.name} or the original's name {a}, not both")
    return name, value


def _fill(cls, ns, src: _Sources, in_use: bool = True, lenient: frozenset = frozenset()):
    """The field values of the options dataclass ``cls`` from the namespace, each checked. A value
    reaching a method not ``in_use`` through an original name in ``lenient`` (one that sets several
    methods' options with different meanings: ``pruning_threshold = 1.5`` for smallify) is not
    checked against that method's range."""
    values = {}
    for fname, opt in options_of(cls):
        name, raw = _value(ns, opt, src)
        value = opt.convert(raw) if opt.convert else raw
        if opt.name in NEGATIONS and getattr(ns, NEGATIONS[opt.name], False):
            value = False
        why = representable(raw) or (opt.check(value) if opt.check and (in_use or name not in lenient) else None)
        if why:
            _fail(src.of(name), name, raw, why)
        values[fname] = value
    return values


def config_from_namespace(ns: argparse.Namespace) -> NeurcompConfig:
    """Validate the flat namespace and build the typed configuration."""
    src = _Sources(ns)
    where = src.path or "command line"
    top = _fill(NeurcompConfig, ns, src)
    shared = _fill(PruningShared, ns, src)
    technique = shared.pop("technique")
    groups = method_option_groups()
    names = [a for cls in groups for _, opt in options_of(cls) for a in opt.aliases]
    lenient = frozenset(a for a in names if names.count(a) > 1)
    methods = {cls: cls(**_fill(cls, ns, src, METHOD_OPTIONS.get(technique) is cls, lenient)) for cls in groups}
    cfg = NeurcompConfig(**top, data=DataConfig(**_fill(DataConfig, ns, src)),
                         network=NetworkConfig(**_fill(NetworkConfig, ns, src)),
                         optim=OptimConfig(**_fill(OptimConfig, ns, src)),
                         pruning=PruningConfig(technique, methods=methods, **shared),
                         scaling=ScalingConfig(**_fill(ScalingConfig, ns, src)), source=where,
                         origins={n: src.of(n) for n in ("compression_ratio",)})
    net = cfg.network
    # the original takes a plain network's list as it is; a residual one has n_layers widths
    if net.feature_list is not None and net.residual and len(net.feature_list) != net.n_layers:
        _fail(src.of("feature_list"), "feature_list", net.feature_list,
              f"needs n_layers = {net.n_layers} positive widths (a plain network: any number)")
    if net.network == "fvsrn":
        check_fvsrn(cfg, src)
    if net.network == "latent":
        check_latent(cfg, src)
    choose_default_network(cfg, src)
    if cfg.target_file_ratio > 0 and cfg.pruning.enabled:
        _fail(src.of("target_file_ratio"), "target_file_ratio", cfg.target_file_ratio,
              "cannot be combined with a dropout_technique: pruning changes the size after the network is sized")
    if cfg.max_abs_error > 0 and cfg.max_rel_error > 0:
        raise ConfigError(f"{src.of('max_rel_error')}: set max_abs_error or max_rel_error, not both")
    if cfg.resume and cfg.checkpoint_path:
        raise ConfigError(f"{src.of('resume')}: set resume (continue a run) or checkpoint_path (warm start), not both")
    if cfg.resume and not os.path.exists(cfg.resume):
        raise ConfigError(f"{src.of('resume')}: resume = {cfg.resume!r}: no such checkpoint")
    cfg.basedir = resolve_basedir(cfg.basedir, from_file=src.rank("basedir") == 1)
    check_memory(cfg, src.of)
    return cfg


# target_file_ratio at or above this, network not set: the latent grid, which wins the README's
# rate-distortion table from this ratio up (benchmarks/results/rd_latent_cubic; docs/latent_grid.md)
LATENT_FROM_RATIO = 800.0
# an error bound alone, network not set: the latent grid, whose smallest bounded file is smaller
# than Neurcomp's at 19 of the 21 points where both were measured (Isabel at 1e-2 and 1e-3 are
# Neurcomp's; README, benchmarks/results/error_bound_latent)
LATENT_FOR_A_BOUND_ALONE = True


def choose_default_network(cfg: NeurcompConfig, src) -> None:
    """Where neither the command line nor the config file sets ``network``: the network that wins
    the rate-distortion table at the target ratio, or the error-bounded table for a bound alone,
    unless the config asks for what only Neurcomp does (pruning, widths, a warm start: check_latent's
    refusals; a network size; resuming a Neurcomp run)."""
    if src.rank("network") or cfg.network.network != "neurcomp":
        return
    bound_alone = (LATENT_FOR_A_BOUND_ALONE and cfg.error_bound is not None and cfg.target_file_ratio <= 0
                   and not cfg.given("compression_ratio"))
    if cfg.target_file_ratio < LATENT_FROM_RATIO and not bound_alone:
        return
    if cfg.resume and not _is_latent_checkpoint(cfg.resume):
        return
    cfg.network.network = "latent"
    try:
        check_latent(cfg, src)
    except ConfigError:
        cfg.network.network = "neurcomp"


def _is_latent_checkpoint(path: str) -> bool:
    """Whether ``path`` (a checkpoint to resume) holds a latent-grid run (training.latent_run)."""
    try:
        import torch

        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # an unreadable checkpoint: the run's own reader says why, in one line
        return False
    return isinstance(state, dict) and (state.get("architecture") or {}).get("network") == "latent"


def check_fvsrn(cfg: NeurcompConfig, src, network: str = "fvsrn") -> None:
    """What network = fvsrn (model.fvsrn) or latent does not do, refused in one line."""
    if cfg.pruning.enabled:
        _fail(src.of("dropout_technique"), "dropout_technique", cfg.pruning.technique,
              f"cannot be combined with network = {network}: pruning removes neurons of Neurcomp's sine layers, and "
              f"{network}'s parameters are mostly its latent grid, which no method prunes")
    if cfg.optim.grad_lambda > 0:
        _fail(src.of("grad_lambda"), "grad_lambda", cfg.optim.grad_lambda,
              f"needs the network's input gradient, which network = {network} does not implement (use 0)")
    for key in ("feature_list", "features_per_layer"):
        if getattr(cfg.network, key):
            _fail(src.of(key), key, getattr(cfg.network, key),
                  f"sets Neurcomp widths; network = {network} is sized from "
                  f"{'target_file_ratio' if network == 'latent' else 'compression_ratio or target_file_ratio'}")


def check_latent(cfg: NeurcompConfig, src) -> None:
    """What network = latent (model.latent_grid, training.latent_run) does not do, refused in one line."""
    check_fvsrn(cfg, src, "latent")
    if cfg.target_file_ratio <= 0 and not cfg.error_bound:  # a bound alone searches the size (training.bound_search)
        raise ConfigError(f"{src.of('network')}: network = latent is sized by the file it writes: set "
                          "target_file_ratio (float32 bytes / file bytes, e.g. 200), or an error bound alone "
                          "(max_abs_error or max_rel_error), which searches it")
    if cfg.checkpoint_path:
        _fail(src.of("checkpoint_path"), "checkpoint_path", cfg.checkpoint_path,
              "warm starts are for Neurcomp networks; a latent-grid run continues with resume only")


def parse_config(argv: list[str] | None = None, parser=None) -> NeurcompConfig:
    parser = parser or build_parser()
    return config_from_namespace(parse_namespace(parser, argv))


def _render(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


def format_config_file(flat: dict) -> str:
    """``key = value`` lines every entry script (configargparse) reads back, and which the original's
    analysis helper (split at '=', int, float, list or string) reads too: no blank or comment line,
    no comma outside a list of numbers. ``None`` is written empty (= the default)."""
    lines = []
    for key, value in flat.items():
        if key in ("config", NEGATIONS["use_resnet"]):
            continue
        if key == "lr" and value is None:
            value = "auto"
        text = _render(value)
        if "\n" in text:
            raise ValueError(f"config value of {key} spans lines: {value!r}")
        lines.append(f"{key} = {text}".rstrip())
    return "\n".join(lines) + "\n"
