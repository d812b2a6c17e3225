"""The GPU check (issue 15): what the CPU tests cannot prove. Marker ``cuda``; skipped without a GPU.

    python -m pytest -m cuda -x -q -rs -s tests/test_gpu.py

About 3 minutes on one GPU. Each test prints its figures as ``GPU-CHECK name: {...}`` lines and
adds them to ``benchmarks/results/gpu_check.json`` (``NEURCOMP_GPU_CHECK_OUTPUT`` moves it). The
last section needs two GPUs (rank sync, split evaluation, gloo with CUDA, Ctrl-C, too many
processes) and is skipped with one.

``NEURCOMP_GPU_CHECK_DEVICE=cpu`` runs the same code on the CPU at reduced sizes: a dry run of the
test code, not a check of anything a GPU does.
"""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from neurcomp.config.options import OptimConfig, PruningConfig, parse_config
from neurcomp.data.volume import Volume
from neurcomp.model.architecture import Architecture
from neurcomp.model.neurcomp import Neurcomp
from tests.conftest import REPO
from neurcomp.training import distributed, precision
from neurcomp.data.volume import VolumeInfo
from neurcomp.training.checkpoint import read_checkpoint
from neurcomp.model.inference import predict_volume
from neurcomp.training.run import train
from neurcomp.training.session import evaluate
from neurcomp.training.sampling import BrickSampler, NativeVolumeSampler, VolumeSampler
from neurcomp.training.trainer import Phase, Trainer

DEVICE = torch.device(os.environ.get("NEURCOMP_GPU_CHECK_DEVICE", "cuda"))
DRY = DEVICE.type == "cpu"  # a dry run of the test code on the CPU
GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
OUTPUT = Path(os.environ.get("NEURCOMP_GPU_CHECK_OUTPUT", REPO / "benchmarks" / "results" / "gpu_check.json"))

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not DRY and GPUS == 0, reason="no CUDA GPU (the GPU check needs one)")]
two_gpus = pytest.mark.skipif(DRY or GPUS < 2, reason="needs two CUDA GPUs")


# -- helpers -----------------------------------------------------------------------------------------
def record(name: str, **figures) -> None:
    """Print a check's figures and keep them in the results file."""
    print(f"\nGPU-CHECK {name}: {json.dumps(figures, default=str)}")
    data = json.loads(OUTPUT.read_text()) if OUTPUT.is_file() else {}
    if "device" not in data:
        data["device"] = torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else "cpu (dry run)"
        data["torch"] = torch.__version__
    data[name] = figures
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(json.dumps(data, indent=1, default=str) + "\n")


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def reset_peak() -> int:
    if DEVICE.type != "cuda":
        return 0
    sync()
    torch.cuda.reset_peak_memory_stats(DEVICE)
    return torch.cuda.memory_allocated(DEVICE)


def peak_bytes(baseline: int) -> int | None:
    """Device memory allocated at the peak since ``reset_peak``, above what was allocated then."""
    if DEVICE.type != "cuda":
        return None
    sync()
    return torch.cuda.max_memory_allocated(DEVICE) - baseline


def smooth(n: int) -> np.ndarray:
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n)] * 3, indexing="ij")
    return (np.sin(3 * x) * np.cos(2 * y) + 0.5 * z ** 2 + 0.3 * np.sin(5 * x * y)).astype(np.float32)


def write_config(tmp_path, volume, name, **extra) -> list[str]:
    opts = {"data": volume, "basedir": tmp_path / "exp", "expname": name, "features_per_layer": 32, "n_layers": 4,
            "max_pass": 6, "batch_size": 256, "sample_size": 16, "lr": 5e-4, "pass_decay": 2, "lr_decay": 0.5,
            "checkpoint_every": 3, "tracking": "none", "device": DEVICE.type, **extra}
    path = tmp_path / f"{name}.txt"
    path.write_text("".join(f"{k} = {v}\n" for k, v in opts.items()))
    return ["--config", str(path)]


@pytest.fixture(scope="module")
def volume_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("gpu") / "smooth_32.npy"
    np.save(path, smooth(32) * 50 + 10)
    return path


def max_param_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max(float((p.detach().cpu() - q.detach().cpu()).abs().max()) for p, q in zip(a.parameters(), b.parameters()))


