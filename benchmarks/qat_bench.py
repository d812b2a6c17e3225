"""Quantization-aware fine-tuning (QAT) against the alternatives, at equal extra steps and file size.

    OMP_NUM_THREADS=1 python benchmarks/qat_bench.py [--quick] [--steps 1500] [--extra 300]
        [--ratios 100 200] [--bits 6 8] [--out benchmarks/results/qat.json]

For each real volume (../shared/datasets), file ratio and bit width, the network is sized for the
file as ``target_file_ratio`` sizes it (``quantization.rate_control.measured_architecture``) and
trained once as ``lr = auto`` trains it (auto learning rate, output starting at the mean, the
pass schedule's x0.2 decays at 20/75, 40/75 and 60/75 of the run; no torch.compile), ``--steps``
steps of 16,384 points; the trained state is cached under ``--cache``. Then, from that state, the
file is written four ways, each with ``--extra`` more steps of 16,384 points except (a):

  (a) plain: k-means and rate control as the training run does today (``encode_to_size``);
  (b) centroids: (a)'s file with its centroids and biases fine-tuned, assignments fixed
      (``finetune_codebooks``, its default lr 1e-5), as ``NeurcompQuantization.py --finetune_passes``;
  (c) QAT: (a)'s file trained by ``quantization.qat.qat_finetune`` (centroids learnt, latent weights
      straight through, re-assigned to the nearest centroid at every step);
  (d) control: the same extra steps of ordinary training, then (a)'s encoding.

(c) and (d) use the schedule's last learning rate times ``--lr_scale`` (the latent weights of (c):
times ``--latent_lr_scale`` more). PSNR is measured on the
volume decoded from the file bytes, in physical units (``data.metrics``). A second table compares,
at each ratio, the 6-bit files (a wider network) with the 8-bit ones (a narrower network): equal
file size. Timings are single-thread CPU, on a shared machine (under load).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.quantization_bench import continue_training  # noqa: E402
from neurcomp.data.metrics import volume_metrics  # noqa: E402
from neurcomp.data.readers import read_volume  # noqa: E402
from neurcomp.data.volume import VolumeInfo, mean_value, normalize  # noqa: E402
from neurcomp.model.architecture import Architecture, count_parameters  # noqa: E402
from neurcomp.model.neurcomp import Neurcomp  # noqa: E402
from neurcomp.quantization.decode import decode_volume  # noqa: E402
from neurcomp.quantization.encode import encode_network, finetune_codebooks, normalized_psnr  # noqa: E402
from neurcomp.quantization.format import parse  # noqa: E402
from neurcomp.quantization.qat import qat_finetune  # noqa: E402
from neurcomp.quantization.encode import EncoderOptions  # noqa: E402
from neurcomp.quantization.rate_control import encode_to_size, measured_architecture  # noqa: E402
from neurcomp.training.recipe import auto_learning_rate  # noqa: E402
from neurcomp.training.sampling import VolumeSampler  # noqa: E402

DATASETS = Path("..") / "shared" / "datasets"  # relative to the repository root
VOLUMES = ["nucleon_41x41x41_uint8.raw", "viscous_fingers_run01_t050_64x64x64_float32.npy",
           "neghip_vtk_66x66x66_uint8.npy"]
POINTS = 16384  # the default batch_size x sample_size
DECAYS = (20 / 75, 40 / 75, 60 / 75)  # pass_decay / max_pass: where the schedule multiplies lr by 0.2
METHODS = ("plain", "centroids", "qat", "control")


def schedule_lr(lr0: float, step: int, steps: int) -> float:
    return lr0 * 0.2 ** sum(step >= d * steps for d in DECAYS)


def train(volume, arch: Architecture, steps: int, cache: Path, seed: int = 0) -> tuple[Neurcomp, dict]:
    """The network trained as lr = auto trains it, from the cache when there."""
    if cache.is_file():
        saved = torch.load(cache, weights_only=False)
        model = Neurcomp(Architecture.from_dict(saved["arch"]))
        model.load_state_dict(saved["state"])
        return model, saved["meta"]
    torch.manual_seed(seed)
    model = Neurcomp(arch)
    model.start_at(float(normalize(mean_value(volume.values), volume.vmin, volume.vmax)))
    sampler = VolumeSampler(volume.normalized(), "cpu", seed=seed)
    lr0 = auto_learning_rate(arch)
    opt = torch.optim.Adam(model.parameters(), lr=lr0)
    t0, c0 = time.perf_counter(), time.process_time()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = schedule_lr(lr0, step, steps)
        coords, targets, _ = sampler.sample(POINTS)
        loss = torch.mean((model(coords) - targets) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    meta = {"steps": steps, "lr0": lr0, "lr_end": schedule_lr(lr0, steps - 1, steps),
            "train_seconds": time.perf_counter() - t0, "train_cpu_seconds": time.process_time() - c0}
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"arch": arch.to_dict(), "state": model.state_dict(), "meta": meta}, cache)
    return model, meta


def file_psnr(volume, data: bytes) -> float:
    prediction = decode_volume(parse(data), device="cpu")[0]
    return float(volume_metrics(volume.values, prediction)["psnr"])


def variant(method: str, model, volume, info, bits: int, target: float, extra: int, lr: float,
            ft_lr: float, seed: int, latent_lr_scale: float = 1.0) -> dict:
    """One way of writing the file from the trained ``model`` (left unchanged)."""
    sampler = VolumeSampler(volume.normalized(), "cpu", seed=seed + 1)  # the same batches for every method
    t0, c0 = time.perf_counter(), time.process_time()
    extra_info = {}
    # the control: the unquantized network trained on for the same steps (a copy either way)
    work = continue_training(model, sampler, extra, POINTS, lr) if method == "control" else copy.deepcopy(model)
    t_extra, c_extra = time.perf_counter() - t0, time.process_time() - c0
    # k-means codebooks, as measured (QAT and centroid fine-tuning train codebooks; the encoder's default
    # is now quantizer auto, which may store a matrix as a uniform record instead)
    data, report = encode_to_size(work, info, bits, target, EncoderOptions(quantizer="kmeans"), tolerance=0.05, seed=seed)
    if method == "centroids":
        net = parse(data)
        passes = extra * POINTS / volume.num_voxels
        t0, c0 = time.perf_counter(), time.process_time()
        ft = finetune_codebooks(work, net, sampler, passes, points_per_step=POINTS, lr=ft_lr, evaluate=False,
                                log=None)
        t_extra, c_extra = time.perf_counter() - t0, time.process_time() - c0
        data = encode_network(net)
        extra_info = {"finetune_steps": ft["steps"]}
    elif method == "qat":
        net = parse(data)
        t0, c0 = time.perf_counter(), time.process_time()
        res = qat_finetune(work, net, sampler, extra, lr=lr, points_per_step=POINTS, latent_lr_scale=latent_lr_scale)
        t_extra, c_extra = time.perf_counter() - t0, time.process_time() - c0
        data = encode_network(net)
        extra_info = {"reassigned": res["reassigned"]}
    return {"bytes": len(data), "ratio": volume.num_voxels * 4 / len(data), "psnr": file_psnr(volume, data),
            "extra_steps": 0 if method == "plain" else extra, "extra_seconds": t_extra,
            "extra_cpu_seconds": c_extra, "layer_bits": report["layer_bits"],
            "weights": [w.kind for w, _ in parse(data).tensors], **extra_info}


def run_case(volume, fname, ratio, bits, args) -> dict:
    info = VolumeInfo.from_volume(volume)
    target = volume.num_voxels * 4 / ratio
    arch = measured_architecture(target, 4, bits)
    cache = ROOT / args.cache / f"{Path(fname).stem}_r{ratio:g}_b{bits}_s{args.steps}.pt"
    model, meta = train(volume, arch, args.steps, cache, seed=args.seed)
    model.eval()
    lr = meta["lr_end"] * args.lr_scale
    case = {"volume": fname, "ratio": ratio, "bits": bits, "widths": list(model.arch.widths),
            "parameters": count_parameters(model.arch), "target_bytes": target, **meta,
            "psnr_unquantized": normalized_psnr(model, volume), "extra_lr": lr, "methods": {}}
    for method in METHODS:
        case["methods"][method] = variant(method, model, volume, info, bits, target, args.extra, lr,
                                          args.finetune_lr, args.seed, args.latent_lr_scale)
        r = case["methods"][method]
        print(f"{Path(fname).stem[:22]:<22} {ratio:>4g} {bits:>4} {str(case['widths']):<18} {method:<10} "
              f"{r['bytes']:>7} {r['ratio']:>7.1f} {r['psnr']:>8.3f} {r['extra_cpu_seconds']:>7.1f}", flush=True)
    return case


def equal_size(cases: list) -> list:
    """At each (volume, ratio): the low-bit file of the wider network against the high-bit one."""
    rows = []
    by_key = {(c["volume"], c["ratio"], c["bits"]): c for c in cases}
    for (vol, ratio, bits), low in by_key.items():
        high = by_key.get((vol, ratio, max(b for _, _, b in by_key)))
        if high is None or bits >= high["bits"]:
            continue
        plain_hi = high["methods"]["plain"]
        for method in ("plain", "centroids", "qat", "control"):
            lo = low["methods"][method]
            rows.append({"volume": vol, "ratio": ratio, "low_bits": bits, "high_bits": high["bits"],
                         "low_method": method, "low_bytes": lo["bytes"], "low_psnr": lo["psnr"],
                         "high_plain_bytes": plain_hi["bytes"], "high_plain_psnr": plain_hi["psnr"],
                         "high_best_psnr": max(m["psnr"] for m in high["methods"].values()),
                         "gain_vs_high_plain_db": lo["psnr"] - plain_hi["psnr"]})
    return rows


def print_equal_size(rows: list, bits: list) -> None:
    print(f"\nequal file size: {min(bits)}-bit file of a wider network (method) against the "
          f"{max(bits)}-bit plain file of a narrower one")
    print(f"{'volume':<22} {'ratio':>5} {'method':<10} {'low B':>7} {'low dB':>8} {'high B':>7} {'high dB':>8} {'gain':>7}")
    for r in rows:
        print(f"{Path(r['volume']).stem[:22]:<22} {r['ratio']:>5g} {r['low_method']:<10} {r['low_bytes']:>7} "
              f"{r['low_psnr']:>8.3f} {r['high_plain_bytes']:>7} {r['high_plain_psnr']:>8.3f} "
              f"{r['gain_vs_high_plain_db']:>+7.3f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="nucleon only, 300 + 60 steps (smoke run)")
    ap.add_argument("--volumes", nargs="+", default=VOLUMES)
    ap.add_argument("--ratios", type=float, nargs="+", default=[100.0, 200.0])
    ap.add_argument("--bits", type=int, nargs="+", default=[6, 8])
    ap.add_argument("--steps", type=int, default=1500, help="training steps (the cached checkpoint)")
    ap.add_argument("--extra", type=int, default=300, help="extra steps of (b), (c) and (d)")
    ap.add_argument("--lr_scale", type=float, default=1.0, help="(c), (d): the schedule's last lr times this")
    ap.add_argument("--latent_lr_scale", type=float, default=1.0, help="(c): the latent weights' lr factor")
    ap.add_argument("--finetune_lr", type=float, default=1e-5, help="(b): NeurcompQuantization.py's default")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", default=str(Path("experiments") / "qat_bench_cache"))
    ap.add_argument("--out", default=str(Path("benchmarks") / "results" / "qat.json"))
    args = ap.parse_args(argv)
    if args.quick:
        args.volumes, args.steps, args.extra = VOLUMES[:1], 300, 60
    torch.set_num_threads(args.threads)
    t_start, load_start = time.perf_counter(), os.getloadavg()[0]
    cases = []
    print(f"{'volume':<22} {'ratio':>4} {'bits':>4} {'widths':<18} {'method':<10} {'bytes':>7} {'ratio':>7} "
          f"{'PSNR dB':>8} {'extra s':>7}")
    for fname in args.volumes:
        path = ROOT / DATASETS / fname
        if not path.is_file():
            print(f"skipping {DATASETS / fname}: not found")
            continue
        volume = read_volume(path)
        for ratio in args.ratios:
            for bits in args.bits:
                cases.append(run_case(volume, fname, ratio, bits, args))
    rows = equal_size(cases)
    if len(set(args.bits)) > 1:
        print_equal_size(rows, args.bits)
    out = {"command": "python benchmarks/qat_bench.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": args.threads,
                       "load_average_at_start": load_start,
                       "load_average_at_end": os.getloadavg()[0], "note": "shared 2-core CPU, under load"},
           "settings": {k: v for k, v in vars(args).items() if k not in ("out", "cache")},
           "cases": cases, "equal_size": rows, "total_seconds": time.perf_counter() - t_start}
    path = ROOT / args.out if not Path(args.out).is_absolute() else Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {args.out} ({out['total_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
