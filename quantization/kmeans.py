"""Per-matrix scalar k-means: 2**B centroids for one weight matrix, B = 1..16.

In one dimension k-means is cheap when the data is sorted: for sorted centroids the clusters
are the intervals between the midpoints of neighbouring centroids, so one Lloyd iteration is a
``np.searchsorted`` of the k-1 midpoints into the sorted data plus prefix sums (O(k log n)); no
Python loop over weights. Initialisation puts centroid j at the (j + 1/2)/k quantile of the
data, which is already close to the k-means optimum for smooth distributions, so the result is
a deterministic function of the data alone (no random restarts and therefore no seed to manage:
the same matrix always gives the same codebook and indices, on any machine).

A matrix whose number of distinct values is at most 2**B is stored exactly: the codebook is the
sorted distinct values (fewer than 2**B entries) and every index points at its own value, so
dequantization reproduces the matrix bit for bit (``KMeansResult.exact``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_ITERS = 300
TOLERANCE = 1e-9  # stop when no centroid moves by more than this fraction of the data range


@dataclass
class KMeansResult:
    codebook: np.ndarray  # float32 (K,), sorted ascending, K <= 2**bits
    indices: np.ndarray  # uint16 or uint32, same shape as the input, values < K
    exact: bool  # True when the codebook holds every distinct value (lossless)
    iterations: int = 0

    def dequantize(self) -> np.ndarray:
        return self.codebook[self.indices]


def assign(values: np.ndarray, sorted_codebook: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid of a sorted codebook for each value (ties go to the lower one)."""
    c = np.asarray(sorted_codebook, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if c.size == 1:
        return np.zeros(v.shape, dtype=np.int64)
    mids = 0.5 * (c[:-1] + c[1:])
    return np.searchsorted(mids, v, side="left")


def _lloyd_sorted(x: np.ndarray, centroids: np.ndarray, max_iters: int, tol: float) -> tuple[np.ndarray, int]:
    """Lloyd iterations on sorted float64 data; centroids stay sorted (empty clusters keep theirs)."""
    prefix = np.concatenate([[0.0], np.cumsum(x)])
    n = x.size
    c = centroids.copy()
    it = 0
    for it in range(1, max_iters + 1):
        mids = 0.5 * (c[:-1] + c[1:])
        bounds = np.concatenate([[0], np.searchsorted(x, mids, side="right"), [n]])
        counts = np.diff(bounds)
        sums = prefix[bounds[1:]] - prefix[bounds[:-1]]
        new = np.where(counts > 0, sums / np.maximum(counts, 1), c)
        moved = np.max(np.abs(new - c)) if c.size else 0.0
        c = new
        if moved <= tol:
            break
    return c, it


def kmeans_1d(values: np.ndarray, bits: int, max_iters: int = MAX_ITERS) -> KMeansResult:
    """Quantize ``values`` (any shape) to at most 2**bits float32 centroids.

    Deterministic: quantile initialisation followed by Lloyd iterations until no centroid moves
    (or ``max_iters``). Exact (lossless) when there are at most 2**bits distinct values.
    """
    if not 1 <= int(bits) <= 16:
        raise ValueError(f"bits must be in 1..16, got {bits}")
    v = np.asarray(values, dtype=np.float32)
    if v.size == 0:
        return KMeansResult(np.zeros(0, np.float32), np.zeros(v.shape, np.uint16), True)
    if not np.all(np.isfinite(v)):
        raise ValueError("cannot quantize non-finite weights")
    k = 1 << int(bits)
    index_dtype = np.uint16
    unique, inverse = np.unique(v.reshape(-1), return_inverse=True)
    if unique.size <= k:
        return KMeansResult(unique.astype(np.float32), inverse.reshape(v.shape).astype(index_dtype), True)

    x = np.sort(v.reshape(-1).astype(np.float64))
    q = (np.arange(k) + 0.5) / k
    init = x[np.minimum((q * x.size).astype(np.int64), x.size - 1)]
    if np.unique(init).size < k:  # heavy ties: spread the initial centroids over the distinct values
        init = unique.astype(np.float64)[np.round(q * (unique.size - 1)).astype(np.int64)]
    span = float(x[-1] - x[0])
    centroids, iters = _lloyd_sorted(x, init, max_iters, TOLERANCE * span)
    codebook = np.sort(centroids.astype(np.float32))
    idx = assign(v, codebook).astype(index_dtype)
    return KMeansResult(codebook, idx, False, iters)
