"""One trace engine for every shaped path: Mahimahi stages, shared release times, a log writer off the release path."""

from __future__ import annotations

import random
import threading
import time

import pytest

from hilbed.nodes.link.linklog import read_linklog
from hilbed.nodes.link.schedule import ConstantRate, OpportunitySchedule
from hilbed.nodes.link.shaper import TraceShaper
from hilbed.nodes.link.stages import DROPPED, REFUSED, SENT, STALLED, Pipeline
from hilbed.nodes.link.tcp import ShapedLink

FAR = 5_000_000_000  # a deadline 5 s away, in ns


def _wait(cond, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not cond() and time.monotonic() < end:
        time.sleep(0.005)


def test_stages_queue_serve_delay_loss_in_mahimahi_order():
    s = OpportunitySchedule([10, 20, 30, 40], 100)  # 100 B every 10 ms
    p = Pipeline(s, "droptail:packets=2", delay=0.005)
    a, b, c = (p.offer(100, 0.0) for _ in range(3))
    assert (a.fate, b.fate, c.fate) == (SENT, SENT, DROPPED)
    assert (a.t_done, a.t_release, b.t_done) == pytest.approx((0.010, 0.015, 0.020))
    assert p.counters["dropped_packets"] == 1 and p.counters["packets_in"] == 3
    # a deadline refuses a packet that would leave later, without charging the link
    q = Pipeline(s)
    assert q.offer(100, 0.0).t_done == pytest.approx(0.010)
    assert q.offer(100, 0.0, deadline=0.015).fate == REFUSED
    assert q.offer(100, 0.0).t_done == pytest.approx(0.020)
    # loss draws once per served packet, never for one that is not served
    once = Pipeline(OpportunitySchedule([1, 2], 100, loop=False), loss=0.5, rng=random.Random(4))
    fates = [once.offer(100, 0.0) for _ in range(3)]
    ref = random.Random(4)
    assert [f.lost for f in fates[:2]] == [ref.random() < 0.5 for _ in range(2)]
    assert fates[2].fate == STALLED and once.counters["never_served"] == 1


def test_both_shaped_paths_share_the_engine(edge_sink):
    """ShapedLink (closed loop, client) and TraceShaper (open loop) release the same packets at the same times."""
    sched = OpportunitySchedule(list(range(3, 63, 3)), 300)  # 300 B every 3 ms, looping
    sink = edge_sink()
    link = ShapedLink("127.0.0.1", sink.port, sched, None, delay_ms=7, packet_bytes=200)
    plans = []
    link.up.on_packet = plans.append
    rep = link.send_message(1, {"codec": "x"}, [b"a" * 450, b"b" * 330], time.time_ns() + FAR)
    _wait(lambda: len(sink.data_times()) >= len(plans) - 2)
    arrived = [t - link.epoch_mono for t in sink.data_times()]
    link.close()
    # BEGIN, five DATA packets and END all cross the uplink
    assert rep.chunks_delivered == 2 and len(plans) == 7 and all(p.fate == SENT for p in plans)

    shaper_plans = []
    sh = TraceShaper(sched, delay_ms=7)
    assert isinstance(link.up, Pipeline) and isinstance(sh.dirs["up"].pipeline, Pipeline)
    sh.dirs["up"].pipeline.on_packet = shaper_plans.append
    for p in plans:  # the same arrivals, in the same link time
        sh.submit("up", None, nbytes=p.nbytes, t=p.t_arrival)
    sh.close()
    assert [(p.t_done, p.t_release) for p in shaper_plans] == [(p.t_done, p.t_release) for p in plans]
    # and the client really released each DATA frame at its planned time (never early)
    assert len(arrived) == len(plans) - 2
    for t, p in zip(arrived, plans[1:-1]):
        assert p.t_release - 1e-4 <= t < p.t_release + 0.05


class _StallingLog(ConstantRate):
    """A rate whose capacity lines take long to produce once (a stalled disk, a huge idle gap to fill)."""

    def __init__(self, bits_per_s: float, stall_s: float = 0.6):
        super().__init__(bits_per_s)
        self.stall_s = stall_s
        self.stalling = threading.Event()

    def capacity_events(self, t0, t1, step_s=0.001):
        if not self.stalling.is_set():
            self.stalling.set()
            time.sleep(self.stall_s)
        yield from super().capacity_events(t0, t1, step_s)


def test_log_writer_does_not_delay_trace_shaper_releases(tmp_path):
    sched = _StallingLog(400_000)  # 50 B/ms
    got = []
    sh = TraceShaper(sched, deliver_up=lambda p: got.append((time.monotonic(), p)), delay_ms=5,
                     log_path=str(tmp_path / "up.log"))
    plans = []
    sh.dirs["up"].pipeline.on_packet = plans.append
    assert sched.stalling.wait(2)  # the writer is stuck from now on
    for i in range(8):
        sh.send_up(i, nbytes=250)  # 5 ms each: releases 10..45 ms from now, all inside the stall
    _wait(lambda: len(got) == 8, 2)
    sh.close()
    assert [p for _, p in got] == list(range(8))
    for (t, _), p in zip(got, plans):
        assert p.t_release - 1e-4 <= t - sh.epoch < p.t_release + 0.1  # the 0.6 s stall did not reach them
    lg = read_linklog(tmp_path / "up.log")  # and the log is complete once closed
    assert len(lg.arrivals) == len(lg.departures) == 8


def test_log_writer_does_not_delay_shaped_link_releases(tmp_path, edge_sink):
    sched = _StallingLog(400_000)
    sink = edge_sink()
    link = ShapedLink("127.0.0.1", sink.port, sched, None, delay_ms=5, packet_bytes=200,
                      log_path=str(tmp_path / "link.log"))
    plans = []
    link.up.on_packet = plans.append
    assert sched.stalling.wait(2)
    rep = link.send_message(1, {"codec": "x"}, [b"z" * 1000], time.time_ns() + FAR)
    arrived = [t - link.epoch_mono for t in sink.data_times()]
    _wait(lambda: len(sink.data_times()) >= len(plans) - 2)
    arrived = [t - link.epoch_mono for t in sink.data_times()]
    link.close()
    assert rep.chunks_delivered == 1 and len(arrived) == len(plans) - 2 == 5  # plus BEGIN and END
    for t, p in zip(arrived, plans[1:-1]):
        assert p.t_release - 1e-4 <= t < p.t_release + 0.1
    assert link.stats()["late_release_ms_max"] < 100
    lg = read_linklog(tmp_path / "link.log")
    assert len(lg.departures) == 7 and sum(n for _, n, _ in lg.departures) == rep.wire_bytes_sent


def _event_times(path) -> list[int]:
    return [int(line.split()[0]) for line in path.read_text().splitlines() if not line.startswith("#")]


def test_link_logs_are_in_time_order_with_the_exact_capacity(tmp_path, edge_sink):
    sched = OpportunitySchedule(list(range(1, 41)), 120)  # 120 B every ms, 40 ms period
    sink = edge_sink()
    link = ShapedLink("127.0.0.1", sink.port, sched, None, delay_ms=3, packet_bytes=100,
                      log_path=str(tmp_path / "client.log"))
    for m in range(3):
        link.send_message(m, {"codec": "x"}, [b"c" * 700, b"d" * 300], time.time_ns() + FAR)
        time.sleep(0.02)
    link.close()
    sh = TraceShaper(sched, queue="droptail:packets=3", log_drops=False, log_path=str(tmp_path / "shaper.log"))
    for _ in range(3):
        for _ in range(6):
            sh.send_up(b"q" * 200)
        time.sleep(0.03)
    time.sleep(0.03)
    sh.close()
    for name in ("client.log", "shaper.log"):
        path = tmp_path / name
        times = _event_times(path)
        assert times == sorted(times), f"{name} is not in time order"
        lg = read_linklog(path)
        want = [(int(t * 1000 + 1e-6), n) for t, n in sched.capacity_events(0, (lg.capacity[-1][0] + 1) / 1000)]
        assert lg.capacity == want  # every opportunity of the schedule, none invented
        assert lg.departures
    assert not read_linklog(tmp_path / "shaper.log").drops and sh.stats()["up"]["dropped_packets"] > 0
