"""Search-space files: which training options the search varies, and over what values.

A search space is a JSON file::

    {
      "description": "Smallify pruning",
      "parameters": [
        {"name": "n_layers", "type": "range", "bounds": [2, 6]},
        {"name": "lambda_betas", "type": "range", "bounds": [1e-8, 9e-4], "log_scale": true},
        {"name": "use_resnet", "type": "choice", "values": [true, false]},
        {"name": "dropout_technique", "type": "fixed", "value": "smallify"}
      ]
    }

Every ``name`` is an option of the shared training parser (``config/options.py``). Types:

- ``range``: ``bounds`` [lo, hi] with lo < hi; ``log_scale`` (needs lo > 0); ``value_type`` ``int`` or
  ``float`` (default: the option's own type, so ``n_layers`` is searched over integers);
- ``choice``: ``values``, a list of at least two distinct values; ``is_ordered`` optional;
- ``fixed``: ``value``, passed to every trial but not searched.

This module needs no Ax: files are checked before the (slow) Ax import.
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neurcomp.config.errors import ConfigError
from neurcomp.config.options import parse_bool, parse_lr

PARAMETER_TYPES = ("range", "choice", "fixed")
VALUE_TYPES = ("int", "float", "str", "bool")
TOP_LEVEL_KEYS = {"description", "parameters"}
PARAMETER_KEYS = {
    "range": {"name", "type", "bounds", "log_scale", "value_type"},
    "choice": {"name", "type", "values", "is_ordered", "value_type"},
    "fixed": {"name", "type", "value", "value_type"},
}
# Options the search sets itself for every trial (or that make no sense to search).
RESERVED_OPTIONS = {
    "config": "it is the base config (--config of the search)",
    "expname": "each trial is named trial_<n> by the search",
    "basedir": "trials are written under <output_dir>/trials by the search",
    "checkpoint_path": "each trial trains from scratch",
    "resume": "each trial trains from scratch",
    "Tensorboard_log_dir": "each trial logs into its own folder",
    "mlflow_parent_run_id": "the search sets it to its own MLflow run",
    "mlflow_tracking_uri": "set it in the base config; the search passes it to every trial",
    "mlflow_experiment": "set it in the base config; the search passes it to every trial",
}


@dataclass(frozen=True)
class Parameter:
    name: str
    type: str  # range | choice | fixed
    value_type: str  # int | float | str | bool
    bounds: tuple | None = None
    log_scale: bool = False
    values: tuple | None = None
    is_ordered: bool | None = None
    value: Any = None

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"name": self.name, "type": self.type, "value_type": self.value_type}
        if self.type == "range":
            d.update(bounds=list(self.bounds), log_scale=self.log_scale)
        elif self.type == "choice":
            d.update(values=list(self.values), is_ordered=self.is_ordered)
        else:
            d.update(value=self.value)
        return d

    def cast(self, value):
        """A value from Ax (maybe a numpy scalar) as the plain Python type of this parameter."""
        return {"int": lambda v: int(round(float(v))), "float": float, "str": str, "bool": bool}[self.value_type](value)


@dataclass
class SearchSpace:
    path: str
    parameters: list[Parameter]  # the searched ones (range and choice)
    fixed: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    def to_dict(self) -> dict:
        """Normalised content: two files with equal dicts define the same search."""
        return {"description": self.description,
                "parameters": [p.to_dict() for p in self.parameters],
                "fixed": dict(self.fixed)}

    def by_name(self) -> dict[str, Parameter]:
        return {p.name: p for p in self.parameters}

    def cast(self, parameters: dict) -> dict:
        """Ax's parameterization with every value in its declared Python type."""
        specs = self.by_name()
        return {k: specs[k].cast(v) if k in specs else v for k, v in parameters.items()}

    def ax_parameters(self) -> list:
        """Ax 1.x parameter configs for ``Client.configure_experiment``."""
        from ax.api.configs import ChoiceParameterConfig, RangeParameterConfig

        out = []
        for p in self.parameters:
            if p.type == "range":
                lo, hi = p.bounds
                out.append(RangeParameterConfig(name=p.name, bounds=(lo, hi), parameter_type=p.value_type,
                                                scaling="log" if p.log_scale else "linear"))
            else:
                ordered = p.is_ordered
                if ordered is None:  # Ax's own default, stated so it does not warn
                    ordered = p.value_type in ("int", "float", "bool") or len(p.values) == 2
                out.append(ChoiceParameterConfig(name=p.name, values=list(p.values), parameter_type=p.value_type,
                                                 is_ordered=ordered))
        return out


