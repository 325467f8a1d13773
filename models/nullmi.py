"""The plug-in MI a field shows by chance: its mean and variance under a random permutation of labels.

Given a field's category totals ``a_c`` (how often each value or bucket was
seen), ``N`` examples and ``N1`` positives, permuting the labels makes the
positives in category ``c`` hypergeometric: ``X_c ~ Hyp(N, N1, a_c)``. The
plug-in MI is a sum over categories of

    f(x; a) = [x ln(x N / (a N1)) + (a - x) ln((a - x) N / (a N0))] / N

so its expectation is ``sum_c E f(X_c; a_c)``, which depends only on the
histogram of the totals: categories with the same total contribute the same.
We compute that expectation exactly from the hypergeometric pmf (support cut
at 12 standard deviations, renormalised) where the expected minority count
``a * min(p, 1 - p)`` is below :data:`EXACT_BELOW`; above it the second-order
expansion around the mean, ``E f = (N - a) / (2 N (N - 1))``, is accurate to
well under 1% (tests/test_nullmi.py checks the seam). The variance splits
each term into its linear part in ``X_c`` (whose covariances under the fixed
number of positives are known exactly) and a residual treated as independent;
it is used only for the z-score, not for the score.

docs/estimator.md derives this and shows why the asymptotic ``(K - 1) / (2N)``
alone over-penalises sparse, high-cardinality fields.
"""

from __future__ import annotations

import numpy as np
from scipy.special import gammaln, xlogy

EXACT_BELOW = 30.0
TAIL_SD = 12.0


def _exact(a: np.ndarray, n: int, n1: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per total in ``a``: E f(X; a), Var f(X; a) and the slope of f on X, under the hypergeometric law."""
    n0 = n - n1
    p = n1 / n
    mean = a * p
    sd = np.sqrt(a * p * (1 - p) * np.maximum(n - a, 0) / max(n - 1, 1))
    lo = np.maximum(np.maximum(0, a - n0), np.floor(mean - TAIL_SD * sd - 1)).astype(np.int64)
    hi = np.minimum(np.minimum(a, n1), np.ceil(mean + TAIL_SD * sd + 1)).astype(np.int64)
    width = hi - lo + 1
    owner = np.repeat(np.arange(len(a)), width)
    starts = np.cumsum(width) - width
    x = (np.arange(int(width.sum())) - np.repeat(starts, width) + np.repeat(lo, width)).astype(np.float64)
    af = a[owner].astype(np.float64)
    logpmf = (
        gammaln(n1 + 1) - gammaln(x + 1) - gammaln(n1 - x + 1)
        + gammaln(n0 + 1) - gammaln(af - x + 1) - gammaln(n0 - af + x + 1)
        - (gammaln(n + 1) - gammaln(af + 1) - gammaln(n - af + 1))
    )
    pmf = np.exp(logpmf)
    norm = np.bincount(owner, weights=pmf, minlength=len(a))
    f = (xlogy(x, x * n / (af * n1)) + xlogy(af - x, (af - x) * n / (af * n0))) / n
    mean_f = np.bincount(owner, weights=pmf * f, minlength=len(a)) / norm
    second = np.bincount(owner, weights=pmf * f * f, minlength=len(a)) / norm
    mean_x = np.bincount(owner, weights=pmf * x, minlength=len(a)) / norm
    var_x = np.bincount(owner, weights=pmf * x * x, minlength=len(a)) / norm - mean_x**2
    cov = np.bincount(owner, weights=pmf * f * x, minlength=len(a)) / norm - mean_f * mean_x
    slope = np.where(var_x > 0, cov / np.where(var_x > 0, var_x, 1.0), 0.0)
    var_f = np.maximum(second - mean_f**2, 0.0)
    # what is left of f once its linear part in X is taken out
    return mean_f, np.maximum(var_f - slope**2 * np.maximum(var_x, 0.0), 0.0), slope


def null_moments(totals: np.ndarray, n: int, n1: int) -> tuple[float, float]:
    """Mean and variance of the plug-in MI (nats) of a field with these category totals, labels permuted."""
    totals = np.asarray(totals, dtype=np.int64)
    totals = totals[totals > 0]
    if n1 <= 0 or n1 >= n or len(totals) < 2:
        return 0.0, 0.0
    values, multiplicity = np.unique(totals, return_counts=True)
    p = n1 / n
    exact = values * min(p, 1 - p) < EXACT_BELOW
    mean = np.empty(len(values))
    residual = np.empty(len(values))
    slope = np.zeros(len(values))
    if exact.any():
        mean[exact], residual[exact], slope[exact] = _exact(values[exact], n, n1)
    big = values[~exact].astype(np.float64)
    mean[~exact] = (n - big) / (2.0 * n * (n - 1))
    residual[~exact] = ((n - big) / (n * (n - 1.0))) ** 2 / 2.0
    expected = float(np.dot(multiplicity, mean))
    # The linear parts are correlated through the fixed number of positives (multivariate
    # hypergeometric covariances); the residuals are treated as independent.
    af = values.astype(np.float64)
    s = n1 * (n - n1) / (float(n) ** 2 * (n - 1))
    linear = s * (n * float(np.dot(multiplicity, slope**2 * af)) - float(np.dot(multiplicity, slope * af)) ** 2)
    variance = float(np.dot(multiplicity, residual)) + max(linear, 0.0)
    # where every category is large the chi-square limit holds: 2N·MI ~ chi2(K - 1)
    k_large = int(multiplicity[~exact].sum())
    return expected, max(variance, (k_large - 1) / (2.0 * n * n))


def plugin_mi(counts: np.ndarray) -> float:
    """Plug-in MI (nats) of a ``[negatives, positives]`` table of categories with the label."""
    counts = np.asarray(counts, dtype=np.float64)
    n = counts.sum()
    if n <= 0:
        return 0.0
    totals = counts.sum(axis=1, keepdims=True)
    label = counts.sum(axis=0, keepdims=True)
    cells = counts > 0
    ratio = (counts * n)[cells] / (totals * label)[cells]
    return max(float((counts[cells] * np.log(ratio)).sum() / n), 0.0)


def entropy(totals: np.ndarray) -> float:
    """Plug-in entropy (nats) of a category distribution given its totals."""
    totals = np.asarray(totals, dtype=np.float64)
    n = totals.sum()
    if n <= 0:
        return 0.0
    p = totals[totals > 0] / n
    return float(-(p * np.log(p)).sum())
