"""Entropy coding of the quantized weights, measured (issue 16, item 7).

    OMP_NUM_THREADS=1 python benchmarks/entropy_bench.py [--work benchmarks/results/tmp/entropy]
        [--out benchmarks/results/entropy.json] [--bits 6 8] [--quick]

Trains (once; cached in ``--work``) small networks with the project's own defaults (``lr = auto``,
``target_file_ratio`` 100 and 200 at 8 bits, ``min_steps`` 1500) on real volumes from
../shared/datasets, then compares at 6 and 8 bits, per layer and in total file bytes:

(a) today's file: k-means indices (byte planes or bit-packed) + the smallest of none/zstd/lzma;
(b) the same k-means indices coded with ``constriction``'s ANS under each layer's own index
    histogram, the histogram stored in the file and counted;
(c) uniform scalar quantization (mid-tread, one step for every hidden matrix, no codebook), the
    integers ANS-coded under a stored histogram or a fitted quantized Laplace/Gaussian (8 bytes),
    the step chosen by bisection so that the decoded volume's PSNR equals (a)'s (within
    PSNR_TOLERANCE), and again so that the file has (a)'s bytes (PSNR at equal bytes);
(d) the encoder's default since this measurement (``EncoderOptions.quantizer = "auto"``): per
    matrix, uniform quantization at the k-means weight error when its record is smaller
    (``quantization.entropy``, FORMAT.md record kind 2), the real file decoded back.

PSNR is that of the decoded volume in physical units (``data.metrics.psnr`` against the value
range of the ground truth). Single thread; timings are not the point. Prints tables and writes
JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import struct
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from neurcomp.data.metrics import psnr  # noqa: E402
from neurcomp.data.readers import read_volume  # noqa: E402
from neurcomp.model.inference import predict_volume  # noqa: E402
from neurcomp.model.neurcomp import Neurcomp  # noqa: E402
from neurcomp.quantization.bitpack import packed_size  # noqa: E402
from neurcomp.quantization.encode import EncoderOptions, encode_network, quantize_network  # noqa: E402
from neurcomp.quantization.format import DTYPES, index_bytes, parse, parse_header  # noqa: E402

DATASETS = Path("..") / "shared" / "datasets"  # relative to the repository root
VOLUMES = [  # (short name, file, extra training options)
    ("nucleon", "nucleon_41x41x41_uint8.raw", []),
    ("vf_t050", "viscous_fingers_run01_t050_64x64x64_float32.npy", []),
    ("neghip", "neghip_vtk_66x66x66_uint8.npy", []),
    # a wider network (the default 75 passes would be 9600 steps: 12 passes, the decays scaled)
    ("hydrogen", "hydrogen_atom_128x128x128_uint8.raw", ["--max_pass", "12", "--pass_decay", "3.2"]),
]
RATIOS = (100, 200)
PSNR_TOLERANCE = 0.005  # dB: "equal PSNR" for (c); at 8 bits (a) is within noise of the unquantized network


def trained_model(name: str, fname: str, ratio: float, work: Path, min_steps: int, extra=()):
    """The network trained by the project's defaults for ``target_file_ratio = ratio`` (8 bits),
    trained once and cached in ``work/<name>_r<ratio>/checkpoint.pt``."""
    from neurcomp.config.options import parse_config
    from neurcomp.training.checkpoint import load_model

    exp = f"{name}_r{int(ratio)}"
    ckpt = work / exp / "checkpoint.pt"
    if not ckpt.is_file():
        from neurcomp.training.run import train

        cfg = parse_config(["--data", str(ROOT / DATASETS / fname), "--basedir", str(work), "--expname", exp,
                            "--target_file_ratio", str(ratio), "--quant_bits", "8", "--min_steps", str(min_steps),
                            "--device", "cpu", "--tracking", "none", "--checkpoint_every", "0", *extra])
        t0 = time.perf_counter()
        info = train(cfg, progress=False)
        print(f"trained {exp}: widths {info['network_layer_sizes']}, {info['steps']} steps, "
              f"{info['psnr']:.2f} dB, {time.perf_counter() - t0:.0f} s (under load)", flush=True)
    model, vinfo, _ = load_model(ckpt)
    return model, vinfo


# ----------------------------------------------------------------------------------------------
# entropy coding helpers (constriction's ANS; every table the decoder needs is counted)

_RECORD = struct.Struct("<BBBBII")  # a tensor record's head (FORMAT.md)


def varint(n: int) -> bytes:
    out = bytearray()
    n = int(n)
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def exact_table(counts: np.ndarray) -> bytes:
    """The counts exactly: varints of the counts, or (non-increasing, as frequency-ordered k-means
    indices are) of their successive differences; the smaller, plus a 1-byte tag."""
    c = counts.astype(np.int64)
    plain = b"".join(varint(x) for x in c)
    if c.size and np.all(np.diff(c) <= 0):
        deltas = varint(c[0]) + b"".join(varint(x) for x in -np.diff(c))
        plain = min(plain, deltas, key=len)
    return b"\0" + plain


def coarse_probabilities(counts: np.ndarray, levels_per_octave: int = 2) -> tuple[np.ndarray, bytes]:
    """The counts rounded to ``levels_per_octave`` steps per factor 2 (0 stays 0), as 6-bit codes
    packed: (the probabilities both sides use, the table bytes with a 1-byte tag)."""
    c = counts.astype(np.float64)
    code = np.zeros(c.size, dtype=np.int64)
    nz = c > 0
    code[nz] = 1 + np.clip(np.round(levels_per_octave * np.log2(c[nz])), 0, 62).astype(np.int64)
    probs = np.where(code > 0, 2.0 ** ((code - 1) / levels_per_octave), 0.0)
    bits = np.unpackbits(code.astype(np.uint8)[:, None], axis=1, bitorder="little")[:, :6]
    return probs, b"\1" + np.packbits(bits.reshape(-1), bitorder="little").tobytes()


def ans_bytes(symbols: np.ndarray, probs: np.ndarray) -> int:
    """Bytes of constriction's ANS stream (32-bit words) of ``symbols`` under ``probs`` (i.i.d.),
    checked to decode back."""
    import constriction

    model = constriction.stream.model.Categorical(np.asarray(probs, dtype=np.float64), perfect=False)
    coder = constriction.stream.stack.AnsCoder()
    sym = np.asarray(symbols, dtype=np.int32)
    coder.encode_reverse(sym, model)
    words = coder.get_compressed()
    back = constriction.stream.stack.AnsCoder(words).decode(model, sym.size)
    assert np.array_equal(back, sym), "ANS round trip failed"
    return 4 * int(words.size)


def parametric_bytes(symbols: np.ndarray, offset: int) -> tuple[int, str]:
    """Bytes of ``symbols`` (integers ``q - offset``) ANS-coded under a quantized Laplace or
    Gaussian fitted to q (mean and scale as two float32: 8 bytes), the smaller; (bytes, model)."""
    import constriction

    q = symbols.astype(np.float64) + offset
    best = None
    for name in ("laplace", "gaussian"):
        mean = float(np.float32(np.median(q) if name == "laplace" else np.mean(q)))
        scale = float(np.float32(max(np.mean(np.abs(q - mean)) if name == "laplace" else np.std(q), 0.3)))
        lo, hi = int(offset), int(offset + symbols.max())
        cls = constriction.stream.model.QuantizedLaplace if name == "laplace" else constriction.stream.model.QuantizedGaussian
        model = cls(lo, hi, mean, scale)
        coder = constriction.stream.stack.AnsCoder()
        sym = (symbols.astype(np.int64) + offset).astype(np.int32)
        coder.encode_reverse(sym, model)
        size = 4 * int(coder.get_compressed().size) + 1 + 8
        if best is None or size < best[0]:
            best = (size, name)
    return best


def codebook_model_bytes(symbols: np.ndarray, codebook: np.ndarray) -> tuple[int, str]:
    """Bytes of k-means indices ANS-coded under probabilities that follow from the stored codebook
    and a Laplace or Gaussian fitted to the weights (mean and scale, two float32): centroid k's
    probability is the density's mass over its Voronoi cell (midpoints to its neighbours)."""
    from math import erf, sqrt

    values = codebook[symbols.astype(np.int64)].astype(np.float64)
    order = np.argsort(codebook, kind="stable")
    c = codebook[order].astype(np.float64)
    edges = np.concatenate([[-np.inf], (c[1:] + c[:-1]) / 2, [np.inf]])
    best = None
    for name in ("laplace", "gaussian"):
        mean = float(np.float32(np.median(values) if name == "laplace" else values.mean()))
        scale = float(np.float32(max(np.mean(np.abs(values - mean)) if name == "laplace" else values.std(), 1e-12)))
        z = (edges - mean) / scale
        if name == "laplace":
            cdf = np.where(z < 0, 0.5 * np.exp(np.minimum(z, 0)), 1 - 0.5 * np.exp(-np.maximum(z, 0)))
        else:
            cdf = np.array([0.5 * (1 + erf(x / sqrt(2))) if np.isfinite(x) else float(x > 0) for x in z])
        p_sorted = np.maximum(np.diff(cdf), 1e-12)
        probs = np.empty_like(p_sorted)
        probs[order] = p_sorted
        size = 1 + 8 + ans_bytes(symbols, probs)
        if best is None or size < best[0]:
            best = (size, f"codebook x {name}")
    return best


