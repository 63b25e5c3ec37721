"""Leases on local nodes: atomic take/renew/release, expiry on the node's clock, skew, scheduled waits."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hilbed.orchestrator.config import load_testbed
from hilbed.orchestrator.lab import lease as L
from hilbed.orchestrator.lab.transport import LocalTransport

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def state(tmp_path, monkeypatch):
    monkeypatch.setenv("HILBED_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


@pytest.fixture
def tb(state):
    return load_testbed(REPO / "testbed.yaml")


class SkewedTransport(LocalTransport):
    """A local node whose clock reads ``offset_s`` off: a fake ``date`` first on PATH for its commands."""

    def __init__(self, node: str, bindir: Path, offset_s: int):
        super().__init__(node)
        bindir.mkdir(parents=True, exist_ok=True)
        real = "/bin/date" if Path("/bin/date").exists() else "/usr/bin/date"
        fake = bindir / "date"
        fake.write_text(f'#!/bin/sh\nexec {real} -d "@$(( $({real} +%s) + ({offset_s}) ))" "$@"\n')
        fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
        self.bindir = bindir

    def run(self, cmd, timeout=60, check=False):
        return super().run(f"PATH={self.bindir}:$PATH; export PATH; {cmd}", timeout=timeout, check=check)


def _trs(tb):
    return {n: LocalTransport(n) for n in tb.nodes}


def owner(user: str, run: str) -> dict:
    return {"user": user, "run_id": run}


def test_take_refuses_while_held_and_names_holder_and_expiry(tb):
    trs = _trs(tb)
    a = L.LeaseSet(tb, trs, owner("alice@lap1", "r1"), ttl_s=60, nodes=list(tb.nodes))
    facts = a.acquire()
    assert set(facts) == set(tb.nodes) and all(f["status"] == "taken" for f in facts.values())
    assert all(55 <= f["expires_in_s"] <= 60 for f in facts.values())
    doc = json.loads(Path(L.lease_path(tb, "edge")).read_text())
    assert doc["owner"]["user"] == "alice@lap1" and doc["expires_node_s"] - doc["taken_node_s"] == 60
    b = L.LeaseSet(tb, trs, owner("bob@lap2", "r2"), ttl_s=60, nodes=list(tb.nodes))
    with pytest.raises(L.LeaseHeld) as ei:
        b.acquire()
    msg = str(ei.value)
    assert "alice@lap1 (run r1)" in msg and "expires in" in msg and "UTC" in msg
    assert 55 <= ei.value.expires_in_s <= 60
    assert not b.held  # all or nothing
    assert a.release() == {n: "released" for n in tb.nodes}
    assert not Path(L.lease_path(tb, "edge")).exists()
    assert b.acquire() and b.release()


def test_runs_lease_ssh_nodes_and_real_radios_not_emulated_local_nodes(tb, tmp_path):
    assert L.leased_nodes(tb) == []  # the embedded testbed: local processes, emulated radios
    p = tmp_path / "tb.yaml"
    p.write_text("name: mixed\nnodes:\n"
                 "  edge: {roles: [edge], transport: {kind: ssh, host: 10.0.0.2, workdir: /srv/h}}\n"
                 "  client-1: {roles: [client], radio: {protocol: wuart, port: /dev/ttyACM0}}\n"
                 "  client-2: {roles: [client], radio: {protocol: spinel, port: emulated}}\n")
    mixed = load_testbed(p)
    assert L.leased_nodes(mixed) == ["client-1", "edge"]
    assert L.LeaseSet(mixed, {}, owner("a@b", "r")).nodes == ["client-1", "edge"]
    assert L.lease_path(mixed, "edge") == "/srv/h/lease.json"
    assert L.lease_path(mixed, "client-1").endswith("leases/mixed/client-1.json")


def test_all_or_nothing_gives_back_what_it_took(tb):
    trs = _trs(tb)
    other = L.NodeLease("jammer", L.lease_path(tb, "jammer"), trs["jammer"])
    assert other.take(owner("carol@x", "rc"), 60)[0] == "taken"
    b = L.LeaseSet(tb, trs, owner("bob@lap2", "r2"), ttl_s=60, nodes=list(tb.nodes))
    with pytest.raises(L.LeaseHeld, match="jammer is leased by carol@x"):
        b.acquire()
    # client-1 and edge come before jammer in the fixed order: taken, then given back
    assert L.read_leases(tb, trs)["edge"]["status"] == "free"
    assert L.read_leases(tb, trs)["jammer"]["status"] == "held"


def test_release_only_by_owner_unless_forced(tb):
    trs = _trs(tb)
    nl = L.NodeLease("edge", L.lease_path(tb, "edge"), trs["edge"])
    nl.take(owner("alice@l", "r1"), 60)
    assert nl.release(owner("bob@l", "r9"))[0] == "not-ours"
    assert L.read_leases(tb, trs, ["edge"])["edge"]["status"] == "held"
    assert nl.release(owner("bob@l", "r9"), force=True)[0] == "released"
    assert nl.release(owner("bob@l", "r9"))[0] == "free"


@pytest.mark.slow  # waits out real lease lifetimes
def test_renewal_pushes_expiry_and_a_forced_release_is_noticed_not_undone(tb):
    trs = _trs(tb)
    lost = []
    a = L.LeaseSet(tb, trs, owner("alice@l", "r1"), ttl_s=3, nodes=["edge"], on_lost=lambda n, w: lost.append(n))
    first = a.acquire()["edge"]["expires_node_s"]
    a.start_renewing()
    time.sleep(2.3)
    cur = L.read_leases(tb, trs, ["edge"])["edge"]
    assert a.renewals >= 1 and cur["expires_node_s"] > first and cur["taken_node_s"] == first - 3
    L.NodeLease("edge", L.lease_path(tb, "edge"), trs["edge"]).release(None, force=True)
    time.sleep(1.3)
    assert lost == ["edge"] and "gone" in a.lost["edge"]
    assert L.read_leases(tb, trs, ["edge"])["edge"]["status"] == "free"  # not re-created by the renewer
    a.release()


@pytest.mark.slow  # waits out real lease lifetimes
def test_expired_lease_is_replaced_and_own_lease_resumed(tb):
    trs = _trs(tb)
    nl = L.NodeLease("edge", L.lease_path(tb, "edge"), trs["edge"])
    nl.take(owner("alice@l", "r1"), 3)
    with pytest.raises(L.LeaseHeld):
        nl.take(owner("bob@l", "r2"), 60)
    assert nl.take(owner("alice@l", "r1"), 60)[0] == "renewed"  # same user and run: a resumed run
    nl.take(owner("alice@l", "r1"), 3)
    time.sleep(4.1)
    status, ob = nl.take(owner("bob@l", "r2"), 60)
    assert status == "taken" and ob.lease["owner"]["user"] == "bob@l"


@pytest.mark.slow  # waits out real lease lifetimes
def test_manual_lease_of_the_same_user_is_borrowed_by_runs(tb):
    trs = _trs(tb)
    me = L.default_owner()
    L.NodeLease("edge", L.lease_path(tb, "edge"), trs["edge"]).take(me, 600)
    run = L.LeaseSet(tb, trs, {**me, "run_id": "run-1"}, ttl_s=60, nodes=list(tb.nodes))
    facts = run.acquire()
    assert facts["edge"]["status"] == "borrowed" and "edge" not in run.held
    run.release()
    assert L.read_leases(tb, trs, ["edge"])["edge"]["owner"]["run_id"] == "manual"  # untouched
    with pytest.raises(L.LeaseHeld):  # another user is refused
        L.LeaseSet(tb, trs, owner("mallory@x", "r"), ttl_s=60, nodes=list(tb.nodes)).acquire()
    # the manual lease runs out mid-run: the run's renewer takes the node over, nobody else slips in
    nl = L.NodeLease("edge", L.lease_path(tb, "edge"), trs["edge"])
    nl.release(me)
    nl.take(me, 3)
    run = L.LeaseSet(tb, trs, {**me, "run_id": "run-2"}, ttl_s=3, nodes=["edge"])
    assert run.acquire()["edge"]["status"] == "borrowed"
    time.sleep(3.2)
    run.renew_once()
    assert "edge" in run.held and run.facts["edge"]["status"] == "taken"
    assert L.read_leases(tb, trs, ["edge"])["edge"]["owner"]["run_id"] == "run-2"
    run.release()


@pytest.mark.slow  # waits out real lease lifetimes
@pytest.mark.parametrize("node_offset_s", [-86400 * 400, 7200, 0])
def test_expiry_on_the_node_clock_whatever_the_controllers_clocks(tb, tmp_path, monkeypatch, node_offset_s):
    """Controller A is an hour ahead, B a day behind, the node far off: none of it moves the expiry."""
    tr = SkewedTransport("edge", tmp_path / "bin", node_offset_s)
    path = L.lease_path(tb, "edge")
    real = time.time
    monkeypatch.setattr(L.time, "time", lambda: real() + 3600)  # controller A
    a = L.NodeLease("edge", path, tr)
    a.take(owner("alice@a", "r1"), 4)
    doc = json.loads(Path(path).read_text())
    assert abs(doc["taken_node_s"] - (real() + node_offset_s)) < 5  # stamped by the node's (fake) clock
    monkeypatch.setattr(L.time, "time", lambda: real() - 86400)  # controller B
    b = L.NodeLease("edge", path, tr)
    with pytest.raises(L.LeaseHeld) as ei:
        b.take(owner("bob@b", "r2"), 4)
    assert 2 <= ei.value.expires_in_s <= 4
    time.sleep(4.2)
    assert b.take(owner("bob@b", "r2"), 4)[0] == "taken"


@pytest.mark.slow  # waits out real lease lifetimes
def test_race_between_controller_processes(tb, state):
    """Six processes take the same node's lease at once: exactly one wins; the others name it."""
    code = ("import sys, json; from hilbed.orchestrator.config import load_testbed; "
            "from hilbed.orchestrator.lab import lease as L; from hilbed.orchestrator.lab.transport import "
            "LocalTransport; tb = load_testbed(sys.argv[1]); n = L.NodeLease('edge', L.lease_path(tb, 'edge'), "
            "LocalTransport('edge'));\n"
            "try:\n print('WON', n.take({'user': sys.argv[2], 'run_id': 'r'}, 60)[0])\n"
            "except L.LeaseHeld as e:\n print('LOST', e.holder)")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for _ in range(2):
        procs = [subprocess.Popen([sys.executable, "-c", code, str(REPO / "testbed.yaml"), f"u{i}@h"],
                                  stdout=subprocess.PIPE, text=True, env=env) for i in range(6)]
        outs = [p.communicate(timeout=60)[0].split() for p in procs]
        winners = [o for o in outs if o[0] == "WON"]
        assert len(winners) == 1, outs
        won_by = [f"u{i}@h" for i, o in enumerate(outs) if o[0] == "WON"][0]
        assert all(o[1] == won_by for o in outs if o[0] == "LOST"), outs
        assert json.loads(Path(L.lease_path(tb, "edge")).read_text())["owner"]["user"] == won_by
        L.NodeLease("edge", L.lease_path(tb, "edge"), LocalTransport("edge")).release(None, force=True)


