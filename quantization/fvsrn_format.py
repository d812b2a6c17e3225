"""The ``.ncq`` header's network id and the fvsrn record (FORMAT.md, "Network id").

The architecture record's byte after ``residual`` (reserved, 0, in files of Neurcomp networks) is
the network id: 0 Neurcomp, 1 fvsrn (``model.fvsrn``). An fvsrn file also sets header flag
``FLAG_FVSRN`` (so decoders older than the id refuse it as "unknown header flags" instead of
misreading it) and stores after the widths one record: the grid's cells per axis G, its channels
C and the MLP's activation. The grid itself is a (C, G^3) weight matrix plus C biases in the
payload, k-means'd like any other layer; Neurcomp files are unchanged.
"""

from __future__ import annotations

import struct

from neurcomp.model.architecture import FVSRN, NEURCOMP, Architecture

NETWORK_IDS = (NEURCOMP, FVSRN)  # index = id in the header
FLAG_FVSRN = 0x1
RECORD = struct.Struct("<IHBB")  # G, C, activation, reserved
ACTIVATIONS = ("sine", "silu")
MAX_GRID = 1 << 10
MAX_CHANNELS = 1 << 10


def network_id(arch: Architecture) -> int:
    return NETWORK_IDS.index(arch.network)


def header_flags(arch: Architecture) -> int:
    return FLAG_FVSRN if arch.network == FVSRN else 0


def record(arch: Architecture) -> bytes:
    """The bytes after the widths: the fvsrn record, nothing for Neurcomp."""
    if arch.network != FVSRN:
        return b""
    return RECORD.pack(arch.grid, arch.channels, ACTIVATIONS.index(arch.activation), 0)


def read_record(unpack, net_id: int, flags: int, fail) -> dict:
    """Architecture keyword arguments for a header's network id and flags; ``unpack(struct)`` reads
    the next record of the header, ``fail(problem)`` is the exception to raise for a bad one."""
    if net_id >= len(NETWORK_IDS):
        raise fail(f"unknown network id {net_id} (this decoder reads {', '.join(NETWORK_IDS)})")
    if bool(flags & FLAG_FVSRN) != (NETWORK_IDS[net_id] == FVSRN):
        raise fail(f"header flags {flags:#x} do not match network id {net_id}")
    if NETWORK_IDS[net_id] != FVSRN:
        return {}
    grid, channels, activation, reserved = unpack(RECORD)
    if not (2 <= grid <= MAX_GRID) or not (1 <= channels <= MAX_CHANNELS) or activation >= len(ACTIVATIONS) \
            or reserved:
        raise fail(f"bad fvsrn record (grid {grid}, channels {channels}, activation {activation})")
    return {"network": FVSRN, "grid": grid, "channels": channels, "activation": ACTIVATIONS[activation]}
