"""Random training samples drawn on the device, targets by trilinear interpolation.

Each step draws uniform positions in [-1, 1]^3 with a device-side generator and interpolates the
volume there (voxel i of n sits at -1 + 2 i / (n - 1), as in ``model.inference``). No DataLoader
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

Modules: ``trilinear`` (the gather kernel), ``dense``, ``native``, ``bricks`` (one sampler each,
bricks with their background prefetch) and ``factory`` (``make_sampler``).
"""

from neurcomp.training.sampling.bricks import BrickSampler
from neurcomp.training.sampling.dense import VolumeSampler
from neurcomp.training.sampling.factory import STORAGES, make_sampler, resolve_storage, stored_values
from neurcomp.training.sampling.native import NATIVE_DTYPES, NativeVolumeSampler
from neurcomp.training.sampling.trilinear import trilinear

__all__ = ["BrickSampler", "NATIVE_DTYPES", "NativeVolumeSampler", "STORAGES", "VolumeSampler", "make_sampler",
           "resolve_storage", "stored_values", "trilinear"]