def test_a_torn_lease_file_is_replaced(tb):
    p = Path(L.lease_path(tb, "edge"))
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text('{"owner": {"user": "x')
    nl = L.NodeLease("edge", str(p), LocalTransport("edge"))
    assert nl.take(owner("alice@l", "r1"), 60)[0] == "taken"
    assert json.loads(p.read_text())["owner"]["user"] == "alice@l"


# ------------------------------------------------------- scheduled runs wait for a free lab ---

class _Ran(Exception):
    """Stands in for the run: the schedule reached it (recorded as run-failed, with the wait)."""


def _schedule(state, wait_s):
    from hilbed.orchestrator.cli import scheduled as sch
    s = sch.Schedule(name="nightly", scenario="x.yaml", testbed=str(REPO / "testbed.yaml"), baseline="b",
                     baseline_source="b", backend="cron", on_calendar="", cron="", python=sys.executable,
                     workdir=str(REPO), state_dir=str(state / "sched"), created_at="", lab_wait_s=wait_s)
    sch.save_schedule(s)
    return sch


def test_scheduled_run_waits_for_the_lab_and_records_it(tb, state, monkeypatch):
    monkeypatch.setenv("HILBED_LAB_POLL_S", "0.2")
    sch = _schedule(state, 30)
    other = L.LeaseSet(tb, _trs(tb), owner("alice@lap1", "r1"), ttl_s=60, nodes=["edge"])
    other.acquire()
    started = []

    def execute(s, runs):
        started.append(time.monotonic())
        raise _Ran("reached the run")

    looks = []

    def probe(s):
        """The real look at the leases; the holder gives the lab back after the third look."""
        looks.append(time.monotonic())
        if len(looks) == 4:
            other.release()
        return sch.lab_holders(s)

    rc, entry = sch.run_scheduled("nightly", str(state / "sched"), execute=execute, probe=probe)
    assert len(looks) == 4 and started and started[0] > looks[3]  # not before the lease was given back
    w = entry["lab_wait"]
    assert w["waited"] and w["waited_s"] >= 0.6 and not w["gave_up"]
    assert w["held_by"][0]["node"] == "edge" and w["held_by"][0]["holder"] == "alice@lap1 (run r1)"
    hist = sch.history("nightly", str(state / "sched"))
    assert hist[-1]["lab_wait"]["waited_s"] == w["waited_s"] and hist[-1]["verdict"] == "run-failed"


