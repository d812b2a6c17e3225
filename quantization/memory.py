"""Will a decode fit? The memory a decode really allocates, against what this process can still get.

A compressed file of a few hundred bytes can claim any grid, so before the output is allocated the
decoder compares what it will need (the float32 output plus the inference's working memory for
one batch of points) with the memory that is *available* (Linux ``MemAvailable``: free memory plus
what the kernel can reclaim, not the machine's total) and with what is left under the process's
address-space limit (``ulimit -v``, ``RLIMIT_AS``). Past either, numpy raises MemoryError or the
kernel's OOM killer ends the process; refusing first gives one line naming the file instead.
"""

from __future__ import annotations

import os

from neurcomp.config.errors import InputError
from neurcomp.config.limits import machine_memory
from neurcomp.model.inference import CHUNK_POINTS

MEMINFO = "/proc/meminfo"
STATM = "/proc/self/statm"
BYTES = 4  # float32
ACTIVATION_COPIES = 3  # live at once in a batch: a layer's input, its linear output, its sine
POINT_BYTES = 64  # per point besides the activations: int64 index, gathered and stacked coordinates, float64 output


def available_memory() -> int | None:
    """Bytes the kernel can still hand out (``MemAvailable``), or the machine's physical memory
    where that is unknown (not Linux, or a kernel before 3.14); None if neither is known."""
    try:
        with open(MEMINFO) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return machine_memory()


def address_space_left() -> int | None:
    """Bytes left under the soft ``RLIMIT_AS`` (limit minus this process's current virtual size), or
    None without a limit."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, AttributeError, ValueError, OSError):
        return None
    if soft == resource.RLIM_INFINITY or soft < 0:
        return None
    try:
        with open(STATM) as f:
            used = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        used = 0
    return max(0, soft - used)


def decode_memory(arch, points: int) -> dict[str, int]:
    """Bytes a decode of ``points`` samples allocates: the float32 output, and the working memory of
    one batch (``model.inference.CHUNK_POINTS`` points through the widest layer)."""
    points = int(points)
    batch = max(1, min(CHUNK_POINTS, points))
    width = max([*arch.widths, arch.d_in, arch.d_out, int(getattr(arch, "channels", 0) or 0)])
    return {"output": BYTES * points, "working": batch * (POINT_BYTES + ACTIVATION_COPIES * BYTES * width)}


def check_decode_memory(arch, samples, source: str, device_type: str = "cpu") -> None:
    """Refuse, in one line naming ``source``, a decode of the grid ``samples`` (any order of the
    three counts) that cannot fit in the available memory or under the address-space limit. On
    another device than the CPU the batch's activations live there: only the output counts here."""
    points = 1
    for n in samples:
        points *= int(n)
    need = decode_memory(arch, points)
    if device_type != "cpu":
        need["working"] = 0
    total = need["output"] + need["working"]
    rooms = ((available_memory(), "available memory"),
             (address_space_left(), "room left under the process's address-space limit (ulimit -v)"))
    limits = [(room, what) for room, what in rooms if room is not None]
    if not limits:
        return
    room, what = min(limits)  # the tighter of the two
    if total > room:
        grid = "x".join(str(int(n)) for n in samples)
        raise InputError(f"{source}: decoding {grid} (X x Y x Z) = {points} points needs {_gib(total)} "
                         f"({_gib(need['output'])} output + {_gib(need['working'])} inference working memory), more than the "
                         f"{_gib(room)} of {what}")


def _gib(n: int) -> str:
    return f"{n / 2 ** 30:.3g} GiB"
