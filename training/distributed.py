"""torch.distributed for Neurcomp: one process per device under ``torchrun``, one network.

``torchrun --nproc_per_node G NeurcompTraining.py --config F`` starts G processes; each one calls
``init_from_env`` (via ``training.run.train``), which joins the process group torchrun describes in
its environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) with NCCL on CUDA and gloo on the
CPU. Without torchrun (WORLD_SIZE unset or 1) every helper here is a no-op, so the single-process
code path is unchanged.

Semantics (see ``training.trainer.Trainer``):

* the model is wrapped in ``DistributedDataParallel`` (gradients all-reduced, averaged);
* a step still sees ``points_per_step`` points in total: rank r draws ``local_points(n)`` of them
  (n / world_size, the remainder spread over the first ranks, the loss weighted so the gradient is
  the global mean exactly), with its own sampler seed ``rank_seed(seed)``; a pass is still as many
  samples as voxels, so step counts, schedules and checkpoints mean the same as on one device;
* only the main process (rank 0) writes checkpoints, volumes, info, MLflow and TensorBoard and
  shows the progress bar (``is_main_process``);
* full-volume inference splits the grid across ranks and gathers on rank 0
  (``model.inference.predict_volume``);
* decisions that must agree across ranks (pruning) are made on rank 0 and broadcast
  (``broadcast_object``, ``sync_module_state``, ``prune_once``).

* Ctrl-C stops every rank at the same step (``StopAgreement``), so the checkpoint it writes
  holds every rank's state and no rank waits on a collective its peer never joins.

Helpers for other modules: ``is_main_process``, ``get_rank``, ``get_world_size``, ``is_enabled``,
``broadcast_object``, ``all_gather_object``, ``barrier``, ``sync_module_state``, ``prune_once``,
``assert_in_sync``, ``collective_device``, ``rank_state``.
"""

from __future__ import annotations

import atexit
import hashlib
import inspect
import json
import os
import signal
import sys
import threading
import warnings
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

RANK_SEED_STRIDE = 1_000_003  # rank r samples with seed + r * stride (rank 0: the configured seed)
TIMEOUT = timedelta(minutes=30)  # collectives wait this long (rank 0 writes outputs while others wait)
DEBUG_DIR_ENV = "NEURCOMP_DIST_DEBUG_DIR"  # when set, each rank writes rank<r>.json (parameter hash, ...)


# -- the process group ----------------------------------------------------------------------------
def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_enabled() -> bool:
    """True when training runs in more than one process."""
    return get_world_size() > 1


def is_main_process() -> bool:
    return get_rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def local_world_size() -> int:
    """Processes on this node: torchrun's LOCAL_WORLD_SIZE; other launchers' at least LOCAL_RANK + 1."""
    if "LOCAL_WORLD_SIZE" in os.environ:
        return int(os.environ["LOCAL_WORLD_SIZE"])
    return local_rank() + 1


def device_for_rank(device: torch.device) -> torch.device:
    """Under torchrun each process gets its own GPU: cuda:LOCAL_RANK.

    Two ranks on one GPU fail inside NCCL ("Duplicate GPU detected") or crawl, so more processes
    per node than visible GPUs, or a fixed ``cuda:N`` for every rank, is refused with one line.
    """
    if device.type != "cuda" or env_world_size() <= 1:
        return device
    from neurcomp.config.errors import ConfigError

    per_node, gpus = local_world_size(), torch.cuda.device_count()
    if device.index is not None and per_node > 1:
        raise ConfigError(f"device = {device} under torchrun puts all {per_node} processes of this node on one "
                          "GPU: use device = cuda (or auto), which gives each process its own")
    if per_node > gpus:
        raise ConfigError(f"{per_node} training processes on this node but only {gpus} GPU(s) are visible: "
                          f"start one per GPU (torchrun --nproc_per_node {gpus}); two on one GPU fail in NCCL")
    return device if device.index is not None else torch.device("cuda", local_rank())


def init_from_env(device: torch.device, backend: str = "auto") -> bool:
    """Join the process group torchrun set up, if any; returns whether training is distributed.

    Idempotent. ``backend`` auto: NCCL for CUDA devices, gloo otherwise.
    """
    if is_initialized():
        return is_enabled()
    if env_world_size() <= 1:
        return False
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {}
    if device.type == "cuda":
        torch.cuda.set_device(device)
        if backend == "nccl" and "device_id" in inspect.signature(dist.init_process_group).parameters:
            kwargs["device_id"] = device  # binds the communicator to this GPU (no guessing in barrier())
    dist.init_process_group(backend=backend, timeout=TIMEOUT, **kwargs)
    atexit.register(shutdown)
    return True


def shutdown() -> None:
    if is_initialized():
        dist.destroy_process_group()


# -- sampling ---------------------------------------------------------------------------------------
def rank_seed(seed: int, rank: int | None = None) -> int:
    """A distinct sampler seed per rank; rank 0 (and a single process) keeps ``seed``."""
    return int(seed) + RANK_SEED_STRIDE * (get_rank() if rank is None else rank)


def local_points(total: int, rank: int | None = None, world_size: int | None = None) -> int:
    """This rank's share of ``total`` points per step (the remainder goes to the first ranks)."""
    rank = get_rank() if rank is None else rank
    world_size = get_world_size() if world_size is None else world_size
    return total // world_size + (1 if rank < total % world_size else 0)


