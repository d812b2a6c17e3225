"""Error metrics in physical units, checked against a direct numpy computation."""

import math

import numpy as np
import pytest

from neurcomp.data import metrics
from neurcomp.data.metrics import volume_metrics


def test_metrics_match_direct_computation(monkeypatch):
    monkeypatch.setattr(metrics, "CHUNK", 1000)  # several chunks
    rng = np.random.default_rng(0)
    gt = rng.random((13, 17, 19)).astype(np.float32) * 230 + 3
    rec = gt + rng.normal(0, 0.5, gt.shape).astype(np.float32)
    m = volume_metrics(gt, rec)
    diff = rec.astype(np.float64) - gt
    mse = np.mean(diff ** 2)
    assert m["mse"] == pytest.approx(mse, rel=1e-12)
    assert m["psnr"] == pytest.approx(20 * math.log10(gt.max() - gt.min()) - 10 * math.log10(mse), rel=1e-7)
    assert m["l1_diff"] == pytest.approx(np.abs(diff).mean(), rel=1e-12)
    assert m["max_abs_error"] == pytest.approx(np.abs(diff).max(), rel=1e-12)


def test_identical_volumes_have_infinite_psnr():
    v = np.arange(8, dtype=np.float32).reshape(2, 2, 2)
    assert volume_metrics(v, v.copy())["psnr"] == math.inf


def test_psnr_is_the_one_formula():
    """data.metrics.psnr is what volume_metrics, the trainer and the codebook fine-tuning report."""
    from neurcomp.training.trainer import psnr_from_normalised_mse

    assert metrics.psnr(0.01, 2.0) == pytest.approx(20 * math.log10(2.0) + 20.0)
    assert metrics.psnr(0.0, 5.0) == math.inf and metrics.psnr(1.0, 0.0) == -math.inf
    assert psnr_from_normalised_mse(0.01) == metrics.psnr(0.01, 2.0)
    gt = np.arange(27, dtype=np.float32).reshape(3, 3, 3)
    rec = gt + 0.5
    assert volume_metrics(gt, rec)["psnr"] == metrics.psnr(0.25, 26.0)
