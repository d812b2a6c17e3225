"""The error bound's correction section: zstd-9 of the byte-shuffled fields against the order-0 ANS
streams of ``quantization.correction_coding``, on real volumes at 1e-1, 1e-2 and 1e-3 of the range.

One short training per volume and bound (``api.compress``, ``--steps`` steps, sized for ``--ratio``),
then the same corrections coded both ways; prints a table and writes JSON.

    python -m benchmarks.correction_coding_bench --volumes nucleon_41x41x41_uint8.raw neghip_vtk_66x66x66_uint8.npy
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

DATASETS = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets"


def main(argv=None) -> list[dict]:
    from neurcomp.compressors import api
    from neurcomp.data.readers import read_volume
    from neurcomp.quantization import bound
    from neurcomp.quantization.format import parse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--volumes", nargs="+", required=True, help="files, or names in ../shared/datasets")
    p.add_argument("--bounds", nargs="+", type=float, default=[1e-1, 1e-2, 1e-3], help="relative bounds")
    p.add_argument("--ratio", type=float, default=100.0)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--output", default="benchmarks/results/correction_coding.json")
    args = p.parse_args(argv)
    rows = []
    print(f"{'volume':40s} {'bound':>7s} {'corrections':>11s} {'zstd B':>9s} {'ans B':>9s} {'saving':>7s}")
    for name in args.volumes:
        path = Path(name) if Path(name).exists() else DATASETS / name
        values = read_volume(path).values
        for rel in args.bounds:
            net = parse(api.compress(values, ratio=args.ratio, max_rel_error=rel, steps=args.steps, device="cpu"))
            sizes = {c: len(bound.encode_section(replace(net.bound, coding=c))[1]) for c in ("zstd", "ans")}
            saving = 1 - sizes["ans"] / sizes["zstd"] if sizes["zstd"] else 0.0
            rows.append({"volume": path.name, "rel": rel, "corrections": int(net.bound.positions.size), **sizes,
                         "saving": round(saving, 4)})
            print(f"{path.name:40s} {rel:7.0e} {rows[-1]['corrections']:11d} {sizes['zstd']:9d} {sizes['ans']:9d} "
                  f"{100 * saving:6.1f}%", flush=True)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(rows, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    main()
