"""torch.distributed training: torchrun with 2 gloo processes on the CPU, and the helpers underneath."""

import copy
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from neurcomp.config.options import parse_config
from tests.conftest import REPO, run_two_gloo_ranks
from neurcomp.training.checkpoint import load_model, read_checkpoint
from neurcomp.training.distributed import DEBUG_DIR_ENV, local_points, rank_seed, state_hash
from neurcomp.training.run import train

OUTPUT_FILES = {"checkpoint.pt", "config.txt", "info.json", "info.txt", "ground_truth.vti", "prediction.vti",
                "error.vti", "slices.png"}


def write_config(tmp_path, volume, name, **extra) -> str:
    opts = {"data": volume, "basedir": tmp_path / "exp", "expname": name, "features_per_layer": 12, "n_layers": 2,
            "max_pass": 6, "batch_size": 64, "sample_size": 16, "lr": 1e-3, "pass_decay": 2, "lr_decay": 0.5,
            "checkpoint_every": 2, "tracking": "none", "device": "cpu", **extra}  # gloo, even on a GPU machine
    path = tmp_path / f"{name}.txt"
    path.write_text("".join(f"{k} = {v}\n" for k, v in opts.items()))
    return str(path)


def torchrun(config: str, *args, nproc: int = 2, debug_dir=None, timeout=240) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --nproc_per_node 2 --standalone NeurcompTraining.py --config F``."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    if debug_dir:
        env[DEBUG_DIR_ENV] = str(debug_dir)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--standalone",
           str(REPO / "NeurcompTraining.py"), "--config", config, *map(str, args)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    z, y, x = np.meshgrid(np.linspace(-1, 1, 12), np.linspace(-1, 1, 14), np.linspace(-1, 1, 16), indexing="ij")
    path = tmp_path_factory.mktemp("vol") / "tiny.npy"
    np.save(path, ((np.sin(2 * x) * np.cos(3 * y) + 0.5 * z ** 2) * 10 + 3).astype(np.float32))
    return path


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, volume):
    """One 2-process training with MLflow and TensorBoard, and its per-rank debug records; each rank's
    512 points per step go through 3 micro-batches (gradients all-reduced once, on the last)."""
    tmp = tmp_path_factory.mktemp("ddp")
    torchrun(write_config(tmp, volume, "ddp", tracking="mlflow,tensorboard", micro_batch=200), debug_dir=tmp / "debug")
    return tmp


