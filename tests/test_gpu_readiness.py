"""What would break on CUDA (issue 15), reproduced on the CPU: each test fails without its fix.

The checks that need a GPU are in ``tests/test_gpu.py`` (marker ``cuda``).
"""

import json
import os
import signal
import time

import numpy as np
import pytest
import torch

from neurcomp.config.errors import ConfigError
from neurcomp.config.options import OptimConfig, PruningConfig, parse_config
from neurcomp.model.architecture import Architecture
from neurcomp.model.neurcomp import Neurcomp
from neurcomp.training import distributed, precision, speed
from neurcomp.data.volume import VolumeInfo
from neurcomp.training.checkpoint import atomic_torch_save, read_checkpoint
from neurcomp.model.inference import grid_coordinates, predict_volume
from neurcomp.model.random_state import RESEED_STRIDE
from neurcomp.training.portable_state import load_optimizer_state
from neurcomp.training.run import train
from neurcomp.training.sampling import BrickSampler, NativeVolumeSampler, VolumeSampler
from neurcomp.training.trainer import Phase, Trainer
from tests.conftest import run_two_gloo_ranks

CUDA_STATE = torch.zeros(16, dtype=torch.uint8)  # a CUDA generator's state: Philox seed and offset


def smooth(shape=(12, 14, 16)) -> np.ndarray:
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    return (np.sin(2 * x) * np.cos(3 * y) + 0.5 * z ** 2).astype(np.float32)


def tiny_config(tmp_path, volume, name="tiny", **extra) -> list[str]:
    opts = {"data": volume, "basedir": tmp_path / "exp", "expname": name, "features_per_layer": 12, "n_layers": 2,
            "max_pass": 4, "batch_size": 64, "sample_size": 16, "lr": 1e-3, "pass_decay": 2, "lr_decay": 0.5,
            "checkpoint_every": 2, "tracking": "none", "device": "cpu", **extra}
    path = tmp_path / f"{name}.txt"
    path.write_text("".join(f"{k} = {v}\n" for k, v in opts.items()))
    return ["--config", str(path)]


def small_trainer(width=8, steps=4, compile="off", sampler=None, **phase) -> Trainer:
    torch.manual_seed(0)
    model = Neurcomp(Architecture.uniform(width, 2))
    sampler = sampler or VolumeSampler(smooth(), "cpu", seed=0)
    optim = OptimConfig(lr=1e-3, batch_size=64, sample_size=16)
    return Trainer(model, sampler, Phase("t", steps, 1e-3, 1e9, optim, **phase), progress=False, compile=compile)


# -- 1. generator states across device types ---------------------------------------------------------
@pytest.mark.parametrize("saved", [{"generator": CUDA_STATE}, {"generator": CUDA_STATE, "device_type": "cuda"}])
def test_a_cuda_generator_state_restarts_the_cpu_stream_from_seed_and_step(saved, capsys):
    sampler = VolumeSampler(smooth(), "cpu", seed=3)
    sampler.load_state_dict(saved, step=40)  # was: "Expected a CPUGeneratorImplState of size 5056"
    assert "warning: sampler" in capsys.readouterr().err
    reference = VolumeSampler(smooth(), "cpu", seed=3)
    reference.reseed(3 + RESEED_STRIDE * 40)
    assert torch.equal(sampler.sample(32)[0], reference.sample(32)[0])
    # a state of the same device type still continues the stream exactly
    state = reference.state_dict()
    assert state["device_type"] == "cpu"
    expected = reference.sample(32)[0]
    sampler.load_state_dict(state, step=40)
    assert torch.equal(sampler.sample(32)[0], expected)


