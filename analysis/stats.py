"""Confidence intervals used by the tables and by run-vs-run comparison.

- proportions (top-1, top-5, miss rate): Wilson score interval;
- difference of two proportions: Newcombe's hybrid score interval, the
  independent form for two runs with different images and the paired form
  (with the phi correlation of the 2x2 table) when both runs saw the same
  images;
- percentiles and their differences: percentile bootstrap with a fixed seed,
  so a report is reproducible.

All intervals are two-sided 95% unless ``z``/``level`` says otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

Z95 = 1.959963984540054


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion k/n ((nan, nan) when n == 0)."""
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return (lo, hi)


def newcombe_diff(k1: int, n1: int, k2: int, n2: int, phi: float = 0.0, z: float = Z95) -> tuple[float, float, float]:
    """p1 - p2 with Newcombe's hybrid score interval: (diff, lo, hi).

    ``phi`` = 0 gives the independent-samples interval (Newcombe 1998, method
    10); a paired design passes the phi coefficient of its 2x2 table (method 10
    of the paired paper), see :func:`paired_diff`.
    """
    if n1 == 0 or n2 == 0:
        return (math.nan, math.nan, math.nan)
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson(k1, n1, z)
    l2, u2 = wilson(k2, n2, z)
    d = p1 - p2
    lo_sq = (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2
    hi_sq = (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2
    return (d, d - math.sqrt(max(lo_sq, 0.0)), d + math.sqrt(max(hi_sq, 0.0)))


def paired_diff(x1: np.ndarray, x2: np.ndarray, z: float = Z95) -> tuple[float, float, float]:
    """Paired difference of two proportions (mean(x1) - mean(x2)) over matched boolean outcomes."""
    x1 = np.asarray(x1, dtype=bool)
    x2 = np.asarray(x2, dtype=bool)
    n = len(x1)
    if n == 0 or len(x2) != n:
        return (math.nan, math.nan, math.nan)
    a = int(np.sum(x1 & x2))
    b = int(np.sum(x1 & ~x2))
    c = int(np.sum(~x1 & x2))
    d = n - a - b - c
    den = (a + b) * (c + d) * (a + c) * (b + d)
    phi = (a * d - b * c) / math.sqrt(den) if den > 0 else 0.0
    return newcombe_diff(a + b, n, a + c, n, phi=phi, z=z)


def bootstrap_ci(values: np.ndarray, stat: Callable[[np.ndarray], np.ndarray], n_boot: int = 2000,
                 level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Percentile bootstrap of ``stat`` (vectorised over axis=-1): (estimate, lo, hi)."""
    v = np.asarray(values, dtype="float64")
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return (math.nan, math.nan, math.nan)
    est = float(stat(v))
    rng = np.random.default_rng(seed)
    reps = _resampled(v, n_boot, rng, stat)
    a = (1 - level) / 2
    return (est, float(np.quantile(reps, a)), float(np.quantile(reps, 1 - a)))


def _resampled(v: np.ndarray, n_boot: int, rng: np.random.Generator, stat, chunk_cells: int = 2_000_000) -> np.ndarray:
    n = len(v)
    step = max(1, chunk_cells // max(n, 1))
    out = []
    for start in range(0, n_boot, step):
        m = min(step, n_boot - start)
        idx = rng.integers(0, n, size=(m, n))
        out.append(stat(v[idx]))
    return np.concatenate(out)


def percentile_stat(q: float) -> Callable[[np.ndarray], np.ndarray]:
    """``stat`` for :func:`bootstrap_ci`: the q-th percentile (numpy's linear interpolation)."""
    return lambda a: np.percentile(a, q, axis=-1)


def bootstrap_ratio_pct(base: np.ndarray, new: np.ndarray, q: float = 95.0, n_boot: int = 2000, level: float = 0.95,
                        seed: int = 0) -> tuple[float, float, float]:
    """Relative change (%) of the q-th percentile from ``base`` to ``new``: (estimate, lo, hi).

    The two samples are resampled independently (a percentile of latency is
    not a per-image quantity, so pairing buys little).
    """
    b = np.asarray(base, dtype="float64")
    b = b[~np.isnan(b)]
    w = np.asarray(new, dtype="float64")
    w = w[~np.isnan(w)]
    if len(b) == 0 or len(w) == 0:
        return (math.nan, math.nan, math.nan)
    pb, pw = np.percentile(b, q), np.percentile(w, q)
    if pb <= 0:
        return (math.nan, math.nan, math.nan)
    rng = np.random.default_rng(seed)
    stat = percentile_stat(q)
    rb = _resampled(b, n_boot, rng, stat)
    rw = _resampled(w, n_boot, rng, stat)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = (rw / rb - 1.0) * 100.0
    rel = rel[np.isfinite(rel)]
    a = (1 - level) / 2
    return (float((pw / pb - 1.0) * 100.0), float(np.quantile(rel, a)), float(np.quantile(rel, 1 - a)))


# --------------------------------------------------------- early stopping ---
#
# MLPerf LoadGen's early stopping (loadgen/early_stopping.cc, results.cc): to
# claim "the p-th percentile latency is at most L" from n samples, L is the
# t-th largest sample, where t ("over-latency" samples: those at or above L,
# L itself included) is the largest count for which a binomial test still
# rejects "more than a share 1 - p of samples are that slow":
# P(Binomial(n, 1 - p) <= t) < 1 - confidence. LoadGen uses confidence 0.99
# and tolerance 0; the smallest n with a claim is the smallest n for which
# t = 1 passes (64 for p90, 662 for p99). Counting the estimate itself as
# over-latency is what makes it 64 rather than the 44 of "p^n <= 1 - c".

EARLY_STOP_CONFIDENCE = 0.99


def _log_binom_cdf(n: int, q: float) -> np.ndarray:
    """log P(Binomial(n, q) <= k) for k = 0..n, in log space so large n does not underflow."""
    k = np.arange(n + 1, dtype="float64")
    logfact = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1, dtype="float64")))])
    with np.errstate(divide="ignore"):
        lq, lp = (math.log(q) if q > 0 else -math.inf), (math.log1p(-q) if q < 1 else -math.inf)
        logpmf = logfact[n] - logfact - logfact[::-1] + np.where(k > 0, k * lq, 0.0) + np.where(k < n, (n - k) * lp, 0.0)
    return np.logaddexp.accumulate(logpmf)


