"""Rate-distortion benchmark: every codec at every target ratio on every volume.

    python -m benchmarks.rate_distortion \\
        --volumes ../shared/datasets/nucleon_41x41x41_uint8.raw \\
        --ratios 50 100 200 400 800 --codecs sz3 sperr zfp --output benchmarks/results/rd

Writes ``<output>/rd.json`` (one record per volume x codec x ratio, rewritten after each run so a
long benchmark keeps its partial results), ``<output>/rd.md`` (markdown table, also printed),
``<output>/rd_gap.md`` (per volume and ratio: the best classical codec, Neurcomp, the gap between
them and the mean-predictor PSNR; also printed) and ``<output>/rd_<volume>.png`` (PSNR vs achieved
ratio, a line per codec, the mean-predictor PSNR dashed).

Codec options come from the codecs themselves: each registered codec adds its own
``--<codec>-...`` arguments (`Codec.add_cli_args`) and is built from them (`Codec.from_args`). To
add a codec, add a module to the ``compressors`` package (see compressors/base.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from neurcomp.compressors import CODECS
from benchmarks.rd_eval import evaluate, gap_table, markdown_table, plot_rd_per_volume, safe_name, write_results
from neurcomp.config.cli import run_cli
from neurcomp.config.errors import ConfigError, InputError, NeurcompError

DEFAULT_RATIOS = (50.0, 100.0, 200.0, 400.0, 800.0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rate_distortion", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--volumes", nargs="+", required=True, help="volume files (any format read_volume reads)")
    parser.add_argument("--ratios", nargs="+", type=float, default=list(DEFAULT_RATIOS),
                        help="target compression ratios (float32 bytes / compressed bytes)")
    parser.add_argument("--codecs", nargs="+", default=["sz3", "zfp"], choices=sorted(CODECS), help="codecs to run")
    parser.add_argument("--output", default="benchmarks/results/rd", help="folder for rd.json, rd.md, rd_gap.md, rd_<volume>.png")
    parser.add_argument("--work-dir", default="benchmarks/results/tmp",
                        help="scratch folder handed to codecs that need one (checkpoints); classic codecs ignore it")
    for name in sorted(CODECS):
        CODECS[name].add_cli_args(parser.add_argument_group(f"{name} options"))
    return parser


def volume_names(paths: list[str]) -> list[str]:
    """File stems, prefixed with the parent folder where two stems collide."""
    stems = [Path(p).stem for p in paths]
    return [f"{Path(p).parent.name}_{s}" if stems.count(s) > 1 else s for p, s in zip(paths, stems)]


def main(argv=None) -> list[dict]:
    args = build_parser().parse_args(argv)
    if any(not r > 0 for r in args.ratios):
        raise ConfigError(f"--ratios must be positive, got {args.ratios}")
    missing = [p for p in args.volumes if not Path(p).is_file()]
    if missing:  # fail before hours of compression, not at the last volume
        raise InputError(f"volume file(s) not found: {', '.join(missing)}")
    try:
        codecs = [CODECS[name].from_args(args) for name in dict.fromkeys(args.codecs)]
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    out = Path(args.output)
    json_path, md_path, gap_path = out / "rd.json", out / "rd.md", out / "rd_gap.md"

    from tqdm import tqdm

    from neurcomp.data.readers import read_volume

    records: list[dict] = []
    skipped: list[str] = []
    names = volume_names(args.volumes)
    with tqdm(total=len(args.volumes) * len(codecs) * len(args.ratios), unit="run", file=sys.stderr) as bar:
        for path, name in zip(args.volumes, names):
            bar.set_description(f"loading {name}")
            volume = read_volume(path)
            for codec in codecs:
                for ratio in args.ratios:
                    bar.set_description(f"{name} {codec.name}@{ratio:g}")
                    work_dir = Path(args.work_dir) / safe_name(name) / f"{codec.name}_r{ratio:g}"
                    try:
                        records.append(evaluate(codec, volume.values, ratio, volume_name=name, work_dir=work_dir))
                    except NeurcompError as exc:  # e.g. a ratio no network reaches: note it, go on
                        skipped.append(f"{name} {codec.name}@{ratio:g}: {exc}")
                        bar.write(f"skipped {skipped[-1]}")
                    write_results(records, json_path, md_path, gap_path)
                    bar.update(1)
    pngs = plot_rd_per_volume(records, out)
    print(markdown_table(records))
    print(gap_table(records))
    for line in skipped:
        print(f"skipped: {line}")
    print(f"wrote {json_path}, {md_path}, {gap_path}, " + ", ".join(str(p) for p in pngs), file=sys.stderr)
    return records


if __name__ == "__main__":
    sys.exit(run_cli(main))
