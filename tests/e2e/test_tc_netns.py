"""Kernel shaping for real: two network namespaces joined by a veth pair.

The shaper runs its commands through ``ip netns exec`` as the controller
runs them through a node's transport; traffic is a real TCP stream between
the namespaces. Needs root, ``ip netns`` and ``tc``; skips otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import uuid

import pytest

from hilbed.nodes.link.tc import TcShaper

pytestmark = pytest.mark.netns


def _have_netns() -> str | None:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "needs root"
    for prog in ("ip", "tc"):
        if shutil.which(prog) is None:
            return f"needs the {prog} program"
    probe = f"hbprobe{uuid.uuid4().hex[:6]}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return f"ip netns unavailable: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


_why = _have_netns()
if _why:
    pytest.skip(_why, allow_module_level=True)


@pytest.fixture()
def pair():
    tag = uuid.uuid4().hex[:6]
    a, b = f"hbA{tag}", f"hbB{tag}"
    va, vb = f"hva{tag}", f"hvb{tag}"
    cmds = [["ip", "netns", "add", a], ["ip", "netns", "add", b],
            ["ip", "link", "add", va, "netns", a, "type", "veth", "peer", "name", vb, "netns", b],
            ["ip", "-n", a, "addr", "add", "10.253.7.1/24", "dev", va],
            ["ip", "-n", b, "addr", "add", "10.253.7.2/24", "dev", vb],
            ["ip", "-n", a, "link", "set", va, "up"], ["ip", "-n", b, "link", "set", vb, "up"],
            ["ip", "-n", a, "link", "set", "lo", "up"], ["ip", "-n", b, "link", "set", "lo", "up"]]
    try:
        for c in cmds:
            subprocess.run(c, check=True, capture_output=True)
        yield a, b, va
    finally:
        subprocess.run(["ip", "netns", "del", a], capture_output=True)
        subprocess.run(["ip", "netns", "del", b], capture_output=True)


def _runner(ns: str):
    def run(cmd: str):
        return subprocess.run(["ip", "netns", "exec", ns, "sh", "-c", cmd], capture_output=True, text=True,
                              timeout=30)
    return run


SINK = textwrap.dedent("""
    import socket, sys, time
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("10.253.7.2", 5301)); s.listen(1); print("ready", flush=True)
    c, _ = s.accept(); n = 0; t0 = None
    while True:
        d = c.recv(65536)
        if not d: break
        if t0 is None: t0 = time.monotonic()
        n += len(d); t1 = time.monotonic()
    print(n, t1 - t0, flush=True)
""")
SOURCE = textwrap.dedent("""
    import socket, time
    c = socket.create_connection(("10.253.7.2", 5301), timeout=5)
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        c.send(b"x" * 4096)
    c.close()