MAX_TABLE = 4096


def code_symbols(symbols: np.ndarray, k: int, offset: int | None = None, codebook=None) -> dict:
    """The smallest stored form of ``symbols`` in [0, k): ANS under the exact histogram (stored),
    under the coarse histogram (stored), or (``offset`` given: uniform quantization) under a fitted
    Laplace/Gaussian. Every variant includes its table and a 4-byte stream length."""
    counts = np.bincount(symbols.astype(np.int64), minlength=k)
    p = counts[counts > 0] / symbols.size
    entropy = float(-(p * np.log2(p)).sum())
    options = {}
    if k <= MAX_TABLE:  # a stored table of more symbols than this costs more than it saves
        options["exact histogram"] = 4 + len(exact_table(counts)) + ans_bytes(symbols, counts)
        probs, table = coarse_probabilities(counts)
        options["coarse histogram"] = 4 + len(table) + ans_bytes(symbols, probs)
    if offset is not None:
        size, name = parametric_bytes(symbols, offset)
        options[f"quantized {name}"] = 4 + size
    if codebook is not None:
        size, name = codebook_model_bytes(symbols, codebook)
        options[name] = 4 + size
    best = min(options, key=options.get)
    return {"bytes": options[best], "model": best, "entropy_bits": entropy, "options": options}


