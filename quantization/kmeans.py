"""Per-matrix scalar k-means: at most 2**B centroids for one weight matrix, B = 1..16.

In one dimension k-means is cheap once the data is sorted: for sorted centroids the clusters
are the intervals between the midpoints of neighbouring centroids, so one Lloyd iteration is a
``np.searchsorted`` of the k-1 midpoints into the sorted data plus prefix sums (O(k log n)), and
Lloyd stops exactly when the partition stops changing. No Python loop over weights.

Lloyd only finds a local minimum, and with hundreds of clusters the start decides how good it
is (equal-mass quantiles, the obvious start, end 2-10x above the optimum on bell-shaped data
because they starve the tails). So Lloyd runs from several deterministic starts and the lowest
squared error wins:
  * "compander" starts: high-resolution quantization theory says the optimal centroid density
    is proportional to p(x)^(1/3); p is estimated from the spacing of the sorted samples (over
    m = 4 and m = 16 neighbours) and the centroids put at the (j + 1/2)/k quantiles of p^(1/3);
  * the equal-mass quantiles;
  * for k <= 1024 and fewer than 8 weights per centroid, a k-means++ start (D^2 sampling, numpy
    Generator seeded with ``seed``): the best one when there are only a few weights per centroid
    (first layers), and too slow (O(k n)) to be worth it on large matrices.
The result is a deterministic function of (data, bits, seed).

A matrix whose number of distinct values is at most 2**B is stored exactly: the codebook is the
sorted distinct values (K <= 2**B entries) and every index points at its own value, so
dequantization reproduces the matrix bit for bit (``KMeansResult.exact``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_ITERS = 300
KMEANS_PP_MAX_K = 1024  # k-means++ start only for k <= this ...
KMEANS_PP_MAX_RATIO = 8  # ... and fewer than this many weights per centroid (where it wins)


@dataclass
class KMeansResult:
    codebook: np.ndarray  # float32 (K,), sorted ascending, K <= 2**bits
    indices: np.ndarray  # uint16, same shape as the input, values < K
    exact: bool  # True when the codebook holds every distinct value (lossless)
    iterations: int = 0
    sse: float = 0.0  # sum of squared errors (float64, before the float32 cast of the codebook)
    start: str = ""  # which start won

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


def _partition(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Cluster boundaries in sorted ``x`` for sorted centroids ``c``: cluster j is x[b[j]:b[j+1]]."""
    mids = 0.5 * (c[:-1] + c[1:])
    return np.concatenate([[0], np.searchsorted(x, mids, side="left"), [x.size]])


def _sse(x: np.ndarray, prefix: np.ndarray, prefix2: np.ndarray, c: np.ndarray) -> float:
    b = _partition(x, c)
    s1 = prefix[b[1:]] - prefix[b[:-1]]
    s2 = prefix2[b[1:]] - prefix2[b[:-1]]
    n = np.diff(b)
    return float(np.sum(s2 - 2.0 * c * s1 + n * c * c))


def _lloyd_sorted(x: np.ndarray, prefix: np.ndarray, centroids: np.ndarray, max_iters: int) -> tuple[np.ndarray, int]:
    """Lloyd on sorted float64 data until the partition is stable. Centroids stay sorted:
    cluster means lie inside their intervals, and an empty cluster keeps its centroid."""
    c = np.sort(centroids)
    bounds = None
    it = 0
    for it in range(1, max_iters + 1):
        new_bounds = _partition(x, c)
        if bounds is not None and np.array_equal(new_bounds, bounds):
            break
        bounds = new_bounds
        counts = np.diff(bounds)
        sums = prefix[bounds[1:]] - prefix[bounds[:-1]]
        c = np.where(counts > 0, sums / np.maximum(counts, 1), c)
    return c, it


def _quantiles(x: np.ndarray, k: int) -> np.ndarray:
    q = (np.arange(k) + 0.5) / k
    return x[np.minimum((q * x.size).astype(np.int64), x.size - 1)]


def _compander_start(x: np.ndarray, k: int, m: int) -> np.ndarray:
    """Quantiles of the estimated p^(1/3) (the high-resolution optimal centroid density)."""
    n = x.size
    i = np.arange(n)
    lo, hi = np.clip(i - m, 0, n - 1), np.clip(i + m, 0, n - 1)
    span = x[hi] - x[lo]
    tiny = 1e-12 * max(float(x[-1] - x[0]), 1e-30)
    lam = ((hi - lo) / np.maximum(span, tiny)) ** (1.0 / 3.0)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (lam[1:] + lam[:-1]) * np.diff(x))])
    if not cdf[-1] > 0:
        return _quantiles(x, k)
    q = (np.arange(k) + 0.5) / k
    return np.interp(q, cdf / cdf[-1], x)


def _kmeanspp_start(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k-means++ (D^2 sampling); a loop over the k centroids, each step vectorised over the data."""
    rng = np.random.default_rng(seed)
    centroids = np.empty(k)
    centroids[0] = x[rng.integers(x.size)]
    d2 = (x - centroids[0]) ** 2
    u = rng.random(k)
    for j in range(1, k):
        cum = np.cumsum(d2)
        if not cum[-1] > 0:
            centroids[j:] = centroids[0]
            break
        centroids[j] = x[min(int(np.searchsorted(cum, u[j] * cum[-1], side="right")), x.size - 1)]
        np.minimum(d2, (x - centroids[j]) ** 2, out=d2)
    return centroids


def kmeans_1d(values: np.ndarray, bits: int, max_iters: int = MAX_ITERS, seed: int = 0) -> KMeansResult:
    """Quantize ``values`` (any shape) to at most 2**bits float32 centroids.

    Lloyd from several deterministic starts (see the module doc), the lowest squared error wins.
    Exact (lossless) when there are at most 2**bits distinct values.
    """
    if not 1 <= int(bits) <= 16:
        raise ValueError(f"bits must be in 1..16, got {bits}")
    v = np.asarray(values, dtype=np.float32)
    if v.size == 0:
        return KMeansResult(np.zeros(0, np.float32), np.zeros(v.shape, np.uint16), True)
    if not np.all(np.isfinite(v)):
        raise ValueError("cannot quantize non-finite weights")
    k = 1 << int(bits)
    unique, inverse = np.unique(v.reshape(-1), return_inverse=True)
    if unique.size <= k:
        return KMeansResult(unique.astype(np.float32), inverse.reshape(v.shape).astype(np.uint16), True,
                            start="exact")

    x = np.sort(v.reshape(-1).astype(np.float64))
    prefix = np.concatenate([[0.0], np.cumsum(x)])
    prefix2 = np.concatenate([[0.0], np.cumsum(x * x)])
    starts = {"compander4": _compander_start(x, k, 4), "compander16": _compander_start(x, k, 16),
              "quantiles": _quantiles(x, k)}
    if k <= KMEANS_PP_MAX_K and x.size < KMEANS_PP_MAX_RATIO * k:
        starts["kmeans++"] = _kmeanspp_start(x, k, seed)
    best = None
    for name, init in starts.items():
        c, iters = _lloyd_sorted(x, prefix, init, max_iters)
        sse = _sse(x, prefix, prefix2, c)
        if best is None or sse < best[0]:
            best = (sse, c, iters, name)
    sse, centroids, iters, name = best
    codebook = np.sort(centroids.astype(np.float32))
    idx = assign(v, codebook).astype(np.uint16)
    return KMeansResult(codebook, idx, False, iters, sse, name)
