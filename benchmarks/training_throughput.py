"""Training throughput: samples per second of the full training step, and its share of the device's
measured matrix-multiply FLOP rate.

    python -m benchmarks.training_throughput                       # the issue's CPU configs
    python -m benchmarks.training_throughput --device cuda --widths 128 256 512

A step = sample positions on the device + trilinear targets + forward + loss (+ gradient loss) +
backward + Adam, exactly as ``training.trainer.Trainer`` runs it, eager and compiled
(``--compile off on``), in micro-batches (``--micro_batch``, 0: the automatic size). FLOPs per
step count the multiply-adds of every linear layer: forward 2 N sum(in*out), backward twice that
(weight and input gradients); the gradient loss roughly doubles it again, so its fraction is not
reported. The bounds are the rates a step would reach if it did nothing but its matrix products
(and its sines and cosines), with torch's kernels on this device.

``--psnr_passes K`` also trains each volume for K passes twice from the same seed, the plain way
(eager, whole step at once: the original's computation) and the fast way (compiled, automatic
micro-batches), and reports the full-volume PSNR and wall time of both.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from neurcomp.config.options import OptimConfig
from neurcomp.data.readers import read_volume
from neurcomp.model.architecture import Architecture, width_for_ratio
from neurcomp.model.neurcomp import Neurcomp
from neurcomp.data.volume import VolumeInfo
from neurcomp.training.recipe import steps_for
from neurcomp.training.session import evaluate
from neurcomp.training.sampling import VolumeSampler
from neurcomp.training.trainer import Phase, Trainer

DATA = Path("..") / "shared" / "datasets"
# the original research code on this 2-core CPU, batch 1024 x 16, 4 layers, ratio 50 (issue 2)
ORIGINAL = {("neghip_vtk_66x66x66_uint8.npy", False): 0.32e6, ("neghip_vtk_66x66x66_uint8.npy", True): 0.20e6,
            ("hydrogen_atom_128x128x128_uint8.raw", False): 0.14e6, ("hydrogen_atom_128x128x128_uint8.raw", True): 0.08e6}


def matmul_flops(device: torch.device, n: int = 2048, repeats: int = 10) -> float:
    """Measured float32 matrix-multiply rate of the device (FLOP/s)."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    for _ in range(2):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n ** 3 * repeats / (time.perf_counter() - t0)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seeded_trainer(values: np.ndarray, arch: Architecture, phase: Phase, device: torch.device, compile: str,
                   micro_batch: int) -> Trainer:
    """A Trainer for a network initialised from seed 0, sampling with seed 0."""
    torch.manual_seed(0)
    model = Neurcomp(arch).to(device)
    sampler = VolumeSampler(values, device, seed=0, with_gradients=phase.optim.grad_lambda > 0)
    return Trainer(model, sampler, phase, progress=False, compile=compile, micro_batch=micro_batch)


