"""Distortion metrics between a ground-truth volume and a reconstruction, in physical units."""

import math

import numpy as np

CHUNK = 1 << 22  # voxels per float64 chunk: bounded memory for 512^3 and larger volumes


def psnr(mse: float, value_range: float) -> float:
    """PSNR = 20 log10(value range) - 10 log10(MSE) in dB, the convention of Lu et al. 2021 and of
    SZ/ZFP comparisons (the range is that of the ground truth: 2 for values normalised to [-1, 1]).

    inf for an exact reconstruction (MSE 0), -inf for an empty range with a non-zero error.
    """
    if not mse > 0:
        return math.inf
    if not value_range > 0:
        return -math.inf
    return 20.0 * math.log10(value_range) - 10.0 * math.log10(mse)


def volume_metrics(ground_truth: np.ndarray, reconstruction: np.ndarray) -> dict:
    """PSNR, MSE, RMSE, mean and max absolute error over the whole volume.

    PSNR (`psnr`) uses the ground truth's max - min as the range. Accumulates in float64, chunk
    by chunk, so large volumes stay exact without float64 copies of the whole volume.
    """
    if ground_truth.shape != reconstruction.shape:
        raise ValueError(f"shape mismatch: {ground_truth.shape} vs {reconstruction.shape}")
    gt_flat, rec_flat = ground_truth.reshape(-1), reconstruction.reshape(-1)
    sq_sum = abs_sum = 0.0
    max_abs = 0.0
    for start in range(0, gt_flat.size, CHUNK):
        gt = gt_flat[start:start + CHUNK].astype(np.float64)
        diff = rec_flat[start:start + CHUNK].astype(np.float64) - gt
        sq_sum += float(np.dot(diff, diff))
        abs_diff = np.abs(diff)
        abs_sum += float(abs_diff.sum())
        max_abs = max(max_abs, float(abs_diff.max()))
    n = gt_flat.size
    value_range = float(ground_truth.max()) - float(ground_truth.min())
    mse = sq_sum / n
    mae = abs_sum / n
    return {
        "psnr": psnr(mse, value_range),
        "mse": mse,
        "rmse": math.sqrt(mse),
        "l1_diff": mae,  # the mean absolute error, under the original code's name (one name everywhere)
        "max_abs_error": max_abs,
        "value_range": value_range,
    }
