"""tc command building and TcShaper's control flow against a recording runner (no root needed)."""

from __future__ import annotations

import pytest

from hilbed.nodes.link.schedule import PiecewiseRate
from hilbed.nodes.link.tc import TcError, TcShaper, burst_bytes, htb_commands, rate_arg, tbf_commands


class FakeNode:
    """Answers like tc on a kernel without netem; records every command."""

    def __init__(self, fail_on: str | None = None):
        self.cmds: list[str] = []
        self.root: str | None = None
        self.fail_on = fail_on

    def __call__(self, cmd: str):
        self.cmds.append(cmd)
        if self.fail_on and self.fail_on in cmd:
            return (2, "", "RTNETLINK answers: Operation not permitted")
        if " netem" in cmd:
            return (2, "", "Error: Specified qdisc kind is unknown.")
        if "qdisc replace" in cmd and " root " in cmd:
            self.root = cmd.split(" root ")[1].split()[2]
        if "qdisc del" in cmd:
            if self.root is None:
                return (2, "", "Error: Cannot delete qdisc with handle of zero.")
            self.root = None
        if "qdisc show" in cmd:
            return (0, f"qdisc {self.root or 'noqueue'} {'1:' if self.root else '0:'} root refcnt 2\n", "")
        return (0, "", "")


def test_command_builders():
    assert rate_arg(0) == "1000bit" and rate_arg(250_000) == "250000bit"
    assert burst_bytes(10_000) == 1600 and burst_bytes(100e6) == 125_000
    c = htb_commands("eth0", 250_000, match_dst="10.0.0.2")
    assert c[0] == "tc qdisc replace dev eth0 root handle 1: htb default 20"
    assert "classid 1:10 htb rate 250000bit ceil 250000bit" in c[1]
    assert c[-1].endswith("u32 match ip dst 10.0.0.2/32 flowid 1:10")
    assert tbf_commands("wlan0", 1e6, queue_bytes=3000)[0] == \
        "tc qdisc replace dev wlan0 root handle 1: tbf rate 1000000bit burst 1600b limit 3000"
    with pytest.raises(TcError):
        htb_commands("eth0; reboot", 1e6)


def test_apply_reports_missing_netem_and_remove_always_runs():
    node = FakeNode()
    sh = TcShaper(node, "veth0", delay_ms=20, loss=0.01, node="client-1")
    facts = sh.apply(250_000)
    assert facts["netem"] is False and "NOT applied" in facts["netem_error"] and facts["delay_applied_ms"] == 0
    assert node.root == "htb"
    assert sh.set_rate(100_000) and not sh.set_rate(100_100)  # tiny changes are not sent
    assert any("class change" in c and "100000bit" in c for c in node.cmds)
    assert sh.remove()["removed"] is True and node.root is None
    assert sh.remove()["removed"] is True  # idempotent


def test_sudo_prefix_and_failure_cleans_up():
    node = FakeNode(fail_on="classid 1:10")
    sh = TcShaper(node, "eth0", sudo=True)
    with pytest.raises(TcError, match="Operation not permitted"):
        sh.apply(1e6)
    assert all(c.startswith("sudo -n tc ") for c in node.cmds)
    assert node.cmds[-2].startswith("sudo -n tc qdisc del dev eth0 root") and node.root is None


def test_follow_updates_the_rate_from_the_trace():
    node = FakeNode()
    sched = PiecewiseRate([0, 0.15], [1e6, 2e5], period_s=0.3)
    sh = TcShaper(node, "eth0", discipline="tbf")
    sh.apply(1e6)
    sh.follow(sched, interval_s=0.05)
    import time
    time.sleep(0.7)
    sh.remove()
    updates = [c for c in node.cmds if "qdisc change" in c]
    assert any("rate 200000bit" in c for c in updates) and any("rate 1000000bit" in c for c in updates)
    assert node.cmds[-2] == "tc qdisc del dev eth0 root" and sh.facts["update_errors"] == 0
