"""Applying and clearing a condition: links on every client, the jammer level.

Kept apart from the run loop so link kinds (tc, radio) and jammer behaviour
can grow without touching it. Each function gets the :class:`Runner`.

- ``trace`` links: the client's ShapedLink; on local clients it also writes a
  Mahimahi link log into the run's logs and, when a local jammer shares the
  machine, follows the jammer's medium file (capacity x (1 - load)).
- ``tc`` links: the controller installs kernel shaping on the client's
  ``interface`` (uplink) and, for a downlink rate/trace, on the edge's
  (downlink), follows the trace, and removes it in :func:`close_links` --
  and again, as a safety net, in :func:`stop_jamming`, which the runner's
  teardown calls on every path.
- jamming: ``set_level`` on every jammer with the scenario's level
  parameters, then a heartbeat every second so the jammer's watchdog keeps
  it running only while this controller is alive and responsive.
"""

from __future__ import annotations

import ipaddress
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hilbed.orchestrator.lab.transport import AgentFailed

if TYPE_CHECKING:  # pragma: no cover
    from hilbed.orchestrator.run.runner import Runner

HEARTBEAT_S = 1.0
JAMMER_WATCHDOG_S = 5.0
TC_UPDATE_S = 0.1


def _state(run: "Runner") -> dict:
    st = getattr(run, "_conditions_state", None)
    if st is None:
        st = {"tc": [], "hb": None}
        run._conditions_state = st  # type: ignore[attr-defined]
    return st


def _is_local(run: "Runner", node: str) -> bool:
    return run.testbed.nodes[node].transport.kind == "local"


def medium_path(run: "Runner") -> Path | None:
    """The shared medium file when a jammer runs on this machine (embedded testbed)."""
    if any(_is_local(run, n) for n in run.testbed.jammers):
        return run.store.root / "medium.json"
    return None


def _run_error(msg: str) -> Exception:
    from hilbed.orchestrator.run.runner import RunError
    return RunError(msg)


# ------------------------------------------------------------------ links ---

def open_links(run: "Runner", cond, edge_addr: str, port: int) -> None:
    spec = cond.link.model_dump(mode="json")
    if cond.link.kind == "tc":
        _apply_tc(run, cond, spec, edge_addr)
    e_off = run._offset(run.testbed.edge)["offset_ns"]
    medium = medium_path(run)
    jams = cond.jamming != "none" or getattr(cond, "jamming_schedule", None)
    for k, c in enumerate(run.testbed.clients):
        c_off = run._offset(c)["offset_ns"]
        s = dict(spec)
        if cond.link.kind == "trace" and _is_local(run, c):
            s["log_path"] = str(run.store.logs / f"link-{c}-{cond.name}.log")
            if medium is not None and jams:
                s["medium_file"] = str(medium)
        try:
            run.agent(c, "client").call("open_link", timeout=60, spec=s, host=edge_addr, port=port,
                                        edge_minus_client_ns=e_off - c_off, seed=run.scenario.workload.seed + k)
        except Exception:
            _remove_tc(run)
            raise



def _call_live_agents(run: "Runner", nodes: list[str], role: str, op: str, event: str, timeout: float) -> None:
    """Teardown calls: ``op`` on every still-running agent, its answer into events.jsonl; a dead agent is skipped."""
    for n in nodes:
        h = run.handles.get((n, role))
        if h is not None and not h.dead.is_set():
            try:
                run.store.append_event(event, node=n, result=h.call(op, timeout=timeout))
            except AgentFailed:
                pass

def close_links(run: "Runner") -> None:
    try:
        _call_live_agents(run, run.testbed.clients, "client", "close_link", "link_stats", 30)
    finally:
        _remove_tc(run)


def _ip_or_none(addr: str | None) -> str | None:
    try:
        return str(ipaddress.ip_address(addr)) if addr else None
    except ValueError:
        return None


