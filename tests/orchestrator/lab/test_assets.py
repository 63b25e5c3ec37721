"""Controller files on nodes: the node-path mapping, the pre-run asset check and the medium relay (no SSH)."""

from __future__ import annotations

import json
import os
import sys
import threading
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace

import pytest

from hilbed.nodes.events import run_event_kind
from hilbed.nodes.link.kinds.trace import PENDING_LOGS, TraceKind
from hilbed.orchestrator.config import load_scenario
from hilbed.orchestrator.lab.check import NodeCheck, check_assets
from hilbed.orchestrator.lab.provision import _push_asset, assets_of, file_asset
from hilbed.orchestrator.lab.transport import CommandResult, LocalTransport
from hilbed.orchestrator.run.assets import medium_reader, node_files
from hilbed.orchestrator.run.conditions import MEDIUM_READERS, MediumRelay

SCENARIO = """\
name: assets
workload: {{dataset: synthetic, model: {model}, images_per_trial: 2, image_size: 32, seed: 0}}
stream: {{period_ms: 100}}
codecs: [{{codec: jpeg}}]
conditions:
  - name: slow
    link: {{kind: trace, trace: {trace}}}
    jamming: heavy
  - name: kernel
    link: {{kind: tc, trace: {trace}}}
"""


class FakeTransport:
    """Answers the workdir lookup like a node whose $HOME is /home/pi; counts the commands."""

    def __init__(self):
        self.commands: list[str] = []
        self.got: list[tuple[str, Path]] = []

    def run(self, cmd, timeout=60, check=False):
        self.commands.append(cmd)
        return CommandResult(cmd, 0, "/home/pi/hb\n", "")

    def get(self, remote, local):
        self.got.append((remote, Path(local)))
        Path(local).write_text(f"copy of {remote}")


def _ctx(tmp_path, model="torchscript:model.pt", workdir="~/hb"):
    trace = tmp_path / "controller-only" / "up.csv"
    trace.parent.mkdir(exist_ok=True)
    trace.write_text("t_ms,kbps\n0,250\n1000,40\n")
    sp = tmp_path / "sc.yaml"
    sp.write_text(SCENARIO.format(trace=trace, model=model))
    remote = SimpleNamespace(kind="ssh", workdir=workdir)
    local = SimpleNamespace(kind="local", workdir=None)
    nodes = {"edge": SimpleNamespace(roles=["edge"], transport=remote, address="10.0.0.1"),
             "client-1": SimpleNamespace(roles=["client"], transport=remote, address="10.0.0.2"),
             "client-2": SimpleNamespace(roles=["client"], transport=local, address="127.0.0.1"),
             "jam": SimpleNamespace(roles=["jammer"], transport=remote, address="10.0.0.3")}
    tr = FakeTransport()
    events: list[tuple[str, dict]] = []
    logs = tmp_path / "run" / "logs"
    logs.mkdir(parents=True)
    ctx = SimpleNamespace(
        testbed=SimpleNamespace(nodes=nodes, jammers=["jam"], edge="edge", clients=["client-1", "client-2"]),
        scenario=load_scenario(sp), store=SimpleNamespace(run_id="r1", logs=logs, root=logs.parent),
        state={}, lock=threading.Lock(), medium_file=logs.parent / "medium.json", manifest={},
        transport=lambda n: tr, is_local=lambda n: nodes[n].transport.kind == "local",
        event=lambda kind, **f: events.append((run_event_kind(kind), f)), clients_for=lambda cond: ["client-1", "client-2"])
    # what RunContext offers link kinds and roles (they never import the run layer)
    ctx.files = node_files(ctx)
    ctx.medium_reader = lambda node, role: medium_reader(ctx, node, role)
    return ctx, tr, trace, events