def fixed_trainer(values, arch, optim, steps, compile, micro_batch, with_gradients=False) -> Trainer:
    """A Trainer on DEVICE from seed 0 (network and samples)."""
    torch.manual_seed(0)
    model = Neurcomp(arch).to(DEVICE)
    sampler = VolumeSampler(values, DEVICE, seed=0, with_gradients=with_gradients)
    return Trainer(model, sampler, Phase("check", steps, optim.lr, 1e9, optim), progress=False, compile=compile,
                   micro_batch=micro_batch)


# -- sampler parity ------------------------------------------------------------------------------------
def test_samplers_match_the_cpu_at_the_same_coordinates():
    rng = np.random.default_rng(0)
    shape = (20, 22, 24)
    coords = torch.rand(4096, 3, generator=torch.Generator().manual_seed(1)) * 2 - 1
    worst = {}

    def check(key, device_values, cpu_values):
        device_values = device_values.float().cpu()
        scale = max(1.0, float(cpu_values.abs().max()))
        worst[key] = float((device_values - cpu_values).abs().max()) / scale
        assert worst[key] < 1e-5, (key, worst[key])

    for dtype in ("uint8", "int16", "uint16", "float16", "float32"):
        if dtype.startswith(("u", "i")):
            info = np.iinfo(dtype)
            values = rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
        else:
            values = (rng.standard_normal(shape) * 10).astype(dtype)
        vmin, vmax = float(values.min()), float(values.max())
        normalized = Volume(values.astype(np.float32), source_dtype=dtype).normalized()
        for grads in (False, True):
            check((dtype, "float32", grads), VolumeSampler(normalized, DEVICE, with_gradients=grads).interpolate(
                coords.to(DEVICE)), VolumeSampler(normalized, "cpu", with_gradients=grads).interpolate(coords))
            cpu_native = NativeVolumeSampler(values, vmin, vmax, "cpu", with_gradients=grads)
            check((dtype, "native", grads), NativeVolumeSampler(values, vmin, vmax, DEVICE, with_gradients=grads)
                  .interpolate(coords.to(DEVICE)), cpu_native.interpolate(coords))
            # bricks: positions and values drawn from the bricks on the device, checked on the CPU
            bricks = BrickSampler(values, vmin, vmax, DEVICE, seed=2, with_gradients=grads, brick_size=8,
                                  bricks_resident=12, prefetch=False)
            drawn, drawn_values = bricks._draw(4096)
            check((dtype, "bricks", grads), drawn_values, cpu_native.interpolate(drawn.cpu()))
    record("sampler_parity", worst_relative_difference=max(worst.values()), cases=len(worst))


# -- the compiled training step ---------------------------------------------------------------------
def test_compiled_training_with_the_gradient_loss(capsys):
    values = Volume(smooth(24 if DRY else 48)).normalized()
    arch = Architecture.uniform(64, 4)
    optim = OptimConfig(lr=1e-4, batch_size=256 if DRY else 1024, sample_size=16, grad_lambda=0.05)
    points = optim.points_per_step
    t0 = time.perf_counter()
    compiled = fixed_trainer(values, arch, optim, 20, "on", points, with_gradients=True)
    compiled.run()
    sync()
    compile_seconds = time.perf_counter() - t0
    eager = fixed_trainer(values, arch, optim, 20, "off", points, with_gradients=True)
    eager.run()
    assert "torch.compile failed" not in capsys.readouterr().err  # no fallback
    assert compiled.compiled and compiled.compile_graphs == 1  # one graph: the whole step, value and gradient
    diff = max_param_diff(compiled.model, eager.model)
    assert diff < 1e-4
    vol = Volume(smooth(24 if DRY else 48))
    _, metrics = evaluate(compiled.model, vol, VolumeInfo.from_volume(vol))
    assert math.isfinite(metrics["psnr"])
    record("compiled_step", graphs=compiled.compile_graphs, max_parameter_difference_vs_eager=diff,
           psnr_after_20_steps=metrics["psnr"], seconds_with_compiling=compile_seconds)


