"""Training time of the latent-grid network: seconds to train, to come within 1 dB of the final PSNR
and to reach SZ3's PSNR at the same ratio (issue 23's time target: a 128^3 volume in at most 5
minutes on the 2-core CPU, within 1 dB of its final PSNR in half of that).

    python -m benchmarks.latent_time \\
        --volumes ../shared/datasets/hydrogen_atom_128x128x128_uint8.raw \\
        --ratio 200 --output benchmarks/results/latent_time

One process, torch's default threads. The PSNR along the way is ``training.latent_fit``'s history:
what the file would decode to (rounded latents, stored-precision weights) at the step's sampled
voxels, every 50 steps; the final PSNR is the decoded file's on every voxel. Writes
``<output>/latent_time.json`` (with the histories and the machine's load before each run) and
``<output>/latent_time.md`` (also printed). Run it on an idle machine: the load is in the table.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import torch

from benchmarks.rd_eval import evaluate
from neurcomp.compressors import CODECS
from neurcomp.compressors.base import BASELINE_BYTES_PER_VOXEL
from neurcomp.data.readers import read_volume
from neurcomp.data.metrics import volume_metrics
from neurcomp.quantization import latent_format
from neurcomp.training.latent_fit import LatentFitOptions, fit


def first_seconds(history: list[dict], psnr: float) -> float | None:
    """The clock at the first history entry at or above ``psnr`` (None: never)."""
    return next((h["seconds"] for h in history if h["psnr"] >= psnr), None)


def measure(path: str, ratio: float, options: LatentFitOptions) -> dict:
    volume = read_volume(path)
    values = np.asarray(volume.values)
    sz3 = evaluate(CODECS["sz3"](), values, ratio, volume_name=Path(path).stem)
    load = os.getloadavg()[0]
    budget = int(values.size * BASELINE_BYTES_PER_VOXEL / ratio)
    t0 = time.perf_counter()
    model, vmin, vmax, report = fit(values, budget, options, progress=True)
    payload = latent_format.encode(model, vmin, vmax)
    seconds = time.perf_counter() - t0
    psnr = volume_metrics(values.astype(np.float32), latent_format.decode_volume(payload))["psnr"]
    history = report["history"]
    within = first_seconds(history, psnr - 1.0)
    return {"volume": Path(path).stem, "shape": list(values.shape), "target_ratio": ratio,
            "ratio": values.size * BASELINE_BYTES_PER_VOXEL / len(payload), "psnr": psnr,
            "train_s": seconds, "within_1db_s": within, "sz3_psnr": sz3["psnr"], "sz3_ratio": sz3["ratio"],
            "to_sz3_s": first_seconds(history, sz3["psnr"]), "load_before": load,
            "torch_threads": torch.get_num_threads(), "options": asdict(options), "history": history}


def markdown(rows: list[dict]) -> str:
    fmt = lambda s: "-" if s is None else f"{s:.0f}"
    lines = ["| volume | ratio | PSNR dB | train s | within 1 dB s | SZ3 PSNR dB | to SZ3's PSNR s | load | threads |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['volume']} | {r['ratio']:.0f} | {r['psnr']:.2f} | {r['train_s']:.0f} | {fmt(r['within_1db_s'])} | "
                     f"{r['sz3_psnr']:.2f} | {fmt(r['to_sz3_s'])} | {r['load_before']:.2f} | {r['torch_threads']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.latent_time", description=__doc__.split("\n\n")[0])
    parser.add_argument("--volumes", nargs="+", required=True)
    parser.add_argument("--ratio", type=float, default=200.0)
    parser.add_argument("--output", default="benchmarks/results/latent_time")
    for f in fields(LatentFitOptions):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    args = parser.parse_args(argv)
    options = LatentFitOptions(**{f.name: getattr(args, f.name) for f in fields(LatentFitOptions)})
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for path in args.volumes:
        rows.append(measure(path, args.ratio, options))
        (out / "latent_time.json").write_text(json.dumps(rows, indent=1))
    table = markdown(rows)
    (out / "latent_time.md").write_text(table)
    print(table)
    return rows


if __name__ == "__main__":
    main()
