"""Leases over real SSH (namespace lab): controllers racing, a SIGKILLed holder, skewed clocks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hilbed.orchestrator.config import load_testbed
from hilbed.orchestrator.lab import lease as L
from hilbed.orchestrator.lab.ssh import SSHTransport

pytest_plugins = ["tests.netns_fixtures"]
pytestmark = [pytest.mark.slow, pytest.mark.netns]

REPO = Path(__file__).resolve().parents[2]


def _cli(*args, env=None):
    return subprocess.Popen([sys.executable, "-m", "hilbed.orchestrator.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


@pytest.fixture
def tb(lab_testbed):
    tb = load_testbed(lab_testbed)
    yield tb
    trs = {n: SSHTransport(n, c.transport) for n, c in tb.nodes.items()}  # leave the lab free for other tests
    try:
        for n in tb.nodes:
            L.NodeLease(n, L.lease_path(tb, n), trs[n]).release(None, force=True)
    finally:
        for t in trs.values():
            t.close()


def _ssh(tb):
    return {n: SSHTransport(n, c.transport) for n, c in tb.nodes.items()}


def test_lease_lives_on_the_node(tb, netns_lab):
    trs = _ssh(tb)
    try:
        a = L.LeaseSet(tb, trs, {"user": "alice@lap1", "run_id": "r1"}, ttl_s=30)
        facts = a.acquire()
        assert {f["status"] for f in facts.values()} == {"taken"}
        edge = netns_lab.hosts["edge"]
        assert facts["edge"]["path"] == f"{edge.workdir}/lease.json"
        # what the node itself holds (read inside the node's namespace, through its own shell)
        doc = json.loads(trs["edge"].run(f"cat {edge.workdir}/lease.json").stdout)
        assert doc["owner"]["user"] == "alice@lap1" and doc["expires_node_s"] - doc["renewed_node_s"] == 30
        assert trs["edge"].run(f"ls -a {edge.workdir}").stdout.split().count("lease.json.lock") == 0
        assert a.release() == {n: "released" for n in tb.nodes}
    finally:
        for t in trs.values():
            t.close()


def test_two_controller_processes_race_for_the_lab(tb, lab_testbed):
    """Two `hilbed lease take` at once, three rounds: exactly one holds the whole lab, the other names it."""
    for rnd in range(3):
        procs = {rid: _cli("lease", "take", "-t", str(lab_testbed), "--run-id", rid, "--ttl", "60")
                 for rid in (f"A{rnd}", f"B{rnd}")}
        res = {rid: (p.wait(120), *p.communicate()) for rid, p in procs.items()}
        winners = [rid for rid, r in res.items() if r[0] == 0]
        assert len(winners) == 1, res
        loser = next(rid for rid in res if rid not in winners)
        assert res[loser][0] == 1 and f"(run {winners[0]})" in res[loser][2] and "expires in" in res[loser][2]
        p = _cli("lease", "list", "-t", str(lab_testbed), "--json")
        out, err = p.communicate(timeout=120)
        rows = json.loads(out)
        assert {r["owner"]["run_id"] for r in rows.values()} == {winners[0]}  # all or nothing
        assert all(r["status"] == "held" for r in rows.values())
        r = _cli("lease", "release", "-t", str(lab_testbed), "--run-id", loser)
        assert r.wait(120) == 1 and "left alone" in r.communicate()[1]  # not the loser's to release
        r = _cli("lease", "release", "-t", str(lab_testbed), "--run-id", winners[0])
        assert r.wait(120) == 0


def test_many_connections_race_for_one_node(tb):
    """Eight controllers (own SSH connections, threads) take one node's lease at the same instant."""
    trs = [SSHTransport("client-1", tb.nodes["client-1"].transport) for _ in range(8)]
    try:
        for t in trs:
            t.run("true")  # connected: the race is in the swap, not in connecting
        path = L.lease_path(tb, "client-1")
        for _ in range(2):
            go = threading.Barrier(len(trs))
            out: dict[int, str] = {}

            def one(i, t):
                go.wait()
                try:
                    out[i] = L.NodeLease("client-1", path, t).take({"user": f"u{i}@h", "run_id": "r"}, 60)[0]
                except L.LeaseHeld as exc:
                    out[i] = exc.holder

            ths = [threading.Thread(target=one, args=(i, t)) for i, t in enumerate(trs)]
            [th.start() for th in ths]
            [th.join(120) for th in ths]
            won = [i for i, v in out.items() if v == "taken"]
            assert len(won) == 1 and len(out) == 8, out
            assert all(v == f"u{won[0]}@h (run r)" for i, v in out.items() if i != won[0])
            L.NodeLease("client-1", path, trs[0]).release(None, force=True)
    finally:
        for t in trs:
            t.close()


