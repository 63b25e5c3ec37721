"""Agents speak JSON lines and never outlive their controller."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from hilbed.orchestrator.lab.transport import AgentFailed, AgentHandle, LocalTransport, clock_probe


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def _wait_dead(pid: int, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return not _alive(pid)


def test_request_reply_events_and_errors(tmp_path):
    tr = LocalTransport("n")
    events = []
    h = AgentHandle("n", "client", tr.start_agent("hilbed.nodes.client", [], tmp_path / "c.log"),
                    lambda node, role, ev: events.append(ev))
    try:
        h.wait_ready(30)
        assert events and events[0]["event"] == "ready"
        assert h.call("ping")["name"] == "client"
        facts = h.call("facts")
        assert facts["pid"] == h.proc.pid and facts["python"]
        with pytest.raises(AgentFailed, match="unknown op 'nope'"):
            h.call("nope")
        with pytest.raises(AgentFailed, match="run_trial before configure"):
            h.call("run_trial", trial_id="x", codec="jpeg", params={}, indices=[0], period_ms=10, deadline_ms=10)
        c = clock_probe(h)
        assert c["samples"] >= 8 and c["rtt_ns"] > 0
        # same machine, same clock: the offset is within the measured uncertainty (+ scheduling slack)
        assert abs(c["offset_ns"]) <= c["uncertainty_ns"] + 2_000_000
    finally:
        h.close()
    assert not h.proc.alive()


def test_agent_exits_when_stdin_closes(tmp_path):
    tr = LocalTransport("n")
    h = AgentHandle("n", "edge", tr.start_agent("hilbed.nodes.edge", [], tmp_path / "e.log"))
    h.wait_ready(30)
    port = h.call("listen")["port"]
    assert port > 0
    pid = h.proc.pid
    h.proc.stdin.close()
    assert _wait_dead(pid, 5), "edge agent kept running after its controller went away"
    assert "stdin closed" in (tmp_path / "e.log").read_text()


def test_agents_exit_when_controller_is_killed(tmp_path):
    """SIGKILL of the controller process (no cleanup at all) still ends its agents."""
    script = tmp_path / "ctl.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from hilbed.orchestrator.lab.transport import LocalTransport, AgentHandle
        tr = LocalTransport("n")
        hs = [AgentHandle("n", m, tr.start_agent("nodes." + m, [], Path({str(tmp_path)!r}) / (m + ".log")))
              for m in ("client", "edge")]
        for h in hs:
            h.wait_ready(30)
        print(" ".join(str(h.proc.pid) for h in hs), flush=True)
        time.sleep(600)
    """))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    ctl = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = ctl.stdout.readline()
        pids = [int(x) for x in line.split()]
        assert len(pids) == 2 and all(_alive(p) for p in pids)
        ctl.send_signal(signal.SIGKILL)
        ctl.wait(5)
        for p in pids:
            assert _wait_dead(p, 3), f"agent {p} survived its controller"
    finally:
        if ctl.poll() is None:
            ctl.kill()