# -- resume ------------------------------------------------------------------------------------------
def test_resume_on_the_device_is_bit_exact(tmp_path, volume_file):
    full = train(parse_config(write_config(tmp_path, volume_file, "full")), progress=False)
    args = write_config(tmp_path, volume_file, "resumed")
    train(parse_config(args + ["--max_pass", "3"]), progress=False)
    ckpt = tmp_path / "exp" / "resumed" / "checkpoint.pt"
    resumed = train(parse_config(args + ["--resume", str(ckpt)]), progress=False)
    a, b = (read_checkpoint(tmp_path / "exp" / n / "checkpoint.pt") for n in ("full", "resumed"))
    assert a["trainer"]["step"] == b["trainer"]["step"] == full["steps"] == resumed["steps"]
    assert all(torch.equal(a["model_state"][k], b["model_state"][k]) for k in a["model_state"])
    record("resume_bit_exact", steps=full["steps"], psnr=resumed["psnr"])


@pytest.mark.parametrize("first, second", [(DEVICE.type, "cpu"), ("cpu", DEVICE.type)])
def test_a_checkpoint_resumes_on_the_other_device_type(tmp_path, volume_file, capsys, first, second):
    args = write_config(tmp_path, volume_file, "moved", device=first)
    train(parse_config(args + ["--max_pass", "3"]), progress=False)
    ckpt = tmp_path / "exp" / "moved" / "checkpoint.pt"
    capsys.readouterr()
    info = train(parse_config(args + ["--device", second, "--resume", str(ckpt)]), progress=False)
    err = capsys.readouterr().err
    if first != second:  # the generator states cannot move: the stream restarts, with a warning
        assert "warning: sampler" in err
    assert info["steps"] == read_checkpoint(ckpt)["trainer"]["step"] and math.isfinite(info["psnr"])
    record(f"resume_{first}_to_{second}", psnr=info["psnr"], steps=info["steps"])


# -- pruning -----------------------------------------------------------------------------------------
PRUNING = {"binary": {"lambda_betas": 1e-4, "pruning_threshold": 0.5},
           "smallify": {"lambda_betas": 1e-4, "pruning_threshold": 0.9},
           "variational_dynamic": {"variational_lambda_dkl": 3e3, "pruning_threshold": 0.9}}


def step_milliseconds(trainer: Trainer, steps: int) -> float:
    trainer.phase.num_steps = trainer.step + 5
    trainer.run()  # warm-up
    trainer.phase.num_steps = trainer.step + steps
    sync()
    t0 = time.perf_counter()
    trainer.run()
    sync()
    return (time.perf_counter() - t0) / steps * 1000


def test_pruning_runs_on_the_device_without_host_syncs(tmp_path, volume_file):
    from neurcomp.model.pruning import PrunableNeurcomp, build_pruning
    from neurcomp.training.phases import PruningTrainer

    values = Volume(smooth(32)).normalized()
    arch = Architecture.uniform(128, 4)
    optim = OptimConfig(lr=1e-4, batch_size=1024, sample_size=16)
    steps = 10 if DRY else 100
    figures = {"unpruned_ms_per_step": step_milliseconds(fixed_trainer(values, arch, optim, 1, "off", 0), steps)}
    for technique, options in PRUNING.items():
        cfg = PruningConfig(technique=technique, lambda_betas=options.get("lambda_betas", 0.0),
                            threshold=options["pruning_threshold"],
                            variational_lambda_dkl=options.get("variational_lambda_dkl", 1.0))
        torch.manual_seed(0)
        gated = PrunableNeurcomp(arch, build_pruning(technique, cfg, dataset_size=values.size)).to(DEVICE)
        sampler = VolumeSampler(values, DEVICE, seed=0)
        phase = Phase("prune", 1, optim.lr, 1e9, optim, regularizer=gated.regularizer, keep_best=False)
        trainer = PruningTrainer(gated, sampler, phase, progress=False)
        figures[f"{technique}_ms_per_step"] = step_milliseconds(trainer, steps)
        # a training step (sampling, forward, loss, backward, Adam, the gates' bookkeeping) never waits
        # for the device: set_sync_debug_mode raises on any synchronisation
        if DEVICE.type == "cuda":
            torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(3):
                trainer.optimizer.zero_grad(set_to_none=True)
                coords, targets, target_grads = sampler.sample(optim.points_per_step)
                loss, _, _ = trainer.loss(coords, targets, target_grads)
                loss.backward()
                trainer.optimizer.step()
                gated.regularizer.after_step(gated, trainer.step)
        finally:
            if DEVICE.type == "cuda":
                torch.cuda.set_sync_debug_mode("default")
        # and the whole schedule: gates, pruning, fine-tuning
        info = train(parse_config(write_config(tmp_path, volume_file, technique, dropout_technique=technique,
                                               **options)), progress=False)
        assert math.isfinite(info["psnr"]) and info["pruning_technique"] == technique
        figures[f"{technique}_parameters"] = [info["num_parameters_before_pruning"], info["num_parameters"]]
        figures[f"{technique}_psnr"] = info["psnr"]
    assert all(figures[f"{t}_ms_per_step"] < 10 * figures["unpruned_ms_per_step"] for t in PRUNING)
    record("pruning", **figures)


