"""The jammer's medium file and the shaped link's capacity x (1 - load)."""

from __future__ import annotations

import json
import os
import time

import pytest

from hilbed.nodes.link import open_link
from hilbed.nodes.link.linklog import read_linklog
from hilbed.nodes.link.medium import MediumScaledSchedule, MediumWatcher, read_medium, write_medium
from hilbed.nodes.link.schedule import ConstantRate, OpportunitySchedule


def test_medium_file_round_trip_stale_and_garbage(tmp_path):
    p = tmp_path / "m" / "medium.json"
    write_medium(p, 0.4, 8.0, level="light")
    doc = json.loads(p.read_text())
    assert doc["load"] == 0.4 and doc["mbps"] == 8.0 and doc["level"] == "light" and doc["t"] > 0
    assert read_medium(p)["load"] == 0.4
    assert not [f for f in os.listdir(p.parent) if f != "medium.json"]  # no temp files left behind
    write_medium(p, 3.0, 60.0)
    assert read_medium(p)["load"] == 1.0  # clipped
    write_medium(p, 0.5, 10.0, t=time.time() - 60)
    assert read_medium(p) == {"load": 0.0, "mbps": 0.0, "t": pytest.approx(time.time() - 60, abs=2),
                              "state": "stale"}
    p.write_text("{not json")
    assert read_medium(p)["load"] == 0.0
    assert read_medium(tmp_path / "missing.json")["state"] == "missing"


def test_scaled_schedule_keeps_the_past_and_scales_the_future():
    factor = [1.0]
    now = [0.0]
    s = MediumScaledSchedule(ConstantRate(8000), lambda: factor[0], lambda: now[0])  # 1000 B/s
    assert s.time_of_bytes(500) == pytest.approx(0.5)
    now[0], factor[0] = 1.0, 0.5
    assert s.bytes_until(1.0) == pytest.approx(1000)      # the past is unchanged
    assert s.bytes_until(2.0) == pytest.approx(1500)      # half capacity from 1 s on
    assert s.time_of_bytes(1500) == pytest.approx(2.0)
    assert s.time_of_bytes(800) == pytest.approx(0.8)
    now[0], factor[0] = 2.0, 0.0                          # channel fully busy: nothing gets through
    assert s.time_of_bytes(1600) == float("inf")
    now[0], factor[0] = 3.0, 1.0
    assert s.time_of_bytes(1600) == pytest.approx(3.1)
    o = MediumScaledSchedule(OpportunitySchedule([10, 20], 100), lambda: 0.5, lambda: 0.0)
    assert o.bytes_until(0.0201) == pytest.approx(100)


def test_watcher_caches_for_its_interval(tmp_path):
    p = tmp_path / "medium.json"
    write_medium(p, 0.25, 5.0)
    w = MediumWatcher(p, interval_s=10)
    assert w.factor() == pytest.approx(0.75)
    write_medium(p, 0.9, 18.0)
    assert w.factor() == pytest.approx(0.75)  # not re-read yet
    w2 = MediumWatcher(p, interval_s=0.0)
    assert w2.load() == pytest.approx(0.9)


def _send_time(tmp_path, edge_sink, load: float | None, name: str) -> tuple[float, object]:
    sink = edge_sink()
    spec = {"kind": "trace", "rate_kbps": 80, "packet_bytes": 100, "log_path": str(tmp_path / f"{name}.log")}
    if load is not None:
        mf = tmp_path / f"{name}-medium.json"
        write_medium(mf, load, load * 20)
        spec["medium_file"] = str(mf)
    link = open_link(spec, "127.0.0.1", sink.port)
    t0 = time.monotonic()
    rep = link.send_message(1, {"codec": "x"}, [b"a" * 883], time.time_ns() + 5_000_000_000)
    dt = time.monotonic() - t0
    stats = link.stats()
    link.close()
    assert rep.bytes_delivered == 883 and not rep.aborted
    return dt, stats


def test_shaped_link_loses_capacity_to_the_medium(tmp_path, edge_sink):
    # 883 B in 9 frames (17 B header each) + BEGIN (24 B) + END (12 B) = 1072 B on the wire at 10 B/ms
    # -> ~107 ms; at load 0.5 -> ~214 ms
    t_free, st_free = _send_time(tmp_path, edge_sink, None, "free")
    t_half, st_half = _send_time(tmp_path, edge_sink, 0.5, "half")
    assert t_free == pytest.approx(0.100, abs=0.03)
    assert t_half == pytest.approx(0.200, abs=0.04)
    assert st_half["medium_load_last"] == pytest.approx(0.5)
    lg = read_linklog(tmp_path / "half.log")
    assert len(lg.departures) == 11 and sum(n for _, n, _ in lg.departures) == st_half["wire_bytes"]
    # the log's capacity is the scaled capacity: ~5 B/ms while the message was sent
    cap = sum(n for t, n in lg.capacity if t < 150)
    assert cap == pytest.approx(750, rel=0.1)