# -- collectives (no-ops in a single process) --------------------------------------------------------
def barrier() -> None:
    if is_enabled():
        dist.barrier()


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s (picklable) ``obj`` on every rank."""
    if not is_enabled():
        return obj
    holder = [obj if get_rank() == src else None]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def all_gather_object(obj) -> list:
    """Every rank's ``obj``, in rank order."""
    if not is_enabled():
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def collective_device(device: torch.device) -> torch.device:
    """Where tensors for ``gather`` must live: gloo gathers CPU tensors only, NCCL device ones."""
    if is_initialized() and dist.get_backend() == "gloo":
        return torch.device("cpu")
    return torch.device(device)


def rank_state(ranks: list | None, rank0_state):
    """This rank's entry of a checkpoint's per-rank states (``ranks``, saved by every rank), rank 0's
    ``rank0_state`` when the checkpoint has no entry per rank, else None (restart from the seed)."""
    if ranks and len(ranks) == get_world_size():
        return ranks[get_rank()]
    return rank0_state if get_rank() == 0 else None


class StopAgreement:
    """Ctrl-C under torch.distributed: every rank stops at the same step.

    Each rank gets SIGINT at its own moment (the terminal's and torchrun's), so a rank that stopped
    at once could leave a peer waiting in an all-reduce it never joins, and rank 0's save would
    queue behind it until the NCCL timeout. While training, SIGINT only sets a flag; ``agreed()``
    (called by every rank at the same steps) all-reduces the flags, so all ranks stop together,
    with every collective matched, and can still save a checkpoint holding every rank's state.
    In a single process nothing changes (KeyboardInterrupt as usual).
    """

    def __init__(self):
        self.requested = False
        self.together = False
        self._installed = False
        if is_enabled() and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
            self._installed = True

    def _on_sigint(self, signum, frame) -> None:
        if not self.requested and is_main_process():
            print("\ninterrupt: stopping every rank at the same step, then saving a checkpoint", file=sys.stderr)
        self.requested = True  # later SIGINTs (torchrun forwards one) change nothing

    def agreed(self, device: torch.device) -> bool:
        """Whether any rank asked to stop (a collective: every rank calls it at the same step)."""
        if not self._installed:
            return False
        flag = torch.tensor([1.0 if self.requested else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        self.together = bool(flag.item() > 0)
        return self.together

    def close(self) -> None:
        if self._installed:
            previous = self._previous if self._previous is not None else signal.default_int_handler
            signal.signal(signal.SIGINT, previous)
            self._installed = False


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """The mean over ranks of ``tensor`` (a new tensor; the input is left alone)."""
    if not is_enabled():
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / get_world_size()


@torch.no_grad()
def sync_module_state(module: torch.nn.Module, src: int = 0) -> None:
    """Overwrite every parameter and buffer with rank ``src``'s values."""
    if not is_enabled():
        return
    for tensor in list(module.parameters()) + list(module.buffers()):
        if tensor.dtype == torch.bool:  # not every backend broadcasts bool
            as_int = tensor.to(torch.uint8)
            dist.broadcast(as_int, src=src)
            tensor.copy_(as_int.bool())
        else:
            dist.broadcast(tensor.data, src=src)


def wrap_model(model: torch.nn.Module, device: torch.device):
    """``DistributedDataParallel(model)`` when distributed, else None (train the model itself)."""
    if not is_enabled():
        return None
    from torch.nn.parallel import DistributedDataParallel

    # raised for weights with a size-1 dimension (the (1, width) output layer), whose two stride
    # layouts are the same memory order: nothing to fix
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    device_ids = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else None
    # buffers follow rank 0 (the default); gradients live in the all-reduce buckets (no extra copy)
    return DistributedDataParallel(model, device_ids=device_ids, gradient_as_bucket_view=True)


# -- consistency --------------------------------------------------------------------------------------
def state_hash(module: torch.nn.Module) -> str:
    """sha256 of every parameter and buffer (names, dtypes, bytes): equal iff bitwise equal."""
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def assert_in_sync(module: torch.nn.Module, where: str = "") -> str:
    """Check that every rank holds bitwise the same parameters; returns the hash.

    With ``NEURCOMP_DIST_DEBUG_DIR`` set, each rank also writes ``rank<r>.json`` there.
    """
    digest = state_hash(module)
    hashes = all_gather_object(digest)
    debug_dir = os.environ.get(DEBUG_DIR_ENV)
    if debug_dir:
        Path(debug_dir).mkdir(parents=True, exist_ok=True)
        path = Path(debug_dir) / f"rank{get_rank()}.json"
        record = json.loads(path.read_text()) if path.exists() else {}
        key = f"hash_{where}" if where else "hash"
        record.update({"rank": get_rank(), "world_size": get_world_size(), key: digest})
        path.write_text(json.dumps(record, indent=1))
    if len(set(hashes)) > 1:
        raise RuntimeError(f"distributed training diverged{' at ' + where if where else ''}: ranks hold "
                           f"different parameters ({', '.join(h[:8] for h in hashes)})")
    return digest


def prune_once(gated):
    """``gated.prune()`` decided once, on rank 0, and broadcast: (pruned model, report) on every rank.

    Rank 0's gates and weights are broadcast first, so every rank prunes the same neurons; the
    resulting architecture is checked against rank 0's and the pruned weights broadcast as well.
    """
    if not is_enabled():
        return gated.prune()
    sync_module_state(gated)
    model, report = gated.prune()
    arch = broadcast_object(model.arch.to_dict())
    if arch != model.arch.to_dict():
        raise RuntimeError(f"rank {get_rank()} pruned to {model.arch.layer_sizes()}, rank 0 to {arch}")
    sync_module_state(model)
    return model, report
