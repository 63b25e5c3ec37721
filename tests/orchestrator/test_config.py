"""Config errors are one line: file:line: field: problem (allowed: ...), exit 2."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from hilbed.orchestrator.cli.main import main
from hilbed.orchestrator.config import load_scenario, load_testbed
from hilbed.orchestrator.yamlsrc import ConfigError

GOOD_SCENARIO = """\
name: t
stream:
  period_ms: 100
codecs:
  - {codec: jpeg, params: {quality: 50}}
conditions:
  - name: fast
    link: {kind: trace, rate_kbps: 250}
"""


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def err(fn, path) -> str:
    with pytest.raises(ConfigError) as ei:
        fn(path)
    return ei.value.one_line()


def test_good_files_load(tmp_path, repo):
    sc = load_scenario(write(tmp_path, "s.yaml", GOOD_SCENARIO))
    assert sc.codecs[0].params == {"quality": 50, "optimize": True, "subsampling": "4:2:0", "headers": "full"}
    assert sc.deadline_ms(sc.conditions[0]) == 100
    tb = load_testbed(repo / "testbed.yaml")
    assert tb.edge == "edge" and tb.clients == ["client-1"]


@pytest.mark.parametrize("text, expected", [
    # unknown key at the top level, listing allowed keys
    (GOOD_SCENARIO + "repetition: 3\n",
     "s.yaml:9: repetition: unknown field (allowed: name, description, workload, stream, codecs, conditions, "
     "repetitions, clients, edge, jamming_levels, thresholds)"),
    # wrong type
    (GOOD_SCENARIO.replace("period_ms: 100", "period_ms: fast"),
     "s.yaml:3: stream.period_ms: Input should be a valid number, unable to parse string as a number, got 'fast'"),
    # value out of range
    (GOOD_SCENARIO.replace("period_ms: 100", "period_ms: -5"),
     "s.yaml:3: stream.period_ms: Input should be greater than 0, got -5"),
    # bad literal names allowed values
    (GOOD_SCENARIO.replace("kind: trace", "kind: wifi"),
     "s.yaml:8: conditions[0].link.kind: unknown link kind 'wifi' (allowed: direct, trace, tc, radio, shared-uplink)"),
    # unknown codec
    (GOOD_SCENARIO.replace("codec: jpeg", "codec: jpeg2000"),
     "s.yaml:5: codecs[0].codec: unknown codec 'jpeg2000' (allowed: "),
    # codec parameter out of range
    (GOOD_SCENARIO.replace("quality: 50", "quality: 150"),
     "s.yaml:5: codecs[0].params.quality: out of range: 150 (allowed: int 1..100)"),
    # codec parameter unknown
    (GOOD_SCENARIO.replace("quality: 50", "qualty: 50"),
     "s.yaml:5: codecs[0].params.qualty: unknown parameter (allowed: quality, optimize, subsampling, headers)"),
    # missing required field
    (GOOD_SCENARIO.replace("stream:\n  period_ms: 100\n", ""),
     "s.yaml:1: stream: required field is missing"),
    # a trace link without rate or trace
    (GOOD_SCENARIO.replace("rate_kbps: 250", "delay_ms: 5"),
     "s.yaml:8: conditions[0].link: a 'trace' link needs rate_kbps or trace"),
    # YAML syntax error
    (GOOD_SCENARIO.replace("  - name: fast", "  - name: [fast"),
     "s.yaml:8: <document>: YAML syntax error: "),
    # duplicate key
    (GOOD_SCENARIO + "name: again\n", "s.yaml:9: name: duplicate key"),
    # unknown jamming level
    (GOOD_SCENARIO.replace("    link:", "    jamming: extreme\n    link:"),
     "s.yaml:8: conditions[0].jamming: unknown jamming level 'extreme' (allowed: heavy, light, none)"),
])
def test_scenario_errors_are_one_line(tmp_path, text, expected):
    p = write(tmp_path, "s.yaml", text)
    msg = err(load_scenario, p)
    assert "\n" not in msg
    assert msg.startswith(str(p.parent) + "/" + expected.split(":")[0])
    assert msg[len(str(p.parent)) + 1:].startswith(expected), msg


def test_testbed_errors(tmp_path):
    p = write(tmp_path, "tb.yaml", """\
        name: x
        nodes:
          a:
            roles: [client]
          b:
            roles: [edge]
            transport: {kind: telnet}
        """)
    assert err(load_testbed, p).endswith("tb.yaml:7: nodes.b.transport: invalid or missing 'kind' (allowed: local, ssh)")
    p = write(tmp_path, "tb2.yaml", """\
        name: x
        nodes:
          a:
            roles: [client]
          b:
            roles: [edge]
            transport: {kind: ssh, host: pi.lab, prot: 22}
        """)
    assert err(load_testbed, p).endswith(
        "tb2.yaml:7: nodes.b.transport.prot: unknown field (allowed: kind, host, user, port, key_file, proxy_jump, "
        "known_hosts, accept_new_host_keys, keepalive_s, python, workdir, sudo, env)")
    p = write(tmp_path, "tb3.yaml", "name: x\nnodes:\n  a:\n    roles: [client]\n")
    assert "exactly one node must have role 'edge'" in err(load_testbed, p)


def test_cli_validate_exit_2_and_no_traceback(tmp_path, repo):
    bad = write(tmp_path, "bad.yaml", GOOD_SCENARIO.replace("quality: 50", "quality: 0"))
    p = subprocess.run([sys.executable, "-m", "hilbed.orchestrator.cli", "validate", str(bad)], capture_output=True,
                       text=True, cwd=repo)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    assert p.stderr.strip() == f"{bad}:5: codecs[0].params.quality: out of range: 0 (allowed: int 1..100)"
    assert main(["validate", str(repo / "testbed.yaml"), str(repo / "scenarios" / "quickstart.yaml")]) == 0


def test_cli_run_with_bad_scenario_exits_2(tmp_path, repo, capsys):
    bad = write(tmp_path, "bad.yaml", "name: x\nstream: {period_ms: 10}\ncodecs: []\nconditions: []\n")
    assert main(["run", str(bad), "--testbed", str(repo / "testbed.yaml"), "--results-dir", str(tmp_path)]) == 2
    out = capsys.readouterr().err.strip()
    assert out.startswith(f"{bad}:3: codecs: List should have at least 1 item")
