"""Distortion metrics between a ground-truth volume and a reconstruction, in physical units."""

import math

import numpy as np


def volume_metrics(ground_truth: np.ndarray, reconstruction: np.ndarray) -> dict:
    """PSNR, MSE, RMSE, mean and max absolute error over the whole volume.

    PSNR = 20 log10(max - min of the ground truth) - 10 log10(MSE), the convention of Lu et al.
    2021 and of SZ/ZFP comparisons. Accumulates in float64 so large volumes stay exact.
    """
    if ground_truth.shape != reconstruction.shape:
        raise ValueError(f"shape mismatch: {ground_truth.shape} vs {reconstruction.shape}")
    gt = ground_truth.astype(np.float64, copy=False)
    diff = reconstruction.astype(np.float64, copy=False) - gt
    value_range = float(gt.max() - gt.min())
    mse = float(np.mean(diff * diff))
    abs_diff = np.abs(diff)
    mae = float(abs_diff.mean())
    if mse == 0.0:
        psnr = math.inf
    else:
        psnr = 20.0 * math.log10(value_range) - 10.0 * math.log10(mse) if value_range > 0 else -math.inf
    return {
        "psnr": psnr,
        "mse": mse,
        "rmse": math.sqrt(mse),
        "mae": mae,
        "l1_diff": mae,  # the original code's name for the mean absolute error
        "max_abs_error": float(abs_diff.max()),
        "value_range": value_range,
    }
