"""How a training step runs fast without changing what it computes.

* Micro-batches: a step's points go through forward and backward in slices whose activations fit
  the CPU's caches, and the slices' gradients are summed (weighted by their share of the points), so
  the step's gradient is the same as in one pass, up to float rounding. Measured on a 2-core EPYC
  (``benchmarks/training_throughput.py --micro_batch 16384 4096``): a width-82 step of 16384
  points runs 1.15x faster in slices of 4096, its matrix products 1.28x; a GPU wants the whole
  step at once.
* torch.compile: the sine layers are memory-bound elementwise work around skinny matrix products;
  the compiler fuses each layer's bias, sine, residual sum and their backward into single loops.
  Compiling takes about 20 s, so ``auto`` compiles only phases long enough to pay it back.
"""

from __future__ import annotations

import torch

COMPILE_MODES = ("auto", "on", "off")
COMPILE_MIN_STEPS = 1000  # auto: compile phases at least this long
CPU_ACTIVATION_BYTES = 2 ** 21  # auto micro-batch on the CPU: one layer's float32 activations <= 2 MiB
MIN_MICRO_BATCH = 1024  # smaller slices are dominated by per-call overhead


def micro_batch_size(requested: int, points: int, max_width: int, device: torch.device) -> int:
    """Points per forward/backward pass: ``requested`` if > 0, else the whole step on a GPU and on
    the CPU the step halved until one layer's activations take at most CPU_ACTIVATION_BYTES."""
    if requested > 0:
        return min(requested, points)
    size = points
    if device.type == "cpu":
        while size > MIN_MICRO_BATCH and size * max_width * 4 > CPU_ACTIVATION_BYTES:
            size = (size + 1) // 2
    return size


def should_compile(mode: str, num_steps: int) -> bool:
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile must be one of {COMPILE_MODES}, not {mode!r}")
    return mode == "on" or (mode == "auto" and num_steps >= COMPILE_MIN_STEPS)


# -- torch.compile of the training step ------------------------------------------------------------
# Every Trainer compiles the same code object (Trainer.data_terms), so they share one dynamo cache:
# each new architecture or grad_lambda adds an entry, and past dynamo's recompile limit (8) the
# step would silently run eagerly while reporting itself compiled. Each compiled Trainer is given
# GRAPHS_PER_TRAINER more entries than the trainers before it, and its steps run with the limit
# raised that far by ``dynamo_config.patch`` (restored exactly when the run ends, so the process's
# settings are never left changed); the compiling first step turns a hit limit into an error (so
# the fallback says so and the trainer reports itself eager), and the graphs compiled are counted.
GRAPHS_PER_TRAINER = 4  # a step needs 1 graph, 2 when the last micro-batch is smaller
DYNAMO_DEFAULT_LIMIT = 8
COMPILE_BACKEND = "inductor"
_compiled_trainers = 0


def _limit_name() -> str:
    """``recompile_limit`` (torch >= 2.6) or its older name ``cache_size_limit``, now an alias of it."""
    import torch._dynamo.config as dynamo_config

    return "recompile_limit" if "recompile_limit" in dynamo_config._config else "cache_size_limit"


def reserve_room() -> int:
    """The recompile limit one more compiled trainer needs: room for its graphs after those of
    every compiled trainer before it in this process."""
    global _compiled_trainers
    _compiled_trainers += 1
    return DYNAMO_DEFAULT_LIMIT + GRAPHS_PER_TRAINER * _compiled_trainers


def recompile_room(limit: int):
    """Context for a compiled trainer's steps: dynamo's recompile limit at least ``limit``, the
    setting restored exactly on exit."""
    import torch._dynamo.config as dynamo_config

    name = _limit_name()
    return dynamo_config.patch(**{name: max(limit, getattr(dynamo_config, name))})


def compile_step(fn):
    """``torch.compile(fn)`` with the compiler backend in use (``inductor``; tests swap in ``eager``)."""
    return torch.compile(fn, backend=COMPILE_BACKEND)


def strict_recompiles():
    """Context for the compiling step: hitting the recompile limit raises instead of running eagerly
    (torch >= 2.5; older versions rely on the raised limit alone)."""
    from contextlib import nullcontext

    import torch._dynamo.config as dynamo_config

    if hasattr(dynamo_config, "fail_on_recompile_limit_hit"):
        return dynamo_config.patch(fail_on_recompile_limit_hit=True)
    return nullcontext()


def graphs_compiled() -> int:
    """Graphs dynamo has compiled in this process so far (differences count a trainer's graphs)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def is_device_failure(exc: BaseException) -> bool:
    """An out-of-memory error or a CUDA error (a device-side assert leaves the context unusable):
    not a compiler failure, so retrying eagerly would only fail again or hide it."""
    oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (oom, torch.cuda.OutOfMemoryError)):
            return True
        if type(exc).__name__ == "AcceleratorError":
            return True
        text = str(exc)
        if "CUDA error" in text or "device-side assert" in text or "out of memory" in text:
            return True
        exc = getattr(exc, "inner_exception", None) or exc.__cause__ or exc.__context__
    return False
