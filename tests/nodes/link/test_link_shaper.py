"""TraceShaper: open-loop traffic through a trace with queues, drops, delay, loss, logs."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from hilbed.nodes.link.linklog import read_linklog
from hilbed.nodes.link.schedule import ConstantRate, OpportunitySchedule
from hilbed.nodes.link.shaper import QueueSpec, TraceShaper, UdpShaperProxy


def _collect():
    got: list[tuple[float, object]] = []
    return got, (lambda p: got.append((time.monotonic(), p)))


def _wait_idle(sh: TraceShaper, timeout: float = 3.0) -> None:
    end = time.monotonic() + timeout
    while sh.pending() and time.monotonic() < end:
        time.sleep(0.01)


def test_releases_follow_the_trace_plus_delay_in_order():
    # one 100-byte opportunity every 20 ms
    s = OpportunitySchedule(list(range(20, 220, 20)), 100)
    got, deliver = _collect()
    sh = TraceShaper(s, deliver_up=deliver, delay_ms=15)
    for i in range(5):
        assert sh.send_up(i, nbytes=100)
    _wait_idle(sh)
    sh.close()
    assert [p for _, p in got] == [0, 1, 2, 3, 4]
    rel = [t - sh.epoch for t, _ in got]
    expected = [0.020 * (i + 1) + 0.015 for i in range(5)]
    for r, e in zip(rel, expected):
        assert r >= e - 1e-4  # never early
        assert r < e + 0.050  # and not absurdly late, even on a busy machine
    assert sh.stats()["up"]["packets_out"] == 5
    assert all(x >= -1e-4 for x in sh.release_errors_s)


def test_droptail_by_packets_and_bytes():
    slow = ConstantRate(8000)  # 1000 B/s: nothing leaves during the test's burst
    sh = TraceShaper(slow, queue="droptail:packets=3")
    ok = [sh.send_up(b"x" * 100) for _ in range(6)]
    # the packet in service does not count: 1 in service + 3 queued
    assert ok == [True, True, True, True, False, False]
    st = sh.stats()["up"]
    assert st["dropped_packets"] == 2 and st["dropped_bytes"] == 200
    sh.close()
    sh = TraceShaper(slow, queue=QueueSpec("droptail", bytes=250))
    ok = [sh.send_up(b"y" * 100) for _ in range(5)]
    assert ok == [True, True, True, False, False]
    sh.close()
    with pytest.raises(ValueError):
        QueueSpec.parse("droptail:frames=3")
    with pytest.raises(ValueError):
        QueueSpec("droptail")


def test_infinite_queue_never_drops_and_idle_capacity_is_lost():
    s = ConstantRate(800_000)  # 100 B/ms
    got, deliver = _collect()
    sh = TraceShaper(s, deliver_up=deliver)
    time.sleep(0.05)  # 5000 B of capacity pass unused
    t0 = sh.now()
    for _ in range(10):
        sh.send_up(b"z" * 100)
    _wait_idle(sh)
    sh.close()
    assert len(got) == 10
    # ten packets need 10 ms from their arrival; the idle 50 ms do not make them instant
    assert got[-1][0] - sh.epoch >= t0 + 0.010 - 1e-4


def test_iid_loss_is_seeded_and_about_right():
    s = ConstantRate(80_000_000)
    runs = []
    for _ in range(2):
        got, deliver = _collect()
        sh = TraceShaper(s, deliver_up=deliver, loss=0.3, seed=7)
        for i in range(400):
            sh.send_up(i, nbytes=100)
        _wait_idle(sh)
        sh.close()
        runs.append([p for _, p in got])
        assert sh.stats()["up"]["lost_packets"] == 400 - len(got)
    assert runs[0] == runs[1]
    assert 0.2 < 1 - len(runs[0]) / 400 < 0.4


def test_two_directions_have_separate_traces_and_queues():
    up = ConstantRate(80_000)     # 10 B/ms
    down = ConstantRate(800_000)  # 100 B/ms
    ups, dl_up = _collect()
    downs, dl_down = _collect()
    sh = TraceShaper(up, down, deliver_up=dl_up, deliver_down=dl_down)
    sh.send_up("u", nbytes=200)
    sh.send_down("d", nbytes=200)
    _wait_idle(sh)
    sh.close()
    t_up, t_down = ups[0][0] - sh.epoch, downs[0][0] - sh.epoch
    assert t_up == pytest.approx(0.020, abs=0.015) and t_down == pytest.approx(0.002, abs=0.015)
    assert t_down < t_up


def test_once_trace_stops_serving():
    s = OpportunitySchedule([1, 2], 100, loop=False)
    got, deliver = _collect()
    sh = TraceShaper(s, deliver_up=deliver)
    for i in range(3):  # arriving at link time 0: on a loaded machine "now" may already be past the trace's end
        sh.submit("up", i, nbytes=100, t=0.0)
    end = time.monotonic() + 5  # the two opportunities are at 1 and 2 ms; allow a loaded machine to lag
    while len(got) < 2 and time.monotonic() < end:
        time.sleep(0.01)
    time.sleep(0.05)
    sh.close()
    assert [p for _, p in got] == [0, 1]
    assert sh.stats()["up"]["never_served"] == 1


def test_link_log_is_mahimahi_format_and_matches_counters(tmp_path):
    s = OpportunitySchedule(list(range(1, 101)), 500)  # 500 B/ms for 100 ms, looping
    log = tmp_path / "up.log"
    sh = TraceShaper(s, deliver_up=lambda p: None, queue="droptail:packets=5", log_path=str(log))
    for _ in range(12):
        sh.send_up(b"q" * 400)
    _wait_idle(sh)
    time.sleep(0.02)
    sh.close()
    text = log.read_text()
    assert "# base timestamp: 0" in text and text.startswith("# mahimahi mm-link (uplink)")
    lg = read_linklog(log)
    st = sh.stats()["up"]
    assert len(lg.arrivals) == 12
    assert len(lg.departures) == st["packets_out"] == 12 - st["dropped_packets"]
    assert sum(p for _, p, _ in lg.drops) == st["dropped_packets"] > 0
    assert all(n == 500 for _, n in lg.capacity) and lg.capacity
    for t, n, delay in lg.departures:
        assert n == 400 and delay >= 0 and t - delay >= 0
    # upstream graph scripts need integer fields only
    for line in text.splitlines():
        if not line.startswith("#"):
            assert all(f.isdigit() or f in "+-#d" for f in line.split())


def test_udp_proxy_shapes_real_datagrams():
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(2)
    proxy = UdpShaperProxy({"delay_ms": 5}, ConstantRate(400_000), None, ("127.0.0.1", 0), rx.getsockname())
    th = threading.Thread(target=proxy.serve, daemon=True)
    th.start()
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    t0 = time.monotonic()
    for i in range(10):
        tx.sendto(bytes([i]) * 500, proxy.address)  # 5000 B at 50 B/ms = 100 ms
    got = [rx.recv(2048) for _ in range(10)]
    dt = time.monotonic() - t0
    proxy.stop()
    th.join(2)
    proxy.close()
    tx.close()
    rx.close()
    assert [g[0] for g in got] == list(range(10)) and all(len(g) == 500 for g in got)
    assert dt >= 0.100
