"""``hilbed check`` and the pre-run check on local nodes (no root needed): a broken node stops the run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from hilbed.orchestrator.config import load_testbed
from hilbed.orchestrator.lab.check import NodeCheck, _judge, check_testbed, render_checks

pytest_plugins = ["tests.netns_fixtures"]

MISSING = "/dev/serial/by-id/usb-Nordic_Semiconductor_nRF52840_Wireless_UART_15.4_00DEADBEEF00-if00"

TESTBED = """\
name: broken-local
nodes:
  client-1:
    roles: [client]
    transport: {{kind: local}}
    radio: {{protocol: wuart, port: {port}, baud: 230400, rtscts: true}}
  edge:
    roles: [edge]
    transport: {{kind: local}}
    radio: {{protocol: spinel, port: emulated}}
"""


@pytest.fixture
def broken_testbed(tmp_path) -> Path:
    p = tmp_path / "testbed.yaml"
    p.write_text(TESTBED.format(port=MISSING))
    return p


def test_missing_serial_device_fails_its_node_only(broken_testbed):
    checks = {c.node: c for c in check_testbed(load_testbed(broken_testbed))}
    cl, edge = checks["client-1"], checks["edge"]
    assert not cl.ok and edge.ok
    assert [k for k, _ in cl.failures] == ["serial"]
    item = cl.items["serial"]
    assert item.value == "missing" and MISSING in item.text
    assert "/dev/serial/by-id" in item.fix
    assert edge.items["serial"].status == "ok" and edge.items["serial"].value == "emulated"
    # the clock probe is the NTP-style minimum-RTT exchange over the probe agent
    assert cl.clock["samples"] >= 8 and cl.clock["uncertainty_ns"] >= 0
    assert cl.items["python"].status == "ok" and cl.items["reachable"].value == "local"

    con = Console(record=True, width=200)
    render_checks(list(checks.values()), con)
    text = con.export_text()
    assert "client-1" in text and "missing" in text and "fix: plug the board in" in text
    assert "1 of 2 node(s) not ready: client-1" in text


def test_an_openable_device_passes(tmp_path):
    import os
    import pty
    master, slave = pty.openpty()
    try:
        p = tmp_path / "tb.yaml"
        p.write_text(TESTBED.format(port=os.ttyname(slave)))
        cl = {c.node: c for c in check_testbed(load_testbed(p), clock=False)}["client-1"]
        assert cl.items["serial"].status == "ok" and cl.items["serial"].value == "opens"
        assert cl.ok
    finally:
        os.close(master)
        os.close(slave)


def test_cli_check_exit_status(broken_testbed, repo):
    r = subprocess.run([sys.executable, "-m", "hilbed.orchestrator.cli", "check", "-t", str(broken_testbed), "--no-clock"],
                       capture_output=True, text=True, timeout=120, env={**os_env(), "COLUMNS": "200"})
    assert r.returncode == 1, r.stdout + r.stderr
    assert "client-1" in r.stdout and "missing" in r.stdout
    ok = subprocess.run([sys.executable, "-m", "hilbed.orchestrator.cli", "check", "-t", str(repo / "testbed.yaml"),
                         "--nodes", "client-1,edge", "--no-clock"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "all 2 nodes ready" in ok.stdout


def os_env() -> dict:
    import os
    return dict(os.environ)


def test_reboot_since_provisioning_is_flagged():
    cfg = load_testbed_text("""\
name: t
nodes:
  e: {roles: [edge], transport: {kind: ssh, host: 192.0.2.1}}
  c: {roles: [client], transport: {kind: ssh, host: 192.0.2.2}}
""").nodes["c"]
    facts = {"python": "3.11.2", "disk_free_bytes": 50 * 2**30, "uptime_s": 120.0, "boot_time": 1_700_000_000,
             "marker": {"source_hash": "abc", "extras": ["client"], "version": "0.1.0", "wheel_sha256": "f" * 64,
                        "boot_time": 1_690_000_000}}
    nc = NodeCheck("c", ["client"], "ssh")
    _judge(nc, cfg, facts, source_hash="abc", need_radio=True, need_jammer=True)
    assert nc.ok and nc.items["uptime"].status == "warn" and "rebooted" in nc.items["uptime"].value
    nc2 = NodeCheck("c", ["client"], "ssh")
    _judge(nc2, cfg, facts, source_hash="other", need_radio=True, need_jammer=True)
    assert not nc2.ok and "hilbed provision" in nc2.items["provisioned"].fix
    old_py = dict(facts, python="3.7.3")
    nc3 = NodeCheck("c", ["client"], "ssh")
    _judge(nc3, cfg, old_py, source_hash="abc", need_radio=True, need_jammer=True)
    assert [k for k, _ in nc3.failures] == ["python"]


def load_testbed_text(text: str):
    return load_testbed("inline.yaml", text)


RADIO_SCENARIO = """\
name: radio-smoke
workload: {images_per_trial: 3}
stream: {period_ms: 100}
codecs: [{codec: jpeg, params: {quality: 50}}]
conditions: [{name: air, link: {kind: radio}}]
"""


def test_run_refuses_to_start_when_a_node_fails(broken_testbed, tmp_path):
    from hilbed.orchestrator.run.runner import RunError, Runner
    sc = tmp_path / "radio.yaml"
    sc.write_text(RADIO_SCENARIO)
    r = Runner(broken_testbed, sc, results_dir=tmp_path / "runs", quiet=True, make_report=False)
    with pytest.raises(RunError) as ei:
        r.execute()
    msg = str(ei.value)
    assert "client-1" in msg and "serial" in msg and "fix:" in msg and "nothing was started" in msg
    root = r.store.root
    assert not (root / "trials.jsonl").exists()
    logs = sorted(p.name for p in (root / "logs").iterdir())
    assert logs and all(n.endswith("-probe.log") for n in logs), logs  # no client/edge agent was started
    m = json.loads((root / "manifest.json").read_text())
    assert m["node_checks"]["client-1"]["ok"] is False and m["node_checks"]["edge"]["ok"] is True
    ev = [json.loads(x) for x in (root / "events.jsonl").read_text().splitlines()]
    assert any(e["kind"] == "preflight" and e["failed"] == ["client-1"] for e in ev)