def test_brick_and_native_samplers_keep_their_state_when_positions_restart(capsys):
    values = (smooth() * 100 + 100).astype(np.uint8)
    bricks = BrickSampler(values, values.min(), values.max(), "cpu", brick_size=4, bricks_resident=8, prefetch=False)
    bricks.sample(16)
    state = {**bricks.state_dict(), "generator": CUDA_STATE, "device_type": "cuda"}
    other = BrickSampler(values, values.min(), values.max(), "cpu", brick_size=4, bricks_resident=8, prefetch=False)
    other.load_state_dict(state, step=7)
    assert other.current == bricks.current and "warning: sampler" in capsys.readouterr().err
    native = NativeVolumeSampler(values, values.min(), values.max(), "cpu", seed=1)
    native.load_state_dict({"generator": CUDA_STATE, "device_type": "cuda"}, step=2)
    assert native.generator.initial_seed() == 1 + RESEED_STRIDE * 2


# -- 2. Adam's fused/foreach flags come from the constructor, not the checkpoint ------------------
def test_optimizer_flags_survive_loading_a_checkpoint_of_the_other_kind():
    params = [torch.nn.Parameter(torch.randn(3, 2))]
    cuda_like = torch.optim.Adam(params, lr=1e-3, fused=True)  # CPU fused Adam exists since torch 2.4
    params[0].grad = torch.ones(3, 2)
    cuda_like.step()
    plain = torch.optim.Adam(params, lr=1e-3, fused=False)
    load_optimizer_state(plain, cuda_like.state_dict())
    assert plain.param_groups[0]["fused"] is False and plain.param_groups[0]["foreach"] is None
    assert plain.state[params[0]]["step"].device.type == "cpu"
    plain.step()
    fused = torch.optim.Adam(params, lr=1e-3, fused=True)
    load_optimizer_state(fused, plain.state_dict())  # a CPU checkpoint resumed by a fused (CUDA) Adam
    assert fused.param_groups[0]["fused"] is True
    assert fused.state[params[0]]["step"].dtype == torch.float32
    fused.step()
    assert float(fused.state[params[0]]["step"]) == 3


def test_a_cuda_checkpoint_resumes_on_the_cpu(tmp_path, capsys):
    """A checkpoint as a CUDA run writes it (16-byte generator states, fused Adam) trains on."""
    volume = tmp_path / "v.npy"
    np.save(volume, smooth() * 10)
    args = tiny_config(tmp_path, volume)
    train(parse_config(args + ["--max_pass", "2"]), progress=False)
    path = tmp_path / "exp" / "tiny" / "checkpoint.pt"
    ckpt = read_checkpoint(path)
    cuda_sampler = {"generator": CUDA_STATE, "device_type": "cuda"}
    ckpt["trainer"]["sampler"] = cuda_sampler
    ckpt["trainer"]["sampler_ranks"] = [cuda_sampler]
    for state in (ckpt["trainer"]["optimizer"], ckpt["trainer"]["best"]["optimizer"]):
        for group in state["param_groups"]:
            group["fused"] = True
    atomic_torch_save(ckpt, path)
    capsys.readouterr()
    info = train(parse_config(args + ["--resume", str(path)]), progress=False)
    assert "warning: sampler" in capsys.readouterr().err
    assert info["steps"] == read_checkpoint(path)["trainer"]["step"] > ckpt["trainer"]["step"]
    assert np.isfinite(info["psnr"])


# -- 3. torch.compile: the recompile limit and what the trainer reports --------------------------------
@pytest.fixture
def eager_backend(monkeypatch):
    """Dynamo's graph capture and recompile limit without inductor's code generation (seconds, not
    minutes). Dynamo's settings are changed only under ``config.patch``, which restores them exactly:
    pytest's monkeypatch undoes an attribute it did not find in the module's ``__dict__`` with
    ``delattr``, and on dynamo's config module that hides the setting for the rest of the process."""
    import torch._dynamo

    torch._dynamo.reset()
    monkeypatch.setattr(speed, "COMPILE_BACKEND", "eager")
    name = speed._limit_name()
    with torch._dynamo.config.patch(**{name: getattr(torch._dynamo.config, name)}):
        yield name
    torch._dynamo.reset()


