"""Node health history: checks recorded per node, N failures in a row mark it bad, a pass clears it;
``hilbed check --json`` and ``--watch``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hilbed.orchestrator.config import load_testbed
from hilbed.orchestrator.lab import health
from hilbed.orchestrator.lab.check import check_testbed

REPO = Path(__file__).resolve().parents[3]

TESTBED = """\
name: healthlab
nodes:
  client-1:
    roles: [client]
    transport: {{kind: local, python: {py}}}
  edge:
    roles: [edge]
    transport: {{kind: local}}
"""


@pytest.fixture
def lab(tmp_path, monkeypatch):
    """A local testbed whose client's interpreter breaks while the file ``broken`` exists."""
    monkeypatch.setenv("HILBED_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("HILBED_BAD_AFTER", raising=False)
    py = tmp_path / "py.sh"
    flag = tmp_path / "broken"
    py.write_text(f"#!/bin/sh\n[ -e {flag} ] && {{ echo 'interpreter is broken' >&2; exit 3; }}\n"
                  f"exec {sys.executable} \"$@\"\n")
    py.chmod(0o755)
    tb = tmp_path / "testbed.yaml"
    tb.write_text(TESTBED.format(py=py))
    return tb, flag


def _check(tb_path):
    tb = load_testbed(tb_path)
    checks = check_testbed(tb, clock=False)
    health.record(checks, tb)
    return tb, checks


def test_three_failures_mark_bad_a_pass_clears(lab):
    tb_path, flag = lab
    flag.touch()
    for i in range(1, 4):
        tb, checks = _check(tb_path)
        assert not {c.node: c for c in checks}["client-1"].ok
        st = health.status(tb)
        assert st["client-1"]["streak"] == i and st["client-1"]["bad"] == (i >= 3)
        assert st["edge"] == {**st["edge"], "bad": False, "streak": 0}
    bad = health.bad_nodes(tb)
    assert list(bad) == ["client-1"] and "python" in bad["client-1"] and "interpreter is broken" in bad["client-1"]
    with pytest.raises(health.NodeMarkedBad) as ei:
        health.refuse_bad(tb)
    msg = str(ei.value)
    assert "client-1: python:" in msg and "hilbed check -n client-1" in msg and "edge" not in msg.split(":")[0]
    health.refuse_bad(tb, nodes=["edge"])  # a run not using the bad node goes on
    assert health.bad_nodes(tb, n=4) == {}
    flag.unlink()
    tb, checks = _check(tb_path)
    assert all(c.ok for c in checks)
    assert health.bad_nodes(tb) == {}
    health.refuse_bad(tb)
    lines = health.history_path().read_text().splitlines()
    assert len(lines) == 8 and all(json.loads(x)["testbed"] == "healthlab" for x in lines)


def test_history_is_per_physical_node_and_survives_a_torn_line(lab, tmp_path):
    tb_path, flag = lab
    flag.touch()
    tb, _ = _check(tb_path)
    with open(health.history_path(), "a") as f:
        f.write('{"t": 1, "key": "local:heal')  # a writer killed mid-line
    tb, _ = _check(tb_path)
    assert health.status(tb)["client-1"]["streak"] == 2
    other = load_testbed(REPO / "testbed.yaml")  # another testbed's client-1 is another node
    assert health.status(other)["client-1"]["checks"] == 0


def test_compaction_keeps_the_latest_per_node(lab, monkeypatch):
    tb_path, flag = lab
    monkeypatch.setattr(health, "COMPACT_BYTES", 2000)
    monkeypatch.setattr(health, "KEEP_PER_NODE", 3)
    flag.touch()
    tb = load_testbed(tb_path)
    checks = check_testbed(tb, clock=False)
    for _ in range(10):
        health.record(checks, tb)
    h = health.load(tb)
    assert 3 <= len(h["client-1"]) < 10 and health.status(tb)["client-1"]["bad"]


def _cli(args, env):
    return subprocess.run([sys.executable, "-m", "hilbed.orchestrator.cli", *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=240)


def test_cli_check_json_and_watch_prints_changes(lab, tmp_path):
    tb_path, flag = lab
    env = {**os.environ, "PYTHONPATH": str(REPO), "HILBED_STATE_DIR": str(tmp_path / "state"), "HILBED_BAD_AFTER": "2"}
    flag.touch()
    for i in range(2):
        r = _cli(["check", "-t", str(tb_path), "--no-clock", "--json"], env)
        assert r.returncode == 1
        d = json.loads(r.stdout)  # stdout is only the JSON
        assert d["ok"] is False and d["nodes"]["client-1"]["items"]["python"]["status"] == "fail"
        assert d["nodes"]["client-1"]["health"]["streak"] == i + 1
    assert d["nodes"]["client-1"]["health"]["bad"] is True and d["nodes"]["edge"]["health"]["bad"] is False
    # --watch: the node gets fixed between rounds; the change and the clearing are printed
    p = subprocess.Popen([sys.executable, "-m", "hilbed.orchestrator.cli", "check", "-t", str(tb_path), "--no-clock",
                          "--watch", "0.5", "--count", "3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env={**env, "COLUMNS": "200"}, cwd=REPO)
    first = p.stdout.readline()
    while "check: healthlab" not in first:
        first = p.stdout.readline()
    flag.unlink()
    out, err = p.communicate(timeout=240)
    assert p.returncode == 0, err
    assert "still marked bad" in out or "marked bad" in out
    assert "client-1: python: fail -> ok" in out
    assert "client-1: cleared" in out and "no change" in out
    assert health.bad_nodes(load_testbed(tb_path)) == {}  # the fixture points this process at the same state dir
    r = _cli(["check", "-t", str(tb_path), "--no-clock", "--json"], env)
    assert r.returncode == 0 and json.loads(r.stdout)["nodes"]["client-1"]["health"]["checks"] == 6


def test_cli_provision_json_is_only_json(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HILBED_STATE_DIR": str(tmp_path / "state")}
    r = _cli(["provision", "-t", str(REPO / "testbed.yaml"), "--json"], env)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["ok"] is True and set(d["nodes"]) == {"client-1", "edge", "jammer"}
    assert all(n["state"] == "local" and n["ok"] for n in d["nodes"].values()) and len(d["wheel"]["sha256"]) == 64
