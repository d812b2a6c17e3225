"""Error-bounded comparison: at relative bounds 1e-1, 1e-2, 1e-3, our file's ratio against SZ3 (ABS),
ZFP (fixed accuracy) and SPERR (``hdf5plugin.Sperr(absolute=...)``) at the same absolute bound,
with encode/decode times, every maximum error checked, and the decode time of a 32^3 box against a
full decode.

Our file, by default (no ``--ratio``): the bound alone, as a user asks SZ3 for it: one training per
volume and bound whose network size is searched for the smallest file, network plus corrections
(``training.bound_search``: short trainings of ``--steps`` / 4, then the winner's ``--steps``); "enc
s" is that whole search and training. ``--network latent``: the latent grid's bound alone (its
file's target ratio searched, whole fits of ``--latent-steps``, the smallest file's fit written as the
run). The fit does not depend on the bound, so each size is fitted once per volume and shared by
the three bounds; "enc s" still counts every fit a bound's search used. With ``--ratio R``: one network trained per volume
(``--steps`` steps, sized for voxels / parameters = R), then encoded at each bound with its
corrections (``quantization.bounded``); the training time is reported once per volume, apart from
the per-bound encode time (quantize + corrections + verification).

    python -m benchmarks.error_bound_bench --volumes nucleon_41x41x41_uint8.raw --steps 300 --json out.json
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import numpy as np

from neurcomp.compressors.sperr import SPERRCodec
from neurcomp.compressors.sz3 import SZ3Codec
from neurcomp.compressors.zfp import ZFPCodec

BOUNDS = (1e-1, 1e-2, 1e-3)
DATASETS = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets"


def sperr_absolute(values: np.ndarray, bound: float) -> bytes:
    """One SPERR compression in absolute-error mode: the HDF5 chunk is the complete stream."""
    import h5py
    import hdf5plugin

    with h5py.File(io.BytesIO(), "w") as h5:
        dset = h5.create_dataset("v", data=values, chunks=values.shape,
                                 **hdf5plugin.Sperr(absolute=float(bound), swap=True))
        return bytes(dset.id.read_direct_chunk((0, 0, 0))[1])


def classical(values: np.ndarray, bound: float) -> dict:
    """name -> (payload, decoded, encode s, decode s) for SZ3, ZFP and SPERR at ``bound``."""
    out = {}
    codecs = {"sz3": (SZ3Codec(), lambda v: SZ3Codec.compress(v, bound)),
              "zfp": (ZFPCodec(), lambda v: ZFPCodec.compress(v, bound)),
              "sperr": (SPERRCodec(), lambda v: sperr_absolute(v, bound))}
    for name, (codec, encode) in codecs.items():
        t0 = time.perf_counter()
        payload = encode(values)
        t1 = time.perf_counter()
        decoded = codec.decompress(payload, values.shape)
        out[name] = (payload, decoded, t1 - t0, time.perf_counter() - t1)
    return out


def _training_flags(values: np.ndarray, args) -> list[str]:
    passes = args.steps * 1024 * 16 / values.size
    return ["--quant_bits", str(args.bits), "--max_pass", repr(passes), "--pass_decay", repr(passes / 3),
            "--min_steps", str(args.steps), "--device", "cpu", "--tracking", "none", "--checkpoint_every", "0",
            "--quiet", "true"]


def ours_bound_only(values: np.ndarray, args) -> tuple[dict, dict]:
    """rel bound -> (payload, decoded, search + training s, decode s), and rel bound -> the search's report."""
    import contextlib
    import tempfile

    from neurcomp.compressors import api
    from neurcomp.config.options import parse_config
    from neurcomp.data.writers import write_vti
    from neurcomp.training.bound_search import choose_latent_ratio
    from neurcomp.training.latent_run import train_latent
    from neurcomp.training.run import train

    out, searches, fits = {}, {}, {}  # fits: the latent grid's, by size, made once for all bounds
    with tempfile.TemporaryDirectory() as tmp:
        write_vti(Path(tmp) / "v.vti", values, (1.0, 1.0, 1.0))
        for rel in BOUNDS:
            network = ["--network", args.network, "--latent_steps", str(args.latent_steps)]
            cfg = parse_config(["--data", str(Path(tmp) / "v.vti"), "--basedir", tmp, "--expname", f"b{rel:g}",
                                "--max_rel_error", repr(rel), *_training_flags(values, args), *network])
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                if args.network == "latent":  # run.train's dispatch, with the fits shared across bounds
                    cfg, search, fitted = choose_latent_ratio(cfg, False, fits=fits)
                    info = train_latent(cfg, False, extra_info={"bound_search": search}, fitted=fitted)
                else:
                    info = train(cfg, progress=False)
            # a reused fit's seconds count as if this bound's search had made it
            t1 = time.perf_counter() + sum(c.get("fit_seconds", 0.0) for c in info["bound_search"]["candidates"]
                                           if c.get("reused"))
            data = (cfg.experiment_dir / info["file"]).read_bytes()
            t2 = time.perf_counter()
            decoded = api.decompress(data)
            out[rel] = (data, decoded, t1 - t0, time.perf_counter() - t2)
            searches[rel] = info["bound_search"]
    return out, searches


