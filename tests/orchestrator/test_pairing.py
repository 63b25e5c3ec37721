"""A scenario is checked against its testbed before anything starts: conditions the testbed cannot apply are errors."""

from __future__ import annotations

import pytest

from hilbed.orchestrator.cli.main import main
from hilbed.orchestrator.config import load_scenario, load_testbed
from hilbed.orchestrator.pairing import check_pair
from hilbed.orchestrator.yamlsrc import ConfigError

LOCAL = """\
name: bench
nodes:
  edge-1: {roles: [edge]}
  client-1: {roles: [client]}
JAMMER
"""
SSH = """\
name: lab
nodes:
  edge-1: {roles: [edge], address: 10.0.0.1, transport: {kind: ssh, host: 10.0.0.1, user: pi}}
  client-1: {roles: [client], address: 10.0.0.2, transport: {kind: ssh, host: 10.0.0.2, user: pi}}
  jam-1: {roles: [jammer], address: 10.0.0.3, transport: {kind: ssh, host: 10.0.0.3, user: pi}}
"""


def _scenario(tmp_path, link: str, jamming: str = "none"):
    p = tmp_path / "s.yaml"
    p.write_text(f"""\
name: pair
stream: {{period_ms: 100}}
codecs: [{{codec: jpeg}}]
conditions:
  - name: quiet
    link: {{kind: direct}}
  - name: probe
    link: {link}
    jamming: {jamming}
""")
    return load_scenario(p)


def _testbed(tmp_path, text: str):
    p = tmp_path / "tb.yaml"
    p.write_text(text)
    return load_testbed(p)


@pytest.mark.parametrize("link,jamming,testbed,message", [
    ("{kind: trace, rate_kbps: 250}", "heavy", LOCAL.replace("JAMMER", ""), "has no node with role 'jammer'"),
    ("{kind: direct}", "heavy", LOCAL.replace("JAMMER", "  jam-1: {roles: [jammer]}"), "where the jammer's traffic does not reach it"),
    ("{kind: radio}", "none", LOCAL.replace("JAMMER", ""), "a radio link needs a radio on client-1, edge-1"),
    ("{kind: tc, rate_kbps: 250}", "none", LOCAL.replace("JAMMER", ""), "needs the network interface"),
    ("{kind: radio}", "none", SSH.replace("user: pi}}", "user: pi}, radio: {protocol: spinel, port: emulated}}"),
     "emulated radios run on this machine, but client-1, edge-1 run elsewhere"),
])
def test_conditions_the_testbed_cannot_apply_are_errors_with_a_line(tmp_path, link, jamming, testbed, message):
    sc = _scenario(tmp_path, link, jamming)
    tb = _testbed(tmp_path, testbed)
    with pytest.raises(ConfigError) as ei:
        check_pair(tb, sc, "tb.yaml")
    line = ei.value.one_line()
    assert message in line and "fix:" in line
    assert line.startswith(f"{tmp_path / 's.yaml'}:9: conditions[1].") or line.startswith(f"{tmp_path / 's.yaml'}:8: ")


def test_an_applicable_pair_passes(tmp_path, repo):
    check_pair(load_testbed(repo / "testbed.yaml"), load_scenario(repo / "scenarios" / "jamming.yaml"))
    sc = _scenario(tmp_path, "{kind: trace, rate_kbps: 250}", "heavy")
    check_pair(_testbed(tmp_path, LOCAL.replace("JAMMER", "  jam-1: {roles: [jammer]}")), sc)
    check_pair(_testbed(tmp_path, SSH), sc)  # remote clients and jammer: the controller relays the load


def test_run_refuses_before_creating_anything(tmp_path, capsys):
    _scenario(tmp_path, "{kind: trace, rate_kbps: 250}", "heavy")
    (tmp_path / "tb.yaml").write_text(LOCAL.replace("JAMMER", ""))
    rc = main(["run", str(tmp_path / "s.yaml"), "--testbed", str(tmp_path / "tb.yaml"),
               "--results-dir", str(tmp_path / "runs"), "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "has no node with role 'jammer'" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()
    assert main(["validate", str(tmp_path / "s.yaml"), "--testbed", str(tmp_path / "tb.yaml")]) == 2
    assert main(["validate", str(tmp_path / "s.yaml")]) == 0  # on its own the scenario is fine


def test_jamming_a_direct_link_between_lab_nodes_is_physical_and_allowed(tmp_path):
    sc = _scenario(tmp_path, "{kind: direct}", "heavy")
    check_pair(_testbed(tmp_path, SSH), sc)  # the jammer's traffic crosses the lab's real network
