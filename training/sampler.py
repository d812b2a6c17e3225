"""Random training samples drawn on the device, targets by trilinear interpolation.

Each step draws uniform positions in [-1, 1]^3 with a device-side generator and interpolates the
volume there (voxel i of n sits at -1 + 2 i / (n - 1), as in ``training.inference``). No DataLoader
workers, no per-sample Python. Three ways to hold the volume (``make_sampler`` picks one from the
``scaling`` options):

* ``VolumeSampler``: the normalised volume resident on the device as float32 and ``grid_sample``
  (4 bytes per voxel; 16 with ``grad_lambda > 0``: value and three gradient channels).
* ``NativeVolumeSampler``: the volume resident in its stored precision (uint8, int8, uint16, int16,
  float16, float32: 1, 1, 2, 2, 2, 4 bytes per voxel); each sample gathers its 8 corner voxels by
  integer index, converts only those to float32, normalises them and does the trilinear weights in
  float32. Finite-difference gradients are computed from the corners' neighbours on the fly
  (24 more gathers), so they cost no memory.
* ``BrickSampler``: the volume stays in a (memory-mapped) file; ``bricks_resident`` random bricks
  of ``brick_size`` cells (+ a 1-voxel halo on each side) are on the device at a time and replaced
  every ``brick_refresh_steps`` steps (read by a background thread while training goes on). Device
  memory: bricks_resident x (brick_size + 3)^3 x bytes per voxel, whatever the volume's size.
  Bricks are drawn with probability proportional to their cell count and each point picks one of
  the resident bricks uniformly, so every position in the volume is equally likely, as above.

All three give the same values for the same position (to float32 rounding).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

from model.random_state import generator_state, reseed_value, restore_generator

REPLACE_FRACTION = 0.25  # brick streaming: share of the resident bricks replaced at each refresh
NATIVE_DTYPES = ("uint8", "int8", "uint16", "int16", "float16", "float32")
STORAGES = ("auto", "float32", "native")


def resolve_storage(requested: str, source_dtype: str) -> str:
    """'float32' or 'native' for a volume stored as ``source_dtype``.

    auto: native when the stored type is smaller than float32 (uint8, int8, uint16, int16, float16).
    native for a type it cannot hold exactly in float32 arithmetic (int32, float64, ...) falls back to float32.
    """
    if requested not in STORAGES:
        raise ValueError(f"volume_storage must be one of {STORAGES}, not {requested!r}")
    name = np.dtype(source_dtype).name
    if requested == "float32" or name not in NATIVE_DTYPES:
        return "float32"
    if requested == "native":
        return "native"
    return "native" if np.dtype(name).itemsize < 4 else "float32"


def _torch_storage(array: np.ndarray) -> torch.Tensor:
    """CPU tensor sharing ``array``'s bytes (uint16 as int16 bits: torch cannot index uint16)."""
    array = np.ascontiguousarray(array)
    if array.dtype == np.uint16:
        array = array.view(np.int16)
    return torch.from_numpy(array)


