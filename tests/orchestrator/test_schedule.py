from __future__ import annotations

import pytest

from hilbed.nodes.link.schedule import ConstantRate, PiecewiseRate
from hilbed.nodes.link.traces import TraceError, load_schedule, read_csv_rates


def test_constant_rate():
    s = ConstantRate(250_000)
    assert s.serve(1000, 0.0) == pytest.approx(0.032)
    assert s.serve(1000, 1.0) == pytest.approx(1.032)


def test_piecewise_by_hand():
    # 1000 B/s for 1 s, nothing for 1 s, 2000 B/s for 1 s; loops every 3 s
    s = PiecewiseRate([0, 1, 2], [8000, 0, 16000], period_s=3)
    assert s.serve(1000, 0) == pytest.approx(1.0)
    assert s.serve(1000, 0.5) == pytest.approx(2.25)   # 500 B by 1 s, the rest after the gap
    assert s.serve(1, 1.2) == pytest.approx(2.0005)    # queued in the gap: waits for capacity
    assert s.serve(6000, 0) == pytest.approx(6.0)      # two whole periods
    assert s.serve(100, 2.99) == pytest.approx(3.08)   # wraps into the next period
    once = PiecewiseRate([0, 1], [8000, 16000], loop=False)
    assert once.serve(3000, 0) == pytest.approx(2.0)   # last rate holds
    assert once.serve(1000, 5) == pytest.approx(5.5)


def test_serve_is_monotone_and_additive():
    s = PiecewiseRate([0, 0.3, 0.7], [50_000, 10_000, 200_000], period_s=1.0)
    t = 0.0
    for n in (100, 700, 1, 5000, 33):
        t2 = s.serve(n, t)
        assert t2 > t
        # serving a+b at once == serving a then b back to back
        mid = s.serve(n // 2 or 1, t)
        assert s.serve(n - (n // 2 or 1), mid) == pytest.approx(t2, abs=1e-9) if n > 1 else True
        t = t2


def test_csv_reader(tmp_path):
    p = tmp_path / "r.csv"
    p.write_text("t_ms,kbps\n0,250\n500,37.5\n1000,250\n")
    times, rates = read_csv_rates(p)
    assert times == [0, 500, 1000] and rates == [250, 37.5, 250]
    s = load_schedule(p)
    assert s.rate_bps_at(0.6) == 37_500
    p.write_text("t_ms,kbps\n0,250\n500,abc\n")
    with pytest.raises(TraceError, match=r"r.csv:3: not numbers"):
        read_csv_rates(p)
    p.write_text("t_ms,kbps\n0,250\n500,10\n400,10\n")
    with pytest.raises(TraceError, match=r"r.csv:4: t_ms must be non-decreasing"):
        read_csv_rates(p)
    p.write_text("time,rate\n0,1\n")
    with pytest.raises(TraceError, match=r"r.csv:1: header"):
        read_csv_rates(p)