def best_general(raw: bytes) -> tuple[int, str]:
    from neurcomp.quantization.coding import COMPRESSIONS, compress

    sizes = {m: len(compress(raw, m)) for m in COMPRESSIONS}
    m = min(sizes, key=sizes.get)
    return sizes[m], m


def record_head(t) -> bytes:
    """A tensor record without its indices (kind, dtype, bits, layout, count, K, then values)."""
    dt = np.dtype(t.dtype).newbyteorder("<")
    if t.kind == "raw":
        return _RECORD.pack(0, DTYPES.index(t.dtype), 0, 0, t.values.size, 0) + t.values.astype(dt).tobytes()
    return _RECORD.pack(1, DTYPES.index(t.dtype), t.bits, 0, t.indices.size, t.values.size) + t.values.astype(dt).tobytes()


# ----------------------------------------------------------------------------------------------
# the three codings of one network

def physical_psnr(net_or_weights, arch, vinfo, truth: np.ndarray) -> float:
    model = Neurcomp(arch)
    with torch.no_grad():
        for lin, (w, b) in zip(model.linears(), net_or_weights):
            lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32)).reshape(lin.weight.shape))
            lin.bias.copy_(torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32)))
    pred = predict_volume(model, truth.shape, vinfo)
    diff = pred.astype(np.float64) - truth.astype(np.float64)
    return psnr(float(np.mean(diff * diff)), float(truth.max()) - float(truth.min()))


def coding_a(net) -> dict:
    data = encode_network(net)
    h = parse_header(data)
    return {"bytes": len(data), "header_bytes": h.header_size, "coding": h.settings.compression}


