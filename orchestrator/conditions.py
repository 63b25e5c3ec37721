"""Applying and clearing a condition: links on every client, the jammer level.

Kept apart from the run loop so link kinds (tc, radio) and jammer behaviour
can grow without touching it. Each function gets the :class:`Runner`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .transport import AgentFailed

if TYPE_CHECKING:  # pragma: no cover
    from .runner import Runner


def open_links(run: "Runner", cond, edge_addr: str, port: int) -> None:
    e_off = run._offset(run.testbed.edge)["offset_ns"]
    for k, c in enumerate(run.testbed.clients):
        c_off = run._offset(c)["offset_ns"]
        run.agent(c, "client").call("open_link", timeout=60, spec=cond.link.model_dump(mode="json"),
                                    host=edge_addr, port=port, edge_minus_client_ns=e_off - c_off,
                                    seed=run.scenario.workload.seed + k)


def close_links(run: "Runner") -> None:
    for c in run.testbed.clients:
        h = run.handles.get((c, "client"))
        if h is not None and not h.dead.is_set():
            try:
                stats = h.call("close_link", timeout=30)
                run.store.append_event("link_stats", node=c, stats=stats)
            except AgentFailed:
                pass


def set_jamming(run: "Runner", cond) -> dict:
    """Start the condition's jamming level; returns the jammer's measured facts."""
    jammers = [n for n in run.testbed.jammers if (n, "jammer") in run.handles]
    if not jammers:
        return {}
    params = run.scenario.jamming_levels.get(cond.jamming)
    out: dict = {}
    for n in jammers:
        out = run.agent(n, "jammer").call("set_level", timeout=60, level=cond.jamming,
                                          params=params.model_dump() if params else None) or {}
    return out


def stop_jamming(run: "Runner") -> None:
    for n in run.testbed.jammers:
        h = run.handles.get((n, "jammer"))
        if h is not None and not h.dead.is_set():
            try:
                h.call("stop", timeout=15)
            except AgentFailed:
                pass
