"""Scaling benchmark: training samples/s for 1 and 2 processes (torchrun, DDP), and the memory each
way of holding the volume costs.

    python -m benchmarks.distributed_bench                     # CPU: gloo, the tiny machine's numbers
    python -m benchmarks.distributed_bench --device cuda --nproc 1 2 4 8 --largest 1024 2048

Throughput: ``torch.distributed.run --nproc_per_node P`` runs the real training step
(``training.trainer.Trainer`` with DistributedDataParallel) for about ``--seconds``; the global batch
is the same for every P (1024 x 16 points), so samples/s compare directly.

Memory, one fresh process per mode (so peaks do not mix): float32 resident (``VolumeSampler``),
native precision resident (``NativeVolumeSampler``), brick streaming from a memory-mapped .npy
(``BrickSampler``), each with and without gradient targets. Reported: the bytes of the tensors
holding the volume on the device (exact; per voxel), and on the CPU the growth of the process's
anonymous resident memory while the sampler is built and 20 steps are drawn (RssAnon: the mapped
file's pages are page cache, not counted); on CUDA ``torch.cuda.max_memory_allocated``.

``--largest N ...`` (CUDA): writes an N^3 uint8 volume as .npy (disk, not memory) and trains a few
hundred steps on it with brick streaming, reporting the peak device memory: the volume size does
not enter it.

Writes benchmarks/results/distributed.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "distributed.json"
SHARED = REPO / ".." / "shared" / "datasets" / "neghip_vtk_66x66x66_uint8.npy"


# -- volumes -----------------------------------------------------------------------------------------
def synthetic_npy(path: Path, n: int, dtype=np.uint8, slab: int = 32) -> Path:
    """A smooth n^3 field written slab by slab into a .npy (never all in memory)."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(n, n, n))
    y, x = np.meshgrid(np.linspace(-1, 1, n, dtype=np.float32), np.linspace(-1, 1, n, dtype=np.float32), indexing="ij")
    zs = np.linspace(-1, 1, n, dtype=np.float32)
    for z0 in range(0, n, slab):
        z = zs[z0:z0 + slab, None, None]
        field = np.sin(5 * x) * np.cos(4 * y) * np.cos(3 * z) + 0.3 * (x * x + y * y + z * z)
        out[z0:z0 + slab] = np.clip((field + 1.0) * 100.0, 0, 255).astype(dtype)
    out.flush()
    del out
    return path


def rss_kib() -> dict:
    """Resident memory of this process in KiB from Linux's per-process status (anonymous and
    file-backed pages separately, and the peak); elsewhere only the peak, from getrusage."""
    fields = {}
    status = Path("/proc", "self", "status")
    if not status.exists():
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return {"RssAnon": peak, "RssFile": 0, "VmHWM": peak}
    with open(status) as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile", "VmHWM"):
                fields[key] = int(value.split()[0])
    return fields


# -- workers (run in their own processes) -------------------------------------------------------------
def worker_throughput(args) -> None:
    """Under torchrun: time the training step; rank 0 writes the result."""
    from neurcomp.config.options import OptimConfig, ScalingConfig
    from neurcomp.data.readers import read_volume
    from neurcomp.model.architecture import Architecture, width_for_ratio
    from neurcomp.model.neurcomp import Neurcomp
    from neurcomp.training import distributed
    from neurcomp.training.sampling import make_sampler
    from neurcomp.training.trainer import Phase, Trainer

    device = distributed.device_for_rank(torch.device(args.device))
    distributed.init_from_env(device)
    volume = read_volume(args.volume)
    optim = OptimConfig(lr=5e-5, batch_size=1024, sample_size=16)
    arch = Architecture.uniform(width_for_ratio(volume.num_voxels, 50.0, 4), 4, residual=True)
    torch.manual_seed(0)
    model = Neurcomp(arch).to(device)
    sampler = make_sampler(volume, device, seed=0, scaling=ScalingConfig(volume_storage=args.storage))
    phase = Phase("bench", 0, optim.lr, 1e12, optim)
    trainer = Trainer(model, sampler, phase, progress=False)

    def run(steps: int) -> float:
        phase.num_steps = trainer.step + steps
        distributed.barrier()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        trainer.run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        distributed.barrier()
        return time.perf_counter() - t0

    run(3)
    steps, dt = 4, run(4)
    while dt < args.seconds / 4:
        steps *= 2
        dt = run(steps)
    steps = max(4, int(steps * args.seconds / dt))
    dt = run(steps)
    if distributed.is_main_process():
        Path(args.out).write_text(json.dumps({
            "processes": distributed.get_world_size(), "threads_per_process": torch.get_num_threads(),
            "device": str(device), "volume": Path(args.volume).name, "voxels": volume.num_voxels,
            "layer_sizes": model.arch.layer_sizes(), "points_per_step": optim.points_per_step, "steps": steps,
            "seconds": dt, "samples_per_second": steps * optim.points_per_step / dt,
            "sampler": type(sampler).__name__}))


