"""Hostile and broken config files: one line with file:line, exit 2, no traceback, fast, bounded memory.

Each case is a file the issue "Hostile input and faults" found crashing,
hanging or accepted-then-crashing; `hilbed validate` must refuse it in one
line naming the file and line, within 2 s.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import tracemalloc

import pytest

from hilbed.orchestrator import config
from hilbed.orchestrator.cli.main import main
from hilbed.orchestrator.config import (
    MIN_SECRET_CHARS,
    SECRET_MARK,
    load_scenario,
    load_testbed,
    recover_config_text,
    redact,
    redact_config_text,
    redact_text,
    secret_values,
)
from hilbed.orchestrator.plan import make_plan
from hilbed.orchestrator.yamlsrc import MAX_FILE_BYTES, ConfigError

SC = """\
name: t
stream:
  period_ms: 100
codecs:
  - {codec: jpeg, params: {quality: 50}}
conditions:
  - name: fast
    link: {kind: trace, rate_kbps: 250}
"""

TB = """\
name: tb
nodes:
  c: {roles: [client]}
  e: {roles: [edge]}
"""


def _laughs() -> str:
    rows = ["lol0: &a0 [" + ", ".join(['"lol"'] * 10) + "]"]
    rows += [f"lol{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    return "\n".join(rows) + "\n" + SC


def _env(key: str) -> str:
    return TB.replace("e: {roles: [edge]}", f"e:\n    roles: [edge]\n    transport:\n      kind: ssh\n      host: h\n"
                      f"      env:\n        {key}: v\n")


#: name -> (file bytes, expected line, a piece of the message)
CASES: dict[str, tuple[bytes, int, str]] = {
    "billion_laughs": (_laughs().encode(), 5, "more than 4096 alias uses"),
    "recursive_alias": ((SC + "loop: &l [*l]\n").encode(), 9, "recursive anchor"),
    "recursive_merge": ((SC + "m: &m {<<: *m}\n").encode(), 9, "recursive anchor"),
    "flow_nesting_1000": ((SC + "deep: " + "[" * 1000 + "]" * 1000 + "\n").encode(), 9, "nested deeper than 64"),
    "block_nesting_300": ((SC + "".join(" " * i + f"k{i}:\n" for i in range(300))).encode(), 72, "nested deeper"),
    "control_char": (SC.replace("name: fast", "name: x\x01y").encode(), 7, "control character U+0001"),
    "escaped_nul": (SC.replace("name: fast", 'name: "x\\0y"').encode(), 7, "control character U+0000"),
    "lone_surrogate": (SC.replace("name: t", 'name: "\\ud800"').encode(), 1, "control character U+D800"),
    "not_utf8": (SC.encode() + b"  - name: \xff\xfe\x00bad\n", 9, "not UTF-8 text (byte 0xff"),
    # the first bad byte (0x80) comes after a \n and a lone \r: line 3, counted as YAML (and most editors) do
    "binary": (b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 4, 3, "not UTF-8 text (byte 0x80"),
    "nul_byte": (SC.encode().replace(b"period_ms: 100", b"period_ms: 1\x0000"), 3, "control character U+0000"),
    "huge_int": (SC.replace("quality: 50", "quality: " + "9" * 5000).encode(), 5, "unusable value"),
    "bad_bool_tag": (SC.replace("quality: 50", "quality: !!bool maybe").encode(), 5, "unusable value"),
    "too_large": ((SC + "#" * (MAX_FILE_BYTES + 10) + "\n").encode(), 9, "file larger than 64 KiB"),
    "dup_codec_labels": (SC.replace("  - {codec: jpeg, params: {quality: 50}}\n",
                                    "  - {codec: jpeg, params: {quality: 50}, label: a}\n"
                                    "  - {codec: jpeg, params: {quality: 50}, label: b}\n").encode(),
                         6, "same codec and parameters as codecs[0] at line 5"),
    "dup_codec_default_spelled": (SC.replace("  - {codec: jpeg, params: {quality: 50}}\n",
                                             "  - {codec: png}\n  - {codec: png, params: {compress_level: 9}}\n")
                                  .encode(), 6, "same codec and parameters as codecs[0] at line 5"),
    "dup_condition": ((SC + "  - {name: fast, link: {kind: direct}}\n").encode(), 9,
                      "duplicate condition name 'fast' (first: conditions[0] at line 7)"),
    "label_is_other_name": (SC.replace("  - {codec: jpeg, params: {quality: 50}}\n",
                                       "  - {codec: png}\n  - {codec: jpeg, label: png}\n").encode(),
                            6, "is also the name of codecs[0] at line 5"),
    "period_inf": (SC.replace("period_ms: 100", "period_ms: .inf").encode(), 3, "finite number"),
    "period_nan": (SC.replace("period_ms: 100", "period_ms: .nan").encode(), 3, "finite number"),
    "deadline_1e300": ((SC + "    deadline_ms: 1e300\n").encode(), 9, "less than or equal to 60000"),
    "rate_inf": (SC.replace("rate_kbps: 250", "rate_kbps: .inf").encode(), 8, "finite number"),
    "codec_param_inf": (SC.replace("quality: 50", "quality: .inf").encode(), 5, "finite"),
    "seed_negative": ((SC + "workload: {seed: -1}\n").encode(), 9, "greater than or equal to 0"),
    "huge_plan": ((SC + "workload: {images_per_trial: 1000000}\nrepetitions: 1000\n").encode(), 9,
                  "less than or equal to 100000"),
    "huge_plan_per_client": ((SC + "workload: {images_per_trial: 100000}\nrepetitions: 100\n").encode(), 9,
                             "= 10000000 images per client (allowed: at most 1000000"),
    "bitrate_inf": ((SC.replace("    link:", "    jamming: j\n    link:") + "jamming_levels:\n  j: {bitrate_mbps: .inf}\n")
                    .encode(), 11, "finite number"),
    "off_without_on": ((SC + "jamming_levels:\n  j: {bitrate_mbps: 1, off_ms: 5}\n").encode(), 10,
                       "off_ms needs on_ms"),
    "delay_60000": (SC.replace("rate_kbps: 250}", "rate_kbps: 250, delay_ms: 60000}").encode(), 8,
                    "less than or equal to 2000"),
    "condition_name_path": (SC.replace("name: fast", "name: ../../etc/x").encode(), 7, "invalid name"),
    "label_path": (SC.replace("quality: 50}", "quality: 50}, label: a/b").encode(), 5, "invalid name"),
    "scenario_name_path": (SC.replace("name: t", "name: ../t").encode(), 1, "invalid name"),
    "node_name_path": ((TB + "  ../../tmp/x: {roles: [jammer]}\n").encode(), 5, "invalid name '../../tmp/x'"),
    "env_key_option": (_env("'--split-string=sh -c \"touch X\"'").encode(), 10, "invalid environment variable name"),
    "env_key_space": (_env("'A B'").encode(), 10, "invalid environment variable name"),
    "user_option": (TB.replace("e: {roles: [edge]}", "e: {roles: [edge], transport: {kind: ssh, host: h, "
                                                    "user: -oProxyCommand=x}}").encode(), 4, "invalid user name"),
    "host_option": (TB.replace("e: {roles: [edge]}", "e: {roles: [edge], transport: {kind: ssh, host: -oX}}").encode(),
                    4, "invalid host"),
    "interface_injection": (TB.replace("e: {roles: [edge]}", "e: {roles: [edge], interface: 'eth0; reboot'}").encode(),
                            4, "invalid interface name"),
    "workdir_option": (TB.replace("e: {roles: [edge]}", "e: {roles: [edge], transport: {kind: ssh, host: h, "
                                                       "workdir: -rf}}").encode(), 4, "not starting with '-'"),
    "undefined_alias": ((SC + "x: *nope\n").encode(), 9, "undefined alias"),
    "merge_of_scalar": ((SC + "x: {<<: 3}\n").encode(), 9, "merge key '<<' takes a mapping"),
    "non_scalar_key": ((SC + "? [a, b]\n: c\n").encode(), 9, "mapping keys must be scalars"),
    "two_documents": ((SC + "---\nname: u\n").encode(), 9, "YAML syntax error"),
    "alias_strings_blowup": ((SC + 's: &s "' + "x" * 40000 + '"\nt: [' + "*s, " * 200 + "*s]\n").encode(), 10,
                             "characters once aliases are expanded"),
}


def _validate(tmp_path, name: str, data: bytes, capsys) -> tuple[int, str, float]:
    p = tmp_path / f"{name}.yaml"
    p.write_bytes(data)
    t0 = time.perf_counter()
    rc = main(["validate", str(p)])
    dt = time.perf_counter() - t0
    return rc, capsys.readouterr().err, dt


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_file_one_line_exit_2_fast(tmp_path, capsys, name):
    data, line, piece = CASES[name]
    rc, err, dt = _validate(tmp_path, name, data, capsys)
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{tmp_path / name}.yaml:{line}: "), lines[0]
    assert piece in lines[0], lines[0]
    assert dt < 2.0, f"{name}: {dt:.2f} s"


def test_billion_laughs_memory_is_bounded(tmp_path):
    p = tmp_path / "laughs.yaml"
    p.write_text(_laughs())
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError):
            load_scenario(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20, peak


@pytest.mark.parametrize("name", ["billion_laughs", "flow_nesting_1000", "control_char", "not_utf8"])
def test_cli_subprocess_no_traceback(tmp_path, repo, name):
    data, line, piece = CASES[name]
    p = tmp_path / f"{name}.yaml"
    p.write_bytes(data)
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "hilbed.orchestrator.cli", "validate", str(p)], capture_output=True,
                       text=True, cwd=repo, timeout=30)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert re.fullmatch(re.escape(str(p)) + f":{line}: .+\n", r.stderr), r.stderr
    assert time.perf_counter() - t0 < 5  # interpreter start included


def test_not_a_regular_file_is_refused_without_blocking(tmp_path, capsys):
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)  # opening a FIFO with no writer would block forever
    t0 = time.perf_counter()
    assert main(["validate", str(fifo), str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"{fifo}: <document>: not a regular file", f"{tmp_path}: <document>: not a regular file"]
    assert time.perf_counter() - t0 < 2


def test_every_line_escapes_newlines_from_keys(tmp_path):
    p = tmp_path / "k.yaml"
    p.write_text(TB + '  "a\\nb: forged": {roles: [jammer]}\n')
    with pytest.raises(ConfigError) as ei:
        load_testbed(p)
    msg = ei.value.one_line()
    assert "\n" not in msg and msg.startswith(f"{p}:5: ") and "control character U+000A" not in msg


# ------------------------------------------------------------ merge keys ---

LAB = """\
name: lab
x-ssh: &ssh
  kind: ssh
  user: pi
  key_file: ~/.ssh/k
  proxy_jump: hilbed@gw.example.org:22
  keepalive_s: 5
