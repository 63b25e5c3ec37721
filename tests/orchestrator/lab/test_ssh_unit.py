"""SSH transport and provisioning pieces that need no server: parsing, quoting, messages, the lab example."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import paramiko
import pytest

from hilbed.orchestrator.config import SSHTransportCfg, load_testbed
from hilbed.orchestrator.lab.provision import IMPORT_NAMES, Wheel, node_extras, source_hash
from hilbed.orchestrator.lab.ssh import (
    HintingRejectPolicy,
    HostKeyError,
    SSHTransport,
    _sftp_path,
    fingerprint,
    known_hosts_name,
    parse_jump,
)
from hilbed.orchestrator.lab.transport import shell_path

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("spec,want", [
    ("gw.lab", (None, "gw.lab", 22)),
    ("pi@gw.lab", ("pi", "gw.lab", 22)),
    ("pi@gw.lab:2222", ("pi", "gw.lab", 2222)),
    ("10.0.0.1:2200", (None, "10.0.0.1", 2200)),
    ("ops@[fe80::1]:2022", ("ops", "fe80::1", 2022)),
])
def test_parse_jump(spec, want):
    assert parse_jump(spec) == want


@pytest.mark.parametrize("bad", ["", "user@", "gw:0", "gw:99999"])
def test_parse_jump_rejects(bad):
    with pytest.raises(ValueError):
        parse_jump(bad)


def test_remote_paths_expand_home_on_the_node():
    assert shell_path("~/.hilbed") == '"$HOME"/.hilbed'
    assert shell_path("/srv/my dir") == "'/srv/my dir'"
    assert _sftp_path("~/.hilbed/x") == ".hilbed/x"
    assert _sftp_path("/abs/x") == "/abs/x"
    assert known_hosts_name("10.0.0.2", 22) == "10.0.0.2"
    assert known_hosts_name("10.0.0.2", 2222) == "[10.0.0.2]:2222"


def test_unknown_host_key_is_refused_with_the_node_and_the_fix():
    key = paramiko.Ed25519Key.from_private_key_file(str(_keyfile()))
    pol = HintingRejectPolicy("rpi-client", "/etc/hilbed/known_hosts", 2222)
    assert isinstance(pol, paramiko.RejectPolicy)
    with pytest.raises(HostKeyError) as ei:
        pol.missing_host_key(None, "[10.0.0.5]:2222", key)
    msg = str(ei.value)
    assert "rpi-client" in msg and fingerprint(key) in msg
    assert "ssh-keyscan -p 2222 10.0.0.5 >> /etc/hilbed/known_hosts" in msg
    assert "accept_new_host_keys" in msg


def _keyfile() -> Path:
    import tempfile
    d = Path(tempfile.mkdtemp(prefix="hilbed-key-"))
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "k")], check=True)
    return d / "k"


def test_fingerprint_matches_ssh_keygen():
    kf = _keyfile()
    key = paramiko.Ed25519Key.from_private_key_file(str(kf))
    out = subprocess.run(["ssh-keygen", "-lf", str(kf) + ".pub"], capture_output=True, text=True, check=True).stdout
    assert fingerprint(key) == out.split()[1]


def test_transport_does_not_connect_until_used_and_describes_the_gateway():
    cfg = SSHTransportCfg(kind="ssh", host="192.0.2.10", user="pi", proxy_jump="ops@192.0.2.1:2200")
    t = SSHTransport("client-1", cfg)
    try:
        assert not t.connected
        assert t.describe() == "ssh pi@192.0.2.10:22 via ops@192.0.2.1:2200"
        gw = t.connection.gateway
        assert (gw.user, gw.host, gw.port) == ("ops", "192.0.2.1", 2200)
        assert isinstance(t.connection.client._policy, HintingRejectPolicy)
    finally:
        t.close()


def test_example_lab_testbed_validates():
    p = REPO / "examples" / "lab-testbed.yaml"
    tb = load_testbed(p)
    assert tb.edge == "gpu-edge" and tb.clients == ["rpi4-client"] and tb.jammers == ["rpi3-jammer"]
    for n, c in tb.nodes.items():
        assert c.transport.kind == "ssh" and c.transport.proxy_jump, n
        assert not c.transport.accept_new_host_keys, n
    assert tb.nodes["rpi4-client"].radio.port.startswith("/dev/serial/by-id/usb-Nordic_Semiconductor")
    r = subprocess.run([sys.executable, "-m", "hilbed.orchestrator.cli", "validate", str(p)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_role_extras_and_import_names():
    assert node_extras(["client"]) == ["client"]
    assert node_extras(["edge", "jammer"]) == ["edge", "jammer"]
    w = Wheel(Path("x.whl"), "0" * 64, "s", "0.1.0",
              (("numpy>=1.24", None), ("pillow>=10", "client"), ("pyserial>=3.5", "client"), ("torch>=2.1", "edge")))
    assert w.requirements(["client"]) == {"numpy": "numpy>=1.24", "PIL": "pillow>=10", "serial": "pyserial>=3.5"}
    assert w.requirements(["jammer"]) == {"numpy": "numpy>=1.24"}
    assert IMPORT_NAMES["pyserial"] == "serial"


def test_source_hash_follows_the_sources(tmp_path):
    for d in ("orchestrator", "firmware_bridge", "nodes", "analysis"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "__init__.py").write_text("")
    (tmp_path / "pyproject.toml").write_text("[project]\nname='x'\n")
    h1 = source_hash(tmp_path)
    (tmp_path / "nodes" / "__pycache__").mkdir()
    (tmp_path / "nodes" / "__pycache__" / "a.pyc").write_bytes(b"junk")
    assert source_hash(tmp_path) == h1  # bytecode is not source
    (tmp_path / "nodes" / "edge.py").write_text("x = 1\n")
    assert source_hash(tmp_path) != h1