def ours(values: np.ndarray, args) -> tuple[dict, float]:
    """rel bound -> (payload, decoded, encode s, decode s), and the training seconds."""
    import tempfile

    from neurcomp.config.options import parse_config
    from neurcomp.data.writers import write_vti
    from neurcomp.quantization.bounded import encode_bounded
    from neurcomp.quantization.decode import decode_volume
    from neurcomp.quantization.encode import quantize_network
    from neurcomp.quantization.format import parse
    from neurcomp.training.checkpoint import load_model
    from neurcomp.training.run import train

    with tempfile.TemporaryDirectory() as tmp:
        write_vti(Path(tmp) / "v.vti", values, (1.0, 1.0, 1.0))
        cfg = parse_config(["--data", str(Path(tmp) / "v.vti"), "--basedir", tmp, "--expname", "b",
                            "--compression_ratio", str(args.ratio), *_training_flags(values, args)])
        t0 = time.perf_counter()
        train(cfg, progress=False)
        training = time.perf_counter() - t0
        model, info, _ = load_model(cfg.experiment_dir / "checkpoint.pt")
    out = {}
    for rel in BOUNDS:
        t0 = time.perf_counter()
        data, _ = encode_bounded(quantize_network(model, info, args.bits), values, "rel", rel)
        t1 = time.perf_counter()
        decoded = decode_volume(parse(data))[0]
        out[rel] = (data, decoded, t1 - t0, time.perf_counter() - t1)
    return out, training


def region_timing(payload: bytes, shape) -> tuple[float, float]:
    """(full decode s, 32^3 box decode s), each from the bytes."""
    from neurcomp.compressors import api

    t0 = time.perf_counter()
    api.decompress(payload)
    t1 = time.perf_counter()
    box = tuple(v for n in shape[::-1] for v in (max(0, n // 2 - 16), min(n, n // 2 + 16)))
    api.decompress(payload, region=box)
    return t1 - t0, time.perf_counter() - t1


def main(argv=None):
    from neurcomp.data.readers import read_volume

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--volumes", nargs="+", required=True, help="names in ../shared/datasets")
    p.add_argument("--steps", type=int, default=300, help="training steps of our network per volume")
    p.add_argument("--ratio", type=float, default=0.0,
                   help="our network's voxels / parameters (0: the bound alone sizes it, training.bound_search)")
    p.add_argument("--bits", type=int, default=9)
    p.add_argument("--network", choices=("neurcomp", "latent"), default="neurcomp",
                   help="the network whose bound alone is measured (latent: no --ratio)")
    p.add_argument("--latent-steps", type=int, default=0,
                   help="network = latent: every candidate's fit steps (0: training.latent_fit.default_steps)")
    p.add_argument("--output", default="", help="also write the markdown table here")
    p.add_argument("--json", default="", help="also write every row (and our size searches) as JSON here")
    args = p.parse_args(argv)
    if args.network == "latent" and args.ratio > 0:
        p.error("--network latent measures the bound alone: leave out --ratio")
    lines = ["| volume | rel bound | codec | ratio | max err / bound | enc s | dec s |", "|---|---|---|---|---|---|---|"]
    notes, rows = [], []
    for name in args.volumes:
        values = np.ascontiguousarray(read_volume(DATASETS / name).values, dtype=np.float32)
        span = float(values.max()) - float(values.min())
        if args.ratio > 0:
            mine, training = ours(values, args)
            searches = {}
        else:
            mine, searches = ours_bound_only(values, args)
        for rel in BOUNDS:
            results = {args.network: mine[rel], **classical(values, rel * span)}
            for codec, (payload, decoded, enc, dec) in results.items():
                err = float(np.abs(decoded.astype(np.float64) - values).max()) / (rel * span)
                ratio = values.size * 4 / len(payload)
                lines.append(f"| {name} | {rel:g} | {codec} | {ratio:.1f} | {err:.3f} | {enc:.2f} | {dec:.3f} |")
                rows.append({"volume": name, "rel_bound": rel, "codec": codec, "ratio": ratio, "bytes": len(payload),
                             "max_err_over_bound": err, "encode_s": enc, "decode_s": dec,
                             **({"bound_search": searches[rel]} if codec == args.network and rel in searches else {})})
        full, box = region_timing(mine[BOUNDS[1]][0], values.shape)
        how = (f"training {training:.1f} s ({args.steps} steps, ratio {args.ratio:g}, {args.bits} bits)" if args.ratio > 0
               else "sizes chosen by the bound: " + ", ".join(f"{rel:g} -> {key[7:]} {searches[rel][key]:g}"
                                                            for rel in BOUNDS for key in searches[rel]
                                                            if key.startswith("chosen_")))
        notes.append(f"{name}: {how}; decode of the 1e-2 file: full {full:.3f} s, 32^3 box {box:.3f} s")
        write_outputs(args, lines, notes, rows)  # after every volume: a long run keeps what it measured
    print("\n".join(lines + [""] + [f"- {n}" for n in notes]))


def write_outputs(args, lines, notes, rows) -> None:
    from neurcomp.data.atomic import atomic_write_bytes

    text = "\n".join(lines + [""] + [f"- {n}" for n in notes]) + "\n"
    if args.output:
        atomic_write_bytes(Path(args.output), text.encode())
    if args.json:
        import json

        atomic_write_bytes(Path(args.json), (json.dumps({"steps": args.steps, "ratio": args.ratio, "bits": args.bits,
                                                         "network": args.network, "latent_steps": args.latent_steps,
                                                         "rows": rows}, indent=1) + "\n").encode())


if __name__ == "__main__":
    main()