def test_controller_paths_map_to_the_pushed_copies_on_ssh_nodes_and_stay_on_local_ones(tmp_path):
    ctx, tr, trace, _ = _ctx(tmp_path)
    files = node_files(ctx)
    a = file_asset(trace)
    assert files.path("client-1", trace) == f"/home/pi/hb/assets/{a.sha256[:16]}/up.csv"
    assert files.path("client-2", trace) == str(trace)  # a local node reads the controller's file
    assert files.medium_file("client-1") == "/home/pi/hb/runs/r1/medium.json"
    assert files.medium_file("client-2") == str(ctx.medium_file)
    assert files.log_path("client-1", "x.log") == "/home/pi/hb/runs/r1/x.log"
    assert files.log_path("client-2", "x.log") == str(ctx.store.logs / "x.log")
    assert len(tr.commands) == 1 and "pwd" in tr.commands[0]  # ~ resolved on the node, once
    # a trace kind's spec: node paths, its log under the node's run dir, the node's medium file registered
    cond = ctx.scenario.conditions[0]
    spec = TraceKind().client_spec(ctx, cond, "client-1", 0)
    assert spec["trace"] == files.path("client-1", trace) and str(tmp_path) not in json.dumps(spec)
    assert spec["log_path"] == "/home/pi/hb/runs/r1/link-client-1-slow.log"
    assert spec["medium_file"] == "/home/pi/hb/runs/r1/medium.json"
    assert ctx.state[MEDIUM_READERS] == {("client-1", "client"): spec["medium_file"]}
    local = TraceKind().client_spec(ctx, cond, "client-2", 1)
    assert local["trace"] == str(trace) and local["medium_file"] == str(ctx.medium_file)
    # clearing the condition fetches the remote log into the run's logs (not the local one: it is there)
    ctx.live_agent = lambda n, r: None
    TraceKind().clear(ctx)
    assert [r for r, _ in tr.got] == ["/home/pi/hb/runs/r1/link-client-1-slow.log",
                                      "/home/pi/hb/runs/r1/link-client-1-slow.log.down"]
    assert (ctx.store.logs / "link-client-1-slow.log").read_text().startswith("copy of")
    assert ctx.state[PENDING_LOGS] == []


def test_assets_go_to_the_roles_that_read_them(tmp_path):
    ctx, _, trace, _ = _ctx(tmp_path)
    found = assets_of(ctx.scenario)
    assert [(a.name, a.roles) for a in found] == [("up.csv", ("client",))]  # the tc trace is read here
    files = node_files(ctx)
    assert [a.name for a in files.needed("client-1")] == ["up.csv"]
    assert files.needed("edge") == [] and files.needed("client-2") == []  # local: reads the controller's file


def test_the_default_model_is_loaded_from_the_pushed_file(tmp_path, monkeypatch):
    from hilbed.orchestrator.run.inputs import _synthetic_cnn_key
    cache = tmp_path / "cache"
    (cache / "models").mkdir(parents=True)
    weights = cache / "models" / f"synthetic-cnn-{_synthetic_cnn_key(32)}.pt"
    weights.write_bytes(b"weights")
    monkeypatch.setenv("HILBED_CACHE_DIR", str(cache))
    ctx, _, _, _ = _ctx(tmp_path, model="synthetic-cnn")
    files = node_files(ctx)
    m = files.model()
    assert m is not None and m.optional and m.roles == ("edge",)
    assert [a.name for a in files.needed("edge")] == [weights.name]
    assert files.model_spec("edge") == f"synthetic-cnn:/home/pi/hb/assets/{m.sha256[:16]}/{weights.name}"
    assert files.model_spec("client-2") == "synthetic-cnn"
    ctx.state["assets_checked"] = {"edge": set()}  # the check did not find it: the edge makes it itself
    assert files.model_spec("edge") == "synthetic-cnn"


def _node_workdir(tmp_path: Path) -> Path:
    wd = tmp_path / "node"
    (wd / "venv" / "bin").mkdir(parents=True)
    os.symlink(sys.executable, wd / "venv" / "bin" / "python")
    return wd


def test_the_asset_check_hashes_on_the_node_and_names_the_provision_command(tmp_path):
    wd = _node_workdir(tmp_path)
    t = LocalTransport("client-1")
    trace = tmp_path / "up.csv"
    trace.write_text("t_ms,kbps\n0,250\n")
    art = tmp_path / "jpeg-0123456789ab"
    (art / "sub").mkdir(parents=True)
    (art / "a.bin").write_bytes(b"\x00\x01")
    (art / "sub" / "b.json").write_text("{}")
    (art / "a-b.txt").write_text("order")  # sorts differently as a string and as path parts
    from hilbed.orchestrator.lab.provision import artifact_asset
    a, b = file_asset(trace, ("client",), "trace of condition slow"), artifact_asset(art)
    for x in (a, b):
        _push_asset(t, str(wd), x)
    nc = NodeCheck("client-1", ["client"], "ssh")
    assert check_assets(nc, t, str(wd), [a, b], "hilbed provision --testbed tb.yaml --scenario sc.yaml") == \
        {a.sha256, b.sha256}
    assert nc.items["assets"].status == "ok"
    (wd / a.remote).write_text("t_ms,kbps\n0,1\n")  # changed on the node
    (wd / b.remote / "sub" / "b.json").unlink()
    nc = NodeCheck("client-1", ["client"], "ssh")
    assert check_assets(nc, t, str(wd), [a, b], "hilbed provision --testbed tb.yaml --scenario sc.yaml") == set()
    it = nc.items["assets"]
    assert it.status == "fail" and it.fix == "run `hilbed provision --testbed tb.yaml --scenario sc.yaml`"
    assert "trace of condition slow (up.csv) changed" in it.detail and "missing" not in it.detail.split(";")[0]
    assert nc.problems() and "hilbed provision --testbed tb.yaml --scenario sc.yaml" in nc.problems()[0]


