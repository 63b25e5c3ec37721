"""Provisioning real SSH hosts: cold once, then warm; content-hashed assets; repair."""

from __future__ import annotations

import json

import pytest

from hilbed.orchestrator.config import load_testbed
from hilbed.orchestrator.lab.provision import file_asset, provision

pytest_plugins = ["tests.netns_fixtures"]
pytestmark = [pytest.mark.slow, pytest.mark.netns]


def test_cold_then_warm(provisioned_lab):
    lab, tb_path, first = provisioned_lab
    assert {r.state for r in first.results.values()} == {"cold"}
    for r in first.results.values():
        assert "wheel pushed" in r.steps and "wheel installed" in r.steps, r.steps
    tb = load_testbed(tb_path)
    for name, h in lab.hosts.items():
        m = json.loads((h.workdir / "provision.json").read_text())
        assert m["wheel_sha256"] == first.wheel.sha256
        assert m["extras"] == sorted(set(tb.nodes[name].roles))  # client->[client], edge->[edge], jammer->[jammer]
        assert m["venv"] == str(h.workdir / "venv")
    again = _settled(tb)
    assert {n: r.state for n, r in again.results.items()} == {n: "warm" for n in lab.hosts}


def _settled(tb, **kw):
    """Provision until the sources hold still (a checkout being edited changes the wheel), then once more."""
    prev = provision(tb, **kw)
    for _ in range(3):
        rep = provision(tb, **kw)
        if rep.wheel.sha256 == prev.wheel.sha256:
            return rep  # same sources, same wheel: the markers match
        prev = rep
    pytest.skip("the sources kept changing while the test ran")


def test_assets_are_pushed_once_by_content(provisioned_lab, tmp_path):
    lab, tb_path, _ = provisioned_lab
    tb = load_testbed(tb_path)
    trace = tmp_path / "uplink.csv"
    trace.write_text("t_ms,kbps\n0,250\n1000,37.5\n")
    a = file_asset(trace)
    _settled(tb, nodes=["client-1"])
    rep = provision(tb, assets=[a], nodes=["client-1"])
    r = rep.results["client-1"]
    assert r.state == "cold" and "1 asset(s) pushed" in r.steps
    assert "wheel pushed" not in r.steps and "wheel installed" not in r.steps  # only what was missing
    pushed = lab.hosts["client-1"].workdir / a.remote
    assert pushed.read_text() == trace.read_text()
    assert provision(tb, assets=[a], nodes=["client-1"]).results["client-1"].state == "warm"
    trace.write_text("t_ms,kbps\n0,100\n")  # new content, new hash: pushed again
    b = file_asset(trace)
    assert b.sha256 != a.sha256
    assert provision(tb, assets=[b], nodes=["client-1"]).results["client-1"].steps[:1] == ["1 asset(s) pushed"]


def test_a_broken_venv_is_repaired(provisioned_lab):
    import shutil
    lab, tb_path, _ = provisioned_lab
    shutil.rmtree(lab.hosts["jammer"].workdir / "venv")
    rep = provision(load_testbed(tb_path))
    assert rep.results["jammer"].state == "cold" and "venv created" in rep.results["jammer"].steps
    assert rep.results["edge"].state == "warm" and rep.results["client-1"].state == "warm"
