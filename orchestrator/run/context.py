"""What a run shares: configs, the store and manifest, transports, agents and clock offsets.

The runner owns the trial loop; recovery, conditions, link kinds, roles'
prepare steps and the pre-run check get this object instead of the runner,
so none of them reaches into the loop's state. Agents are started by role
through :mod:`hilbed.orchestrator.roles`; every agent event goes to one
handler (``on_event``) the runner installs.
"""

from __future__ import annotations

import os
import secrets as tokens
import threading
from pathlib import Path
from typing import Any, Callable, Iterable

from rich.console import Console

from hilbed.nodes.plugins import ENV as PLUGINS_ENV
from hilbed.orchestrator.config import redact
from hilbed.orchestrator.lab.connect import make_transport
from hilbed.orchestrator.lab.transport import AgentHandle, Transport, clock_probe
from hilbed.orchestrator.roles import role as role_of
from hilbed.orchestrator.run.store import RunStore

EventHandler = Callable[[str, str, dict], None]
ZERO_OFFSET = {"offset_ns": 0, "uncertainty_ns": 0}
AGENT_READY_S = 60.0


class RunContext:
    def __init__(self, testbed: Any, scenario: Any, store: RunStore, manifest: dict, console: Console,
                 on_event: EventHandler | None = None, secrets: Iterable[str] = ()):
        self.testbed = testbed
        self.scenario = scenario
        self.store = store
        self.manifest = manifest
        self.console = console
        self.on_event = on_event
        self.transports: dict[str, Transport] = {}
        self.handles: dict[tuple[str, str], AgentHandle] = {}
        self.offsets: dict[str, dict] = {}
        #: the edge's listening port (0 until the edge role's prepare step set it)
        self.edge_port = 0
        #: authenticates this run's clients at the edge (HMAC handshake); kept in memory only, never stored
        self.secret = tokens.token_hex(16)
        #: per-run state of link kinds and other seams, keyed by their name
        self.state: dict[str, Any] = {}
        self.lock = threading.Lock()
        #: secret strings (SSH env values) that must not reach events.jsonl
        self.secrets = frozenset(secrets)

    # -- facts ---------------------------------------------------------------
    @property
    def all_local(self) -> bool:
        """The embedded testbed: every node is a local process on this machine."""
        return all(c.transport.kind == "local" for c in self.testbed.nodes.values())

    def clients_for(self, cond: Any) -> list[str]:
        """The client nodes streaming in ``cond`` (its first N clients; see ``ScenarioCfg.n_clients``)."""
        return self.testbed.clients[:self.scenario.n_clients(cond, self.testbed)]

    @property
    def files(self) -> Any:
        """Where controller files are on each node (:class:`~hilbed.orchestrator.run.assets.NodeFiles`):
        link kinds and roles ask this instead of importing the run layer."""
        from hilbed.orchestrator.run.assets import node_files
        return node_files(self)

    def medium_reader(self, node: str, role: str) -> str:
        """The medium file ``node``'s ``role`` agent follows in this condition, registered with the relay."""
        from hilbed.orchestrator.run.assets import medium_reader
        return medium_reader(self, node, role)

    def is_local(self, node: str) -> bool:
        return self.testbed.nodes[node].transport.kind == "local"

    @property
    def medium_file(self) -> Path:
        """Where the jammer publishes its load for emulated radios and shaped links."""
        return self.store.root / "medium.json"

    def local_medium_file(self) -> Path | None:
        """The medium file when a jammer runs on this machine (the embedded testbed), else None."""
        return self.medium_file if any(self.is_local(n) for n in self.testbed.jammers) else None

    def agent_env(self, node: str | None = None) -> dict[str, str]:
        """Environment every agent gets (plug-ins too, so a plug-in kind's client and edge sides exist there).

        The medium file is the run's one file here for local agents; an agent on another machine gets a file
        of its own node (the controller relays the jammer's load into it: :class:`MediumRelay`)."""
        medium = str(self.medium_file)
        if node is not None and not self.is_local(node):
            medium = self.files.medium_file(node)
        env = {"HILBED_MEDIUM_FILE": medium, "HILBED_RUN_ID": self.store.run_id}
        if os.environ.get(PLUGINS_ENV):
            env[PLUGINS_ENV] = os.environ[PLUGINS_ENV]
        return env

    # -- store ---------------------------------------------------------------
    def event(self, kind: str, **fields: Any) -> None:
        """Append to events.jsonl, with any secret an error text or command line quotes replaced by ***."""
        if self.secrets:
            fields = redact(fields, self.secrets)
        self.store.append_event(kind, **fields)

    def write_manifest(self) -> None:
        self.store.write_manifest(self.manifest)

    # -- agents --------------------------------------------------------------
    def transport(self, node: str) -> Transport:
        if node not in self.transports:
            self.transports[node] = make_transport(node, self.testbed.nodes[node])
        return self.transports[node]

    def start_agent(self, node: str, role: str) -> AgentHandle:
        """Start (or restart) ``role``'s agent on ``node``; returns once the handle exists (not yet ready)."""
        old = self.handles.get((node, role))
        if old is not None:
            try:
                old.proc.kill()  # a stale agent that survived a flap must not hold ports or radios
            except Exception:
                pass
        proc = self.transport(node).start_agent(role_of(role).agent_module, [], self.store.logs / f"{node}-{role}.log",
                                                env=self.agent_env(node))
        h = AgentHandle(node, role, proc, self.on_event)
        self.handles[(node, role)] = h
        return h

    def agent(self, node: str, role: str) -> AgentHandle:
        return self.handles[(node, role)]

    def live_agent(self, node: str, role: str) -> AgentHandle | None:
        """The agent when it is running, else None (teardown calls skip dead agents)."""
        h = self.handles.get((node, role))
        return h if h is not None and not h.dead.is_set() else None

    def wait_ready(self, handles: list[AgentHandle] | None = None, timeout: float = AGENT_READY_S) -> None:
        for h in handles if handles is not None else list(self.handles.values()):
            h.wait_ready(timeout)

    def prepare(self, node: str, role: str) -> None:
        """Run the role's prepare step (model loaded, dataset configured...)."""
        step = role_of(role).prepare
        if step is not None:
            step(self, node)

    # -- clocks --------------------------------------------------------------
    def offset(self, node: str) -> dict:
        """The node's clock offset: re-measured after a reconnect, else the one before the run."""
        o = self.offsets.get(node, {})
        return o.get("current") or o.get("before") or ZERO_OFFSET

    def probe_clocks(self, tag: str) -> None:
        """Measure every node's clock offset (``before``/``after`` the run) through one of its agents,
        a record-stamping one where the node has it (the jammer's windows are mapped with its node's offset)."""
        by_node: dict[str, AgentHandle] = {}
        for (node, role), h in self.handles.items():
            if node not in by_node or role_of(role).stamps_records:
                by_node[node] = h
        for node, h in by_node.items():
            self.offsets.setdefault(node, {})[tag] = clock_probe(h)
        self.manifest["clock_offsets"] = self.offsets
        self.write_manifest()

    def remeasure_clock(self, node: str) -> None:
        """After a reconnect: a new offset becomes ``current``; the old ones stay for the record."""
        for (n, role), h in self.handles.items():
            if n == node and role_of(role).stamps_records:
                r = clock_probe(h)
                off = self.offsets.setdefault(node, {})
                off.setdefault("reconnects", []).append(r)
                off["current"] = r
                break
        self.manifest["clock_offsets"] = self.offsets
        self.write_manifest()

    def ask_every_node(self, op: str, timeout: float) -> dict[str, dict]:
        """``op`` through one live agent of each node; a failure is that node's ``{"error": ...}``
        (an agent without the op, from an older hilbed, or a dying one)."""
        out: dict[str, dict] = {}
        for (node, _), h in list(self.handles.items()):
            if node in out or h.dead.is_set():
                continue
            try:
                out[node] = h.call(op, timeout=timeout)
            except Exception as exc:
                out[node] = {"error": str(exc)}
        return out

    # -- provenance ----------------------------------------------------------
    def record_provenance(self) -> None:
        """What ran on each node: hilbed wheel (from its provisioning marker), Python and package versions,
        radio firmware identity; the model's facts and the run's input hashes beside them. ``hilbed compare``
        warns when two runs differ in any of these."""
        prov: dict[str, Any] = {"nodes": {}, "model": self.manifest.get("model"), "inputs": self.manifest.get("inputs")}
        checks = self.manifest.get("node_checks", {})
        for node, facts in self.ask_every_node("facts", timeout=15).items():
            marker = (checks.get(node, {}).get("facts") or {}).get("marker") or {}
            prov["nodes"][node] = {"python": facts.get("python"), "packages": facts.get("packages"),
                                   "platform": facts.get("platform"), "wheel_sha256": marker.get("wheel_sha256"),
                                   "radio": (checks.get(node, {}).get("facts") or {}).get("radio_identity")}
        if self.state.get("lease") is not None:
            prov["lease"] = self.state["lease"]
        self.manifest["provenance"] = prov
        self.write_manifest()

    # -- host load -----------------------------------------------------------
    def record_host_load(self, tag: str) -> None:
        """The controller's and every node's load now (``before``/``after`` the trials), into the manifest;
        an overloaded host is said on the console (the report warns too)."""
        from hilbed.nodes.hostload import host_load, overloaded
        host = self.manifest.setdefault("host", {})
        host[tag] = host_load()
        for node, facts in self.ask_every_node("host_load", timeout=10).items():
            self.manifest.setdefault("node_hosts", {}).setdefault(node, {})[tag] = facts
        remote = [(n, v[tag]) for n, v in self.manifest.get("node_hosts", {}).items()
                  if tag in v and not self.is_local(n)]  # local nodes are the controller's machine: said once
        for name, facts in [("controller", host[tag])] + remote:
            why = overloaded(facts)
            if why:
                self.console.print(f"[yellow]{name} is overloaded {tag} the trials: {why}; timings may be off[/]")
            if facts.get("rt_priority") is False:
                self.console.print(f"[yellow]{name}: no real-time priority (not root, RLIMIT_RTPRIO 0): shaped "
                                   f"links release packets less precisely[/]")
        self.write_manifest()

    # -- teardown ------------------------------------------------------------
    def close(self) -> None:
        """Close every agent (stdin closed: it tears down itself; stragglers killed) and transport."""
        for h in self.handles.values():
            try:
                h.close(timeout=5)
            except Exception:
                pass
        for tr in self.transports.values():
            try:
                tr.close()
            except Exception:
                pass
        self.handles.clear()