""")


def _throughput_bps(a: str, b: str) -> float:
    sink = subprocess.Popen(["ip", "netns", "exec", b, sys.executable, "-c", SINK], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert sink.stdout.readline().strip() == "ready"
        subprocess.run(["ip", "netns", "exec", a, sys.executable, "-c", SOURCE], check=True, timeout=30)
        n, dt = sink.communicate(timeout=30)[0].split()
    finally:
        if sink.poll() is None:
            sink.kill()
    return int(n) * 8 / float(dt)


def test_htb_is_applied_updated_and_removed(pair):
    a, b, dev = pair
    run = _runner(a)
    sh = TcShaper(run, dev, match_dst="10.253.7.2", delay_ms=5, node="nsA")
    facts = sh.apply(2_000_000)
    show = run(f"tc qdisc show dev {dev}; tc class show dev {dev}").stdout
    assert "qdisc htb 1: root" in show and "rate 2Mbit" in show
    # the kernel tells whether netem exists; the facts must agree and never claim a delay it did not apply
    netem_ok = run(f"tc qdisc add dev {dev} parent 1:20 handle 20: netem delay 1ms").returncode == 0
    assert facts["netem"] is netem_ok
    assert facts["delay_applied_ms"] == (5 if netem_ok else 0)
    bps = _throughput_bps(a, b)
    assert 1.2e6 < bps < 2.6e6, bps
    sh.set_rate(500_000)
    assert "rate 500Kbit" in run(f"tc class show dev {dev}").stdout
    bps = _throughput_bps(a, b)
    assert 0.25e6 < bps < 0.75e6, bps
    assert sh.remove()["removed"] is True
    assert "htb" not in run(f"tc qdisc show dev {dev}").stdout
    assert _throughput_bps(a, b) > 5e6


def test_tbf_is_removed_even_when_the_condition_fails(pair):
    a, _b, dev = pair
    run = _runner(a)
    with pytest.raises(RuntimeError):
        with TcShaper(run, dev, discipline="tbf") as sh:
            sh.apply(1_000_000)
            assert "qdisc tbf 1: root" in run(f"tc qdisc show dev {dev}").stdout
            raise RuntimeError("trial failed")
    assert "tbf" not in run(f"tc qdisc show dev {dev}").stdout


class _FakeClient:
    def __init__(self):
        self.calls = []
        self.dead = __import__("threading").Event()

    def call(self, op, timeout=None, **args):
        self.calls.append((op, args))
        return {"kind": args.get("spec", {}).get("kind")} if op == "open_link" else {}


class _NsTransport:
    def __init__(self, ns):
        self.run_ns = _runner(ns)

    def run(self, cmd, timeout=60, check=False):
        return self.run_ns(cmd)


def test_runner_hook_applies_tc_on_the_client_interface_and_always_removes_it(pair, tmp_path):
    """The tc link kind's controller side with a real run context and a namespace as the client node."""
    from types import SimpleNamespace

    from hilbed.nodes.link.registry import link_kind
    from hilbed.orchestrator.config import load_scenario, load_testbed
    from hilbed.orchestrator.run.context import RunContext
    from hilbed.orchestrator.run.store import RunStore

    a, _b, dev = pair
    (tmp_path / "tb.yaml").write_text(f"""\
name: ns
nodes:
  pi: {{roles: [client], interface: {dev}, address: 10.253.7.1}}
  gpu: {{roles: [edge], address: 10.253.7.2}}
""")
    (tmp_path / "trace.csv").write_text("t_ms,kbps\n0,800\n300,300\n5000,300\n")
    (tmp_path / "s.yaml").write_text("""\
name: tcs
stream: {period_ms: 100}
codecs: [{codec: jpeg}]
conditions: [{name: shaped, link: {kind: tc, trace: trace.csv, delay_ms: 10}}]
""")
    tb, sc = load_testbed(tmp_path / "tb.yaml"), load_scenario(tmp_path / "s.yaml")
    client = _FakeClient()
    events = []
    store = RunStore.create(tmp_path / "runs", "tcs")
    store.append_event = lambda kind, **kw: events.append((kind, kw))
    ctx = RunContext(tb, sc, store, {}, SimpleNamespace(print=lambda *x, **k: None))
    ctx.handles[("pi", "client")] = client
    ctx.transports.update(pi=_NsTransport(a), gpu=_NsTransport(a))
    ctx.edge_port = 5000
    tc = link_kind("tc")
    cond = sc.conditions[0]
    tc.apply(ctx, cond)
    show = _runner(a)(f"tc qdisc show dev {dev}; tc class show dev {dev}; tc filter show dev {dev}").stdout
    assert "qdisc htb 1: root" in show and "rate 800Kbit" in show and "match 0afd0702/ffffffff" in show
    assert client.calls[0][0] == "open_link" and client.calls[0][1]["spec"]["kind"] == "tc"
    import time
    deadline = time.monotonic() + 3  # the trace drops to 300 kbit/s at 300 ms: the rate follows it
    while "rate 300Kbit" not in _runner(a)(f"tc class show dev {dev}").stdout:
        assert time.monotonic() < deadline, "tc rate did not follow the trace"
        time.sleep(0.1)
    applied = [kw for k, kw in events if k == "tc_applied"]
    assert applied and applied[0]["facts"]["netem"] in (True, False)
    tc.clear(ctx)
    assert "htb" not in _runner(a)(f"tc qdisc show dev {dev}").stdout
    assert [k for k, _ in events if k == "tc_removed"] == ["tc_removed"]
    # a missing interface is a clear error, not a traceback from tc
    tb.nodes["pi"].interface = None
    with pytest.raises(Exception, match="needs `interface:` on node pi"):
        tc.apply(ctx, cond)