def test_every_trainer_compiles_past_dynamos_recompile_limit(eager_backend, capsys):
    setattr(torch._dynamo.config, eager_backend, 2)  # as if 8 architectures had been trained already
    for width in (4, 5, 6, 7):  # each width is a new dynamo cache entry of Trainer.data_terms
        trainer = small_trainer(width, compile="on")
        trainer.run()
        assert trainer.compiled and trainer.compile_graphs == 1, width
    assert "torch.compile failed" not in capsys.readouterr().err


def test_compiled_trainers_leave_dynamos_settings_as_they_were(eager_backend, capsys):
    """The search and the benchmarks train many networks in one process: each compiled trainer
    raises the recompile limit only while it runs, and under both of the setting's names."""
    import torch._dynamo.config as dynamo_config

    before = dynamo_config.get_config_copy()
    for width in (4, 6):
        trainer = small_trainer(width, compile="on")
        trainer.run()
        assert trainer.compiled and trainer.compile_graphs == 1, width
        assert dynamo_config.get_config_copy() == before
        assert getattr(dynamo_config, eager_backend) == before[eager_backend]
        assert dynamo_config.cache_size_limit == before[eager_backend]  # the old name reads the same
    assert "torch.compile failed" not in capsys.readouterr().err


def test_a_trainer_past_the_limit_says_it_runs_eagerly(eager_backend, monkeypatch, capsys):
    monkeypatch.setattr(speed, "GRAPHS_PER_TRAINER", 0)  # the limit as it is: one graph
    monkeypatch.setattr(speed, "DYNAMO_DEFAULT_LIMIT", 1)
    setattr(torch._dynamo.config, eager_backend, 1)
    first, second = small_trainer(4, compile="on"), small_trainer(5, compile="on")
    first.run()
    second.run()
    assert first.compiled and first.compile_graphs == 1
    assert not second.compiled  # was: True, while every step ran eagerly
    assert "torch.compile failed (FailOnRecompileLimitHit" in capsys.readouterr().err


# -- 13. the compile fallback leaves device failures alone -----------------------------------------------
@pytest.mark.parametrize("error, fallback", [
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), False),
    (RuntimeError("CUDA error: device-side assert triggered"), False),
    (RuntimeError("InductorError: no working C++ compiler found"), True),
])
def test_the_compile_fallback_reraises_out_of_memory_and_device_asserts(error, fallback, capsys):
    trainer = small_trainer(compile="on")

    def failing(*args):
        raise error

    trainer._data_terms = failing
    if fallback:  # a compiler failure: one line, then eager training
        trainer.run()
        assert not trainer.compiled and "torch.compile failed" in capsys.readouterr().err
    else:
        with pytest.raises(type(error)):
            trainer.run()
        assert "torch.compile failed" not in capsys.readouterr().err


# -- 4. float32 matrix products: TF32 off, the override warned about and recorded ---------------------
def test_tf32_is_switched_off_and_an_override_is_recorded(tmp_path, monkeypatch, capsys):
    volume = tmp_path / "v.npy"
    np.save(volume, smooth() * 10)
    monkeypatch.setattr(precision, "_warned", False)
    monkeypatch.setenv(precision.OVERRIDE_ENV, "1")
    torch.set_float32_matmul_precision("high")  # inductor's hint, as a user would follow it
    try:
        train(parse_config(tiny_config(tmp_path, volume, max_pass=1)), progress=False)
        assert torch.get_float32_matmul_precision() == "highest" and not torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.set_float32_matmul_precision("highest")
    assert f"warning: {precision.OVERRIDE_ENV}=1" in capsys.readouterr().err
    info = json.loads((tmp_path / "exp" / "tiny" / "info.json").read_text())
    assert info["float32_matmul"] == f"tf32 ({precision.OVERRIDE_ENV})"
    monkeypatch.delenv(precision.OVERRIDE_ENV)
    assert precision.current() == {"float32_matmul": "ieee"}


