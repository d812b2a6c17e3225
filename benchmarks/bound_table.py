"""The error-bounded table: ``benchmarks.error_bound_bench`` JSON files (one per network, or split
by volume) as one markdown table, our networks beside the better of SZ3 and SPERR and ZFP.

Per volume and relative bound: each network's ratio (bound alone), the better of SZ3 and SPERR,
the best network's ratio over it, and ZFP (marked where it is ahead of our best). ``--readme FILE
--block NAME`` writes it between ``<!-- NAME -->`` and ``<!-- /NAME -->`` (``rd_table``'s blocks).

    python -m benchmarks.bound_table benchmarks/results/error_bound_alone.json \\
        benchmarks/results/error_bound_latent/a.json --readme README.md --block bound-latent
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

NETWORKS = ("latent", "neurcomp")
CLASSICAL = ("sz3", "sperr")


def load_rows(paths: list[str]) -> dict:
    """(volume, bound) -> codec -> row; a later file's row replaces an earlier one's."""
    table: dict = {}
    for path in paths:
        try:
            rows = json.loads(Path(path).read_text())["rows"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SystemExit(f"{path}: not an error_bound_bench --json file ({type(exc).__name__}: {exc})") from None
        for row in rows:
            table.setdefault((row["volume"], row["rel_bound"]), {})[row["codec"]] = row
    return table


def render(table: dict) -> str:
    nets = [n for n in NETWORKS if any(n in codecs for codecs in table.values())]
    head = ["volume", "rel bound", *(f"{n}, bound alone" for n in nets), "better of SZ3 / SPERR", "best of ours / better", "ZFP"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for (volume, bound), codecs in sorted(table.items(), key=lambda kv: (kv[0][0], -kv[0][1])):
        if not any(n in codecs for n in nets) or not all(c in codecs for c in CLASSICAL):
            continue
        ours = {n: codecs[n]["ratio"] for n in nets if n in codecs}
        best_net = max(ours, key=ours.get)
        rival = max(CLASSICAL, key=lambda c: codecs[c]["ratio"])
        better = codecs[rival]["ratio"]
        cells = [f"**{ours[n]:.1f}**" if n == best_net and len(ours) > 1 else f"{ours[n]:.1f}" if n in ours else "-"
                 for n in nets]
        zfp = codecs.get("zfp", {}).get("ratio")
        zfp_cell = "" if zfp is None else f"{zfp:.1f}" + (" **ahead of us**" if zfp > ours[best_net] else "")
        name = volume.rsplit(".", 1)[0]
        lines.append(f"| {name} | {bound:g} | " + " | ".join(cells) + f" | {better:.1f} ({rival.upper()}) | "
                     f"{ours[best_net] / better:.2f}x | {zfp_cell} |")
    return "\n".join(lines)


def main(argv=None) -> str:
    from benchmarks.rd_table import replace_block

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json", nargs="+", help="error_bound_bench --json files")
    parser.add_argument("--readme", default="", help="also write the table into this file's block")
    parser.add_argument("--block", default="bound-latent", help="the README block to replace (<!-- NAME -->)")
    args = parser.parse_args(argv)
    text = render(load_rows(args.json))
    if args.readme:
        replace_block(Path(args.readme), text, args.block)
    print(text)
    return text


if __name__ == "__main__":
    main()
