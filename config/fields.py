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
def shown(value, limit: int = 60) -> str:
    """A value as an error message quotes it: cut, so a 10 MB config line is not printed back."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 20]}... ({len(text)} characters)"


INT_LIMIT = 2 ** 31 - 1  # every count, size and seed fits a C int (torch, numpy and the file's fields)
FLOAT32_TINY = 1.1754943508222875e-38  # the smallest normal float32: below it a value becomes 0 or denormal
FLOAT32_MAX = 3.4028234663852886e38  # training and the file compute in float32: above it is inf


def representable(x) -> str | None:
    """Checked for every numeric option before its own check: a value the float32 / C-int
    arithmetic it feeds can hold, so a derived value never becomes 0, inf or an overflow."""
    if isinstance(x, (list, tuple)):
        return next((why for why in map(representable, x) if why), None)
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    if isinstance(x, int):
        return None if -INT_LIMIT <= x <= INT_LIMIT else f"must be at most {INT_LIMIT} in magnitude"
    if math.isfinite(x) and x != 0 and not FLOAT32_TINY <= abs(x) <= FLOAT32_MAX:
        return f"outside float32's range: 0, or {FLOAT32_TINY:.3g} to {FLOAT32_MAX:.3g} in magnitude"
    return None


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
        ends = [f"{v}" if isinstance(v, int) else f"{v:g}" for v in (lo, hi)]
        return None if ok else f"must be in {'(' if open_lo else '['}{ends[0]}, {ends[1]}{')' if open_hi else ']'}"
    return check


def exactly(value, why: str):
    return lambda x: None if x == value else why