# -- 5. pruning gates decide on the device -----------------------------------------------------------
class HostSyncs(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts reads of a tensor's value by the host (.item(), bool(), int(): one sync each on a GPU)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("technique", ["binary", "smallify", "variational_dynamic"])
def test_a_pruning_step_never_reads_a_value_on_the_host(technique):
    from neurcomp.model.pruning import PrunableNeurcomp, build_pruning

    cfg = PruningConfig(technique=technique, lambda_betas=1e-3, threshold=0.5 if technique == "binary" else 0.9)
    gated = PrunableNeurcomp(Architecture.uniform(8, 3), build_pruning(technique, cfg, dataset_size=1000))
    gated.train()
    if technique == "smallify":  # every switch flipping: the "keep the strongest" branch is taken
        gated.gates[0].sign_var.fill_(1.0)
    coords, targets = torch.rand(64, 3) * 2 - 1, torch.rand(64, 1)
    syncs = HostSyncs()
    with syncs:
        for step in range(2):
            pred = gated(coords)
            data = gated.regularizer.data_loss(gated, coords, pred, targets)
            penalty, _ = gated.regularizer.loss(gated, step)
            ((torch.mean((pred - targets) ** 2) if data is None else data) + penalty).backward()
            gated.regularizer.after_step(gated, step)
    assert syncs.count == 0
    if technique == "smallify":
        assert int(gated.gates[0].alive.sum()) == 1  # the strongest one is kept alive


# -- 6. inference in flat ranges of points, not whole slices ------------------------------------------
def test_inference_chunks_are_flat_point_ranges_smaller_than_a_slice():
    torch.manual_seed(0)
    model = Neurcomp(Architecture.uniform(8, 2))
    sizes = []

    class Recording(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, coords):
            sizes.append(coords.shape[0])
            return self.inner(coords)

    shape = (3, 40, 50)  # a slice is 2000 points
    out = predict_volume(Recording(), shape, chunk_points=700)
    assert max(sizes) == 700 and sum(sizes) == 6000  # was: one 2000-point slice per call
    with torch.no_grad():
        whole = model(grid_coordinates(shape, slice(None), "cpu")).reshape(shape).numpy()
    np.testing.assert_allclose(out, whole, rtol=0, atol=1e-6)


# -- 7. codebook fine-tuning holds the volume as training does -------------------------------------
def test_codebook_finetuning_uses_the_configured_sampler(tmp_path):
    from NeurcompQuantization import quantize_main

    volume = tmp_path / "v_16x14x12_uint8.npy"
    values = (smooth() * 100 + 120).astype(np.uint8)
    np.save(volume, values)
    args = tiny_config(tmp_path, volume, max_pass=2)
    train(parse_config(args), progress=False)
    config = tmp_path / "exp" / "tiny" / "config.txt"
    for extra, storage, resident in ((["--volume_storage", "native"], "native", values.size),
                                     (["--volume_storage", "float32"], "float32", 4 * values.size),
                                     (["--stream_bricks", "true", "--brick_size", "4"], "bricks", None)):
        summary = quantize_main(["--config", str(config), "--quant_bits", "6", "--finetune_passes", "1",
                                 "--output", str(tmp_path / f"{storage}.ncq"), *extra])
        finetune = summary["finetune"]
        assert finetune["sampler"]["storage"] == storage  # was: always a float32 copy on the device
        if resident is not None:
            assert finetune["sampler"]["resident_bytes"] == resident
        assert np.isfinite(finetune["psnr_before"]) and finetune["steps"] > 0


def test_normalized_psnr_is_the_same_from_a_volume_or_its_normalised_grid():
    from neurcomp.data.volume import Volume
    from neurcomp.quantization.encode import normalized_psnr

    torch.manual_seed(0)
    model = Neurcomp(Architecture.uniform(8, 2))
    volume = Volume(smooth() * 7 + 2)
    from_grid = normalized_psnr(model, torch.from_numpy(volume.normalized()))
    assert normalized_psnr(model, volume) == pytest.approx(from_grid, abs=1e-6)


# -- 9. more processes than GPUs ---------------------------------------------------------------------
def test_more_processes_per_node_than_gpus_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match="2 training processes on this node but only 1 GPU"):
        distributed.device_for_rank(torch.device("cuda"))  # was: cuda:0 for both ranks
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert distributed.device_for_rank(torch.device("cuda")) == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match="device = cuda:0 under torchrun"):
        distributed.device_for_rank(torch.device("cuda", 0))
    assert distributed.device_for_rank(torch.device("cpu")) == torch.device("cpu")
    monkeypatch.delenv("LOCAL_WORLD_SIZE")  # another launcher: this process's local rank must have a GPU
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match="2 training processes"):
        distributed.device_for_rank(torch.device("cuda"))
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert distributed.device_for_rank(torch.device("cuda")) == torch.device("cuda", 0)