# -- quantization --------------------------------------------------------------------------------------
def test_quantization_with_fine_tuning_and_decoding_on_the_device(tmp_path, volume_file, capsys):
    from NeurcompQuantization import quantize_main
    from neurcomp.quantization.cli import dequantize_main

    train(parse_config(write_config(tmp_path, volume_file, "quant")), progress=False)
    config = tmp_path / "exp" / "quant" / "config.txt"
    baseline = reset_peak()
    summary = quantize_main(["--config", str(config), "--quant_bits", "8", "--finetune_passes", "2",
                             "--output", str(tmp_path / "q.ncq"), "--device", DEVICE.type])
    finetune_peak = peak_bytes(baseline)
    baseline = reset_peak()
    decoded = dequantize_main(["--compressed_file", str(tmp_path / "q.ncq"), "--volume", str(volume_file),
                               "--decompressed_file", str(tmp_path / "d.npy"), "--device", DEVICE.type])
    decode_peak = peak_bytes(baseline)
    on_cpu = dequantize_main(["--compressed_file", str(tmp_path / "q.ncq"), "--volume", str(volume_file),
                              "--decompressed_file", str(tmp_path / "c.npy"), "--device", "cpu"])
    assert math.isfinite(decoded["psnr"]) and abs(decoded["psnr"] - on_cpu["psnr"]) < 1e-3
    assert summary["finetune"]["sampler"]["storage"] == "float32"  # the float32 volume: resident as float32
    voxels = 32 ** 3
    if finetune_peak is not None:  # the volume (4 B/voxel) plus a step's work: no float64 copies
        assert finetune_peak < 4 * voxels + 256 * 2 ** 20
    record("quantization", finetune=summary["finetune"], psnr_decoded=decoded["psnr"], psnr_cpu=on_cpu["psnr"],
           finetune_peak_bytes=finetune_peak, decode_peak_bytes=decode_peak, decode_seconds=decoded["decode_seconds"],
           inference_seconds=decoded["inference_seconds"])


