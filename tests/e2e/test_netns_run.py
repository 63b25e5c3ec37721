"""Runs over real SSH: client, edge and jammer in different namespaces; node drops mid-run; resume."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from hilbed.orchestrator.config import load_testbed
from hilbed.orchestrator.lab.check import check_testbed, render_checks
from hilbed.orchestrator.lab.provision import provision
from tests.netns_fixtures import write_scenario

pytest_plugins = ["tests.netns_fixtures"]
pytestmark = [pytest.mark.slow, pytest.mark.netns]


def _events(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]


def _fresh(tb_path: Path) -> None:
    """Provision again right before a run (warm unless the sources changed)."""
    rep = provision(load_testbed(tb_path))
    assert rep.ok, {n: r.error for n, r in rep.results.items()}


def _assert_one_clean_record_per_key(run_dir: Path, planned: int) -> pd.DataFrame:
    df = pd.read_parquet(run_dir / "results.parquet")
    assert len(df) == planned
    assert not df.duplicated(["trial_id", "client", "image_index"]).any()
    assert df.error.isna().all(), df.error.dropna().tolist()
    assert df.decoded.all()
    return df


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "?"


def _agents_gone(lab, host: str, timeout: float = 10.0) -> bool:
    """No hilbed agent (python -m nodes.*) left in the host's namespace."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not any("-m nodes." in _comm(p) for p in lab.processes(host)):
            return True
        time.sleep(0.1)
    return False


