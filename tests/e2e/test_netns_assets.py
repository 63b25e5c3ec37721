"""Over real SSH, nodes read only what provisioning pushed: a trace the client cannot see on the controller's
path, the default model on the edge, a remote jammer whose load reaches the client through the relay."""

from __future__ import annotations

import json
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest

from hilbed.orchestrator.config import load_testbed
from hilbed.orchestrator.lab.provision import provision, scenario_assets

pytest_plugins = ["tests.netns_fixtures"]
pytestmark = [pytest.mark.slow, pytest.mark.netns]

SCENARIO = """\
name: netns-assets
workload: {{dataset: synthetic, model: synthetic-cnn, images_per_trial: 6, image_size: 32, seed: 0}}
stream: {{period_ms: 150}}
codecs:
  - {{codec: jpeg, params: {{quality: 50}}, label: q50}}
conditions:
  - name: shaped
    link: {{kind: trace, trace: {trace}}}
    jamming: light
"""


@contextmanager
def hidden_from(lab, host: str, path: Path):
    """``path`` is empty for ``host`` (a tmpfs over it in its sshd's mount namespace, which every session and
    agent there inherits) and unchanged for the controller."""
    pid = str(lab.hosts[host].sshd_pid)
    subprocess.run(["nsenter", "-t", pid, "-m", "mount", "-t", "tmpfs", "-o", "size=64k", "hidden", str(path)],
                   check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run(["nsenter", "-t", pid, "-m", "umount", str(path)], capture_output=True)


def test_a_remote_client_runs_a_trace_it_only_has_as_a_pushed_copy(provisioned_lab, synthetic_model, tmp_path):
    from hilbed.orchestrator.lab.ssh import SSHTransport
    from hilbed.orchestrator.run.runner import Runner
    lab, tb_path, _ = provisioned_lab
    only_here = tmp_path / "controller-only"
    only_here.mkdir()
    trace = only_here / "uplink.csv"
    trace.write_text("t_ms,kbps\n0,400\n2000,200\n4000,400\n")
    sc = tmp_path / "sc.yaml"
    sc.write_text(SCENARIO.format(trace=trace))
    tb = load_testbed(tb_path)
    rep = provision(tb, assets=scenario_assets([sc]))
    assert rep.ok, {n: r.error for n, r in rep.results.items()}
    with hidden_from(lab, "client-1", only_here):
        t = SSHTransport("client-1", tb.nodes["client-1"].transport)
        try:  # the proof: the client cannot read the controller's path, the controller still can
            assert not t.run(f"test -e {trace}").ok and trace.exists()
        finally:
            t.close()
        out = Runner(tb_path, sc, results_dir=tmp_path / "runs", quiet=True, make_report=False).execute()
    assert out.state == "complete" and out.records == out.planned == 6, out.state
    df = pd.read_parquet(out.run_dir / "results.parquet")
    assert df.error.isna().all(), df.error.dropna().tolist()
    assert set(df.trace_name) == {"uplink.csv"} and (df.jammer_load > 0).all()
    m = json.loads((out.run_dir / "manifest.json").read_text())
    # the client's link log came back into the run's logs, and the ledger read it
    log = out.run_dir / "logs" / "link-client-1-shaped.log"
    assert log.is_file() and log.stat().st_size > 0
    assert m["applied"]["shaped"]["link"]["served"]["client-1"]["kbps_mean"] > 0
    # the remote jammer's measured load reached the client through the relay, about a window late
    relay = m["medium_relay"]["shaped"]["client-1"]
    assert relay["updates"] >= 1 and relay["failed"] == 0 and relay["age_s"]["max"] < 5, relay
    # the edge served the controller's default model from the pushed copy: nothing trained there
    edge_wd = lab.hosts["edge"].workdir
    assert m["model"]["model"] == "synthetic-cnn"
    assert m["model"]["loaded_from"].startswith(f"synthetic-cnn:{edge_wd}/assets/")
    assert m["node_checks"]["client-1"]["items"]["assets"]["status"] == "ok"
    assert m["node_checks"]["edge"]["items"]["assets"]["status"] == "ok"


def test_the_run_refuses_when_a_node_lacks_a_pushed_trace(provisioned_lab, tmp_path):
    from hilbed.orchestrator.errors import RunError
    from hilbed.orchestrator.run.runner import Runner
    lab, tb_path, _ = provisioned_lab
    trace = tmp_path / "never-pushed.csv"
    trace.write_text("t_ms,kbps\n0,300\n")
    sc = tmp_path / "sc.yaml"
    sc.write_text(SCENARIO.format(trace=trace).replace("jamming: light", "jamming: none"))
    with pytest.raises(RunError) as ei:
        Runner(tb_path, sc, results_dir=tmp_path / "runs", quiet=True, make_report=False).execute()
    msg = str(ei.value)
    assert "client-1: assets:" in msg and "never-pushed.csv" in msg and "\n" not in msg
    assert f"hilbed provision --testbed {tb_path} --scenario {sc}" in msg


def test_emulated_radios_here_follow_a_remote_jammer_through_the_relay(provisioned_lab, synthetic_model, tmp_path):
    """The jammer is a lab host; the client, the edge and their emulated radios run here. The relay writes the
    remote jammer's measurements into this run's medium file, which the radio emulator follows: a jammed
    condition loses frames, its records carry the jammer's measured load, and nothing is refused."""
    import yaml

    from hilbed.orchestrator.run.runner import Runner
    _, tb_path, _ = provisioned_lab
    raw = yaml.safe_load(Path(tb_path).read_text())
    for n in ("client-1", "edge"):
        raw["nodes"][n].update(transport={"kind": "local"}, address="127.0.0.1",
                               radio={"protocol": "spinel", "port": "emulated", "channel": 15})
    mixed = tmp_path / "mixed.yaml"
    mixed.write_text(yaml.safe_dump(raw))
    sc = tmp_path / "radio.yaml"
    sc.write_text("""\
name: netns-radio-relay
workload: {dataset: synthetic, model: synthetic-cnn, images_per_trial: 6, image_size: 32, seed: 0}
stream: {period_ms: 300}
codecs:
  - {codec: jpeg, params: {quality: 50}, label: q50}
conditions:
  - {name: quiet, jamming: none, link: {kind: radio}}
  - {name: jammed, jamming: heavy, link: {kind: radio}}
""")
    out = Runner(mixed, sc, results_dir=tmp_path / "runs", quiet=True, make_report=False).execute()
    assert out.state == "complete" and out.records == out.planned == 12, out.state
    df = pd.read_parquet(out.run_dir / "results.parquet")
    quiet, jammed = df[df.condition == "quiet"], df[df.condition == "jammed"]
    assert (jammed.jammer_load > 0).all() and (quiet.jammer_load.fillna(0) == 0).all()
    assert quiet.deadline_met.mean() > jammed.deadline_met.mean()  # the emulated medium felt the remote jammer
    medium = json.loads((out.run_dir / "medium.json").read_text())
    assert medium.get("relayed") is True  # written by the relay, not by a jammer on this machine
