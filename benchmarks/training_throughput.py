"""Training throughput: samples per second of the full training step, and its share of the device's
measured matrix-multiply FLOP rate.

    python -m benchmarks.training_throughput                       # the issue's CPU configs
    python -m benchmarks.training_throughput --device cuda --widths 128 256 512

A step = sample positions on the device + trilinear targets + forward + loss (+ gradient loss) +
backward + Adam, exactly as ``training.trainer.Trainer`` runs it. FLOPs per step count the
multiply-adds of every linear layer: forward 2 N sum(in*out), backward twice that (weight and input
gradients); the gradient loss (double backward) roughly doubles it again, so its fraction is not
reported.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from config.options import OptimConfig
from data.readers import read_volume
from model.architecture import Architecture, width_for_ratio
from model.neurcomp import Neurcomp
from training.sampler import VolumeSampler
from training.trainer import Phase, Trainer

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


def measure(values: np.ndarray, arch: Architecture, optim: OptimConfig, device: torch.device,
            seconds: float = 10.0) -> dict:
    torch.manual_seed(0)
    model = Neurcomp(arch).to(device)
    sampler = VolumeSampler(values, device, with_gradients=optim.grad_lambda > 0)
    phase = Phase("bench", 10 ** 9, optim.lr, 1e12, optim)  # no pass ends: no logging inside the timing
    trainer = Trainer(model, sampler, phase, progress=False)
    steps = 3
    while True:  # warm up, then time whole batches of steps for about `seconds`
        phase.num_steps = trainer.step + steps
        sync(device)
        t0 = time.perf_counter()
        trainer.run()
        sync(device)
        dt = time.perf_counter() - t0
        if dt > seconds / 4 or steps > 10 ** 6:
            break
        steps *= 2
    phase.num_steps = trainer.step + max(1, int(steps * seconds / dt))
    n_steps = phase.num_steps - trainer.step
    sync(device)
    t0 = time.perf_counter()
    trainer.run()
    sync(device)
    dt = time.perf_counter() - t0
    samples = n_steps * optim.points_per_step
    macs = sum(o * i for o, i in arch.linear_shapes())
    flops = 6 * macs * samples  # forward 2, backward 4 per multiply-add
    return {"samples_per_second": samples / dt, "steps": n_steps, "seconds": dt, "model_flops_per_s": flops / dt}


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
    p.add_argument("--seconds", type=float, default=10.0, help="timed duration per configuration")
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
            for grad_lambda in args.grad_lambda:
                optim = OptimConfig(lr=5e-5, batch_size=args.batch_size, sample_size=args.sample_size,
                                    grad_lambda=grad_lambda)
                r = measure(volume.normalized(), Architecture.uniform(width, args.n_layers), optim, device, args.seconds)
                original = ORIGINAL.get((Path(path).name, grad_lambda > 0)) if not args.widths else None
                rows.append({"volume": Path(path).name, "width": width, "grad_loss": grad_lambda > 0,
                             "points_per_step": optim.points_per_step, **r,
                             "fraction_of_matmul_rate": None if grad_lambda > 0 else r["model_flops_per_s"] / peak,
                             "original_samples_per_second": original,
                             "speedup_vs_original": r["samples_per_second"] / original if original else None})
    print("\n| volume | width | grad loss | samples/s | vs original | fraction of matmul rate |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        frac = f"{r['fraction_of_matmul_rate']:.1%}" if r["fraction_of_matmul_rate"] is not None else "-"
        speed = f"{r['speedup_vs_original']:.2f}x" if r["speedup_vs_original"] else "-"
        print(f"| {r['volume']} | {r['width']} | {r['grad_loss']} | {r['samples_per_second'] / 1e6:.3f} M | {speed} | {frac} |")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"device": dev_name, "matmul_flops_per_s": peak, "torch": torch.__version__, "rows": rows}
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