HOLDER = """
import sys, time
from hilbed.orchestrator.config import load_testbed
from hilbed.orchestrator.lab.lease import LeaseSet
from hilbed.orchestrator.lab.connect import make_transport
tb = load_testbed(sys.argv[1])
ls = LeaseSet(tb, lambda n: make_transport(n, tb.nodes[n]), {"user": "holder@lap", "run_id": "doomed"}, ttl_s=4)
ls.acquire()
ls.start_renewing()
print("HELD", flush=True)
time.sleep(600)
"""


def test_a_sigkilled_holder_s_lease_expires(tb, lab_testbed):
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(lab_testbed)], stdout=subprocess.PIPE, text=True,
                         cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    trs = _ssh(tb)
    try:
        assert p.stdout.readline().strip() == "HELD"
        first = L.read_leases(tb, trs)["edge"]["expires_node_s"]
        time.sleep(3.0)
        assert L.read_leases(tb, trs)["edge"]["expires_node_s"] > first  # renewed while alive (every ttl/3)
        mine = L.LeaseSet(tb, trs, {"user": "next@lap", "run_id": "r2"}, ttl_s=30)
        with pytest.raises(L.LeaseHeld, match="holder@lap \\(run doomed\\)"):
            mine.acquire()
        p.send_signal(signal.SIGKILL)
        p.wait(10)
        killed = time.monotonic()
        while True:
            try:
                facts = mine.acquire()
                break
            except L.LeaseHeld as exc:
                assert exc.expires_in_s <= 4
                assert time.monotonic() - killed < 8, "the dead holder's lease must expire within its ttl"
                time.sleep(0.3)
        waited = time.monotonic() - killed
        assert 0 < waited < 6 and {f["status"] for f in facts.values()} == {"taken"}
        mine.release()
    finally:
        if p.poll() is None:
            p.kill()
        for t in trs.values():
            t.close()


class SkewedSSH(SSHTransport):
    """An SSH node whose clock reads ``offset_s`` off (a fake ``date`` first on PATH for our commands)."""

    def __init__(self, node, cfg, bindir: str, offset_s: int):
        super().__init__(node, cfg)
        self.bindir, self.offset_s = bindir, offset_s

    def run(self, cmd, timeout=60, check=False):
        return super().run(f"PATH={self.bindir}:$PATH; export PATH; {cmd}", timeout=timeout, check=check)


def test_clock_skew_between_controllers_and_node(tb, netns_lab, monkeypatch):
    """The node's clock is two days ahead; controller A's an hour ahead, B's a day behind: the lease still
    lasts its ttl on the node's clock."""
    edge = netns_lab.hosts["edge"]
    bindir = f"{edge.workdir}/fakebin"
    plain = SSHTransport("edge", tb.nodes["edge"].transport)
    plain.run(f"mkdir -p {bindir} && printf '%s\\n' '#!/bin/sh' 'exec /bin/date -d \"@$(( $(/bin/date +%s) + "
              f"172800 ))\" \"$@\"' > {bindir}/date && chmod +x {bindir}/date", check=True)
    a_tr = SkewedSSH("edge", tb.nodes["edge"].transport, bindir, 172800)
    b_tr = SkewedSSH("edge", tb.nodes["edge"].transport, bindir, 172800)
    real = time.time
    try:
        path = L.lease_path(tb, "edge")
        monkeypatch.setattr(L.time, "time", lambda: real() + 3600)
        L.NodeLease("edge", path, a_tr).take({"user": "a@lap1", "run_id": "ra"}, 4)
        doc = json.loads(plain.run(f"cat {path}").stdout)
        assert abs(doc["taken_node_s"] - (real() + 172800)) < 10  # the node's clock, not a controller's
        monkeypatch.setattr(L.time, "time", lambda: real() - 86400)
        b = L.NodeLease("edge", path, b_tr)
        with pytest.raises(L.LeaseHeld) as ei:
            b.take({"user": "b@lap2", "run_id": "rb"}, 4)
        assert 2 <= ei.value.expires_in_s <= 4
        time.sleep(4.3)
        assert b.take({"user": "b@lap2", "run_id": "rb"}, 4)[0] == "taken"
    finally:
        plain.run(f"rm -rf {bindir}")
        for t in (plain, a_tr, b_tr):
            t.close()
