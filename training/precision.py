"""Float32 matrix products in full precision (no TF32), set explicitly for training and inference.

TF32 keeps 10 mantissa bits. A SIREN multiplies every pre-activation by omega_0 = 30 before the
sine, so that rounding caps the PSNR near 76 dB at initialisation and lower once trained, which
matters at 55-60 dB. PyTorch's default is full precision, but inductor suggests
``torch.set_float32_matmul_precision('high')`` and ``TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1`` (set in
common GPU containers) makes cuBLAS use TF32 whatever torch's setting says; that one cannot be
undone from inside the process, so it is warned about and recorded in info.json.
"""

from __future__ import annotations

import os
import sys

import torch

OVERRIDE_ENV = "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE"
_warned = False


def tf32_override() -> bool:
    """Whether the environment forces TF32 in cuBLAS (any value but empty or 0 counts, as in cuBLAS)."""
    return os.environ.get(OVERRIDE_ENV, "").strip() not in ("", "0")


def use_full_float32() -> dict:
    """Turn TF32 off for matrix products and convolutions; warn once if the environment overrides it.

    Returns what info.json records: {"float32_matmul": "ieee" | "tf32 (TORCH_ALLOW_TF32_CUBLAS_OVERRIDE)"}.
    """
    global _warned
    torch.set_float32_matmul_precision("highest")  # also clears torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    if not tf32_override():
        return {"float32_matmul": "ieee"}
    if not _warned:
        print(f"warning: {OVERRIDE_ENV}={os.environ[OVERRIDE_ENV]} makes cuBLAS compute float32 matrix products in "
              "TF32, which caps the PSNR near 76 dB (lower once trained); unset it for full precision",
              file=sys.stderr)
        _warned = True
    return {"float32_matmul": f"tf32 ({OVERRIDE_ENV})"}


def current() -> dict:
    """What float32 matrix products use now, for info.json."""
    if tf32_override():
        return {"float32_matmul": f"tf32 ({OVERRIDE_ENV})"}
    full = torch.get_float32_matmul_precision() == "highest" and not torch.backends.cuda.matmul.allow_tf32
    return {"float32_matmul": "ieee" if full else "tf32"}
