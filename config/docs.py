"""docs/options.md, generated from the option fields: ``python -m config.docs > docs/options.md``.

A test compares the file with this output, so the table cannot drift from the code.
"""

from __future__ import annotations

from config.fields import NOT_IN_ORIGINAL, options_of
from config.options import NEGATIONS
from config.schema import sections


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return str(value).replace("|", "\\|")


def options_markdown() -> str:
    lines = ["# Options", "",
             "Every option of `NeurcompTraining.py` (and the shared part of the other entry scripts), from "
             "`config/schema.py` and each pruning method's module. `original` is the original research code's "
             "parser default (its code); a default that differs gives its reason below the table. The original's "
             "names `pruning_threshold`, `pruning_momentum` and `dont_use_resnet` are accepted too.", "",
             "| option | default | original | meaning |", "|---|---|---|---|"]
    deviations = []
    for cls, _ in sections():
        lines.append(f"| **{cls.GROUP}** | | | |")
        for _, opt in options_of(cls):
            default = opt.render(opt.default) if opt.render else opt.default
            if opt.original is NOT_IN_ORIGINAL:
                original = ""
            elif opt.original is None and opt.deviation:
                original = "(required)"
            else:
                original = "''" if opt.original == "" else _cell(opt.original)
            names = f"`{opt.name}`" + "".join(f" (`{a}`)" for a in opt.aliases)
            if opt.name in NEGATIONS:
                names += f", `{NEGATIONS[opt.name]}`"
            lines.append(f"| {names} | {_cell(default)} | {original} | {_cell(opt.help)} |")
            if opt.deviation:
                deviations.append(f"- `{opt.name}`: {opt.deviation}.")
    return "\n".join(lines + ["", "## Defaults that differ from the original's", "", *deviations]) + "\n"


if __name__ == "__main__":
    print(options_markdown(), end="")
