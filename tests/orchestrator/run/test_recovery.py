"""Recovery against a fake run context: which agents restart, in which order, what is recorded, when it stops."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from hilbed.orchestrator.errors import RunStopped
from hilbed.orchestrator.lab.transport import AgentFailed
from hilbed.orchestrator.run.recovery import Recovery


class FakeHandle:
    def __init__(self, node, role):
        self.node, self.role = node, role
        self.dead = threading.Event()
        self.death_reason = ""


class FakeTransport:
    def __init__(self, fail_reconnects=0):
        self.fail_reconnects = fail_reconnects
        self.reconnects = 0
        self.last_error = None

    def reconnect(self):
        self.reconnects += 1
        if self.reconnects <= self.fail_reconnects:
            self.last_error = "connection refused"
            raise OSError("connection refused")
        return self


class FakeCtx:
    """The part of RunContext recovery uses, recording every call."""

    def __init__(self, nodes: dict[str, list[str]], fail_reconnects: dict[str, int] | None = None):
        self.handles = {(n, r): FakeHandle(n, r) for n, roles in nodes.items() for r in roles}
        self.transports = {n: FakeTransport((fail_reconnects or {}).get(n, 0)) for n in nodes}
        self.events: list[tuple[str, dict]] = []
        self.calls: list[tuple] = []
        self.store = SimpleNamespace(root=Path("/runs/x"))
        self.console = SimpleNamespace(print=lambda *a, **k: None)

    def event(self, kind, **fields):
        self.events.append((str(getattr(kind, "value", kind)), fields))

    def transport(self, node):
        return self.transports[node]

    def start_agent(self, node, role):
        self.calls.append(("start", node, role))
        h = FakeHandle(node, role)
        self.handles[(node, role)] = h
        return h

    def wait_ready(self, handles, timeout=60):
        self.calls.append(("ready", tuple((h.node, h.role) for h in handles)))

    def prepare(self, node, role):
        self.calls.append(("prepare", node, role))

    def remeasure_clock(self, node):
        self.calls.append(("clock", node))

    def kinds(self):
        return [k for k, _ in self.events]


TRIAL = SimpleNamespace(id="t1")
COND = SimpleNamespace(name="c")


def _recovery(ctx, **kw):
    reapplied = []
    rec = Recovery(ctx, lambda cond, trial, restarted: reapplied.append((cond, trial, sorted(restarted))),
                   backoff_s=(0.001, 0.002), **kw)
    return rec, reapplied


def test_a_node_drop_restarts_its_agents_prepares_them_and_reruns_the_trial():
    ctx = FakeCtx({"gpu": ["edge"], "pi": ["client"]})
    rec, reapplied = _recovery(ctx)
    attempts = []

    def trial():
        attempts.append(1)
        if len(attempts) == 1:  # the edge's channel dies during the first attempt
            ctx.handles[("gpu", "edge")].dead.set()
            raise AgentFailed("gpu/edge: agent exited")

    rec.run_trial(trial, TRIAL, COND)
    assert len(attempts) == 2
    assert ("start", "gpu", "edge") in ctx.calls and ("start", "pi", "client") not in ctx.calls
    assert ctx.calls.index(("start", "gpu", "edge")) < ctx.calls.index(("prepare", "gpu", "edge")) \
        < ctx.calls.index(("clock", "gpu"))
    assert reapplied == [(COND, TRIAL, [("gpu", "edge")])]
    assert ctx.kinds() == ["incident", "trial_interrupted", "recovered", "trial_recovered"]
    assert ctx.events[0][1]["nodes"] == ["gpu"] and rec.incidents == 1


def test_the_edge_is_prepared_before_the_clients_of_the_same_node():
    ctx = FakeCtx({"box": ["client", "edge"]})
    rec, _ = _recovery(ctx)
    rec.recover(["box"], COND, TRIAL)
    prepares = [c for c in ctx.calls if c[0] == "prepare"]
    assert prepares == [("prepare", "box", "edge"), ("prepare", "box", "client")]


def test_an_agent_error_without_a_dead_node_is_not_an_incident():
    ctx = FakeCtx({"pi": ["client"]})
    rec, reapplied = _recovery(ctx)

    def trial():
        raise AgentFailed("pi/client: codec failed")

    with pytest.raises(AgentFailed, match="codec failed"):
        rec.run_trial(trial, TRIAL, COND)
    assert ctx.events == [] and reapplied == []


def test_too_many_incidents_stop_the_run_for_resume():
    ctx = FakeCtx({"pi": ["client"]})
    rec, _ = _recovery(ctx, max_incidents=2)

    def trial():
        ctx.handles[("pi", "client")].dead.set()

    with pytest.raises(RunStopped, match="hilbed resume /runs/x"):
        rec.run_trial(trial, TRIAL, COND)
    assert rec.incidents == 3 and ctx.kinds().count("incident") == 3


def test_a_node_that_stays_away_stops_cleanly_after_the_attempts():
    ctx = FakeCtx({"pi": ["client"]}, fail_reconnects={"pi": 99})
    rec, reapplied = _recovery(ctx, reconnect_attempts=3)
    with pytest.raises(RunStopped, match="pi still unreachable after 3 attempts"):
        rec.recover(["pi"], COND, TRIAL)
    assert ctx.transports["pi"].reconnects == 3
    assert ctx.kinds().count("reconnect_retry") == 2 and ctx.kinds()[-1] == "reconnect_failed"
    assert reapplied == []


def test_a_node_back_after_two_failed_reconnects_is_restored():
    ctx = FakeCtx({"pi": ["client"]}, fail_reconnects={"pi": 2})
    rec, reapplied = _recovery(ctx, reconnect_attempts=4)
    rec.recover(["pi"], COND, TRIAL)
    assert ctx.transports["pi"].reconnects == 3 and len(reapplied) == 1 and ctx.kinds()[-1] == "recovered"
