"""Opportunity schedules and the byte cursor: Mahimahi's delivery semantics, byte by byte."""

from __future__ import annotations

import math

import pytest

from hilbed.nodes.link.schedule import ByteServer, ConstantRate, OpportunitySchedule, PiecewiseRate


def test_opportunities_count_strictly_before_t():
    s = OpportunitySchedule([0, 0, 5, 10], 100)
    assert s.bytes_until(0.0) == 0  # the opportunities at 0 are usable by a packet arriving at 0
    assert s.bytes_until(0.0001) == 200
    assert s.bytes_until(0.005) == 200
    assert s.bytes_until(0.0051) == 300
    # loop: the next pass starts at base + 10 ms, so 10 ms carries the last line and the first two again
    assert s.bytes_until(0.0101) == 600
    assert s.bytes_until(0.0201) == 1000
    assert [s.time_of_bytes(b) for b in (1, 200, 201, 400, 401, 600, 601)] == \
        pytest.approx([0, 0, 0.005, 0.01, 0.01, 0.01, 0.015])


def test_once_mode_ends_with_the_trace():
    s = OpportunitySchedule([1, 2], 50, loop=False)
    assert s.time_of_bytes(100) == pytest.approx(0.002)
    assert math.isinf(s.time_of_bytes(101))
    assert s.bytes_until(10.0) == 100


def test_byte_server_carries_leftovers_and_loses_idle_capacity():
    s = OpportunitySchedule([0, 0, 5, 10], 100)
    srv = ByteServer(s)
    out = []
    for n, t in [(150, 0.0), (20, 0.0), (60, 0.0)]:
        start, first, done = srv.plan(n, t)
        srv.commit(start, n)
        out.append(done)
    # 150 B use opportunity 1 and half of 2; 20 B fit in the rest of 2; 60 B straddle 2 and 3 (at 5 ms)
    assert out == pytest.approx([0.0, 0.0, 0.005])
    # a packet arriving at 6 ms cannot use what was left at 5 ms: it waits for 10 ms
    start, first, done = srv.plan(10, 0.006)
    assert start == 300 and done == pytest.approx(0.010)


def test_rate_schedules_keep_their_fluid_semantics():
    c = ConstantRate(8000)  # 1000 B/s
    srv = ByteServer(c)
    st, _, d1 = srv.plan(500, 0.0)
    srv.commit(st, 500)
    st, _, d2 = srv.plan(500, 0.1)  # queued behind the first
    srv.commit(st, 500)
    assert (d1, d2) == pytest.approx((0.5, 1.0))
    st, _, d3 = srv.plan(100, 3.0)  # the link idled from 1 s to 3 s: that capacity is gone
    assert d3 == pytest.approx(3.1)
    p = PiecewiseRate([0, 1], [8000, 0], period_s=2)
    for b in (1, 500, 999, 1000, 1001, 2500):
        t = p.time_of_bytes(b)
        assert p.bytes_until(t) == pytest.approx(b, abs=1e-6)


def test_mean_bps_and_capacity_events_agree():
    s = OpportunitySchedule([1, 1, 3, 1000], 1504)
    assert s.mean_bps(0, 1.0) == pytest.approx(3 * 1504 * 8)
    assert sum(n for _, n in s.capacity_events(0, 2.0)) == s.bytes_until(2.0)
    c = ConstantRate(250_000)
    assert sum(n for _, n in c.capacity_events(0, 0.5)) == pytest.approx(c.bytes_until(0.5))
