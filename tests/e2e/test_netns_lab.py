"""The namespace lab itself: hosts with real sshd come up, and everything is removed afterwards."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from hilbed.orchestrator.lab.netns_lab import NetnsLab, list_labs

pytest_plugins = ["tests.netns_fixtures"]
pytestmark = [pytest.mark.slow, pytest.mark.netns]


def _netns() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def test_lab_up_and_down_leaves_nothing(netns_ok, tmp_path):
    lab = NetnsLab(2, name=f"hl{os.getpid() % 10000}", subnet=250, root=tmp_path / "lab")
    try:
        lab.up()
        assert {h.netns for h in lab.hosts.values()} <= _netns()
        for h in lab.hosts.values():
            with socket.create_connection((h.address, 22), timeout=2) as s:
                assert s.recv(8).startswith(b"SSH-2.0")
            assert h.sshd_pid in lab.processes(h.name)
        assert [d["name"] for d in list_labs(tmp_path)] == [lab.name]
        # real sshd with the generated host key: OpenSSH's own client accepts it strictly
        h = lab.hosts["edge"]
        r = subprocess.run(["ssh", "-i", str(lab.client_key), "-o", f"UserKnownHostsFile={lab.known_hosts}",
                            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", f"root@{h.address}",
                            "cat /proc/net/fib_trie | grep -c " + h.address], capture_output=True, text=True, timeout=20)
        assert r.returncode == 0, r.stderr
        pids = [p for hh in lab.hosts.values() for p in lab.processes(hh.name)]
    finally:
        lab.down()
    assert not ({h.netns for h in lab.hosts.values()} & _netns())
    assert subprocess.run(["ip", "link", "show", lab.bridge], capture_output=True).returncode != 0
    assert not lab.root.exists()
    assert not [p for p in pids if Path(f"/proc/{p}").exists()]


def test_down_from_the_state_file_after_a_crash(netns_ok, tmp_path):
    lab = NetnsLab(1, name=f"hc{os.getpid() % 10000}", subnet=251, root=tmp_path / "lab").up()
    try:
        again = NetnsLab.from_state(lab.root)  # another process would do this (scripts/netns-lab down)
        assert again.hosts["edge"].sshd_pid == lab.hosts["edge"].sshd_pid
        again.down()
        assert lab.hosts["edge"].netns not in _netns()
        assert not lab.root.exists()
    finally:
        lab.down()