def _apply_tc(run: "Runner", cond, spec: dict, edge_addr: str) -> None:
    from hilbed.nodes.link import schedules_for_spec
    from hilbed.nodes.link.schedule import ConstantRate
    from hilbed.nodes.link.tc import TcError, TcShaper
    from hilbed.nodes.link.traces import TraceError

    try:
        up, down = schedules_for_spec(spec)
    except (TraceError, ValueError) as exc:
        raise _run_error(f"condition {cond.name}: {exc}") from None
    has_down = bool(spec.get("downlink_rate_kbps") or spec.get("downlink_trace"))
    edge = run.testbed.edge
    targets: list[tuple[str, Any, str | None]] = [(c, up, _ip_or_none(edge_addr)) for c in run.testbed.clients]
    if has_down:
        client_ip = _ip_or_none(run.testbed.nodes[run.testbed.clients[0]].address) \
            if len(run.testbed.clients) == 1 else None
        targets.append((edge, down, client_ip))
    st = _state(run)
    for node, sched, match in targets:
        cfg = run.testbed.nodes[node]
        if not cfg.interface:
            _remove_tc(run)
            raise _run_error(f"condition {cond.name}: link kind 'tc' needs `interface:` on node {node} in the "
                             f"testbed (the network interface to shape)")
        sudo = (cfg.transport.kind == "ssh" and bool(getattr(cfg.transport, "sudo", False))) or \
            (cfg.transport.kind == "local" and hasattr(os, "geteuid") and os.geteuid() != 0)
        tr = run.transports[node]
        shaper = TcShaper(lambda cmd, tr=tr: tr.run(cmd, timeout=30), cfg.interface,
                          discipline=spec.get("tc_discipline") or "htb", sudo=sudo, match_dst=match,
                          delay_ms=spec.get("delay_ms") or 0.0, loss=spec.get("loss") or 0.0,
                          queue_bytes=spec.get("queue_bytes"), node=node)
        st["tc"].append(shaper)
        try:
            facts = shaper.apply(sched.mean_bps(0.0, TC_UPDATE_S))
        except (TcError, OSError) as exc:
            _remove_tc(run)
            raise _run_error(f"condition {cond.name}: {exc}") from None
        if not isinstance(sched, ConstantRate):
            shaper.follow(sched, TC_UPDATE_S)
        run.store.append_event("tc_applied", node=node, condition=cond.name, facts=_tc_facts(facts))
        if facts.get("netem") is False:
            run.console.print(f"[yellow]{node}: {facts['netem_error']}[/]")


def _tc_facts(facts: dict) -> dict:
    return {k: v for k, v in facts.items() if k != "commands"} | {"commands": list(facts.get("commands", []))[:12]}


def _remove_tc(run: "Runner") -> None:
    st = _state(run)
    errors = []
    while st["tc"]:
        shaper = st["tc"].pop()
        try:
            facts = shaper.remove()
            run.store.append_event("tc_removed", node=shaper.node, facts=_tc_facts(facts))
        except Exception as exc:  # keep removing the others; report all
            errors.append(str(exc))
            try:
                run.store.append_event("tc_remove_failed", node=shaper.node, error=str(exc))
            except Exception:
                pass
    if errors:
        run.console.print(f"[red]could not remove tc shaping: {'; '.join(errors)}[/]")


# ---------------------------------------------------------------- jamming ---

def _level_params(run: "Runner", level: str) -> dict | None:
    p = run.scenario.jamming_levels.get(level)
    return p.model_dump() if p is not None else None


def set_jamming(run: "Runner", cond) -> dict:
    """Start the condition's jamming level; returns the jammer's measured facts."""
    jammers = [n for n in run.testbed.jammers if (n, "jammer") in run.handles]
    if not jammers:
        return {}
    medium = medium_path(run)
    common = {"watchdog_s": JAMMER_WATCHDOG_S, "medium_file": str(medium) if medium else None}
    target = None
    schedule = getattr(cond, "jamming_schedule", None)
    out: dict = {}
    for n in jammers:
        target = getattr(run.testbed.nodes[n], "jammer_target", None)
        if target:
            common["target"] = target
        h = run.agent(n, "jammer")
        if schedule:
            steps = [{"at_s": s.at_s, "level": s.level, "params": _level_params(run, s.level)} for s in schedule]
            res = h.call("set_schedule", timeout=30, steps=steps, **common) or {}
            out = {"level": "schedule", "load": None, "mbps": None}
        else:
            res = h.call("set_level", timeout=60, level=cond.jamming, params=_level_params(run, cond.jamming),
                         **common) or {}
            out = {"level": res.get("level", cond.jamming), "load": res.get("load"), "mbps": res.get("mbps")}
        run.store.append_event("jammer_level", node=n, condition=cond.name, result=res)
    _start_heartbeats(run, jammers)
    return out


def _start_heartbeats(run: "Runner", jammers: list[str]) -> None:
    st = _state(run)
    if st["hb"] is not None:
        return
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            for n in jammers:
                h = run.handles.get((n, "jammer"))
                if h is None or h.dead.is_set():
                    continue
                try:
                    h.call("heartbeat", timeout=HEARTBEAT_S * 3)
                except Exception:
                    pass  # the jammer's watchdog stops it if we cannot reach it

    t = threading.Thread(target=beat, name="jammer-heartbeat", daemon=True)
    st["hb"] = (t, stop)
    t.start()


def _stop_heartbeats(run: "Runner") -> None:
    st = _state(run)
    hb = st["hb"]
    st["hb"] = None
    if hb is not None:
        hb[1].set()
        hb[0].join(5)


def stop_jamming(run: "Runner") -> None:
    try:
        _call_live_agents(run, run.testbed.jammers, "jammer", "stop", "jammer_stopped", 15)
    finally:
        _stop_heartbeats(run)
        _remove_tc(run)  # teardown safety net: the runner's teardown always calls stop_jamming
