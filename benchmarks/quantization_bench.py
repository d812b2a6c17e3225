"""Quantization benchmark: file sizes, encode/decode times and the PSNR cost of quantization.

    python benchmarks/quantization_bench.py [--quick] [--threads 1] [--out benchmarks/results/quantization.json]

1. Size: a 4-layer residual width-165 network (a 255^3 volume at ratio 100) at 8 and 9 bits, in
   this format under every encoder option, against the original Neurcomp format (per layer a
   float32 codebook of 2^B centroids and B-bit packed labels, float32 biases, first and last
   layer raw float32).
2. Speed: encoding and decoding a ~100k-parameter network (width 128) at 9 bits, and the
   original method's k-means (scikit-learn KMeans) on the same network when sklearn is installed.
3. PSNR: networks trained briefly on real volumes from ../shared/datasets, quantized at 8 and 9
   bits (and 6, to show where fine-tuning matters) with each encoder option, with and without
   codebook fine-tuning. Fine-tuning an under-trained network is also extra training, so the
   unquantized network trained for the same extra steps is reported as a control.

Prints tables and writes JSON. Uses ``torch.set_num_threads(--threads)``: on a shared 2-core
machine one thread is faster than two contending ones.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from neurcomp.data.readers import read_volume  # noqa: E402
from neurcomp.model.architecture import Architecture, count_parameters  # noqa: E402
from neurcomp.model.neurcomp import Neurcomp  # noqa: E402
from neurcomp.quantization.bitpack import packed_size  # noqa: E402
from neurcomp.quantization.decode import build_model, decode_bytes  # noqa: E402
from neurcomp.quantization.encode import (EncoderOptions, encode_network, finetune_codebooks,  # noqa: E402
                                 normalized_psnr, quantize_network)
from neurcomp.quantization.format import CompressedNetwork, TensorCode  # noqa: E402
from neurcomp.data.volume import VolumeInfo  # noqa: E402
from neurcomp.training.sampling import VolumeSampler  # noqa: E402

DATASETS = Path("..") / "shared" / "datasets"  # relative to the repository root
VOLUMES = [  # file, width of the 4-layer residual network, training steps, points per step, bit widths
    ("nucleon_41x41x41_uint8.raw", 32, 500, 4096, (6, 8, 9)),
    ("viscous_fingers_run01_t050_64x64x64_float32.npy", 40, 600, 4096, (6, 8, 9)),
    ("hydrogen_atom_128x128x128_uint8.raw", 48, 600, 8192, (8, 9)),
    # wide enough that the first layer (3 x 96 weights) has more weights than 2^8 centroids
    ("viscous_fingers_run01_t050_64x64x64_float32.npy", 96, 300, 4096, (6, 8, 9)),
]

ORIGINAL = EncoderOptions(codebook_dtype="float32", bias="float32", quantize_first_last=False,
                          raw_dtype="float32", compression="none")
VARIANTS = {  # name -> options; most change one thing relative to the original layout
    "original layout": ORIGINAL,
    "f16 codebooks": replace(ORIGINAL, codebook_dtype="float16"),
    "f16 biases": replace(ORIGINAL, bias="float16"),
    "quantized biases": replace(ORIGINAL, bias="quantized"),
    "f16 first/last": replace(ORIGINAL, raw_dtype="float16"),
    "quantized first/last": replace(ORIGINAL, quantize_first_last=True),
    "zstd": replace(ORIGINAL, compression="zstd"),
    "lzma": replace(ORIGINAL, compression="lzma"),
    "auto coding": replace(ORIGINAL, compression="auto"),
    "default, no coding": replace(EncoderOptions(), compression="none"),
    "default, quantized first/last": replace(EncoderOptions(), quantize_first_last=True),
    "default": EncoderOptions(),
}
LOW_BITS_VARIANTS = ("original layout", "default", "default, quantized first/last")


def original_format_bytes(arch: Architecture, bits: int) -> int:
    """Size of the original Neurcomp quantized file for ``arch`` (payload; its header adds a few bytes)."""
    shapes = arch.linear_shapes()
    total = 0
    for i, (o, n_in) in enumerate(shapes):
        if i in (0, len(shapes) - 1):
            total += 4 * o * n_in  # first/last layer raw float32
        else:
            total += 4 * (1 << bits) + packed_size(o * n_in, bits)  # float32 codebook + packed labels
        total += 4 * o  # float32 bias
    return total


def sklearn_quantize(model: Neurcomp, info: VolumeInfo, bits: int) -> tuple[CompressedNetwork, float] | None:
    """The original method: scikit-learn KMeans per hidden matrix (first/last raw float32)."""
    try:
        from sklearn.cluster import KMeans
    except ImportError:
        return None
    net = quantize_network(model, info, bits, ORIGINAL)
    t0 = time.perf_counter()
    tensors = []
    for i, (w, b) in enumerate(net.tensors):
        if w.kind == "codebook" and i not in (0, len(net.tensors) - 1):
            flat = model.linears()[i].weight.detach().numpy().reshape(-1, 1).astype(np.float32)
            km = KMeans(n_clusters=1 << bits, n_init=1, random_state=0).fit(flat)
            w = TensorCode("codebook", "float32", km.cluster_centers_.reshape(-1).astype(np.float32),
                           km.labels_.astype(np.uint16), bits)
        tensors.append((w, b))
    return replace(net, tensors=tensors), time.perf_counter() - t0


def weights_key(net: CompressedNetwork) -> str:
    import hashlib

    h = hashlib.sha1()
    for w, b in net.tensors:
        h.update(w.dequantize().tobytes())
        h.update(b.dequantize().tobytes())
    return h.hexdigest()


def best_of(fn, repeats):
    times = []
    out = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def load(name):
    v = read_volume(ROOT / DATASETS / name)
    return v, VolumeInfo.from_volume(v)


def train(volume, width, steps, points, seed=0, lr=5e-4):
    torch.manual_seed(seed)
    model = Neurcomp(Architecture.uniform(width, 4))
    sampler = VolumeSampler(volume.normalized(), "cpu", seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr * 0.05)
    for _ in range(steps):
        coords, targets, _ = sampler.sample(points)
        loss = torch.mean((model(coords) - targets) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    return model, sampler


def continue_training(model, sampler, steps, points, lr):
    """Control for fine-tuning: the unquantized network, all parameters, same steps and lr."""
    m = Neurcomp(model.arch)
    m.load_state_dict(model.state_dict())
    opt = torch.optim.Adam(m.parameters(), lr=lr)
    for _ in range(steps):
        coords, targets, _ = sampler.sample(points)
        loss = torch.mean((m(coords) - targets) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    m.eval()
    return m


# ----------------------------------------------------------------------------------------------

def bench_sizes(results):
    arch = Architecture.uniform(165, 4)
    torch.manual_seed(0)
    model = Neurcomp(arch)
    info = VolumeInfo(shape=(255, 255, 255), spacing=(1.0, 1.0, 1.0), vmin=0.0, vmax=1.0)
    rows = []
    for bits in (8, 9):
        orig = original_format_bytes(arch, bits)
        for name, opts in VARIANTS.items():
            size = len(encode_network(quantize_network(model, info, bits, opts), opts.level))
            rows.append({"bits": bits, "variant": name, "bytes": size, "original_bytes": orig,
                         "vs_original": size / orig, "ratio_255": 255 ** 3 * 4 / size})
    results["size_width165"] = {"parameters": count_parameters(arch), "weights": "SIREN initialisation (seed 0)",
                                "rows": rows}
    print(f"\n1. File size, 4-layer residual width-165 network ({count_parameters(arch)} parameters), "
          f"255^3 volume")
    print(f"{'bits':>4} {'variant':<30} {'bytes':>8} {'vs original':>11} {'ratio':>7}")
    for r in rows:
        print(f"{r['bits']:>4} {r['variant']:<30} {r['bytes']:>8} {r['vs_original']:>10.3f}x {r['ratio_255']:>7.1f}")
    for bits in (8, 9):
        print(f"original format at {bits} bits: {original_format_bytes(arch, bits)} bytes")


def bench_speed(results, repeats):
    arch = Architecture.uniform(128, 4)
    torch.manual_seed(0)
    model = Neurcomp(arch)
    info = VolumeInfo(shape=(255, 255, 255), spacing=(1.0, 1.0, 1.0), vmin=0.0, vmax=1.0)
    out = {"parameters": count_parameters(arch), "bits": 9}
    for name, opts in (("default", EncoderOptions()), ("compression none", replace(EncoderOptions(), compression="none")),
                       ("zstd", replace(EncoderOptions(), compression="zstd")),
                       ("lzma", replace(EncoderOptions(), compression="lzma"))):
        t_enc, data = best_of(lambda: encode_network(quantize_network(model, info, 9, opts), opts.level), repeats)
        t_dec, _ = best_of(lambda: decode_bytes(data), max(repeats, 5))
        out[name] = {"encode_s": t_enc, "decode_s": t_dec, "bytes": len(data)}
    sk = sklearn_quantize(model, info, 9)
    if sk is not None:
        out["original_method_sklearn_kmeans_s"] = sk[1]
    results["speed_100k"] = out
    print(f"\n2. Speed, {out['parameters']}-parameter network (width 128) at 9 bits (best of {repeats})")
    for name in ("default", "compression none", "zstd", "lzma"):
        r = out[name]
        print(f"   {name:<18} encode {r['encode_s']:.3f} s   decode {r['decode_s']:.3f} s   {r['bytes']} bytes")
    if sk is not None:
        print(f"   original method (sklearn KMeans per matrix, k-means only): {sk[1]:.2f} s")


def bench_psnr(results, quick, finetune_passes, finetune_lr):
    rows = []
    volumes = VOLUMES[:1] if quick else VOLUMES
    for fname, width, steps, points, bit_widths in volumes:
        path = ROOT / DATASETS / fname
        if not path.is_file():
            print(f"skipping {DATASETS / fname}: not found")
            continue
        t0 = time.perf_counter()
        volume, info = load(fname)
        model, sampler = train(volume, width, steps // (4 if quick else 1), points)
        t_train = time.perf_counter() - t0
        grid = sampler.grid[0, 0]
        base = normalized_psnr(model, grid)
        entry = {"volume": fname, "width": width, "parameters": count_parameters(model.arch),
                 "voxels": volume.num_voxels, "train_steps": steps, "train_seconds": t_train,
                 "psnr_unquantized": base, "bits": {}}
        print(f"\n3. {fname}: width {width}, {entry['parameters']} parameters, trained {steps} steps "
              f"({t_train:.0f} s), unquantized PSNR {base:.2f} dB")
        for bits in (bit_widths if not quick else (8,)):
            per = {}
            psnr_cache = {}
            names = list(VARIANTS) if bits != 6 else list(LOW_BITS_VARIANTS)
            for name in names:
                opts = VARIANTS[name]
                net = quantize_network(model, info, bits, opts)
                size = len(encode_network(net, opts.level))
                key = weights_key(net)  # variants that store the same weights share one evaluation
                if key not in psnr_cache:
                    psnr_cache[key] = normalized_psnr(build_model(net), grid)
                per[name] = {"bytes": size, "psnr": psnr_cache[key], "cost_db": base - psnr_cache[key],
                             "ratio": volume.num_voxels * 4 / size}
            if bits != 6:
                sk = sklearn_quantize(model, info, bits)
                if sk is not None:
                    p = normalized_psnr(build_model(sk[0]), grid)
                    per["original method (sklearn k-means)"] = {
                        "bytes": original_format_bytes(model.arch, bits), "psnr": p, "cost_db": base - p,
                        "ratio": volume.num_voxels * 4 / original_format_bytes(model.arch, bits)}
            # fine-tuning the default encoding, and the control
            net = quantize_network(model, info, bits, EncoderOptions())
            tuned_model = Neurcomp(model.arch)
            ft = finetune_codebooks(tuned_model, net, sampler, finetune_passes, points_per_step=16384,
                                    lr=finetune_lr, evaluate=True, keep_best=False, log=None)
            data = encode_network(net)
            decoded, _, _ = decode_bytes(data)
            p_ft = normalized_psnr(decoded, grid)
            control = continue_training(model, sampler, ft["steps"], 16384, finetune_lr)
            p_ctrl = normalized_psnr(control, grid)
            per["default + fine-tuning"] = {"bytes": len(data), "psnr": p_ft, "cost_db": base - p_ft,
                                            "ratio": volume.num_voxels * 4 / len(data), "steps": ft["steps"],
                                            "seconds": ft["seconds"], "passes": finetune_passes,
                                            "control_psnr_unquantized_same_steps": p_ctrl,
                                            "cost_vs_control_db": p_ctrl - p_ft}
            entry["bits"][bits] = per
            print(f"   {bits} bits:")
            for name, r in per.items():
                extra = (f"  (control: unquantized + same {r['steps']} steps = {r['control_psnr_unquantized_same_steps']:.2f} dB,"
                         f" cost vs control {r['cost_vs_control_db']:+.3f} dB)") if "steps" in r else ""
                print(f"     {name:<36} {r['bytes']:>7} B  ratio {r['ratio']:>7.1f}  PSNR {r['psnr']:.3f} dB  "
                      f"cost {r['cost_db']:+.3f} dB{extra}")
        rows.append(entry)
    results["psnr"] = rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one small volume, short training (smoke run)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--finetune_passes", type=float, default=1.0)
    ap.add_argument("--finetune_lr", type=float, default=1e-5)
    ap.add_argument("--skip", default="", help="comma list of parts to skip: size,speed,psnr")
    ap.add_argument("--out", default=str(Path("benchmarks") / "results" / "quantization.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    skip = set(filter(None, args.skip.split(",")))
    results = {"machine": {"python": platform.python_version(), "torch": torch.__version__,
                           "numpy": np.__version__, "threads": args.threads},
               "encoder_defaults": asdict(EncoderOptions())}
    t0, cpu0 = time.perf_counter(), time.process_time()
    if "size" not in skip:
        bench_sizes(results)
    if "speed" not in skip:
        bench_speed(results, args.repeats)
    if "psnr" not in skip:
        bench_psnr(results, args.quick, args.finetune_passes, args.finetune_lr)
    results["total_seconds"] = time.perf_counter() - t0
    results["cpu_seconds"] = time.process_time() - cpu0
    out = ROOT / args.out if not Path(args.out).is_absolute() else Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=lambda x: None if isinstance(x, float) and not math.isfinite(x) else str(x)) + "\n")
    print(f"\nwrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out} ({results['total_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