def test_scheduled_run_gives_up_on_a_busy_lab(tb, state, monkeypatch):
    monkeypatch.setenv("HILBED_LAB_POLL_S", "0.2")
    sch = _schedule(state, 1.0)
    L.LeaseSet(tb, _trs(tb), owner("alice@lap1", "r1"), ttl_s=60, nodes=["jammer"]).acquire()
    rc, entry = sch.run_scheduled("nightly", str(state / "sched"),
                                  execute=lambda s, r: pytest.fail("must not run on a leased lab"))
    assert rc == 1 and entry["verdict"] == "lab-busy" and entry["lab_wait"]["gave_up"]
    assert "jammer by alice@lap1 (run r1)" in entry["error"] and entry["lab_wait"]["waited_s"] >= 1.0


def test_scheduled_run_retries_when_the_runner_meets_a_lease(tb, state, monkeypatch):
    """The lab looked free but was taken before the run's own lease: wait and try again."""
    monkeypatch.setenv("HILBED_LAB_POLL_S", "0.1")
    sch = _schedule(state, 30)
    calls = []

    def execute(s, runs):
        calls.append(1)
        if len(calls) == 1:
            raise L.LeaseHeld("edge", {"owner": owner("bob@x", "r7"), "expires_node_s": 100}, 90)
        raise _Ran("second try")

    rc, entry = sch.run_scheduled("nightly", str(state / "sched"), execute=execute, probe=lambda s: [])
    assert len(calls) == 2 and entry["lab_wait"]["waited"] and entry["verdict"] == "run-failed"
    assert entry["lab_wait"]["held_by"] == [{"node": "edge", "holder": "bob@x (run r7)", "expires_in_s": 10}]