# -- 8, 10, 12: two gloo processes -----------------------------------------------------------------------
def _ranks_worker(rank: int, store: str, results: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    from neurcomp.model.pruning import PrunableNeurcomp, build_pruning
    from neurcomp.training.phases import noise_states

    out = {"gather_device": str(distributed.collective_device(torch.device("cuda", 0)))}

    # 10. Ctrl-C reaches rank 1 alone, at step 4: both ranks stop at the same step and save together
    draws = []

    class Points:
        device = torch.device("cpu")

        def sample(self, n):
            draws.append(n)
            if rank == 1 and len(draws) == 5:
                os.kill(os.getpid(), signal.SIGINT)
            g = torch.Generator().manual_seed(len(draws))
            return torch.rand(n, 3, generator=g) * 2 - 1, torch.rand(n, 1, generator=g), None

        def state_dict(self):
            return {"draws": len(draws)}

    saved = {}
    torch.manual_seed(0)
    trainer = Trainer(Neurcomp(Architecture.uniform(8, 2)), Points(),
                      Phase("t", 1000, 1e-3, 1e9, OptimConfig(batch_size=32, sample_size=2)), progress=False,
                      checkpoint_fn=lambda t, tag: saved.update({tag: (t.step, t.state_dict()["sampler_ranks"])}))
    try:
        trainer.run()
        out["interrupted"] = False
    except KeyboardInterrupt:
        out["interrupted"] = True
    out["saved"] = saved.get("interrupt")

    # 12. every rank's variational noise state goes into the checkpoint and comes back to that rank
    cfg = PruningConfig(technique="variational_dynamic")
    arch = Architecture.uniform(8, 3)
    coords = torch.rand(16, 3)
    gated = PrunableNeurcomp(arch, build_pruning(cfg.technique, cfg), seed=distributed.rank_seed(0)).train()
    gated(coords)
    states = noise_states(gated)  # what the prune phase's checkpoint saves
    checkpoint = distributed.broadcast_object(states)  # rank 0 writes it, every rank reads it
    resumed = PrunableNeurcomp(arch, build_pruning(cfg.technique, cfg), seed=distributed.rank_seed(0))
    resumed.load_noise_state(distributed.rank_state(checkpoint, checkpoint[0]), step=1)
    expected = torch.randn(5, generator=gated.generator(torch.device("cpu")))
    out["noise"] = torch.randn(5, generator=resumed.generator(torch.device("cpu"))).tolist()
    out["noise_continues"] = out["noise"] == expected.tolist()
    with open(f"{results}.{rank}", "w") as f:
        json.dump(out, f)
    dist.barrier()  # leave together (see tests/test_distributed.py: a gloo thread outliving its rank aborts)
    dist.destroy_process_group()


def test_two_ranks_stop_together_keep_their_own_noise_and_gather_on_the_cpu(tmp_path):
    r0, r1 = run_two_gloo_ranks(_ranks_worker, tmp_path)
    assert r0["gather_device"] == r1["gather_device"] == "cpu"  # gloo gathers CPU tensors only
    assert r0["interrupted"] and r1["interrupted"]
    # the first check after the signal (step 16), with both ranks' sampler states
    assert r0["saved"] == r1["saved"] == [16, [{"draws": 16}, {"draws": 16}]]
    assert r0["noise_continues"] and r1["noise_continues"] and r0["noise"] != r1["noise"]


# -- 11. the rate-distortion benchmark decodes on the codec's device ------------------------------------
def test_the_codec_decodes_on_its_own_device(monkeypatch):
    import neurcomp.model.inference as inference
    from neurcomp.compressors.neurcomp import NeurcompCodec
    from neurcomp.quantization.encode import encode_model

    torch.manual_seed(0)
    model = Neurcomp(Architecture.uniform(8, 2))
    shape = (6, 5, 4)
    payload = encode_model(model, VolumeInfo(shape=shape, spacing=(1, 1, 1), vmin=0.0, vmax=1.0), 8)
    seen = []
    real = inference.predict_volume

    def spy(net, shape_zyx, info=None, device=None, **kwargs):
        seen.append((device, next(net.parameters()).device))
        return real(net, shape_zyx, info, device=device, **kwargs)

    monkeypatch.setattr(inference, "predict_volume", spy)
    decoded = NeurcompCodec(device="cpu").decompress(payload, shape)
    assert seen == [(torch.device("cpu"), torch.device("cpu"))]  # was: device None (the model's: always CPU)
    assert decoded.shape == shape
    assert NeurcompCodec(device="auto").torch_device().type == ("cuda" if torch.cuda.is_available() else "cpu")


# -- 14. parallel trials on fewer GPUs -----------------------------------------------------------------
def test_parallel_trials_sharing_a_gpu_are_announced_and_labelled(monkeypatch):
    from neurcomp.search.runner import device_label, sharing_note, visible_gpus

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert visible_gpus("auto") == ["0"] and visible_gpus("cpu") == []
    note = sharing_note(3, ["0"])
    assert note.startswith("note: --parallel 3 on 1 GPU(s): up to 3 trials share each GPU")
    assert sharing_note(2, ["0", "1"]) is None and sharing_note(4, []) is None
    assert device_label("3") == "cuda:0 (GPU 3)"  # was: cuda:3, a device the trial never saw
    assert device_label("0", shared=True) == "cuda:0 (GPU 0, shared)" and device_label(None) == ""


@pytest.mark.slow  # two torchrun processes
def test_ctrl_c_under_torchrun_saves_every_ranks_state(tmp_path):
    """Ctrl-C in a terminal: SIGINT to torchrun and both ranks (torchrun forwards another one)."""
    import subprocess
    import sys

    from tests.conftest import REPO

    volume = tmp_path / "v.npy"
    np.save(volume, smooth() * 10)
    config = tiny_config(tmp_path, volume, "ctrl_c", max_pass=100000, checkpoint_every=20)[1]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           str(REPO / "NeurcompTraining.py"), "--config", config]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    path = tmp_path / "exp" / "ctrl_c" / "checkpoint.pt"
    try:
        deadline = time.time() + 180
        while not path.is_file():  # training runs (its first periodic checkpoint is written)
            assert proc.poll() is None and time.time() < deadline, "training did not start"
            time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGINT)
        output, _ = proc.communicate(timeout=60)  # was: rank 0 could wait on its peer until the timeout
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    ckpt = read_checkpoint(path)
    assert ckpt["tag"] == "interrupt", output[-2000:]
    assert len(ckpt["trainer"]["sampler_ranks"]) == 2  # both ranks stopped at the same step and gathered
    assert "stopping every rank at the same step" in output
