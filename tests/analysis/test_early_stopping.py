"""MLPerf LoadGen early stopping: the sample counts LoadGen prints, exact binomial sums, the claims it allows."""

from __future__ import annotations

import math
import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from hilbed.analysis.stats import binom_cdf, binom_upper, early_stop_claim, early_stop_min_n, early_stop_overages

DOC = Path(__file__).resolve().parents[2] / "docs" / "analysis.md"


def exact_cdf(k: int, n: int, q: Fraction) -> Fraction:
    """P(Binomial(n, q) <= k) in exact rational arithmetic."""
    return sum(math.comb(n, x) * q ** x * (1 - q) ** (n - x) for x in range(k + 1))


def test_loadgen_minimum_sample_counts_at_99_percent():
    # LoadGen: "Need to process at least 64 queries" (p90) and 662 for its p99 estimate, confidence 0.99
    assert early_stop_min_n(0.90) == 64 and early_stop_min_n(0.99) == 662
    assert early_stop_min_n(0.95) == 130 and early_stop_min_n(0.50) == 11
    # by hand: with t = 1 (the estimate itself over latency), P(X <= 1) < 1% first at n = 64 / 662
    q90, q99 = Fraction(1, 10), Fraction(1, 100)
    assert exact_cdf(1, 64, q90) < Fraction(1, 100) <= exact_cdf(1, 63, q90)
    assert exact_cdf(1, 662, q99) < Fraction(1, 100) <= exact_cdf(1, 661, q99)
    # 0.9^64 + 64 * 0.1 * 0.9^63 = 0.00956; at 63: 0.01048
    assert binom_cdf(1, 64, 0.1) == pytest.approx(0.009563, abs=1e-6)
    assert binom_cdf(1, 63, 0.1) == pytest.approx(0.010480, abs=1e-6)
    # not "no sample over at all" (p^n <= 1 - c), which would give 44 and 459
    assert math.ceil(math.log(0.01) / math.log(0.9)) == 44 and math.ceil(math.log(0.01) / math.log(0.99)) == 459
    # a lower confidence needs fewer images; no other confidence gives both 64 and 662
    assert early_stop_min_n(0.90, 0.95) < 64 and early_stop_min_n(0.90, 0.999) > 64


@pytest.mark.parametrize("n,p,t", [(100, 0.90, 3), (1000, 0.90, 78), (1000, 0.99, 2), (30, 0.50, 8), (63, 0.90, 0),
                                   (64, 0.90, 1), (129, 0.95, 0), (130, 0.95, 1), (10000, 0.99, 77)])
def test_overages_are_the_largest_count_the_binomial_test_still_rejects(n, p, t):
    assert early_stop_overages(n, p) == t
    q = Fraction(round(1000 * (1 - p)), 1000)
    if t:
        assert exact_cdf(t, n, q) < Fraction(1, 100)
    assert exact_cdf(t + 1, n, q) >= Fraction(1, 100) or t + 1 >= n


def test_the_claim_is_an_order_statistic():
    v = np.arange(1.0, 101.0)                      # 1..100 ms
    c = early_stop_claim(v, 0.90)
    assert (c.n, c.need, c.overages, c.bound) == (100, 64, 3, 98.0)   # the 3rd largest
    assert c.text() == "≤ 98.0 ms"
    c = early_stop_claim(np.arange(1.0, 31.0), 0.50)
    assert (c.overages, c.bound) == (8, 23.0)      # the 8th largest of 1..30
    c = early_stop_claim(np.arange(1.0, 31.0), 0.90)
    assert not c.claimable and math.isnan(c.bound) and c.text() == "need 64 (n=30)"
    # images without a reply are slower than any latency: two of them push the bound to the 3rd largest value
    c = early_stop_claim(np.r_[np.arange(1.0, 99.0), [np.nan, np.nan]], 0.90)
    assert c.n == 100 and c.bound == 98.0
    c = early_stop_claim(np.r_[np.arange(1.0, 98.0), [np.nan] * 3], 0.90)
    assert math.isinf(c.bound) and c.text() == "none (too many without a reply)"


def test_miss_rate_bound_is_loadgens_server_test():
    assert binom_upper(0, 64) == pytest.approx(1 - 0.01 ** (1 / 64), rel=1e-9)
    assert binom_upper(10, 10) == 1.0 and math.isnan(binom_upper(0, 0))
    for k, n in [(0, 64), (3, 100), (12, 100), (1, 30), (50, 1000)]:
        u = binom_upper(k, n)
        assert binom_cdf(k, n, u) == pytest.approx(0.01, rel=1e-6)
        # LoadGen's server scenario passes "at most 10% over" exactly when P(X <= k | 10%) < 1%
        assert (binom_cdf(k, n, 0.10) < 0.01) == (0.10 > u)


def test_the_documented_table_is_what_the_functions_say():
    text = DOC.read_text(encoding="utf-8")
    rows = re.findall(r"^\| p(\d+) \| (\d+) \| (\S+).*?\| (\d+)\w\w \| (\d+)\w\w \|$", text, re.M)
    assert [r[0] for r in rows] == ["50", "90", "95", "99"]
    for p, need, at100, at1000, at10000 in rows:
        q = int(p) / 100
        assert early_stop_min_n(q) == int(need)
        assert (str(early_stop_overages(100, q)) + ("rd" if early_stop_overages(100, q) == 3 else "th")
                if early_stop_overages(100, q) else "none") == at100
        assert early_stop_overages(1000, q) == int(at1000) and early_stop_overages(10000, q) == int(at10000)