def worker_memory(args) -> None:
    """One mode: build the sampler, draw 20 batches, report its memory."""
    from neurcomp.config.options import ScalingConfig
    from neurcomp.data.readers import open_volume_lazily
    from neurcomp.data.readers import read_volume
    from neurcomp.training.sampling import make_sampler

    device = torch.device(args.device)
    stream = args.mode == "bricks"
    volume = open_volume_lazily(args.volume) if stream else read_volume(args.volume)
    scaling = ScalingConfig(volume_storage="native" if args.mode != "float32" else "float32", stream_bricks=stream,
                            brick_size=args.brick_size, bricks_resident=args.bricks_resident, brick_refresh_steps=4)
    with_gradients = bool(args.gradients)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base_cuda = torch.cuda.memory_allocated(device)
    before = rss_kib()
    t0 = time.perf_counter()
    sampler = make_sampler(volume, device, seed=0, with_gradients=with_gradients, scaling=scaling)
    build = time.perf_counter() - t0
    for _ in range(3):
        sampler.sample(16384)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(20):
        sampler.sample(16384)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    per_step = (time.perf_counter() - t0) / 20
    after = rss_kib()
    result = {"mode": args.mode, "gradients": with_gradients, "sampler": type(sampler).__name__,
              "voxels": int(np.prod(volume.shape)), "source_dtype": volume.source_dtype,
              "volume_bytes": sampler.resident_bytes(),
              "bytes_per_voxel": sampler.resident_bytes() / int(np.prod(volume.shape)),
              "rss_anon_growth_mib": (after["RssAnon"] - before["RssAnon"]) / 1024,
              "peak_rss_mib": after["VmHWM"] / 1024, "build_seconds": build, "sample_ms_16k_points": per_step * 1e3}
    if stream:
        result.update(brick_size=sampler.brick_size, bricks_resident=sampler.slots, num_bricks=sampler.num_bricks)
    if device.type == "cuda":
        result["cuda_peak_mib"] = (torch.cuda.max_memory_allocated(device) - base_cuda) / 2 ** 20
    print(json.dumps(result))


def worker_largest(args) -> None:
    """CUDA: train with brick streaming on an N^3 memory-mapped volume; peak device memory."""
    from neurcomp.config.options import OptimConfig, ScalingConfig
    from neurcomp.data.readers import open_volume_lazily
    from neurcomp.model.architecture import Architecture
    from neurcomp.model.neurcomp import Neurcomp
    from neurcomp.training.sampling import make_sampler
    from neurcomp.training.trainer import Phase, Trainer

    device = torch.device(args.device)
    volume = open_volume_lazily(args.volume)
    torch.cuda.reset_peak_memory_stats(device)
    scaling = ScalingConfig(stream_bricks=True, brick_size=args.brick_size, bricks_resident=args.bricks_resident)
    sampler = make_sampler(volume, device, scaling=scaling)
    model = Neurcomp(Architecture.uniform(256, 4, residual=True)).to(device)
    optim = OptimConfig(lr=5e-5, batch_size=4096, sample_size=16)
    trainer = Trainer(model, sampler, Phase("largest", args.steps, optim.lr, 1e12, optim), progress=False)
    t0 = time.perf_counter()
    trainer.run()
    torch.cuda.synchronize(device)
    print(json.dumps({"size": volume.shape[0], "voxels": volume.num_voxels, "file_gib": volume.num_voxels / 2 ** 30,
                      "steps": args.steps, "seconds": time.perf_counter() - t0,
                      "bricks_bytes": sampler.resident_bytes(),
                      "cuda_peak_mib": torch.cuda.max_memory_allocated(device) / 2 ** 20}))


# -- driver ---------------------------------------------------------------------------------------------
def run_json(cmd: list[str], env: dict | None = None, timeout: int = 600) -> dict:
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def throughput(args, volume: Path, tmp: Path) -> list[dict]:
    rows = []
    for nproc in args.nproc:
        out = tmp / f"tp{nproc}.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--standalone",
               "-m", "benchmarks.distributed_bench", "--worker", "throughput", "--volume", str(volume),
               "--device", args.device, "--storage", args.storage, "--seconds", str(args.seconds), "--out", str(out)]
        proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                              text=True, timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-3000:])
        rows.append(json.loads(out.read_text()))
        print(f"  {nproc} process(es): {rows[-1]['samples_per_second']:,.0f} samples/s", flush=True)
    return rows