def format_value(value) -> str:
    """A parameter value as the training command line expects it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def overrides(parameters: dict) -> list[str]:
    """``--name=value`` arguments (the ``=`` form keeps negative numbers unambiguous)."""
    return [f"--{name}={format_value(value)}" for name, value in parameters.items()]


def _option_table(parser) -> dict:
    return {a.dest: a for a in parser._actions if a.option_strings}


def _option_value_type(action) -> str:
    t = action.type
    if t is int:
        return "int"
    if t is float or t is parse_lr:  # lr also takes "auto"; a search samples numbers
        return "float"
    if t is parse_bool:
        return "bool"
    return "str"


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _reject_constant(name):
    raise ValueError(f"{name} is not a valid number here")


def load_search_space(path, parser=None) -> SearchSpace:
    """Read and validate a search-space file; every problem is a one-line ConfigError naming the file."""
    if parser is None:
        from neurcomp.config.options import build_parser

        parser = build_parser()
    path = str(path)
    where = f"search space {path}"
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{where}: file not found")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot read the file ({exc})") from None
    try:
        doc = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except ValueError as exc:
        raise ConfigError(f"{where}: invalid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: expected a JSON object with a \"parameters\" list")
    unknown = sorted(set(doc) - TOP_LEVEL_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown top-level key {unknown[0]!r} (allowed: description, parameters)")
    items = doc.get("parameters")
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{where}: \"parameters\" must be a non-empty list of parameter objects")
    description = doc.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"{where}: \"description\" must be a string")

    options = _option_table(parser)
    searched: list[Parameter] = []
    fixed: dict[str, Any] = {}
    seen: set[str] = set()
    for i, item in enumerate(items, 1):
        param = _parse_parameter(item, i, where, options)
        if param.name in seen:
            raise ConfigError(f"{where}: parameter {param.name!r} is listed twice")
        seen.add(param.name)
        if param.type == "fixed":
            fixed[param.name] = param.value
        else:
            searched.append(param)
    if not searched:
        raise ConfigError(f"{where}: every parameter is fixed; at least one needs type range or choice")
    return SearchSpace(path=path, parameters=searched, fixed=fixed, description=description)


def _parse_parameter(item, i: int, where: str, options: dict) -> Parameter:
    if not isinstance(item, dict):
        raise ConfigError(f"{where}: parameter {i} must be an object with name and type")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: parameter {i} has no \"name\"")
    at = f"{where}: parameter {name!r}"
    action = options.get(name)
    if action is None:
        close = difflib.get_close_matches(name, sorted(options), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{at} is not a training option{hint}")
    if name in RESERVED_OPTIONS:
        raise ConfigError(f"{at} cannot be searched: {RESERVED_OPTIONS[name]}")
    if action.nargs == 0:
        raise ConfigError(f"{at} is a flag and cannot be searched" + (" (search use_resnet instead)"
                                                                       if name == "dont_use_resnet" else ""))
    if action.nargs is not None:
        raise ConfigError(f"{at} takes a list of values and cannot be searched")
    kind = item.get("type")
    if kind not in PARAMETER_TYPES:
        raise ConfigError(f"{at}: unknown type {kind!r} (use range, choice or fixed)")
    extra = sorted(set(item) - PARAMETER_KEYS[kind])
    if extra:
        raise ConfigError(f"{at}: unknown key {extra[0]!r} for type {kind} "
                          f"(allowed: {', '.join(sorted(PARAMETER_KEYS[kind] - {'name', 'type'}))})")

    option_type = _option_value_type(action)
    value_type = item.get("value_type")
    if value_type is not None and value_type not in VALUE_TYPES:
        raise ConfigError(f"{at}: unknown value_type {value_type!r} (use int, float, str or bool)")
    if value_type is not None and value_type != option_type and not (value_type == "int" and option_type == "float"):
        raise ConfigError(f"{at}: value_type {value_type} does not fit the option, which takes {option_type} values")
    value_type = value_type or option_type

    if kind == "range":
        if value_type not in ("int", "float"):
            raise ConfigError(f"{at}: a range needs a numeric option; {name} takes {value_type} values "
                              f"(use type choice)")
        bounds = item.get("bounds")
        if not isinstance(bounds, list) or len(bounds) != 2 or not all(_is_number(b) for b in bounds):
            raise ConfigError(f"{at}: \"bounds\" must be a list of two finite numbers [lo, hi]")
        lo, hi = bounds
        if value_type == "int":
            if not all(float(b).is_integer() for b in bounds):
                raise ConfigError(f"{at}: integer parameter needs integer bounds, got {bounds}")
            lo, hi = int(lo), int(hi)
        else:
            lo, hi = float(lo), float(hi)
        if not lo < hi:
            raise ConfigError(f"{at}: bounds [{lo}, {hi}] need lo < hi")
        log_scale = item.get("log_scale", False)
        if not isinstance(log_scale, bool):
            raise ConfigError(f"{at}: \"log_scale\" must be true or false")
        if log_scale and lo <= 0:
            raise ConfigError(f"{at}: log_scale needs bounds > 0, got lo = {lo}")
        return Parameter(name=name, type="range", value_type=value_type, bounds=(lo, hi), log_scale=log_scale)

    if kind == "choice":
        values = item.get("values")
        if not isinstance(values, list) or len(values) < 2:
            raise ConfigError(f"{at}: \"values\" must be a list of at least two values (one value: use type fixed)")
        values = [_checked_value(v, value_type, at, action) for v in values]
        if len(set(values)) != len(values):
            raise ConfigError(f"{at}: \"values\" has duplicates: {values}")
        is_ordered = item.get("is_ordered")
        if is_ordered is not None and not isinstance(is_ordered, bool):
            raise ConfigError(f"{at}: \"is_ordered\" must be true or false")
        return Parameter(name=name, type="choice", value_type=value_type, values=tuple(values), is_ordered=is_ordered)

    if "value" not in item:
        raise ConfigError(f"{at}: a fixed parameter needs \"value\"")
    return Parameter(name=name, type="fixed", value_type=value_type,
                     value=_checked_value(item["value"], value_type, at, action))


def _checked_value(v, value_type: str, at: str, action):
    ok = {"int": lambda x: _is_number(x) and float(x).is_integer(),
          "float": _is_number,
          "str": lambda x: isinstance(x, str),
          "bool": lambda x: isinstance(x, bool)}[value_type](v)
    if not ok:
        raise ConfigError(f"{at}: value {json.dumps(v)} is not of type {value_type}")
    v = {"int": lambda x: int(x), "float": float, "str": str, "bool": bool}[value_type](v)
    if action.choices is not None and v not in action.choices:
        raise ConfigError(f"{at}: value {v!r} is not one of {', '.join(map(str, action.choices))}")
    return v


def check_against_config(space: SearchSpace, base_config: str, parser_factory=None) -> None:
    """Parse the base config with the fixed values and with each bound or choice value in turn.

    Catches values the training options reject (a momentum of 2, a negative rate...) before any trial
    runs. Combinations are not tried: the extremes of each parameter are checked one at a time.
    """
    from neurcomp.config.options import build_parser, parse_config

    parser_factory = parser_factory or build_parser
    base = ["--config", str(base_config)]
    parse_config(base, parser_factory())  # errors here name the base config itself
    fixed_args = overrides(space.fixed)
    try:
        parse_config(base + fixed_args, parser_factory())
    except ConfigError as exc:
        raise ConfigError(f"search space {space.path}: a fixed value is rejected: "
                          f"{_strip_source(exc, str(base_config))}") from None
    for p in space.parameters:
        values = p.bounds if p.type == "range" else p.values
        for v in values:
            try:
                parse_config(base + fixed_args + overrides({p.name: v}), parser_factory())
            except ConfigError as exc:
                raise ConfigError(f"search space {space.path}: parameter {p.name!r} value {format_value(v)} "
                                  f"is rejected: {_strip_source(exc, str(base_config))}") from None


def _strip_source(exc: ConfigError, base_config: str) -> str:
    """The option's complaint without its source: the value came from the space, not from the file."""
    msg = str(exc)
    for source in ("command line: ", f"{base_config}: "):
        if msg.startswith(source):
            return msg[len(source):]
    return msg