def binom_cdf(k: int, n: int, q: float) -> float:
    """P(Binomial(n, q) <= k)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    return float(math.exp(_log_binom_cdf(n, q)[k]))


def early_stop_overages(n: int, p: float, confidence: float = EARLY_STOP_CONFIDENCE) -> int:
    """The largest t >= 1 with P(Binomial(n, 1 - p) <= t) < 1 - confidence; 0 when not even t = 1 passes."""
    if n < 2:
        return 0
    ok = np.nonzero(_log_binom_cdf(n, 1.0 - p)[1:] < math.log(1.0 - confidence))[0]
    return int(ok[-1]) + 1 if len(ok) else 0


def early_stop_min_n(p: float, confidence: float = EARLY_STOP_CONFIDENCE) -> int:
    """Fewest samples that support any claim on the p-th percentile (LoadGen's "need to process at least")."""
    q, target = 1.0 - p, math.log(1.0 - confidence)
    n = 2
    # P(X <= 1) = (1-q)^(n-1) * (1 - q + n q) falls monotonically with n
    while (n - 1) * math.log1p(-q) + math.log(1 - q + n * q) >= target:
        n += 1
    return n


@dataclass(frozen=True)
class PercentileClaim:
    """What n samples let one claim about a percentile at a confidence."""

    p: float
    n: int
    need: int          # fewest samples for any claim
    overages: int      # t: samples at or above the bound (0: no claim)
    bound: float       # the t-th largest sample (nan: no claim; inf: a sample without a value, e.g. no reply)
    confidence: float

    @property
    def claimable(self) -> bool:
        return self.overages > 0

    def text(self, unit: str = "ms", nd: int = 1) -> str:
        if not self.claimable:
            return f"need {self.need} (n={self.n})"
        if math.isinf(self.bound):
            return "none (too many without a reply)"
        return f"≤ {self.bound:.{nd}f} {unit}"


def early_stop_claim(values, p: float, confidence: float = EARLY_STOP_CONFIDENCE) -> PercentileClaim:
    """The p-th percentile bound LoadGen's early stopping allows; NaN values count as infinitely large.

    A NaN is an image that never got a reply: it is slower than any latency,
    so it counts against the claim instead of being dropped.
    """
    v = np.asarray(values, dtype="float64")
    v = np.sort(np.where(np.isnan(v), np.inf, v))
    n = len(v)
    t = early_stop_overages(n, p, confidence)
    return PercentileClaim(p, n, early_stop_min_n(p, confidence), t, float(v[n - t]) if t else math.nan, confidence)


def binom_upper(k: int, n: int, confidence: float = EARLY_STOP_CONFIDENCE) -> float:
    """One-sided upper confidence bound of a proportion k/n (Clopper-Pearson).

    The same binomial test as LoadGen's Server-scenario early stopping: the
    claim "the rate is at most r" passes exactly when r is above this bound.
    """
    if n == 0:
        return math.nan
    if k >= n:
        return 1.0
    target = 1.0 - confidence
    lo, hi = k / n, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if binom_cdf(k, n, mid) > target:
            lo = mid
        else:
            hi = mid
    return hi