x-radio: &radio {protocol: wuart, port: /dev/ttyACM0, channel: 15}
nodes:
  c1:
    roles: [client]
    transport: {<<: *ssh, host: 192.168.50.11}
    radio: *radio
  e:
    roles: [edge]
    transport:
      <<: *ssh
      host: 192.168.50.10
      user: hilbed
  j:
    roles: [jammer]
    transport: {<<: [{kind: ssh, host: first, port: 2222}, *ssh], user: jam}
"""


def test_merge_keys_are_accepted_and_explicit_keys_win(tmp_path, capsys):
    p = tmp_path / "lab.yaml"
    p.write_text(LAB)
    assert main(["validate", str(p)]) == 0, capsys.readouterr().err
    tb = load_testbed(p)
    c1, e, j = (tb.nodes[n].transport for n in ("c1", "e", "j"))
    assert (c1.host, c1.user, c1.keepalive_s, c1.proxy_jump) == ("192.168.50.11", "pi", 5, "hilbed@gw.example.org:22")
    assert (e.host, e.user, e.key_file) == ("192.168.50.10", "hilbed", "~/.ssh/k")
    assert (j.host, j.port, j.user, j.key_file) == ("first", 2222, "jam", "~/.ssh/k")  # first merged mapping wins
    assert tb.nodes["c1"].radio is not None and tb.nodes["c1"].radio.port == "/dev/ttyACM0"


def test_error_in_merged_value_names_the_anchor_line(tmp_path):
    p = tmp_path / "lab.yaml"
    p.write_text(LAB.replace("keepalive_s: 5", "keepalive_s: .inf"))
    with pytest.raises(ConfigError) as ei:
        load_testbed(p)
    assert ei.value.one_line().startswith(f"{p}:7: nodes.c1.transport.keepalive_s: ")


def test_duplicate_keys_are_still_errors_next_to_merge(tmp_path):
    p = tmp_path / "lab.yaml"
    p.write_text(LAB.replace("      user: hilbed\n", "      user: hilbed\n      user: other\n"))
    with pytest.raises(ConfigError) as ei:
        load_testbed(p)
    assert ei.value.one_line() == f"{p}:20: nodes.e.transport.user: duplicate key"


def test_merge_bomb_is_bounded(tmp_path, capsys):
    rows = ["name: t", "x-m0: &m0 {" + ", ".join(f"k{i}: {i}" for i in range(50)) + "}"]
    rows += [f"x-m{i}: &m{i} {{<<: [" + ", ".join([f"*m{i - 1}"] * 10) + f"], z{i}: 1}}" for i in range(1, 9)]
    rc, err, dt = _validate(tmp_path, "mbomb", ("\n".join(rows) + "\n").encode(), capsys)
    assert rc == 2 and "once aliases are expanded" in err and dt < 2, (err, dt)


# ------------------------------------------------------- other hardening ---

def test_timestamps_stay_strings(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(SC.replace("name: t\n", "name: t\ndescription: 2024-01-01\n"))
    assert load_scenario(p).description == "2024-01-01"


def test_plan_backstop_names_the_file(tmp_path):
    """Scenarios built in code skip load_scenario's checks; make_plan still refuses duplicates and giant plans."""
    sc = config.ScenarioCfg.model_validate({"name": "x", "stream": {"period_ms": 10}, "conditions": [
        {"name": "c", "link": {"kind": "direct"}}], "codecs": [{"codec": "png", "label": "a"},
                                                                {"codec": "png", "label": "b"}]})
    tb = config.TestbedCfg.model_validate({"name": "t", "nodes": {"c": {"roles": ["client"]}, "e": {"roles": ["edge"]}}})
    with pytest.raises(ConfigError, match=r"codecs\[1\]: makes the same trials as a under c"):
        make_plan(sc, tb)
    p = tmp_path / "big.yaml"
    p.write_text(SC + "workload: {images_per_trial: 100000}\nrepetitions: 10\n")
    big = load_scenario(p)
    many = config.TestbedCfg.model_validate({"name": "t", "nodes": {"e": {"roles": ["edge"]},
                                                              **{f"c{i}": {"roles": ["client"]} for i in range(3)}}})
    with pytest.raises(ConfigError) as ei:
        make_plan(big, many)
    assert ei.value.one_line().startswith(f"{p}:9: workload.images_per_trial: the plan has 10 trials x 100000 images")