def test_a_missing_model_only_warns(tmp_path):
    from hilbed.orchestrator.lab.provision import Asset
    wd = _node_workdir(tmp_path)
    w = tmp_path / "m.pt"
    w.write_bytes(b"w")
    a = file_asset(w)
    m = Asset(a.name, a.local, a.sha256, roles=("edge",), what="model synthetic-cnn", optional=True)
    nc = NodeCheck("edge", ["edge"], "ssh")
    check_assets(nc, LocalTransport("edge"), str(wd), [m])
    assert nc.ok and nc.items["assets"].status == "warn" and "missing" in nc.items["assets"].detail


class FakeHandle:
    def __init__(self):
        self.calls: list[dict] = []

    def call_async(self, op, **args):
        from hilbed.nodes.agent import Agent
        self.calls.append({"op": op, **args})
        fut: Future = Future()
        fut.set_result(Agent.op_medium(None, **args))  # the agent side, for real (writes the file)
        return fut

    def call(self, op, timeout=None, **args):
        return self.call_async(op, **args).result()


def test_the_relay_forwards_each_measured_load_in_the_nodes_clock(tmp_path):
    import time

    from hilbed.nodes.link.medium import read_medium
    ctx, _, _, events = _ctx(tmp_path)
    node_medium = tmp_path / "client-1-medium.json"
    handles = {("client-1", "client"): FakeHandle()}
    offsets = {"jam": 2_000_000_000, "client-1": -1_000_000_000}  # node clock - controller clock
    ctx.live_agent = lambda n, r: handles.get((n, r))
    ctx.offset = lambda n: {"offset_ns": offsets.get(n, 0)}
    ctx.state[MEDIUM_READERS] = {("client-1", "client"): str(node_medium), ("client-2", "client"): "here"}
    relay = MediumRelay(ctx)
    seen = []
    ctx.on_event = lambda node, role, msg: seen.append(msg["event"])
    relay.install()
    cond = ctx.scenario.conditions[0]
    relay.on_jammer_load("jam", {"t_start": 0, "t_end": 1, "load": 0.9, "mbps": 18})  # no condition yet: dropped
    assert handles[("client-1", "client")].calls == []
    relay.start(cond)
    now = time.time()
    ctx.on_event("jam", "jammer", {"event": "jammer_load", "t_start": now + 1, "t_end": now + 2, "load": 0.4,
                                   "mbps": 8.0, "level": "heavy"})
    assert seen == ["jammer_load"]  # the runner's handler still gets the event
    (call,) = handles[("client-1", "client")].calls
    assert call["op"] == "medium" and call["load"] == 0.4 and call["path"] == str(node_medium)
    assert call["t_end"] == pytest.approx(now + 2 - 2 - 1, abs=1e-6)  # jammer clock -> controller -> node
    doc = read_medium(node_medium)
    assert doc["state"] == "fresh" and doc["load"] == 0.4
    assert json.loads(node_medium.read_text())["relayed"] is True
    assert read_medium(ctx.medium_file)["load"] == 0.4  # the jammer is remote: local readers get it too
    relay.stop()
    assert read_medium(node_medium)["load"] == 0.0  # the condition ended: the node's medium is idle
    (ev,) = [f for k, f in events if k == "medium_relay"]
    assert ev["node"] == "client-1" and ev["updates"] == 1 and ev["failed"] == 0
    assert ev["age_s"]["max"] == pytest.approx(1.0, abs=0.5)  # the window ended ~1 s before it arrived
    assert ctx.manifest["medium_relay"]["slow"]["client-1"]["updates"] == 1


def test_a_pushed_default_model_for_another_image_size_is_refused(tmp_path):
    import torch

    from hilbed.nodes.workload.models import SmallCNN, TrainConfig, load_model
    m = SmallCNN(10, 32)
    p = tmp_path / "m.pt"
    torch.save({"state_dict": m.state_dict(), "facts": {"key": TrainConfig(size=32).key(), "config": {"size": 32}}}, p)
    got = load_model(f"synthetic-cnn:{p}", "cpu", 32)
    assert got.facts["sha256_of"] == "file" and len(got.classes) == 10
    with pytest.raises(ValueError, match="trained with other settings"):
        load_model(f"synthetic-cnn:{p}", "cpu", 64)
    with pytest.raises(ValueError, match="weights file not found"):
        load_model(f"synthetic-cnn:{tmp_path / 'nope.pt'}", "cpu", 32)