# -- TF32 ----------------------------------------------------------------------------------------------
def test_psnr_with_tf32_on_against_off():
    if precision.tf32_override():
        pytest.skip(f"{precision.OVERRIDE_ENV} is set here: TF32 cannot be turned off (unset it to run this check)")
    torch.manual_seed(0)
    model = Neurcomp(Architecture.uniform(256, 4)).eval()
    coords = torch.rand(1 << 16, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        reference = model(coords).double()  # the CPU in full float32
        device_model = model.to(DEVICE)

        def psnr_against_cpu() -> float:
            pred = device_model(coords.to(DEVICE)).double().cpu()
            mse = float(torch.mean((pred - reference) ** 2))
            return math.inf if mse == 0 else 20 * math.log10(2.0) - 10 * math.log10(mse)

        try:
            torch.set_float32_matmul_precision("high")  # TF32 on
            tf32_on = psnr_against_cpu()
        finally:
            precision.use_full_float32()
        tf32_off = psnr_against_cpu()
    assert tf32_off > 100  # full float32: the device agrees with the CPU to float32 rounding
    if not DRY:
        assert tf32_on < tf32_off - 10
    record("tf32", psnr_vs_cpu_tf32_on=tf32_on, psnr_vs_cpu_tf32_off=tf32_off)


# -- inference memory ----------------------------------------------------------------------------------
def test_inference_memory_on_a_2_x_4096_x_4096_grid():
    shape = (2, 256, 256) if DRY else (2, 4096, 4096)
    torch.manual_seed(0)
    model = Neurcomp(Architecture.uniform(256, 4)).to(DEVICE)
    baseline = reset_peak()
    t0 = time.perf_counter()
    out = predict_volume(model, shape)
    seconds = time.perf_counter() - t0
    peak = peak_bytes(baseline)
    assert out.shape == shape and np.isfinite(out).all()
    if peak is not None:  # 262k-point chunks: a few 256 MiB activations, never a 4096^2 slice (16 GiB each)
        assert peak < 2 * 2 ** 30
    record("inference_2x4096x4096_width256", peak_bytes=peak, seconds=seconds, points=int(np.prod(shape)))


# -- one rank through NCCL ---------------------------------------------------------------------------
def test_a_single_rank_nccl_group_trains_like_the_plain_run(tmp_path, monkeypatch):
    import torch.distributed as dist

    values = Volume(smooth(32)).normalized()
    arch = Architecture.uniform(64, 4)
    optim = OptimConfig(lr=1e-4, batch_size=1024, sample_size=16)
    micro = optim.points_per_step // 4  # four micro-batches: the first three under no_sync
    plain = fixed_trainer(values, arch, optim, 20, "on", micro)
    plain.run()
    # DistributedDataParallel even with one rank (by default it wraps only from two)
    monkeypatch.setattr(distributed, "is_enabled", distributed.is_initialized)
    backend = "gloo" if DRY else "nccl"
    kwargs = {} if DRY else {"device_id": DEVICE if DEVICE.index is not None else torch.device("cuda", 0)}
    if not DRY:
        torch.cuda.set_device(kwargs["device_id"])
    dist.init_process_group(backend, init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1, **kwargs)
    try:
        ddp = fixed_trainer(values, arch, optim, 20, "on", micro)
        assert ddp.ddp is not None and ddp.micro_batch == micro
        assert ddp.optimizer.param_groups[0]["fused"] == (DEVICE.type == "cuda")
        ddp.run()
    finally:
        dist.destroy_process_group()
    diff = max_param_diff(ddp.model, plain.model)
    assert ddp.compiled and diff < 1e-4
    record("single_rank_nccl", max_parameter_difference=diff, graphs=ddp.compile_graphs)


# -- two GPUs ------------------------------------------------------------------------------------------
def torchrun(args: list[str], nproc: int = 2, timeout: int = 300, debug_dir=None, **popen) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    if debug_dir:
        env[distributed.DEBUG_DIR_ENV] = str(debug_dir)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--standalone",
           str(REPO / "NeurcompTraining.py"), *map(str, args)]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **popen)


@two_gpus
@pytest.mark.parametrize("backend", ["nccl", "gloo"])
def test_two_gpus_stay_in_sync_and_split_the_evaluation(tmp_path, volume_file, backend):
    from neurcomp.training.checkpoint import load_model

    args = write_config(tmp_path, volume_file, backend, dist_backend=backend, compile="on")
    proc = torchrun(args, debug_dir=tmp_path / "debug")
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-3000:]
    records = [json.loads((tmp_path / "debug" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert records[0]["hash_train"] == records[1]["hash_train"]
    info = json.loads((tmp_path / "exp" / backend / "info.json").read_text())
    model, vinfo, _ = load_model(tmp_path / "exp" / backend / "checkpoint.pt")
    vol = Volume(np.load(volume_file))
    _, single = evaluate(model.to(DEVICE), vol, vinfo)  # one process: the same PSNR as the split evaluation
    assert info["world_size"] == 2 and abs(info["psnr"] - single["psnr"]) < 1e-4
    record(f"two_gpus_{backend}", psnr=info["psnr"], samples_per_second=info["samples_per_second"])


@two_gpus
def test_ctrl_c_stops_both_gpu_ranks_at_one_step(tmp_path, volume_file):
    args = write_config(tmp_path, volume_file, "ctrl_c", max_pass=100000, checkpoint_every=20)
    proc = torchrun(args, start_new_session=True)
    path = tmp_path / "exp" / "ctrl_c" / "checkpoint.pt"
    try:
        deadline = time.time() + 180
        while not path.is_file():
            assert proc.poll() is None and time.time() < deadline, "training did not start"
            time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: torchrun and both ranks
        t0 = time.time()
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    ckpt = read_checkpoint(path)
    assert ckpt["tag"] == "interrupt" and len(ckpt["trainer"]["sampler_ranks"]) == 2, output[-3000:]
    record("two_gpus_ctrl_c", seconds_to_exit=time.time() - t0, step=ckpt["trainer"]["step"])


@two_gpus
def test_more_processes_than_gpus_is_refused_in_one_line(tmp_path, volume_file):
    proc = torchrun(write_config(tmp_path, volume_file, "crowded"), nproc=GPUS + 1)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert f"but only {GPUS} GPU(s) are visible" in output and "Duplicate GPU" not in output
