"""One table from several rate-distortion runs: the gap to the best classical codec, and whether
Neurcomp's PSNR falls as the ratio rises.

    python -m benchmarks.rd_table benchmarks/results/rd_defaults_v3/{small,walnut,hydrogen}

``benchmarks.rate_distortion`` writes one ``rd.json`` per output folder; a long benchmark is run as
several processes (one per core, split by volume), and this merges their records into the table
of ``rd_eval.gap_table`` plus a line per volume saying whether the curve is monotone.
``--readme FILE`` also replaces the block between ``<!-- rd-table -->`` and ``<!-- /rd-table -->``
in FILE (the README's table), written to a temporary name and renamed; ``--plots DIR`` draws the
merged curves, ``DIR/rd_<volume>.png`` (every codec, PSNR against achieved ratio). ``--codecs A B ..``
writes instead one column per codec (``rd_eval.codec_table``), the last one's gap to the better of
SZ3 and SPERR beside it, and ``--block NAME`` picks the README block ``<!-- NAME --> .. <!-- /NAME -->``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from benchmarks.rd_eval import codec_table, gap_rows, gap_table, plot_rd_per_volume
from neurcomp.config.cli import run_cli
from neurcomp.config.errors import InputError

BEGIN, END = "<!-- rd-table -->", "<!-- /rd-table -->"


def markers(block: str) -> tuple[str, str]:
    return f"<!-- {block} -->", f"<!-- /{block} -->"


def load_records(folders: list[str]) -> list[dict]:
    records = []
    for folder in folders:
        path = Path(folder) / "rd.json"
        try:
            records.extend(json.loads(path.read_text()))
        except FileNotFoundError:
            raise InputError(f"{path}: not found (run benchmarks.rate_distortion with --output {folder})") from None
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: cannot read ({exc})") from None
    return records


def monotone_lines(records: list[dict]) -> list[str]:
    """Per volume: Neurcomp's PSNR at each target ratio, and whether it falls as the ratio rises."""
    by_volume: dict[str, list[tuple[float, float]]] = {}
    for row in gap_rows(records):
        if row["neurcomp_psnr"] is not None:
            by_volume.setdefault(row["volume"], []).append((row["target_ratio"], row["neurcomp_psnr"]))
    lines = []
    for volume, points in by_volume.items():
        psnrs = [p for _, p in sorted(points)]
        falls = all(a > b for a, b in zip(psnrs, psnrs[1:]))
        curve = " / ".join(f"{p:.2f}" for p in psnrs)
        ratios = " / ".join(f"{r:g}" for r, _ in sorted(points))
        lines.append(f"- {volume}: {curve} dB at {ratios}: {'falls' if falls else 'does NOT fall'} as the ratio rises")
    return lines


def render(records: list[dict]) -> str:
    return gap_table(records) + "\n" + "\n".join(monotone_lines(records)) + "\n"


def replace_block(path: Path, text: str, block: str = "rd-table") -> None:
    begin, end = markers(block)
    doc = path.read_text()
    if begin not in doc or end not in doc:
        raise InputError(f"{path}: no {begin} ... {end} block to replace")
    head, rest = doc.split(begin, 1)
    _, tail = rest.split(end, 1)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{head}{begin}\n{text}{end}{tail}")
    os.replace(tmp, path)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rd_table", description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", help="output folders of benchmarks.rate_distortion (each holds rd.json)")
    parser.add_argument("--readme", default="", help="also write the table into this file's rd-table block")
    parser.add_argument("--codecs", nargs="+", default=[],
                        help="one column per codec instead of the gap table (the last codec's gap is shown)")
    parser.add_argument("--block", default="rd-table", help="the README block to replace (<!-- NAME -->)")
    parser.add_argument("--plots", default="", help="also draw the merged curves into this folder (rd_<volume>.png)")
    args = parser.parse_args(argv)
    records = load_records(args.folders)
    text = codec_table(records, args.codecs) if args.codecs else render(records)
    print(text)
    if args.readme:
        replace_block(Path(args.readme), text, args.block)
    if args.plots:
        Path(args.plots).mkdir(parents=True, exist_ok=True)
        for png in plot_rd_per_volume(records, args.plots):
            print(f"wrote {png}", file=sys.stderr)
    return text


if __name__ == "__main__":
    sys.exit(run_cli(main))
