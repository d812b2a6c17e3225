"""Error metrics in physical units, checked against a direct numpy computation."""

import math

import numpy as np
import pytest

from data import metrics
from data.metrics import volume_metrics


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
    assert m["mae"] == pytest.approx(np.abs(diff).mean(), rel=1e-12)
    assert m["max_abs_error"] == pytest.approx(np.abs(diff).max(), rel=1e-12)


def test_identical_volumes_have_infinite_psnr():
    v = np.arange(8, dtype=np.float32).reshape(2, 2, 2)
    assert volume_metrics(v, v.copy())["psnr"] == math.inf