# ---------------------------------------------------------------- secrets ---

SECRET_TB = """\
name: lab
x-env: &env {HF_TOKEN: "hf_abcdefSECRET", SHORT: "1"}
nodes:
  c1:
    roles: [client]
    transport: {kind: ssh, host: a, env: *env}   # the token is hf_abcdefSECRET
  e:
    roles: [edge]
    transport:
      kind: ssh
      host: b
      env:
        BLOCK: |
          multi line secret
          second
        PLAIN: plainsecretvalue
"""


def test_secret_values_and_redaction(tmp_path):
    p = tmp_path / "tb.yaml"
    p.write_text(SECRET_TB)
    tb = load_testbed(p)
    secrets = secret_values(tb)
    assert secrets == {"hf_abcdefSECRET", "1", "multi line secret\nsecond\n", "plainsecretvalue"}
    # the parsed config: every env value masked, the input untouched
    dumped = tb.model_dump(mode="json")
    red = redact(dumped, secrets)
    assert red["nodes"]["c1"]["transport"]["env"] == {"HF_TOKEN": SECRET_MARK, "SHORT": SECRET_MARK}
    assert red["nodes"]["e"]["transport"]["env"] == {"BLOCK": SECRET_MARK, "PLAIN": SECRET_MARK}
    assert dumped["nodes"]["e"]["transport"]["env"]["PLAIN"] == "plainsecretvalue"
    assert redact(tb) == red
    # the raw text: values replaced in place (also behind the anchor), comments too; still a valid testbed
    text = redact_config_text(SECRET_TB, p)
    for s in ("hf_abcdefSECRET", "multi line secret", "plainsecretvalue"):
        assert s not in text
    assert text.count("'***'") == 4 and "# the token is ***" in text
    assert text.splitlines()[12:] == ["        BLOCK: '***'", "        PLAIN: '***'"]
    again = load_testbed(tmp_path / "r.yaml", text)
    assert set(again.nodes["e"].transport.env.values()) == {SECRET_MARK}
    assert recover_config_text(p, text) == SECRET_TB
    p.write_text(SECRET_TB.replace("host: b", "host: c"))
    assert recover_config_text(p, text) is None
    # free text: as is, JSON-escaped, shell-quoted; short values are left alone
    log = 'env HF_TOKEN=hf_abcdefSECRET X=1 {"v": "multi line secret\\nsecond\\n"}'
    assert redact_text(log, secrets) == 'env HF_TOKEN=*** X=1 {"v": "***"}'
    assert len("1") < MIN_SECRET_CHARS


def test_manifest_shaped_data_is_redacted():
    manifest = {"testbed": {"parsed": {"nodes": {"n": {"transport": {"env": {"K": "tok-123456"}}}}},
                            "text": "env: {K: tok-123456}"}, "command": ["hilbed", "run"], "n": 3}
    out = redact(manifest, {"tok-123456"})
    assert out == {"testbed": {"parsed": {"nodes": {"n": {"transport": {"env": {"K": "***"}}}}},
                               "text": "env: {K: ***}"}, "command": ["hilbed", "run"], "n": 3}
    assert manifest["testbed"]["text"] == "env: {K: tok-123456}"
