"""The jammer agent: real iperf3, measured load, medium file, and no way to leave it running."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hilbed.nodes.agent import AgentError
from hilbed.nodes.jammer import JamEngine, Level, parse_iperf3_json
from hilbed.nodes.link.medium import read_medium
from hilbed.orchestrator.lab.transport import REPO_ROOT, AgentHandle, LocalTransport

needs_iperf3 = pytest.mark.skipif(shutil.which("iperf3") is None, reason="needs the iperf3 program")


# ------------------------------------------------------------------ units ---

def test_levels_map_to_iperf3_parameters():
    heavy = Level.resolve("heavy", None)
    assert heavy.active and heavy.bitrate_mbps == 14 and heavy.streams == 2
    args = heavy.iperf_args()
    assert args[:2] == ["-u", "-b"] and args[2] == "7000000"  # iperf3 -b is per stream
    assert args[args.index("-P") + 1] == "2" and args[-2:] == ["-t", "1"]
    pulse = Level.resolve("pulse", {"bitrate_mbps": 8, "packet_bytes": 500, "streams": 1, "on_ms": 250,
                                    "off_ms": 750})
    assert pulse.duty == 0.25
    a = pulse.iperf_args()
    assert a[a.index("-l") + 1] == "500" and a[a.index("-n") + 1] == str(8_000_000 // 8 // 4)
    assert not Level.resolve("none", None).active
    custom = Level.resolve("light", {"bitrate_mbps": 1.5})  # a scenario may override a built-in level
    assert custom.bitrate_mbps == 1.5 and custom.packet_bytes == 1400
    with pytest.raises(AgentError, match="unknown jamming level"):
        Level.resolve("medium", None)
    with pytest.raises(AgentError):
        Level.resolve("x", {"bitrate_mbps": 1, "off_ms": 100})


def test_iperf3_json_is_read_from_the_receiver_side():
    doc = {"start": {}, "intervals": [{"sum": {"start": 0, "end": 1.0, "bytes": 500000}}],
           "end": {"sum_sent": {"bytes": 501200, "seconds": 1.0},
                   "sum_received": {"bytes": 480000, "seconds": 1.0, "packets": 358, "lost_packets": 15}}}
    r = parse_iperf3_json(json.dumps(doc))
    assert r["bytes"] == 480000 and r["sent_bytes"] == 501200 and r["lost_packets"] == 15
    with pytest.raises(AgentError, match="unable to connect"):
        parse_iperf3_json(json.dumps({"error": "unable to connect to server"}))
    with pytest.raises(AgentError, match="no JSON"):
        parse_iperf3_json("iperf3: error")


# --------------------------------------------------------------- helpers ---

def _iperf3_procs(port: int) -> list[int]:
    """Live (non-zombie) iperf3 processes using ``port``."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
            state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and cmd and cmd[0].endswith(b"iperf3") and str(port).encode() in cmd:
            out.append(int(d.name))
    return out


