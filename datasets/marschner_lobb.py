"""Marschner-Lobb test signal (Marschner & Lobb 1994), the project's default volume.

rho(x, y, z) = (1 - sin(pi z / 2) + alpha (1 + rho_r(sqrt(x^2 + y^2)))) / (2 (1 + alpha)),
rho_r(r) = cos(2 pi f_M cos(pi r / 2)), with f_M = 6 and alpha = 0.25, sampled on [-1, 1]^3
(grid points include both ends). Values lie in [0, 1]; the radial ripple makes it hard to fit.

The standard f_M = 6 puts the ripple near the Nyquist rate of a 64^3 grid (about 3.3 voxels per
period at the rim): a test of reconstruction filters, where even trilinear interpolation fails. The
project's default volume uses f_M = 3 (about 6.7 voxels per period), a signal a 64^3 grid resolves,
so what a compressor keeps or loses of the rings shows in the slices.
"""

import argparse
from pathlib import Path

import numpy as np

F_M = 6.0
ALPHA = 0.25


def marschner_lobb(shape=(64, 64, 64), f_m: float = F_M, alpha: float = ALPHA) -> np.ndarray:
    """The signal on a (Z, Y, X) grid over [-1, 1]^3, as float32 in C order."""
    if isinstance(shape, int):
        shape = (shape, shape, shape)
    nz, ny, nx = shape
    z, y, x = np.meshgrid(
        np.linspace(-1.0, 1.0, nz), np.linspace(-1.0, 1.0, ny), np.linspace(-1.0, 1.0, nx), indexing="ij"
    )
    rho_r = np.cos(2.0 * np.pi * f_m * np.cos(np.pi * np.sqrt(x * x + y * y) / 2.0))
    rho = (1.0 - np.sin(np.pi * z / 2.0) + alpha * (1.0 + rho_r)) / (2.0 * (1.0 + alpha))
    return rho.astype(np.float32)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="voxels per axis (default 64)")
    parser.add_argument("--f_m", type=float, default=F_M, help="ripple frequency f_M (default 6, the standard signal)")
    parser.add_argument("--output", type=Path, default=None,
                        help="output file, .npy/.raw/.vti/.cvol (default datasets/marschner_lobb_<size>.npy)")
    args = parser.parse_args(argv)
    if args.size < 2:
        parser.error("--size must be at least 2")
    suffix = "" if args.f_m == F_M else f"f{args.f_m:g}_"
    output = args.output or Path(__file__).resolve().parent / f"marschner_lobb_{suffix}{args.size}.npy"
    from neurcomp.data.writers import write_volume

    write_volume(output, marschner_lobb(args.size, f_m=args.f_m))
    print(f"wrote {output} ({args.size}^3 float32, f_M = {args.f_m:g})")


if __name__ == "__main__":
    from neurcomp.config.cli import run_cli

    raise SystemExit(run_cli(main))