def _take(flat: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """flat[index] for any index shape (index_select: much faster than advanced indexing on the CPU)."""
    return flat.index_select(0, index.reshape(-1)).reshape(index.shape)


def _corner_offsets(device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(cx, cy, cz), each (8, 1): corner k has offsets (k & 1, k >> 1 & 1, k >> 2)."""
    k = torch.arange(8, device=device)
    return (k & 1)[:, None], ((k >> 1) & 1)[:, None], (k >> 2)[:, None]


def trilinear(fetch, i0: torch.Tensor, t: torch.Tensor, dims_xyz, with_gradients: bool) -> torch.Tensor:
    """Trilinear interpolation from gathered corner values: (n, 1), or (n, 4) with gradients.

    ``fetch(iz, iy, ix)`` returns normalised float32 values at integer voxel indices (broadcast
    (8, n) index tensors). ``i0`` (n, 3) is the lower corner (x, y, z) with 0 <= i0 <= dim - 2, ``t``
    (n, 3) the position in the cell. Gradients (per unit of normalised coordinate) are the trilinear
    interpolation of central differences, one-sided at the border, like ``torch.gradient``.
    """
    ix, iy, iz = i0[:, 0], i0[:, 1], i0[:, 2]
    tx, ty, tz = t[:, 0], t[:, 1], t[:, 2]
    cx, cy, cz = _corner_offsets(i0.device)
    X, Y, Z = ix + cx, iy + cy, iz + cz  # (8, n)
    if with_gradients:
        nx, ny, nz = dims_xyz
        nbx = torch.where(cx == 0, (ix - 1).clamp(min=0), (ix + 2).clamp(max=nx - 1))
        nby = torch.where(cy == 0, (iy - 1).clamp(min=0), (iy + 2).clamp(max=ny - 1))
        nbz = torch.where(cz == 0, (iz - 1).clamp(min=0), (iz + 2).clamp(max=nz - 1))
        vals = fetch(torch.cat([Z, Z, Z, nbz]), torch.cat([Y, Y, nby, Y]), torch.cat([X, nbx, X, X]))
        v, vnx, vny, vnz = vals.split(8)
    else:
        v = fetch(Z, Y, X)
    w = (torch.where(cx == 1, tx, 1.0 - tx) * torch.where(cy == 1, ty, 1.0 - ty)
         * torch.where(cz == 1, tz, 1.0 - tz))  # (8, n)
    value = (w * v).sum(0)
    if not with_gradients:
        return value[:, None]
    k = torch.arange(8, device=i0.device)
    out = [value]
    for axis, (c, i, nb, n, vn) in enumerate(((cx, ix, nbx, nx, vnx), (cy, iy, nby, ny, vny), (cz, iz, nbz, nz, vnz))):
        partner = v.index_select(0, k ^ (1 << axis))  # the corner across the cell along this axis
        diff = torch.where(c == 0, partner - vn, vn - partner)
        steps = torch.where(c == 0, (i + 1) - nb, nb - i).to(v.dtype)  # 2 inside, 1 at the border
        out.append((w * diff / steps).sum(0) * ((n - 1) / 2.0))  # per voxel -> per normalised unit
    return torch.stack(out, dim=1)


class VolumeSampler:
    """Draws (coords, targets[, target_gradients]) batches from a normalised volume on ``device``.

    With ``with_gradients`` the finite-difference gradient of the volume (central differences,
    one-sided at the border, per unit of normalised coordinate) is interpolated as well; value and
    gradient share one ``grid_sample`` call.
    """

    storage = "float32"

    def __init__(self, normalized_zyx: np.ndarray | torch.Tensor, device: torch.device | str,
                 seed: int = 0, with_gradients: bool = False):
        self.device = torch.device(device)
        vol = torch.as_tensor(np.asarray(normalized_zyx, dtype=np.float32), device=self.device)
        nz, ny, nx = vol.shape
        self.grid = torch.empty((1, 4 if with_gradients else 1, nz, ny, nx), device=self.device)
        self.grid[0, 0] = vol
        if with_gradients:
            # d/d(normalised coord) = d/d(voxel) * (n - 1) / 2 along each axis; (x, y, z) channel order
            for channel, dim in ((1, 2), (2, 1), (3, 0)):
                n = vol.shape[dim]
                self.grid[0, channel] = torch.gradient(vol, spacing=2.0 / (n - 1), dim=dim)[0]
        del vol
        self.shape = (int(nz), int(ny), int(nx))
        self.with_gradients = with_gradients
        self._init_generator(seed)

    def _init_generator(self, seed: int) -> None:
        self.seed = int(seed)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(self.seed)

    # -- what subclasses change ----------------------------------------------------------------------
    def interpolate(self, coords: torch.Tensor) -> torch.Tensor:
        """Trilinear interpolation at (N, 3) coordinates (x, y, z) in [-1, 1]: (N, C)."""
        g = coords.reshape(1, -1, 1, 1, 3)
        out = F.grid_sample(self.grid, g, mode="bilinear", padding_mode="border", align_corners=True)
        return out.reshape(self.grid.shape[1], -1).t()

    def _draw(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """n uniform positions and their interpolated values (n, C)."""
        coords = torch.rand(n, 3, device=self.device, generator=self.generator) * 2.0 - 1.0
        return coords, self.interpolate(coords)

    def resident_bytes(self) -> int:
        """Device bytes holding the volume (values and, if any, gradient channels)."""
        return self.grid.numel() * self.grid.element_size()

    # -- the public API ------------------------------------------------------------------------------
    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """n uniform positions, their values (n, 1) and, if enabled, gradients (n, 3)."""
        coords, vals = self._draw(n)
        grads = vals[:, 1:4] if self.with_gradients else None
        return coords, vals[:, :1], grads

    def state_dict(self) -> dict:
        return generator_state(self.generator)

    def load_state_dict(self, state: dict, step: int = 0) -> None:
        """Restore the stream; a state from another device type restarts it from seed and ``step``."""
        self._load_generator(state, step)

    def _load_generator(self, state: dict, step: int) -> None:
        restore_generator(self.generator, state["generator"], state.get("device_type"),
                          reseed_value(self.seed, step), "sampler")

    def reseed(self, seed: int) -> None:
        """Restart the random stream from ``seed`` (a rank resuming without its own saved state)."""
        self.generator.manual_seed(int(seed))


class _GatherSampler(VolumeSampler):
    """Shared by the native and brick samplers: normalise gathered raw values, trilinear in float32."""

    def _init_values(self, vmin: float, vmax: float, unsigned16: bool) -> None:
        if not vmax > vmin:
            raise ValueError(f"cannot normalise with an empty value range [{vmin}, {vmax}]")
        # the constants of data.volume.normalize, in float32, so values match the float32 path
        self._vmin = torch.tensor(np.float32(vmin), device=self.device)
        self._scale = torch.tensor(np.float32(2.0 / (float(vmax) - float(vmin))), device=self.device)
        self._unsigned16 = unsigned16
        self.vmin, self.vmax = float(vmin), float(vmax)

    def _decode(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw stored values -> normalised float32 in [-1, 1]."""
        if self._unsigned16:
            raw = raw.to(torch.int32) & 0xFFFF
        out = (raw.to(torch.float32) - self._vmin) * self._scale - 1.0
        return out.clamp_(-1.0, 1.0)

    def _cell(self, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Lower corner (n, 3) and position in the cell (n, 3) of (x, y, z) coordinates in [-1, 1]."""
        nz, ny, nx = self.shape
        n = torch.tensor([nx, ny, nz], device=coords.device)
        u = (coords.clamp(-1.0, 1.0) + 1.0) * 0.5 * (n - 1).to(coords.dtype)
        i0 = torch.minimum(u.floor().long(), n - 2)
        return i0, u - i0.to(u.dtype)


class NativeVolumeSampler(_GatherSampler):
    """The volume resident on the device in its stored precision, interpolated in float32.

    ``values`` are physical values in the stored dtype (Z, Y, X); ``vmin``/``vmax`` map them to
    [-1, 1] exactly as ``data.volume.normalize`` does.
    """

    storage = "native"

    def __init__(self, values, vmin: float, vmax: float, device, seed: int = 0, with_gradients: bool = False):
        self.device = torch.device(device)
        array = np.asarray(values)
        if array.dtype.name not in NATIVE_DTYPES:
            raise ValueError(f"native storage holds {', '.join(NATIVE_DTYPES)}, not {array.dtype}")
        self.values = _torch_storage(array).to(self.device).reshape(-1)
        self.shape = tuple(int(s) for s in array.shape)
        self.dtype = array.dtype
        self.with_gradients = with_gradients
        self._init_values(vmin, vmax, array.dtype == np.uint16)
        self._init_generator(seed)

    def _fetch(self, iz, iy, ix) -> torch.Tensor:
        _, ny, nx = self.shape
        return self._decode(_take(self.values, (iz * ny + iy) * nx + ix))

    def interpolate(self, coords: torch.Tensor) -> torch.Tensor:
        i0, t = self._cell(coords.reshape(-1, 3))
        return trilinear(self._fetch, i0, t, self.shape[::-1], self.with_gradients)

    def resident_bytes(self) -> int:
        return self.values.numel() * self.values.element_size()


class BrickSampler(_GatherSampler):
    """Streams random bricks of a (memory-mapped) volume to the device and samples within them.

    ``values``: a (Z, Y, X) array-like in the stored dtype that slices cheaply (``np.memmap``,
    ``np.load(mmap_mode='r')``, ``data.lazy.H5Array``, or an in-memory array). The volume is cut
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
        storage_dtype = _torch_storage(np.zeros(1, self.stored_dtype)).dtype
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
        bricks = _torch_storage(bricks).to(self.device)
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
            return self._decode(_take(flat, base + ((iz - sz) * ext_y + (iy - sy)) * ext_x + (ix - sx)))

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
            return self._decode(_torch_storage(raw).to(self.device))

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


def stored_values(volume) -> np.ndarray:
    """The volume's voxels in their stored dtype (exact: float32 holds every value of a native dtype)."""
    values = volume.values
    dtype = np.dtype(volume.source_dtype)
    if isinstance(values, np.ndarray) and values.dtype == dtype:
        return values
    return np.asarray(values).astype(dtype)


def make_sampler(volume, device, *, seed: int = 0, with_gradients: bool = False, scaling=None) -> VolumeSampler:
    """The sampler the ``scaling`` options (``config.options.ScalingConfig``) ask for.

    ``volume``: a ``data.volume.Volume`` or ``data.lazy.LazyVolume``. Under torch.distributed each
    rank samples with its own seed (``training.distributed.rank_seed``).
    """
    from config.options import ScalingConfig
    from training.distributed import rank_seed

    scaling = scaling or ScalingConfig()
    seed = rank_seed(seed)
    storage = resolve_storage(scaling.volume_storage, volume.source_dtype)
    if scaling.stream_bricks:
        values = getattr(volume, "values")
        if np.dtype(values.dtype).name != np.dtype(volume.source_dtype).name and storage == "native":
            values = stored_values(volume)  # an in-memory float32 Volume: back to the stored dtype
        return BrickSampler(values, volume.vmin, volume.vmax, device, seed=seed, with_gradients=with_gradients,
                            brick_size=scaling.brick_size, bricks_resident=scaling.bricks_resident,
                            refresh_steps=scaling.brick_refresh_steps, storage=storage)
    if storage == "float32":
        return VolumeSampler(volume.normalized(), device, seed=seed, with_gradients=with_gradients)
    return NativeVolumeSampler(stored_values(volume), volume.vmin, volume.vmax, device, seed=seed,
                               with_gradients=with_gradients)
