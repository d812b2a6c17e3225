"""``option()``: one option defined once, in its dataclass field, with its help and its check.

The command-line / config-file parser is generated from these fields (``config.parsing``), so a
default, a help text and a validity test are written exactly once, next to each other.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Callable

NOT_IN_ORIGINAL = object()  # the original research code had no such option


@dataclass(frozen=True)
class Option:
    """What the parser needs to know about one dataclass field."""

    name: str  # option name on the command line and in config files
    help: str
    default: Any
    type: Callable | None = None  # str -> value, as argparse's type=
    check: Callable[[Any], str | None] | None = None  # value -> why it is invalid, or None
    choices: tuple | None = None
    nargs: Any = None
    metavar: Any = None
    aliases: tuple[str, ...] = ()  # other accepted names (the original's)
    convert: Callable | None = None  # parsed value -> field value
    render: Callable | None = None  # field value -> flat value (config.txt, MLflow)
    flag: bool = False  # store_true switch
    original: Any = NOT_IN_ORIGINAL  # the original parser's real default
    deviation: str = ""  # why our default differs from the original's


def option(default, help: str, *, name: str | None = None, **kw):
    """A dataclass field carrying its ``Option``; ``name`` defaults to the field's name."""
    meta = {"option": (name, help, default, kw)}
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def options_of(cls) -> list[tuple[str, Option]]:
    """(field name, Option) for every option field of a dataclass, in definition order."""
    out = []
    for f in fields(cls):
        if "option" not in f.metadata:
            continue
        name, help_, default, kw = f.metadata["option"]
        out.append((f.name, Option(name=name or f.name, help=help_, default=default, **kw)))
    return out


def default_of(f) -> Any:
    if f.default is not MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not MISSING else None


# -- parsers (argparse type=) -------------------------------------------------------------------
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


# -- checks (value -> why it is invalid, or None) ---------------------------------------------------
def finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def positive(x):
    return None if finite(x) and x > 0 else "must be a finite number > 0"


def non_negative(x):
    return None if finite(x) and x >= 0 else "must be a finite number >= 0"


def at_least(lo):
    return lambda x: None if finite(x) and x >= lo else f"must be >= {lo}"


def between(lo, hi, *, open_lo=False, open_hi=False):
    """lo..hi, each end closed unless told; the message names the interval."""
    def check(x):
        ok = finite(x) and (x > lo if open_lo else x >= lo) and (x < hi if open_hi else x <= hi)
        return None if ok else f"must be in {'(' if open_lo else '['}{lo:g}, {hi:g}{')' if open_hi else ']'}"
    return check


def exactly(value, why: str):
    return lambda x: None if x == value else why