def memory(args, volume: Path) -> list[dict]:
    rows = []
    for mode in ("float32", "native", "bricks"):
        for gradients in (0, 1):
            cmd = [sys.executable, "-m", "benchmarks.distributed_bench", "--worker", "memory", "--mode", mode,
                   "--gradients", str(gradients), "--volume", str(volume), "--device", args.device,
                   "--brick_size", str(args.brick_size), "--bricks_resident", str(args.bricks_resident)]
            rows.append(run_json(cmd, env={"OMP_NUM_THREADS": "1"}))
            r = rows[-1]
            print(f"  {mode:8s} gradients={gradients}: {r['bytes_per_voxel']:.3f} B/voxel on the device, "
                  f"RssAnon +{r['rss_anon_growth_mib']:.1f} MiB", flush=True)
    return rows


def largest(args, tmp: Path) -> list[dict]:
    rows = []
    for n in args.largest:
        path = synthetic_npy(tmp / f"large_{n}.npy", n)
        cmd = [sys.executable, "-m", "benchmarks.distributed_bench", "--worker", "largest", "--volume", str(path),
               "--device", args.device, "--brick_size", str(args.brick_size), "--bricks_resident",
               str(args.bricks_resident), "--steps", "300"]
        rows.append(run_json(cmd, timeout=1800))
        path.unlink()
        print(f"  {n}^3: peak {rows[-1]['cuda_peak_mib']:.0f} MiB", flush=True)
    return rows


def table(results: dict) -> str:
    lines = ["| processes | threads each | device | samples/s | speed-up |", "|---|---|---|---|---|"]
    base = results["throughput"][0]["samples_per_second"] if results["throughput"] else None
    for r in results["throughput"]:
        lines.append(f"| {r['processes']} | {r['threads_per_process']} | {r['device']} | "
                     f"{r['samples_per_second']:,.0f} | {r['samples_per_second'] / base:.2f} |")
    lines += ["", f"memory, {results['memory_volume']}:", "",
              "| mode | gradients | device bytes/voxel | volume tensors (MiB) | RssAnon growth (MiB) | "
              "sample 16k points (ms) |" + (" CUDA peak (MiB) |" if results["device"] == "cuda" else ""),
              "|---|---|---|---|---|---|" + ("---|" if results["device"] == "cuda" else "")]
    for r in results["memory"]:
        lines.append(f"| {r['mode']} | {'yes' if r['gradients'] else 'no'} | {r['bytes_per_voxel']:.3f} | "
                     f"{r['volume_bytes'] / 2 ** 20:.1f} | {r['rss_anon_growth_mib']:.1f} | "
                     f"{r['sample_ms_16k_points']:.1f} |"
                     + (f" {r['cuda_peak_mib']:.1f} |" if "cuda_peak_mib" in r else ""))
    for r in results.get("largest", []):
        lines.append(f"largest: {r['size']}^3 ({r['file_gib']:.1f} GiB uint8), peak device memory "
                     f"{r['cuda_peak_mib']:.0f} MiB, {r['steps']} steps in {r['seconds']:.0f} s")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--nproc", type=int, nargs="+", default=[1, 2], help="process counts for the throughput")
    p.add_argument("--seconds", type=float, default=10.0, help="timed seconds per throughput measurement")
    p.add_argument("--storage", default="auto", help="volume_storage for the throughput runs")
    p.add_argument("--memory_size", type=int, default=192,
                   help="edge of the synthetic uint8 volume for the memory table")
    p.add_argument("--brick_size", type=int, default=32)
    p.add_argument("--bricks_resident", type=int, default=64)
    p.add_argument("--largest", type=int, nargs="*", default=[], help="CUDA: train N^3 volumes with brick streaming")
    p.add_argument("--output", default=str(RESULTS))
    # internal: the worker processes
    p.add_argument("--worker", choices=["throughput", "memory", "largest"], help=argparse.SUPPRESS)
    p.add_argument("--volume", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--gradients", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, default=300, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        {"throughput": worker_throughput, "memory": worker_memory, "largest": worker_largest}[args.worker](args)
        return {}

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        volume = SHARED if SHARED.exists() else synthetic_npy(tmp / "synthetic_64.npy", 64)
        print(f"throughput ({volume.name}, batch 1024 x 16, 4 layers, ratio 50):", flush=True)
        results = {"device": args.device, "throughput": throughput(args, volume, tmp)}
        mem_volume = synthetic_npy(tmp / f"synthetic_{args.memory_size}_uint8.npy", args.memory_size)
        results["memory_volume"] = f"{args.memory_size}^3 uint8 ({args.memory_size ** 3 / 1e6:.1f} M voxels)"
        print(f"memory ({results['memory_volume']}, bricks {args.bricks_resident} x {args.brick_size}^3 cells):",
              flush=True)
        results["memory"] = memory(args, mem_volume)
        if args.largest:
            results["largest"] = largest(args, tmp)
    results["cpu_count"] = os.cpu_count()
    results["load_average"] = os.getloadavg()
    results["torch"] = torch.__version__
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(table(results))
    return results


if __name__ == "__main__":
    main()