def coding_b(net, header_bytes: int) -> dict:
    """k-means indices ANS-coded per tensor; everything else as today (smallest general coding)."""
    heads = b"".join(record_head(w) + record_head(b) for w, b in net.tensors)
    rest, rest_coding = best_general(heads)
    layers, streams = [], 0
    for i, (w, _) in enumerate(net.tensors):
        if w.kind != "codebook":
            continue
        c = code_symbols(w.indices, w.values.size, codebook=w.values)
        planes = index_bytes(w.indices, w.bits, "planes" if w.bits >= 8 else "packed")
        layers.append({"layer": i, "n": int(w.indices.size), "K": int(w.values.size), "bits": int(w.bits),
                       "packed_bytes": packed_size(w.indices.size, w.bits),
                       "alone_general_bytes": best_general(planes)[0], **c})
        streams += c["bytes"]
    return {"bytes": header_bytes + rest + streams, "rest_bytes": rest, "rest_coding": rest_coding, "layers": layers}


def uniform_weights(net, step: float):
    """(c): every hidden matrix (the ones k-means quantizes), q = round(w / step) (mid-tread),
    w' = q step; first/last layers and biases as (a) stores them. Returns (weights, the integer
    arrays per quantized layer)."""
    weights, ints = [], {}
    last = len(net.tensors) - 1
    for i, ((w, b), wo) in enumerate(zip(net.tensors, net.original)):
        if 0 < i < last:
            q = np.round(wo / step).astype(np.int64)
            ints[i] = q
            weights.append(((q * step).astype(np.float32), b.dequantize()))
        else:
            weights.append((w.dequantize(), b.dequantize()))
    return weights, ints


def coding_c_bytes(net, ints: dict, header_bytes: int) -> tuple[int, list]:
    heads = b"".join((_RECORD.pack(2, 0, 0, 0, w.count, 0) + b"\0" * 8 if i in ints else record_head(w))
                     + record_head(b) for i, (w, b) in enumerate(net.tensors))  # a uniform record: step/offset in 8 bytes
    rest, _ = best_general(heads)
    layers, streams = [], 0
    for i, q in ints.items():
        lo = int(q.min())
        c = code_symbols(q - lo, int(q.max()) - lo + 1, offset=lo)
        layers.append({"layer": i, "n": int(q.size), "levels": int(q.max()) - lo + 1, **c})
        streams += c["bytes"]
    return header_bytes + rest + streams, layers


def bisect_step(fn, lo: float, hi: float, iters: int):
    """Largest step in [lo, hi] (log scale) with fn(step) true, fn monotone (true at lo)."""
    for _ in range(iters):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if fn(mid) else (lo, mid)
    return lo


def curve_point(curve, x_key, y_key, x):
    """y of the (x, y) curve at ``x``, linear in log x between its neighbours (None outside)."""
    pts = sorted((math.log(p[x_key]), p[y_key]) for p in curve)
    lx = math.log(x)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= lx <= x1 and x1 > x0:
            return y0 + (y1 - y0) * (lx - x0) / (x1 - x0)
    return None


def _bytes_at(curve, psnr_target):
    """Bytes of the curve at ``psnr_target`` (log-linear between the bracketing points), None outside."""
    pts = sorted((p["psnr"], math.log(p["bytes"])) for p in curve)
    for (p0, b0), (p1, b1) in zip(pts, pts[1:]):
        if p0 <= psnr_target <= p1 and p1 > p0:
            return math.exp(b0 + (b1 - b0) * (psnr_target - p0) / (p1 - p0))
    return None


def rd_curve(model, vinfo, truth, quantizer: str, bit_range) -> list:
    """(bits, bytes, PSNR) of the real file at each bit width, decoded back."""
    out = []
    for bits in bit_range:
        data = encode_network(quantize_network(model, vinfo, bits, EncoderOptions(quantizer=quantizer)))
        back = parse(data)
        p = physical_psnr([(w.dequantize(), b.dequantize()) for w, b in back.tensors], model.arch, vinfo, truth)
        out.append({"bits": bits, "bytes": len(data), "psnr": p})
    return out