def _pid_gone(pid: int, timeout: float = 10.0) -> bool:
    """The process ended (a zombie waiting for a parent that does not reap counts as ended)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.1)
    return False


def _run_in_thread(runner):
    box: dict = {}

    def go():
        try:
            box["out"] = runner.execute()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["exc"] = exc

    th = threading.Thread(target=go, daemon=True)
    th.start()
    return th, box


def _wait_records(runner, n: int, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        p = runner.store.trials_path
        if p.exists() and len(p.read_text().splitlines()) >= n:
            return
        time.sleep(0.02)
    raise AssertionError(f"fewer than {n} records after {timeout} s")


def test_run_over_ssh(provisioned_lab, synthetic_model, tmp_path):
    from hilbed.orchestrator.run.runner import Runner
    lab, tb_path, _ = provisioned_lab
    _fresh(tb_path)
    sc = write_scenario(tmp_path / "sc.yaml", jamming="light")  # the jammer runs too, in its own namespace
    out = Runner(tb_path, sc, results_dir=tmp_path / "runs", quiet=True, make_report=False).execute()
    assert out.state == "complete" and out.records == out.planned == 5
    df = _assert_one_clean_record_per_key(out.run_dir, 5)
    assert set(df.client) == {"client-1"}
    assert (df.jammer_mbps > 0).all() and (df.jammer_load > 0).all()  # iperf3 really ran on the jammer host
    m = json.loads((out.run_dir / "manifest.json").read_text())
    assert all(nc["ok"] for nc in m["node_checks"].values())
    for node in ("edge", "client-1"):
        for tag in ("before", "after"):
            off = m["clock_offsets"][node][tag]
            assert off["samples"] >= 8 and 0 <= off["uncertainty_ns"] < 50_000_000
    assert "key_file" in m["testbed"]["text"] and "BEGIN OPENSSH" not in json.dumps(m)  # a path, never a key
    # the agents ran in their namespaces and are gone
    for host in ("edge", "client-1", "jammer"):
        assert _agents_gone(lab, host), [_comm(p) for p in lab.processes(host)]
    assert not any("iperf3" in _comm(p) for p in lab.processes("jammer"))  # jammer stopped on teardown
    assert (out.run_dir / "logs" / "jammer-jammer.log").exists()
    assert (out.run_dir / "logs" / "edge-edge.log").exists()


def test_node_drop_mid_run_reconnects_and_reruns_the_trial(provisioned_lab, synthetic_model, tmp_path):
    from hilbed.orchestrator.run.runner import Runner
    lab, tb_path, _ = provisioned_lab
    _fresh(tb_path)
    sc = write_scenario(tmp_path / "sc.yaml", name="netns-drop", images=8, period_ms=80,
                        codecs=("{codec: jpeg, params: {quality: 50}, label: q50}", "{codec: png}"))
    runner = Runner(tb_path, sc, results_dir=tmp_path / "runs", quiet=True, make_report=False)
    th, box = _run_in_thread(runner)
    _wait_records(runner, 3)
    agent_pids = [p for p in lab.processes("client-1") if "-m hilbed.nodes.client" in _comm(p)]
    assert agent_pids
    assert lab.drop_connections("client-1")  # as a reboot or a Wi-Fi loss would
    th.join(240)
    assert not th.is_alive()
    assert "exc" not in box, box.get("exc")
    out = box["out"]
    assert out.state == "complete" and out.records == out.planned == 16
    _assert_one_clean_record_per_key(out.run_dir, 16)
    lines = (out.run_dir / "trials.jsonl").read_text().splitlines()
    assert len(lines) > 16  # the interrupted attempt's records are kept, superseded on merge
    ev = _events(out.run_dir)
    kinds = [e["kind"] for e in ev]
    inc = next(e for e in ev if e["kind"] == "incident")
    assert inc["nodes"] == ["client-1"]
    assert kinds.index("incident") < kinds.index("recovered") < kinds.index("trial_recovered")
    assert all(_pid_gone(p) for p in agent_pids), [_comm(p) for p in agent_pids]  # the old agent tore down
    assert _agents_gone(lab, "client-1") and _agents_gone(lab, "edge")
    m = json.loads((out.run_dir / "manifest.json").read_text())
    assert m["clock_offsets"]["client-1"]["reconnects"]  # measured again after the reconnect


def test_unreachable_node_stops_cleanly_and_resume_finishes(provisioned_lab, synthetic_model, tmp_path, monkeypatch):
    from hilbed.orchestrator.run import recovery
    from hilbed.orchestrator.run.runner import RunError, Runner
    monkeypatch.setattr(recovery, "RECONNECT_ATTEMPTS", 2)
    monkeypatch.setattr(recovery, "BACKOFF_S", (0.2, 0.5))
    lab, tb_path, _ = provisioned_lab
    _fresh(tb_path)
    sc = write_scenario(tmp_path / "sc.yaml", name="netns-stop", images=8, period_ms=80,
                        codecs=("{codec: jpeg, params: {quality: 50}, label: q50}", "{codec: png}"))
    runner = Runner(tb_path, sc, results_dir=tmp_path / "runs", quiet=True, make_report=False)
    th, box = _run_in_thread(runner)
    _wait_records(runner, 3)
    try:
        lab.stop_sshd("client-1")
        th.join(240)
        assert not th.is_alive()
        exc = box.get("exc")
        assert isinstance(exc, RunError) and isinstance(exc, recovery.RunStopped), box
        assert "client-1" in str(exc) and "hilbed resume" in str(exc)
    finally:
        lab.start_sshd("client-1")
    run_dir = runner.store.root
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["state"] == "stopped"
    assert any(e["kind"] == "reconnect_failed" for e in _events(run_dir))

    out = Runner(resume_dir=run_dir, quiet=True, make_report=False).execute()
    assert out.state == "complete" and out.records == out.planned == 16
    _assert_one_clean_record_per_key(run_dir, 16)
    assert any(e["kind"] == "resumed" for e in _events(run_dir))


def test_check_over_ssh_names_the_broken_node(provisioned_lab, tmp_path):
    from rich.console import Console
    lab, tb_path, _ = provisioned_lab
    text = tb_path.read_text()
    missing = "/dev/serial/by-id/usb-Nordic_Semiconductor_nRF52840_Wireless_UART_15.4_0BADC0FFEE00-if00"
    # client-1 lost its radio; one more node that nobody answers for
    head, tail = text.split("  client-1:", 1)
    text = head + "  client-1:" + tail.replace('port: "emulated"', f'port: "{missing}"', 1)
    edge = lab.hosts["edge"]
    text += (f"  ghost:\n    roles: [client]\n    transport: {{kind: ssh, host: \"{edge.address}\", port: 2, "
             f"user: root, key_file: \"{lab.client_key}\", known_hosts: \"{lab.known_hosts}\"}}\n")
    p = tmp_path / "broken.yaml"
    p.write_text(text)
    _fresh(tb_path)
    checks = {c.node: c for c in check_testbed(load_testbed(p))}
    assert checks["jammer"].ok and checks["edge"].ok
    assert [k for k, _ in checks["client-1"].failures] == ["serial"]
    assert checks["client-1"].items["serial"].value == "missing"
    assert not checks["ghost"].ok
    assert checks["ghost"].items["reachable"].status == "fail" and checks["ghost"].items["reachable"].fix
    assert checks["jammer"].items["iperf3"].status == "ok"
    for n in ("edge", "client-1", "jammer"):
        assert checks[n].items["provisioned"].status == "ok" and checks[n].items["clock"].status == "ok"
    con = Console(record=True, width=220)
    render_checks(list(checks.values()), con)
    out = con.export_text()
    assert "ghost" in out and "missing" in out and "not ready" in out
