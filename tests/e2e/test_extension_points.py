"""A toy link kind and a toy role, added through the registries only (a plug-in module), run a scenario.

Nothing in hilbed is edited: the plug-in registers ``toy-hold`` (a direct
link that holds each message for ``link.delay_ms`` before sending) and the
``counter`` role (its own agent module, a prepare step that calls it), and
``HILBED_PLUGINS`` makes the controller and every agent import it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

pytestmark = pytest.mark.slow

PLUGIN = '''
import time

from hilbed.nodes.link.kind import LinkKind
from hilbed.nodes.link.registry import register_link_kind
from hilbed.orchestrator.roles import Role, register_role


@register_link_kind
class HoldKind(LinkKind):
    name = "toy-hold"

    def verify(self, ctx, cond):
        return {"hold_ms": cond.link.delay_ms}

    def open_link(self, spec, host, port, edge_minus_client_ns=0, seed=0):
        from hilbed.nodes.link.tcp import DirectLink

        class HoldLink(DirectLink):
            kind = "toy-hold"

            def send_message(self, msg_id, meta, chunks, deadline_ns):
                time.sleep(spec["delay_ms"] / 1000)
                return super().send_message(msg_id, meta, chunks, deadline_ns)

        return HoldLink(host, port, edge_minus_client_ns)


def _prepare(ctx, node):
    ctx.manifest["counter"] = ctx.agent(node, "counter").call("hello", node=node)


register_role(Role("counter", "toyplug_agent", extra="client", prepare=_prepare))
'''

AGENT = '''
from hilbed.nodes.agent import Agent, run_agent


class CounterAgent(Agent):
    name = "counter"

    def op_hello(self, node):
        self.event("counter_hello", node=node)
        return {"node": node}


if __name__ == "__main__":
    run_agent(CounterAgent)
'''

TESTBED = """\
name: toy-bench
results_dir: runs
nodes:
  edge-1: {roles: [edge], device: cpu}
  client-1: {roles: [client]}
  counter-1: {roles: [counter]}
"""

SCENARIO = """\
name: toy
workload: {model: synthetic-cnn, dataset: synthetic, images_per_trial: 6, seed: 3}
stream: {period_ms: 150}
codecs: [{codec: jpeg, params: {quality: 50}}]
conditions:
  - {name: held, link: {kind: toy-hold, delay_ms: 40}, deadline_ms: 600}
"""


def test_a_plugin_link_kind_and_role_run_a_scenario(tmp_path, repo, synthetic_model):
    (tmp_path / "toyplug.py").write_text(PLUGIN)
    (tmp_path / "toyplug_agent.py").write_text(AGENT)
    (tmp_path / "testbed.yaml").write_text(TESTBED)
    (tmp_path / "toy.yaml").write_text(SCENARIO)
    env = dict(os.environ, HILBED_PLUGINS="toyplug",
               PYTHONPATH=os.pathsep.join([str(tmp_path), str(repo), os.environ.get("PYTHONPATH", "")]))
    p = subprocess.run([sys.executable, "-m", "hilbed.orchestrator.cli", "run", str(tmp_path / "toy.yaml"),
                        "--testbed", str(tmp_path / "testbed.yaml"), "-q", "--no-report"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    run_dir = next((tmp_path / "runs").iterdir())
    df = pd.read_parquet(run_dir / "results.parquet")
    assert len(df) == 6 and set(df.link_kind) == {"toy-hold"}
    # the kind's client side ran in the client agent: every image waited its 40 ms hold before the link
    assert ((df.t_edge_close_ns - df.t_encode_end_ns) / 1e6 >= 40).all()
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert any(e["kind"] == "link_applied" and e["facts"] == {"hold_ms": 40.0} for e in events)
    assert any(e["kind"] == "agent_event" and e["event"]["event"] == "counter_hello" for e in events)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["counter"] == {"node": "counter-1"} and manifest["state"] == "complete"


def test_a_broken_plugin_is_named_and_does_not_stop_the_others(tmp_path, repo):
    (tmp_path / "goodplug.py").write_text("LOADED = True\n")
    (tmp_path / "badplug.py").write_text("raise RuntimeError('boom')\n")
    env = dict(os.environ, HILBED_PLUGINS="badplug,goodplug",
               PYTHONPATH=os.pathsep.join([str(tmp_path), str(repo), os.environ.get("PYTHONPATH", "")]))
    p = subprocess.run([sys.executable, "-c", "from hilbed.nodes.plugins import load_plugins; "
                        "import json; print(json.dumps([[x.module, x.ok, x.error] for x in load_plugins()]))"],
                       env=env, capture_output=True, text=True, timeout=60)
    loads = json.loads(p.stdout)
    assert loads[0][:2] == ["badplug", False] and "RuntimeError: boom" in loads[0][2] and "badplug.py:1" in loads[0][2]
    assert loads[1] == ["goodplug", True, ""]