def run(args, work: Path):
    results = {"machine": {"python": platform.python_version(), "torch": torch.__version__,
                           "numpy": np.__version__, "threads": 1, "load": os.getloadavg()[0]},
               "command": "OMP_NUM_THREADS=1 python benchmarks/entropy_bench.py " + " ".join(sys.argv[1:]),
               "networks": []}
    t_start = time.perf_counter()
    rows = []
    for name, fname, extra in VOLUMES:
        path = ROOT / DATASETS / fname
        if name not in args.volumes or not path.is_file():
            continue
        volume = read_volume(path)
        truth = volume.values
        for ratio in args.ratios:
            model, vinfo = trained_model(name, fname, ratio, work, args.min_steps, extra)
            original = [(lin.weight.detach().numpy().reshape(-1).astype(np.float32),
                         lin.bias.detach().numpy().reshape(-1).astype(np.float32)) for lin in model.linears()]
            base = physical_psnr(original, model.arch, vinfo, truth)
            entry = {"volume": name, "target_file_ratio": ratio, "widths": list(model.arch.widths),
                     "parameters": int(sum(p.numel() for p in model.parameters())),
                     "psnr_unquantized": base, "bits": {},
                     "curve_a": rd_curve(model, vinfo, truth, "kmeans", range(3, 11)),
                     "curve_d": rd_curve(model, vinfo, truth, "auto", range(3, 11))}
            for bits in args.bits:
                net = quantize_network(model, vinfo, bits, EncoderOptions(quantizer="kmeans"))
                net.original = [w for w, _ in original]
                a = coding_a(net)
                p_a = physical_psnr([(w.dequantize(), b.dequantize()) for w, b in net.tensors], model.arch, vinfo, truth)
                b = coding_b(net, a["header_bytes"])
                res = {"a": {**a, "psnr": p_a}, "b": {**b, "psnr": p_a}}
                data = encode_network(quantize_network(model, vinfo, bits, EncoderOptions()))  # quantizer auto
                back = parse(data)
                res["d"] = {"bytes": len(data), "kinds": [w.kind for w, _ in back.tensors],
                            "psnr": physical_psnr([(w.dequantize(), b.dequantize()) for w, b in back.tensors],
                                                  model.arch, vinfo, truth)}
                # (d) against (a)'s rate-distortion curve (bits 3..10): dB at (d)'s bytes, bytes at (d)'s PSNR
                a_db = curve_point(entry["curve_a"], "bytes", "psnr", res["d"]["bytes"])
                a_bytes = _bytes_at(entry["curve_a"], res["d"]["psnr"])
                res["d"]["gain_db_equal_bytes"] = None if a_db is None else res["d"]["psnr"] - a_db
                res["d"]["bytes_vs_a_equal_psnr"] = None if a_bytes is None else res["d"]["bytes"] / a_bytes
                if len(net.tensors) > 2:
                    wmax = max(float(np.abs(o).max()) for o in net.original[1:-1])
                    cache = {}

                    def evaluate(step):
                        if step not in cache:
                            weights, ints = uniform_weights(net, step)
                            size, layers = coding_c_bytes(net, ints, a["header_bytes"])
                            cache[step] = (physical_psnr(weights, model.arch, vinfo, truth), size, layers)
                        return cache[step]

                    s_psnr = bisect_step(lambda s: evaluate(s)[0] >= p_a - PSNR_TOLERANCE, wmax / 2 ** 16, wmax,
                                         args.iters)
                    s_bytes = bisect_step(lambda s: evaluate(s)[1] > a["bytes"], wmax / 2 ** 16, wmax, args.iters)
                    s_bytes = min((s for s in cache if cache[s][1] <= a["bytes"]), default=s_bytes)
                    p1, n1, l1 = evaluate(s_psnr)
                    p2, n2, l2 = evaluate(s_bytes)
                    res["c_equal_psnr"] = {"step": s_psnr, "psnr": p1, "bytes": n1, "layers": l1}
                    res["c_equal_bytes"] = {"step": s_bytes, "psnr": p2, "bytes": n2, "layers": l2}
                entry["bits"][bits] = res
                rows.append((entry, bits, res))
                print_row(entry, bits, res)
            results["networks"].append(entry)
            results["total_seconds"] = time.perf_counter() - t_start
            write_json(results, args.out)  # after every network: a long run keeps what it measured
    print_tables(rows)
    print(f"wrote {args.out}")