def _wait_gone(port: int, timeout: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if not _iperf3_procs(port):
            return time.monotonic() - t0
        time.sleep(0.05)
    raise AssertionError(f"iperf3 still running on port {port} after {timeout} s: {_iperf3_procs(port)}")


def _start(tmp_path, events=None) -> AgentHandle:
    proc = LocalTransport("jammer").start_agent("hilbed.nodes.jammer", [], tmp_path / "jammer.log")
    h = AgentHandle("jammer", "jammer", proc, (lambda n, r, m: events.append(m)) if events is not None else None)
    h.wait_ready(30)
    return h


@needs_iperf3
def test_the_servers_own_output_never_stalls_it():
    """The server prints a report per test; unread, that output used to fill its pipe after ~50 two-stream
    segments, and the next segment hung until the engine gave up (a ~7.5 s hole in the jamming, every ~57 s)."""
    engine = JamEngine(agent=None)
    try:
        engine._ensure_server()
        for i in range(150):  # ~2 KiB of server output each: well past a 64 KiB pipe
            p = subprocess.run([engine.binary, "-c", "127.0.0.1", "-p", str(engine.port), "-u", "-b", "1000000",
                                "-l", "1400", "-P", "2", "-n", "1400", "--connect-timeout", "2000"],
                               capture_output=True, timeout=10)
            assert p.returncode == 0, f"test {i}: {p.stdout[-300:]!r}"
        assert engine.server.poll() is None and any("receiver" in line for line in engine.server_tail)
    finally:
        engine.close()


class _Events:
    def __init__(self):
        self.loads: list[dict] = []

    def event(self, kind, **fields):
        self.loads.append(fields)


@needs_iperf3
def test_measurement_windows_tile_the_levels_time_when_the_loop_stalls():
    """Time the engine spends between segments (here a 0.3 s stall each time it publishes) belongs to a window,
    as time without traffic: windows follow each other without gaps, and the stall lowers the measured load.
    Before, each such sliver was covered by no window, and an image sent then had no jamming claim."""
    agent = _Events()
    engine = JamEngine(agent=agent)
    engine._publish = lambda *a, **k: time.sleep(0.3)
    try:
        engine.configure(Level.resolve("light", None))
        deadline = time.monotonic() + 20
        while len(agent.loads) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        engine.close()
    w = agent.loads
    assert len(w) >= 3
    for a, b in zip(w, w[1:]):
        assert b["t_start"] == pytest.approx(a["t_end"], abs=1e-6)
    # ~1 s of 4 Mbit/s traffic per ~1.3 s of wall time: the stall shows as a lower load, not as a hole
    assert all(x["mbps"] < 3.7 for x in w[1:])


# ------------------------------------------------------------ end to end ---

@needs_iperf3
@pytest.mark.slow
def test_set_level_measures_publishes_and_stops(tmp_path):
    events: list[dict] = []
    medium = tmp_path / "medium.json"
    h = _start(tmp_path, events)
    try:
        r = h.call("set_level", timeout=30, level="light", medium_file=str(medium))
        assert r["level"] == "light" and 3.0 < r["mbps"] < 4.5 and r["load"] == pytest.approx(r["mbps"] / 20)
        assert read_medium(medium)["load"] == pytest.approx(r["load"], abs=0.05)
        port = h.call("status")["port"]
        assert _iperf3_procs(port)
        time.sleep(1.2)
        loads = [e for e in events if e.get("event") == "jammer_load"]
        assert len(loads) >= 2 and all(e["level"] == "light" and e["t_end"] > e["t_start"] for e in loads)
        r = h.call("set_level", timeout=30, level="none")
        assert r["load"] == 0.0 and read_medium(medium)["load"] == 0.0
        _wait_gone(port, 1.0)
    finally:
        h.close()


@needs_iperf3
@pytest.mark.slow
def test_watchdog_stops_traffic_without_heartbeats(tmp_path):
    events: list[dict] = []
    h = _start(tmp_path, events)
    try:
        h.call("set_level", timeout=30, level="light", watchdog_s=1.0)
        port = h.call("status")["port"]
        for _ in range(3):  # heartbeats keep it going
            time.sleep(0.6)
            h.call("heartbeat")
        assert _iperf3_procs(port)
        t0 = time.monotonic()
        _wait_gone(port, 3.0)
        assert time.monotonic() - t0 < 2.5
        st = h.call("status")
        assert st["stop_reason"] == "watchdog" and not st["active"]
        assert any(e.get("event") == "jammer_stopped" for e in events)
        with pytest.raises(Exception, match="cannot be disabled"):
            h.call("set_level", level="light", watchdog_s=0)
    finally:
        h.close()


CONTROLLER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    sys.path.insert(0, {repo!r})
    from hilbed.orchestrator.lab.transport import AgentHandle, LocalTransport
    proc = LocalTransport("jammer").start_agent("hilbed.nodes.jammer", [], Path({log!r}))
    h = AgentHandle("jammer", "jammer", proc)
    h.wait_ready(30)
    r = h.call("set_level", timeout=30, level="heavy", watchdog_s=30)
    st = h.call("status")
    print(json.dumps({{"agent_pid": proc.pid, "port": st["port"], "pids": st["pids"], "mbps": r["mbps"]}}),
          flush=True)
    while True:
        time.sleep(1)
""")


@needs_iperf3
@pytest.mark.slow
def test_killing_the_controller_stops_heavy_jamming_within_2s(tmp_path):
    script = tmp_path / "controller.py"
    script.write_text(CONTROLLER.format(repo=str(REPO_ROOT), log=str(tmp_path / "jammer.log")))
    ctl = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        info = json.loads(ctl.stdout.readline())
        assert info["mbps"] > 8 and _iperf3_procs(info["port"])
        os.kill(ctl.pid, signal.SIGKILL)  # watchdog is 30 s: only the closed channel can stop it in time
        ctl.wait(5)
        _wait_gone(info["port"], 2.0)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and Path(f"/proc/{info['agent_pid']}").exists():
            time.sleep(0.05)
        assert not Path(f"/proc/{info['agent_pid']}/cmdline").exists() or \
            not Path(f"/proc/{info['agent_pid']}/cmdline").read_bytes()
    finally:
        if ctl.poll() is None:
            ctl.kill()


@needs_iperf3
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_iperf3_dies_with_the_agent(tmp_path, sig):
    h = _start(tmp_path)
    try:
        h.call("set_level", timeout=30, level="light", watchdog_s=30)
        port = h.call("status")["port"]
        assert _iperf3_procs(port)
        os.kill(h.proc.pid, sig)  # SIGKILL: no teardown runs; PR_SET_PDEATHSIG must do it
        _wait_gone(port, 2.0)
    finally:
        h.close()


@needs_iperf3
@pytest.mark.slow
def test_a_schedule_of_levels_switches_and_ends(tmp_path):
    events: list[dict] = []
    h = _start(tmp_path, events)
    try:
        r = h.call("set_schedule", steps=[{"at_s": 0, "level": "light"},
                                          {"at_s": 1.5, "level": "burst", "params": {"bitrate_mbps": 8}},
                                          {"at_s": 3.0, "level": "none"}])
        assert [s["level"] for s in r["steps"]] == ["light", "burst", "none"]
        port = None
        t0 = time.monotonic()
        while time.monotonic() - t0 < 6:
            h.call("heartbeat")
            port = port or h.call("status")["port"]
            if time.monotonic() - t0 > 4.2:
                break
            time.sleep(0.2)
        levels = [e["level"] for e in events if e.get("event") == "jammer_load"]
        assert "light" in levels and "burst" in levels
        burst = [e["mbps"] for e in events if e.get("event") == "jammer_load" and e["level"] == "burst"]
        assert max(burst) > 6
        assert port and not _iperf3_procs(port)  # the "none" step stopped the traffic
    finally:
        h.close()