def measure(values: np.ndarray, arch: Architecture, optim: OptimConfig, device: torch.device,
            seconds: float = 10.0, compile: str = "off", micro_batch: int = 0, windows: int = 3) -> dict:
    """Median samples/s over ``windows`` timed stretches of about seconds / windows each, after a
    warm-up that includes compiling."""
    phase = Phase("bench", 10 ** 9, optim.lr, 1e12, optim)  # no pass ends: no logging inside the timing
    trainer = seeded_trainer(values, arch, phase, device, compile, micro_batch)

    def run(steps: int) -> float:
        phase.num_steps = trainer.step + steps
        sync(device)
        t0 = time.perf_counter()
        trainer.run()
        sync(device)
        return time.perf_counter() - t0

    run(2)  # compiles, if compiling
    steps = 2
    while (dt := run(steps)) < seconds / (4 * windows) and steps < 10 ** 6:
        steps *= 2
    steps = max(1, int(steps * seconds / windows / dt))
    rates = sorted(steps * optim.points_per_step / run(steps) for _ in range(windows))
    rate = rates[len(rates) // 2]
    macs = sum(o * i for o, i in arch.linear_shapes())
    return {"samples_per_second": rate, "window_samples_per_second": rates, "steps_per_window": steps,
            "compiled": trainer.compiled, "compile_graphs": trainer.compile_graphs, "micro_batch": trainer.micro_batch,
            "model_flops_per_s": 6 * macs * rate}  # forward 2, backward 4 per multiply-add


def step_bounds(arch: Architecture, points: int, micro_batch: int, device: torch.device,
                seconds: float = 2.0) -> tuple[float, float]:
    """Samples/s if a step (no gradient loss) did nothing but (a) its matrix products, (b) its matrix
    products and sines. (a): per linear layer and micro-batch, forward x W^T + b, weight gradient
    g^T x and (but for the first layer) input gradient g W. (b) adds, per sine layer, the forward
    sin and the backward's cos of the pre-activations. Timed back to back with the step's shapes."""
    tensors = [(torch.randn(micro_batch, i, device=device), torch.randn(o, i, device=device),
                torch.randn(o, device=device), torch.randn(micro_batch, o, device=device))
               for o, i in arch.linear_shapes()]
    n_micro = -(-points // micro_batch)

    def step(with_sines: bool):
        for _ in range(n_micro):
            for k, (x, w, b, g) in enumerate(tensors):
                z = torch.addmm(b, x, w.t())
                g.t() @ x
                if k > 0:
                    g @ w
                if with_sines and k < len(tensors) - 1:  # every linear layer but the output feeds a sine
                    torch.sin(z)
                    torch.cos(z)

    def rate(with_sines: bool) -> float:
        step(with_sines)
        sync(device)
        t0, k = time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds:
            step(with_sines)
            k += 1
        sync(device)
        return k * points / (time.perf_counter() - t0)

    return rate(False), rate(True)


def psnr_after_passes(volume, arch: Architecture, optim: OptimConfig, device: torch.device, passes: float,
                      compile: str, micro_batch: int) -> dict:
    """Full-volume PSNR (physical units) and wall time of ``passes`` passes from seed 0."""
    num_steps, steps_per_pass = steps_for(passes, volume.num_voxels, optim.points_per_step)
    trainer = seeded_trainer(volume.normalized(), arch, Phase("psnr", num_steps, optim.lr, steps_per_pass, optim),
                             device, compile, micro_batch)
    t0 = time.perf_counter()
    trainer.run()
    sync(device)
    seconds = time.perf_counter() - t0
    _, metrics = evaluate(trainer.model, volume, VolumeInfo.from_volume(volume))
    return {"passes": passes, "steps": num_steps, "compiled": trainer.compiled, "compile_graphs": trainer.compile_graphs,
            "micro_batch": trainer.micro_batch, "psnr": metrics["psnr"], "seconds": seconds}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--volumes", nargs="+", default=[str(DATA / k) for k in
                                                   ("neghip_vtk_66x66x66_uint8.npy", "hydrogen_atom_128x128x128_uint8.raw")])
    p.add_argument("--compression_ratio", type=float, default=50)
    p.add_argument("--widths", type=int, nargs="*", default=None, help="fixed widths instead of the ratio")
    p.add_argument("--n_layers", type=int, default=4)
    p.add_argument("--batch_size", type=int, default=1024)
    p.add_argument("--sample_size", type=int, default=16)
    p.add_argument("--grad_lambda", type=float, nargs="+", default=[0.0, 0.05])
    p.add_argument("--device", default="cpu")
    p.add_argument("--compile", nargs="+", default=["off", "on"], choices=["off", "on"],
                   help="training step modes to measure (torch.compile off/on)")
    p.add_argument("--micro_batch", type=int, nargs="+", default=[0], help="points per forward/backward (0: auto)")
    p.add_argument("--seconds", type=float, default=9.0, help="timed duration per configuration")
    p.add_argument("--psnr_passes", type=float, default=0, help="also compare PSNR after this many passes (0: skip)")
    p.add_argument("--lr", type=float, default=5e-5, help="learning rate of the PSNR comparison")
    p.add_argument("--output", default="benchmarks/results/training_throughput.json")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    peak = matmul_flops(device)
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device {dev_name}: measured matmul rate {peak / 1e9:.1f} GFLOP/s")
    rows = []
    for path in args.volumes:
        volume = read_volume(path)
        widths = args.widths or [width_for_ratio(volume.num_voxels, args.compression_ratio, args.n_layers)]
        for width in widths:
            arch = Architecture.uniform(width, args.n_layers)
            for grad_lambda in args.grad_lambda:
                optim = OptimConfig(lr=5e-5, batch_size=args.batch_size, sample_size=args.sample_size,
                                    grad_lambda=grad_lambda)
                original = ORIGINAL.get((Path(path).name, grad_lambda > 0)) if not args.widths else None
                for micro_batch in args.micro_batch:
                    for compile in args.compile:
                        r = measure(volume.normalized(), arch, optim, device, args.seconds, compile, micro_batch)
                        bounds = (step_bounds(arch, optim.points_per_step, r["micro_batch"], device)
                                  if grad_lambda == 0 else (None, None))
                        rows.append({"volume": Path(path).name, "width": width, "grad_loss": grad_lambda > 0,
                                     "compile": compile, "points_per_step": optim.points_per_step, **r,
                                     "fraction_of_matmul_rate": None if grad_lambda > 0 else r["model_flops_per_s"] / peak,
                                     "matmul_only_samples_per_second": bounds[0],
                                     "matmul_and_sine_samples_per_second": bounds[1],
                                     "original_samples_per_second": original,
                                     "speedup_vs_original": r["samples_per_second"] / original if original else None})
                        print(f"{rows[-1]['volume']} w{width} grad={grad_lambda > 0} compile={compile} "
                              f"micro_batch={r['micro_batch']}: {r['samples_per_second'] / 1e6:.3f} M/s", flush=True)
    print("\n| volume | width | grad loss | compiled | micro-batch | samples/s | vs original "
          "| fraction of matmul rate | matmul-only bound | matmul + sine bound |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        frac = f"{r['fraction_of_matmul_rate']:.1%}" if r["fraction_of_matmul_rate"] is not None else "-"
        speed = f"{r['speedup_vs_original']:.2f}x" if r["speedup_vs_original"] else "-"
        bounds = " | ".join(f"{r[k] / 1e6:.3f} M" if r[k] else "-" for k in
                            ("matmul_only_samples_per_second", "matmul_and_sine_samples_per_second"))
        print(f"| {r['volume']} | {r['width']} | {r['grad_loss']} | {r['compiled']} | {r['micro_batch']} "
              f"| {r['samples_per_second'] / 1e6:.3f} M | {speed} | {frac} | {bounds} |")
    psnr_rows = []
    if args.psnr_passes > 0:
        for path in args.volumes:
            volume = read_volume(path)
            arch = Architecture.uniform(width_for_ratio(volume.num_voxels, args.compression_ratio, args.n_layers),
                                        args.n_layers)
            for grad_lambda in args.grad_lambda:
                optim = OptimConfig(lr=args.lr, batch_size=args.batch_size, sample_size=args.sample_size,
                                    grad_lambda=grad_lambda)
                for label, compile, micro_batch in (("plain", "off", optim.points_per_step), ("fast", "on", 0)):
                    r = psnr_after_passes(volume, arch, optim, device, args.psnr_passes, compile, micro_batch)
                    psnr_rows.append({"volume": Path(path).name, "width": arch.widths[0], "grad_loss": grad_lambda > 0,
                                      "step": label, **r})
                    print(f"{Path(path).name} grad={grad_lambda > 0} {label}: {r['psnr']:.2f} dB after "
                          f"{args.psnr_passes:g} passes in {r['seconds']:.0f} s", flush=True)
        print("\n| volume | width | grad loss | step | passes | PSNR (dB) | seconds |")
        print("|---|---|---|---|---|---|---|")
        for r in psnr_rows:
            print(f"| {r['volume']} | {r['width']} | {r['grad_loss']} | {r['step']} | {r['passes']:g} "
                  f"| {r['psnr']:.2f} | {r['seconds']:.0f} |")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"device": dev_name, "matmul_flops_per_s": peak, "torch": torch.__version__, "rows": rows,
              "psnr_after_passes": psnr_rows}
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