def write_json(results, path):
    out = Path(path)
    out = out if out.is_absolute() else ROOT / out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=float) + "\n")


def print_row(entry, bits, res):
    a, b = res["a"], res["b"]
    print(f"\n{entry['volume']} r{entry['target_file_ratio']} widths {entry['widths']} {bits} bits: "
          f"(a) {a['bytes']} B {a['coding']} {a['psnr']:.3f} dB | (b) {b['bytes']} B", flush=True)
    for l in b["layers"]:
        print(f"   layer {l['layer']}: n {l['n']} K {l['K']} H {l['entropy_bits']:.3f} b  packed {l['packed_bytes']}"
              f"  alone {l['alone_general_bytes']}  ANS {l['bytes']} ({l['model']}; {l['options']})")
    for key in ("c_equal_psnr", "c_equal_bytes"):
        if key in res:
            c = res[key]
            print(f"   (c) {key}: step {c['step']:.3g} {c['bytes']} B {c['psnr']:.3f} dB  "
                  + "; ".join(f"L{l['layer']} {l['levels']} lv H {l['entropy_bits']:.2f} {l['bytes']} B {l['model']}"
                              for l in c["layers"]))


def print_tables(rows):
    print(f"\n{'volume':<9} {'ratio':>5} {'bits':>4} {'(a) B':>7} {'(a) dB':>8} {'(b) B':>7} {'b/a':>6} "
          f"{'(c) B @=dB':>10} {'c/a':>6} {'(c) dB @=B':>10} {'gain dB':>7} {'(d) B':>7} {'d/a':>6} {'(d) dB':>8} "
          f"{'d-a dB':>7} {'d@=B dB':>7} {'d@=dB B':>7}")
    for entry, bits, res in rows:
        a, b, d = res["a"], res["b"], res["d"]
        c1, c2 = res.get("c_equal_psnr"), res.get("c_equal_bytes")
        print(f"{entry['volume']:<9} {entry['target_file_ratio']:>5} {bits:>4} {a['bytes']:>7} {a['psnr']:>8.3f} "
              f"{b['bytes']:>7} {b['bytes'] / a['bytes']:>6.3f} "
              + (f"{c1['bytes']:>10} {c1['bytes'] / a['bytes']:>6.3f} {c2['psnr']:>10.3f} {c2['psnr'] - a['psnr']:>+7.3f}"
                 if c1 else f"{'-':>10} {'-':>6} {'-':>10} {'-':>7}")
              + f" {d['bytes']:>7} {d['bytes'] / a['bytes']:>6.3f} {d['psnr']:>8.3f} {d['psnr'] - a['psnr']:>+7.3f}"
              + f" {_fmt(d['gain_db_equal_bytes'], '+7.3f')} {_fmt(d['bytes_vs_a_equal_psnr'], '7.3f')}")


def _fmt(x, spec):
    return f"{'-':>{spec.lstrip('+').split('.')[0]}}" if x is None else format(x, spec)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(Path("benchmarks") / "results" / "tmp" / "entropy"))
    ap.add_argument("--out", default=str(Path("benchmarks") / "results" / "entropy.json"))
    ap.add_argument("--bits", type=int, nargs="+", default=[6, 8])
    ap.add_argument("--min_steps", type=int, default=1500)
    ap.add_argument("--train_only", action="store_true")
    ap.add_argument("--ratios", type=float, nargs="+", default=list(RATIOS), help="target_file_ratio values")
    ap.add_argument("--iters", type=int, default=14, help="bisection steps of (c)'s step (log scale)")
    ap.add_argument("--volumes", nargs="+", default=[v[0] for v in VOLUMES], help="short names to run")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    work = Path(args.work)
    work = work if work.is_absolute() else ROOT / work
    for name, fname, extra in VOLUMES:
        if name not in args.volumes:
            continue
        if not (ROOT / DATASETS / fname).is_file():
            print(f"skipping {DATASETS / fname}: not found")
            continue
        for ratio in args.ratios:
            trained_model(name, fname, ratio, work, args.min_steps, extra)
    if args.train_only:
        return
    run(args, work)


if __name__ == "__main__":
    main()
