"""Optimal one-dimensional k-means (what ISW groups its covariance variances with).

RobustNet's ``network/cov_settings.py`` calls the ``kmeans1d`` package (Grønlund et al., "Fast
Exact k-Means, k-Medians and Bregman Divergence Clustering in 1D", arXiv 1701.07204): the exact
minimiser of the within-cluster sum of squares, clusters numbered by increasing centroid. This
module computes the same optimum with the textbook dynamic programme over the sorted values,

    D[m, i] = min_j  D[m - 1, j - 1] + SSE(x[j..i]),

whose minimising ``j`` is non-decreasing in ``i``; each of the ``k`` rows is filled by
divide-and-conquer over that monotone argmin, all segments of one recursion depth in one vectorised
step (O(k n log n) in numpy, no Python loop over the ``n`` values).
"""
import numpy as np

from ...validation import ArgumentError, check_positive_int

__all__ = ['kmeans_1d']


def _row(prev: np.ndarray, s1: np.ndarray, s2: np.ndarray, first: int) -> tuple:
    """One DP row: ``best[i] = min_{first <= j <= i} prev[j] + sse(j, i)`` and its argmin.

    ``prev[j]`` is the cost of the values before ``j`` (``inf`` where impossible); ``s1`` / ``s2``
    are the prefix sums of the values and their squares (length ``n + 1``).
    """
    n = len(s1) - 1
    best = np.full(n, np.inf)
    arg = np.zeros(n, dtype=np.int64)
    # segments of the recursion: target indices [lo, hi], candidate starts [olo, ohi]
    lo = np.array([first])
    hi = np.array([n - 1])
    olo = np.array([first])
    ohi = np.array([n - 1])
    while len(lo):
        mid = (lo + hi) // 2
        top = np.minimum(mid, ohi)
        sizes = top - olo + 1
        seg = np.repeat(np.arange(len(lo)), sizes)
        starts = np.cumsum(sizes) - sizes
        j = olo[seg] + np.arange(sizes.sum()) - starts[seg]
        i = mid[seg]
        cnt = i - j + 1
        sse = (s2[i + 1] - s2[j]) - (s1[i + 1] - s1[j])**2 / cnt
        val = prev[j] + np.maximum(sse, 0.0)
        seg_min = np.minimum.reduceat(val, starts)
        hit = np.flatnonzero(val <= seg_min[seg])
        _, first_hit = np.unique(seg[hit], return_index=True)
        jstar = j[hit[first_hit]]
        best[mid] = seg_min
        arg[mid] = jstar
        left = lo <= mid - 1
        right = mid + 1 <= hi
        # left halves keep their candidates up to j*, right halves start at j*
        lo = np.concatenate([lo[left], mid[right] + 1])
        hi = np.concatenate([mid[left] - 1, hi[right]])
        new_olo = np.concatenate([olo[left], jstar[right]])
        ohi = np.concatenate([jstar[left], ohi[right]])
        olo = new_olo
    return best, arg


def kmeans_1d(values, k: int) -> np.ndarray:
    """Exact 1-D k-means labels, clusters numbered by increasing centroid (as ``kmeans1d``).

    Args:
        values (array-like): ``n`` finite numbers, ``n >= k``.
        k (int): Number of clusters, >= 1.

    Returns:
        np.ndarray: ``(n,)`` int64 labels in ``0 .. k - 1``, for ``values`` in their given order.
    """
    k = check_positive_int(k, 'k')
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    n = len(x)
    if n < k or not np.isfinite(x).all():
        raise ArgumentError(f'kmeans_1d needs at least k={k} finite values, got {n} values '
                            f'({int((~np.isfinite(x)).sum())} not finite)')
    order = np.argsort(x, kind='stable')
    xs = x[order]
    s1 = np.concatenate([[0.0], np.cumsum(xs)])
    s2 = np.concatenate([[0.0], np.cumsum(xs * xs)])
    prev = np.full(n, np.inf)
    prev[0] = 0.0  # one cluster: every prefix starts at 0
    args = []
    for m in range(k):
        best, arg = _row(prev, s1, s2, first=m)
        args.append(arg)
        prev = np.concatenate([[np.inf], best[:-1]])  # cost of the values before start j
    labels_sorted = np.empty(n, dtype=np.int64)
    end = n - 1
    for m in range(k - 1, -1, -1):
        start = args[m][end]
        labels_sorted[start:end + 1] = m
        end = start - 1
    labels = np.empty(n, dtype=np.int64)
    labels[order] = labels_sorted
    return labels
