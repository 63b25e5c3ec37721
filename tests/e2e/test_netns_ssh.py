"""SSHTransport against real OpenSSH servers in network namespaces."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from hilbed.orchestrator.config import SSHTransportCfg
from hilbed.orchestrator.lab.ssh import HostKeyError, NodeUnreachable, SSHTransport
from hilbed.orchestrator.lab.transport import AgentHandle

pytest_plugins = ["tests.netns_fixtures"]
pytestmark = [pytest.mark.slow, pytest.mark.netns]


def _cfg(lab, host: str, **kw) -> SSHTransportCfg:
    h = lab.hosts[host]
    base = dict(kind="ssh", host=h.address, user="root", key_file=str(lab.client_key),
                known_hosts=str(lab.known_hosts), workdir=str(h.workdir), keepalive_s=2.0)
    base.update(kw)
    return SSHTransportCfg(**base)


def _gone(pid: int, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not Path(f"/proc/{pid}").exists():
            return True
        time.sleep(0.05)
    return False


def test_run_put_get(provisioned_lab, lab_transports, tmp_path):
    lab = provisioned_lab[0]
    t = lab_transports["client-1"]
    r = t.run("echo out; echo err >&2; hostname -I; exit 3")
    assert (r.returncode, r.stdout.split()[0], r.stderr.strip()) == (3, "out", "err")
    assert lab.hosts["client-1"].address in r.stdout  # it ran inside the host's namespace
    assert t.run(["printf", "%s|", "a b", "c'd"]).stdout == "a b|c'd|"
    with pytest.raises(RuntimeError, match="client-1"):
        t.run("false", check=True)
    with pytest.raises(subprocess.TimeoutExpired):
        t.run("sleep 10", timeout=0.5)
    src = tmp_path / "blob.bin"
    src.write_bytes(os.urandom(300_000))
    remote = f"{lab.hosts['client-1'].workdir}/new/dir/blob.bin"
    t.put(src, remote)  # creates the directory
    t.get(remote, tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == src.read_bytes()
    assert t.run(f"ls {Path(remote).parent}").stdout.split() == ["blob.bin"]  # no .part left behind


def test_agent_over_an_ssh_channel_tears_down_when_the_channel_goes(provisioned_lab, lab_transports, tmp_path,
                                                                    monkeypatch):
    lab = provisioned_lab[0]
    t = lab_transports["edge"]
    proc = t.start_agent("hilbed.nodes.probe", [], tmp_path / "probe.log")
    h = AgentHandle("edge", "probe", proc)
    h.wait_ready(60)
    pid = h.call("ping")["pid"]
    assert pid in lab.processes("edge")  # a process in the edge's namespace, not here
    assert proc.remote_pid() == pid
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert f"HILBED_CACHE_DIR={os.environ['HILBED_CACHE_DIR']}".encode() in env  # forwarded
    assert f"HILBED_ARTIFACTS={lab.hosts['edge'].workdir}/artifacts".encode() in env
    exe = os.readlink(f"/proc/{pid}/exe")
    assert Path(f"/proc/{pid}/cwd").resolve() == lab.hosts["edge"].workdir.resolve(), exe
    h.close(timeout=10)  # closes stdin: EOF over SSH
    assert _gone(pid), "the agent must exit when its channel's stdin closes"
    assert "stdin closed" in (tmp_path / "probe.log").read_text()  # its stderr came back into the log

    # a dropped connection (no clean EOF from us) also ends the agent
    monkeypatch.setenv("HILBED_CACHE_DIR", str(tmp_path / "not-on-the-node"))
    proc2 = t.start_agent("hilbed.nodes.probe", [], tmp_path / "probe2.log")
    h2 = AgentHandle("edge", "probe", proc2)
    h2.wait_ready(60)
    pid2 = h2.call("ping")["pid"]
    env2 = Path(f"/proc/{pid2}/environ").read_bytes().split(b"\0")
    assert not any(e.startswith(b"HILBED_CACHE_DIR=") for e in env2)  # only a directory the node can see
    assert lab.drop_connections("edge")
    assert h2.dead.wait(10), "the controller must notice the dropped channel"
    assert _gone(pid2)
    assert t.run("true").ok  # run() reconnects on demand


def test_agent_on_an_unprovisioned_node_says_so(netns_lab, tmp_path):
    cfg = _cfg(netns_lab, "jammer", workdir=str(tmp_path / "nowhere"))
    t = SSHTransport("jammer", cfg)
    try:
        proc = t.start_agent("hilbed.nodes.probe", [], tmp_path / "p.log")
        assert proc.wait(20) == 127
        assert "hilbed provision" in (tmp_path / "p.log").read_text()
    finally:
        t.close()


def test_wrong_host_key_is_refused(netns_lab, tmp_path):
    h = netns_lab.hosts["client-1"]
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    kt, blob = other.with_suffix(".pub").read_text().split()[:2]
    kh = tmp_path / "known_hosts"
    kh.write_text(f"{h.address} {kt} {blob}\n")
    for accept_new in (False, True):  # accept-new never accepts a CHANGED key
        t = SSHTransport("client-1", _cfg(netns_lab, "client-1", known_hosts=str(kh), accept_new_host_keys=accept_new))
        try:
            with pytest.raises(HostKeyError) as ei:
                t.run("true")
        finally:
            t.close()
        msg = str(ei.value)
        assert msg.startswith("node client-1:") and "CHANGED" in msg
        assert f"ssh-keygen -R '{h.address}' -f {kh}" in msg
    assert kh.read_text() == f"{h.address} {kt} {blob}\n"  # untouched


def test_unknown_host_key_strict_by_default_and_accept_new_records_it(netns_lab, tmp_path):
    kh = tmp_path / "kh" / "known_hosts"
    t = SSHTransport("jammer", _cfg(netns_lab, "jammer", known_hosts=str(kh)))
    try:
        with pytest.raises(HostKeyError) as ei:
            t.run("true")
        assert "jammer" in str(ei.value) and "accept_new_host_keys" in str(ei.value)
    finally:
        t.close()
    assert not kh.exists()
    t = SSHTransport("jammer", _cfg(netns_lab, "jammer", known_hosts=str(kh), accept_new_host_keys=True))
    try:
        assert t.run("true").ok
    finally:
        t.close()
    real = netns_lab.hosts["jammer"].host_key.with_suffix(".pub").read_text().split()[1]
    assert real in kh.read_text()
    t = SSHTransport("jammer", _cfg(netns_lab, "jammer", known_hosts=str(kh)))  # strict again: now known
    try:
        assert t.run("true").ok
    finally:
        t.close()


def test_proxy_jump_through_a_gateway(netns_lab):
    gw = netns_lab.hosts["edge"]
    t = SSHTransport("client-1", _cfg(netns_lab, "client-1", proxy_jump=f"root@{gw.address}:22"))
    try:
        r = t.run("echo $SSH_CONNECTION")
        assert r.ok
        assert r.stdout.split()[0] == gw.address  # the connection came from the gateway, not from us
    finally:
        t.close()


def test_unreachable_node_names_the_node(netns_lab):
    t = SSHTransport("ghost", _cfg(netns_lab, "edge", port=2))  # nothing listens there: refused
    try:
        with pytest.raises(NodeUnreachable) as ei:
            t.run("true")
        assert str(ei.value).startswith("node ghost:") and "fix:" in str(ei.value)
    finally:
        t.close()


def test_keepalive_watchdog_closes_a_silent_connection(provisioned_lab, tmp_path):
    lab = provisioned_lab[0]
    t = SSHTransport("client-1", _cfg(lab, "client-1", keepalive_s=0.5))
    proc = t.start_agent("hilbed.nodes.probe", [], tmp_path / "p.log")
    h = AgentHandle("client-1", "probe", proc)
    try:
        h.wait_ready(60)
        lab.set_link("client-1", False)  # a Wi-Fi flap: packets vanish, no FIN, no RST
        t0 = time.monotonic()
        assert h.dead.wait(10), "the watchdog must close a connection whose server stopped answering"
        assert time.monotonic() - t0 < 5 and not t.connected and t.last_error == "keepalive timeout"
    finally:
        lab.set_link("client-1", True)
        h.close(timeout=2)
    assert t.reconnect().run("true").ok  # and a new connection works once the link is back
    t.close()
