"""The brick sampler: random bricks of an out-of-core volume streamed to the device by a background thread."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from neurcomp.model.random_state import generator_state
from neurcomp.training.sampling.native import NATIVE_DTYPES, GatherSampler
from neurcomp.training.sampling.trilinear import take, torch_storage, trilinear

REPLACE_FRACTION = 0.25  # brick streaming: share of the resident bricks replaced at each refresh


class BrickSampler(GatherSampler):
    """Streams random bricks of a (memory-mapped) volume to the device and samples within them.

    ``values``: a (Z, Y, X) array-like in the stored dtype that slices cheaply (``np.memmap``,
    ``np.load(mmap_mode='r')``, ``data.readers.hdf5.H5Array``, or an in-memory array). The volume is cut
    into bricks of ``brick_size`` cells per axis (the last ones smaller); a brick on the device
    holds its cells' voxels plus one voxel more on each side (for the finite differences), i.e. up
    to (brick_size + 3)^3 voxels. When all bricks fit in ``bricks_resident`` they are loaded once.
    """

    storage = "bricks"

    def __init__(self, values, vmin: float, vmax: float, device, seed: int = 0, with_gradients: bool = False,
                 brick_size: int = 32, bricks_resident: int = 256, refresh_steps: int = 16,
                 storage: str = "native", prefetch: bool = True):
        self.device = torch.device(device)
        self.host = values
        self.shape = tuple(int(s) for s in values.shape)
        self.with_gradients = with_gradients
        self.brick_size = int(brick_size)
        self.refresh_steps = int(refresh_steps)
        dtype = np.dtype(values.dtype)
        self.stored_dtype = dtype if storage == "native" and dtype.name in NATIVE_DTYPES else np.dtype(np.float32)
        self._init_values(vmin, vmax, self.stored_dtype == np.uint16)
        # the brick grid, per axis (z, y, x): cells [k B, min((k+1) B, n-1))
        self.grid_counts = tuple(math.ceil((n - 1) / self.brick_size) for n in self.shape)
        self.num_bricks = int(np.prod(self.grid_counts))
        self.all_resident = bricks_resident >= self.num_bricks
        self.slots = self.num_bricks if self.all_resident else int(bricks_resident)
        self.per_refresh = max(1, round(self.slots * REPLACE_FRACTION))
        self.extent = tuple(min(self.brick_size + 3, n) for n in self.shape)  # voxels per slot (z, y, x)
        cells = [torch.tensor([min(self.brick_size, n - 1 - k * self.brick_size) for k in range(g)],
                              dtype=torch.float64) for n, g in zip(self.shape, self.grid_counts)]
        self.brick_weights = (cells[0][:, None, None] * cells[1][None, :, None] * cells[2][None, None, :]).reshape(-1)
        storage_dtype = torch_storage(np.zeros(1, self.stored_dtype)).dtype
        self.bricks = torch.zeros((self.slots, *self.extent), dtype=storage_dtype, device=self.device)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bricks") if prefetch else None
        self._pending = None
        self._init_generator(seed)
        self._restart(seed)

    # -- brick choice and loading ----------------------------------------------------------------
    def _restart(self, seed: int) -> None:
        self.brick_generator = torch.Generator()  # CPU: which bricks; self.generator: positions
        self.brick_generator.manual_seed(int(seed))
        self.current = self._choose(self.slots)
        self.next = None if self.all_resident else self._choose(self.per_refresh)
        self.oldest = 0  # the slot the next refresh starts replacing at (round robin)
        self.steps_since_refresh = 0
        self._install(self._read(self.current), 0)
        self._prefetch()

    def _choose(self, count: int) -> list[int]:
        if self.all_resident:
            return list(range(self.num_bricks))
        picks = torch.multinomial(self.brick_weights, count, replacement=True, generator=self.brick_generator)
        return picks.tolist()

    def _brick_ranges(self, brick: int):
        """Per axis (z, y, x): (first cell, number of cells, first stored voxel, stop voxel)."""
        gz, gy, gx = self.grid_counts
        index = (brick // (gy * gx), brick // gx % gy, brick % gx)
        out = []
        for k, n in zip(index, self.shape):
            lo = k * self.brick_size
            hi = min(lo + self.brick_size, n - 1)
            out.append((lo, hi - lo, max(lo - 1, 0), min(hi + 2, n)))
        return out

    def _read(self, bricks: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Host copies of ``bricks`` (slots, *extent) and their metadata (slots, 3, 3): lo, cells, start (x, y, z)."""
        out = np.zeros((len(bricks), *self.extent), dtype=self.stored_dtype)
        meta = np.zeros((len(bricks), 3, 3), dtype=np.int64)
        for slot, brick in enumerate(bricks):
            ranges = self._brick_ranges(brick)
            block = np.asarray(self.host[tuple(slice(s, e) for _, _, s, e in ranges)])
            out[slot, :block.shape[0], :block.shape[1], :block.shape[2]] = block
            for axis, (lo, cells, start, _) in enumerate(reversed(ranges)):  # -> (x, y, z)
                meta[slot, :, axis] = (lo, cells, start)
        return out, meta

    def _install(self, loaded, first_slot: int) -> None:
        """Copy loaded bricks into consecutive slots from ``first_slot`` (wrapping around)."""
        bricks, meta = loaded
        slots = (torch.arange(len(bricks)) + first_slot) % self.slots
        bricks = torch_storage(bricks).to(self.device)
        meta = torch.from_numpy(meta).to(self.device)
        if len(slots) == self.slots and first_slot == 0:
            self.bricks.copy_(bricks)
            self.meta = meta
        else:
            slots = slots.to(self.device)
            self.bricks[slots] = bricks
            self.meta[slots] = meta
        self.lo, self.cells, self.start = self.meta[:, 0], self.meta[:, 1], self.meta[:, 2]
        if self.all_resident:
            self.slot_weights = self.cells.prod(dim=1).to(torch.float32)

    def _prefetch(self) -> None:
        if self.next is None:
            self._pending = None
        elif self._pool is not None:
            self._pending = self._pool.submit(self._read, self.next)
        else:
            self._pending = None

    def _refresh(self) -> None:
        """Replace the ``per_refresh`` oldest bricks with the prefetched ones."""
        loaded = self._pending.result() if self._pending is not None else self._read(self.next)
        self._install(loaded, self.oldest)
        for i, brick in enumerate(self.next):
            self.current[(self.oldest + i) % self.slots] = brick
        self.oldest = (self.oldest + len(self.next)) % self.slots
        self.next = self._choose(self.per_refresh)
        self.steps_since_refresh = 0
        self._prefetch()

    # -- sampling ----------------------------------------------------------------------------------
    def _fetch_bricks(self, slot):
        ext_z, ext_y, ext_x = self.extent
        flat = self.bricks.reshape(-1)
        start = self.start.index_select(0, slot)
        sx, sy, sz = start[:, 0], start[:, 1], start[:, 2]
        base = slot * (ext_z * ext_y * ext_x)

        def fetch(iz, iy, ix):
            return self._decode(take(flat, base + ((iz - sz) * ext_y + (iy - sy)) * ext_x + (ix - sx)))

        return fetch

    def _draw(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.all_resident and self.steps_since_refresh >= self.refresh_steps:
            self._refresh()
        self.steps_since_refresh += 1
        if self.all_resident:
            slot = torch.multinomial(self.slot_weights, n, replacement=True, generator=self.generator)
        else:
            slot = torch.randint(self.slots, (n,), device=self.device, generator=self.generator)
        r = torch.rand(n, 3, device=self.device, generator=self.generator)
        lo, cells = self.lo.index_select(0, slot), self.cells.index_select(0, slot)
        pos = lo.to(torch.float32) + r * cells.to(torch.float32)  # voxel units, (x, y, z)
        i0 = torch.minimum(pos.floor().long(), lo + cells - 1)
        t = pos - i0.to(pos.dtype)
        nz, ny, nx = self.shape
        coords = pos * torch.tensor([2.0 / (nx - 1), 2.0 / (ny - 1), 2.0 / (nz - 1)], device=self.device) - 1.0
        vals = trilinear(self._fetch_bricks(slot), i0, t, (nx, ny, nz), self.with_gradients)
        return coords, vals

    def interpolate(self, coords: torch.Tensor) -> torch.Tensor:
        """At arbitrary coordinates, read from the host array (for checks; training uses the bricks)."""
        i0, t = self._cell(coords.reshape(-1, 3))

        def fetch(iz, iy, ix):
            z, y, x = (a.cpu().numpy() for a in torch.broadcast_tensors(iz, iy, ix))
            if isinstance(self.host, np.ndarray):
                raw = self.host[z, y, x]
            else:  # array-likes without fancy indexing (HDF5): read the bounding box
                box = np.asarray(self.host[z.min():z.max() + 1, y.min():y.max() + 1, x.min():x.max() + 1])
                raw = box[z - z.min(), y - y.min(), x - x.min()]
            raw = np.asarray(raw, dtype=self.stored_dtype)
            return self._decode(torch_storage(raw).to(self.device))

        return trilinear(fetch, i0, t, self.shape[::-1], self.with_gradients)

    def resident_bytes(self) -> int:
        return self.bricks.numel() * self.bricks.element_size()

    # -- state ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {**generator_state(self.generator), "brick_generator": self.brick_generator.get_state(),
                "current": list(self.current), "next": None if self.next is None else list(self.next),
                "oldest": self.oldest, "steps_since_refresh": self.steps_since_refresh}

    def load_state_dict(self, state: dict, step: int = 0) -> None:
        self._load_generator(state, step)  # positions: on the device; the brick choice is always on the CPU
        if "brick_generator" not in state:  # a checkpoint of another sampler: same positions stream only
            return
        self.brick_generator.set_state(state["brick_generator"])
        if self._pending is not None:
            self._pending.result()
        self.current, self.next = list(state["current"]), state["next"]
        self.oldest = int(state["oldest"])
        self.steps_since_refresh = int(state["steps_since_refresh"])
        self._install(self._read(self.current), 0)
        self._prefetch()

    def reseed(self, seed: int) -> None:
        if self._pending is not None:
            self._pending.result()
        self.generator.manual_seed(int(seed))
        self._restart(seed)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