def test_old_schedule_files_load_with_the_default_wait(state):
    from hilbed.orchestrator.cli import scheduled as sch
    _schedule(state, 5)
    p = state / "sched" / "nightly" / "schedule.json"
    d = json.loads(p.read_text())
    del d["lab_wait_s"]
    p.write_text(json.dumps(d))
    assert sch.load_schedule("nightly", str(state / "sched")).lab_wait_s == sch.DEFAULT_LAB_WAIT_S


@pytest.mark.slow  # waits out real lease lifetimes
def test_cli_take_list_release(state):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HILBED_STATE_DIR": str(state)}

    def cli(*a):
        return subprocess.run([sys.executable, "-m", "hilbed.orchestrator.cli", "lease", *a], capture_output=True,
                              text=True, env=env, cwd=REPO, timeout=120)

    r = cli("take", "-n", "edge", "--ttl", "300", "--run-id", "dbg")
    assert r.returncode == 0 and "edge: taken" in r.stdout
    r = cli("list", "--json")
    rows = json.loads(r.stdout)  # stdout is only the JSON
    assert rows["edge"]["status"] == "held" and rows["edge"]["owner"]["run_id"] == "dbg"
    assert 290 <= rows["edge"]["expires_in_s"] <= 300 and rows["jammer"]["status"] == "free"
    r = cli("take", "--run-id", "other")  # all nodes: edge is held -> nothing kept
    assert r.returncode == 1 and "run dbg" in r.stderr and "gave back: client-1" in r.stderr
    assert json.loads(cli("list", "--json").stdout)["client-1"]["status"] == "free"
    r = cli("release", "-n", "edge")  # run id manual: not the holder
    assert r.returncode == 1 and "left alone" in r.stderr
    assert cli("release", "-n", "edge", "--run-id", "dbg").returncode == 0
    assert json.loads(cli("list", "--json").stdout)["edge"]["status"] == "free"
    assert cli("list", "-n", "nope").returncode == 2


def test_a_lock_left_by_a_controller_killed_mid_swap_is_broken(tb):
    p = Path(L.lease_path(tb, "edge"))
    lock = Path(str(p) + ".lock")
    lock.mkdir(parents=True)
    old = time.time() - 3 * L.STALE_LOCK_S
    os.utime(lock, (old, old))
    t0 = time.monotonic()
    assert L.NodeLease("edge", str(p), LocalTransport("edge")).take(owner("alice@l", "r1"), 60)[0] == "taken"
    assert time.monotonic() - t0 < 15 and not lock.exists()