def test_two_processes_write_one_set_of_outputs_laid_out_like_one_process(two_processes, volume, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as torchrun's workers (a busy 2-core machine spin-waits with 2)
    try:
        train(parse_config(["--config", write_config(tmp_path, volume, "single", tracking="tensorboard")]),
              progress=False)
    finally:
        torch.set_num_threads(threads)
    ddp_dir, single_dir = two_processes / "exp" / "ddp", tmp_path / "exp" / "single"

    def layout(folder):
        return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if "tfevents" not in p.name)

    assert set(layout(ddp_dir)) == OUTPUT_FILES and layout(ddp_dir) == layout(single_dir)
    assert len(list(ddp_dir.glob("events.out.tfevents*"))) == 1  # one event file: only rank 0 logs
    assert not list(two_processes.rglob("*.tmp"))
    a = json.loads((ddp_dir / "info.json").read_text())
    b = json.loads((single_dir / "info.json").read_text())
    assert a.keys() == b.keys()
    # the global batch and the pass count mean the same: same steps, same samples
    assert (a["steps"], a["passes"], a["world_size"], b["world_size"]) == (b["steps"], b["passes"], 2, 1)
    ckpt = read_checkpoint(ddp_dir / "checkpoint.pt")["trainer"]
    assert ckpt["samples_seen"] == read_checkpoint(single_dir / "checkpoint.pt")["trainer"]["samples_seen"]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri="sqlite:///" + str(two_processes / "exp" / "mlflow.db"))
    runs = client.search_runs([client.get_experiment_by_name("neurcomp").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert len(client.get_metric_history(runs[0].info.run_id, "train/loss")) == 6  # one per pass, from rank 0


def test_ranks_hold_identical_parameters_and_sample_with_distinct_seeds(two_processes):
    records = [json.loads((two_processes / "debug" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in records] == [2, 2]
    assert records[0]["hash_train"] == records[1]["hash_train"]
    model, _, state = load_model(two_processes / "exp" / "ddp" / "checkpoint.pt")
    assert state_hash(model) == records[0]["hash_train"]  # rank 0 saved what both ranks hold
    samplers = state["trainer"]["sampler_ranks"]
    assert len(samplers) == 2 and not torch.equal(samplers[0]["generator"], samplers[1]["generator"])
    assert rank_seed(0, 1) != rank_seed(0, 0) == 0


@pytest.mark.slow
def test_resume_under_torchrun_continues_exactly(two_processes, volume, tmp_path):
    config = write_config(tmp_path, volume, "resumed", micro_batch=200)  # as the uninterrupted run
    torchrun(config, "--max_pass", 3)  # stops after 3 of the 6 passes
    ckpt = tmp_path / "exp" / "resumed" / "checkpoint.pt"
    assert read_checkpoint(ckpt)["trainer"]["step"] == 8
    torchrun(config, "--resume", ckpt)
    resumed, _, state = load_model(ckpt)
    full, _, _ = load_model(two_processes / "exp" / "ddp" / "checkpoint.pt")
    assert state["trainer"]["step"] == 16
    assert state_hash(resumed) == state_hash(full)  # both ranks' sample streams were restored


@pytest.mark.slow
def test_pruning_under_torchrun(volume, tmp_path):
    config = write_config(tmp_path, volume, "pruned", dropout_technique="smallify", lambda_betas=1e-4,
                          max_pass=4)
    torchrun(config, debug_dir=tmp_path / "debug")
    records = [json.loads((tmp_path / "debug" / f"rank{r}.json").read_text()) for r in (0, 1)]
    for key in ("hash_prune", "hash_finetune"):
        assert records[0][key] == records[1][key]
    info = json.loads((tmp_path / "exp" / "pruned" / "info.json").read_text())
    assert info["pruning_technique"] == "smallify" and info["world_size"] == 2


# -- the helpers, in 2 spawned gloo processes ---------------------------------------------------------
def _worker(rank: int, store: str, results: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    from neurcomp.config.options import OptimConfig, PruningConfig
    from neurcomp.model.architecture import Architecture
    from neurcomp.model.neurcomp import Neurcomp
    from neurcomp.model.pruning import PrunableNeurcomp, build_pruning
    from neurcomp.training import distributed
    from neurcomp.model.inference import predict_volume
    from neurcomp.training.trainer import Phase, Trainer

    out = {}
    out["objects"] = [distributed.broadcast_object({"rank": rank})["rank"], distributed.all_gather_object(rank)]

    # inference: chunks dealt out to the ranks and gathered on rank 0 (5 chunks: uneven rounds)
    torch.manual_seed(0)
    model = Neurcomp(Architecture(widths=[8, 8], residual=True))
    split = predict_volume(model, (9, 5, 6), chunk_points=60, split=True)
    whole = predict_volume(model, (9, 5, 6), chunk_points=60)  # this process alone
    out["inference"] = (split is None) if rank else bool(np.array_equal(split, whole))

    # one step on 1001 points (501 + 500): the all-reduced gradient is the mean over all of them
    g = torch.Generator().manual_seed(1)
    coords, targets = torch.rand(1001, 3, generator=g) * 2 - 1, torch.rand(1001, 1, generator=g)

    class Fixed:
        device = torch.device("cpu")

        def sample(self, n):
            start = 0 if rank == 0 else distributed.local_points(1001, 0)  # rank 0: the first 501 points
            assert n == distributed.local_points(1001)
            return coords[start:start + n], targets[start:start + n], None

        def state_dict(self):
            return {}

    reference = copy.deepcopy(model)
    torch.mean((reference(coords) - targets) ** 2).backward()
    trainer = Trainer(model, Fixed(), Phase("t", 1, 1e-3, 1e9, OptimConfig(batch_size=1001, sample_size=1)),
                      progress=False)
    trainer.run()
    out["gradient"] = max(float((p.grad - q.grad).abs().max())
                          for p, q in zip(model.parameters(), reference.parameters()))

    # pruning: decided on rank 0 and broadcast, whatever rank 1's gates say
    pruning = PruningConfig(technique="smallify")
    gated = PrunableNeurcomp(Architecture(widths=[8, 8, 8], residual=True), build_pruning("smallify", pruning))
    if rank == 1:
        gated.gates[0].alive[:5] = False
    pruned, _ = distributed.prune_once(gated)
    out["pruned"] = [pruned.arch.layer_sizes(), distributed.state_hash(pruned)]
    with open(f"{results}.{rank}", "w") as f:
        json.dump(out, f)
    # Leave together, as train() does: while a rank waits here (without the GIL) gloo's worker threads
    # release the tensors of the last collectives; a rank that went straight into interpreter shutdown
    # could have a worker thread still needing the GIL then, which aborts the process (SIGABRT).
    dist.barrier()
    dist.destroy_process_group()


def test_helpers_with_two_gloo_processes(tmp_path):
    r0, r1 = run_two_gloo_ranks(_worker, tmp_path)
    assert r0["objects"] == r1["objects"] == [0, [0, 1]]
    assert r0["inference"] and r1["inference"]
    assert r0["gradient"] < 1e-6 and r1["gradient"] < 1e-6
    assert r0["pruned"] == r1["pruned"] and r0["pruned"][0] == [3, 8, 8, 8, 1]


def test_shares_of_points():
    assert [local_points(1001, r, 2) for r in (0, 1)] == [501, 500]
    assert sum(local_points(16384, r, 3) for r in range(3)) == 16384
    assert local_points(100) == 100  # a single process


@pytest.mark.slow  # compiles in both processes
def test_compiled_step_under_torchrun_keeps_ranks_in_sync(volume, tmp_path):
    config = write_config(tmp_path, volume, "compiled", compile="on", micro_batch=200, grad_lambda=0.05, max_pass=2)
    proc = torchrun(config, debug_dir=tmp_path / "debug")
    assert "torch.compile failed" not in proc.stderr  # compiled, not the eager fallback
    records = [json.loads((tmp_path / "debug" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert records[0]["hash_train"] == records[1]["hash_train"]
    assert json.loads((tmp_path / "exp" / "compiled" / "info.json").read_text())["steps"] == 6
