"""``shared-uplink``: N clients split ONE shaped uplink (a shared bottleneck), shaped at the edge.

Controller side: :meth:`SharedUplinkKind.apply` asks the edge agent to open
its receiver -- a :class:`~hilbed.nodes.link.shared_uplink.SharedUplinkProxy`
in the edge process, in front of the edge's listener -- and then opens every
client's link as a plain direct link to the proxy's port. Clients do not
shape themselves: the proxy serves all their frames from one FIFO queue on
the spec's ``rate_kbps``/``trace`` (with ``delay_ms``, ``loss``,
``queue_bytes``, ``accounting``), so each client's share is what it offers
while the link is busy. With a local edge the controller adds a Mahimahi
link log (``logs/link-shared-<condition>.log``) and, when a jammer shares
this machine, the medium file the proxy follows (capacity x (1 - load)).
"""

from __future__ import annotations

from typing import Any

from hilbed.nodes.link.kind import LinkKind, LinkSetupError


class SharedUplinkKind(LinkKind):
    name = "shared-uplink"
    needs_rate = True
    jammable = True

    def __init__(self) -> None:
        self._proxy: Any = None  # edge side

    # -- controller side ---------------------------------------------------
    def apply(self, ctx: Any, cond: Any) -> None:
        edge = ctx.testbed.edge
        spec = cond.link.model_dump(mode="json")
        jams = cond.jamming != "none" or bool(cond.jamming_schedule)
        if jams and (not ctx.is_local(edge) or ctx.local_medium_file() is None):
            raise LinkSetupError(f"condition {cond.name} jams a shared-uplink link, but its proxy follows the "
                                 "jammer's load through the medium file on this machine, and the edge or the "
                                 "jammer runs elsewhere; run both locally, or use jamming: none")
        if ctx.is_local(edge):
            spec["log_path"] = str(ctx.store.logs / f"link-shared-{cond.name}.log")
            if jams:
                spec["medium_file"] = str(ctx.local_medium_file())
        spec["seed"] = ctx.scenario.workload.seed
        facts = ctx.agent(edge, "edge").call("open_receiver", timeout=60, kind=self.name, spec=spec)
        if not isinstance(facts, dict) or not facts.get("port"):
            raise LinkSetupError(f"condition {cond.name}: the edge opened no shared-uplink proxy ({facts!r})")
        ctx.state["shared_uplink_facts"] = facts
        host = ctx.testbed.nodes[edge].address
        e_off = ctx.offset(edge)["offset_ns"]
        for k, c in enumerate(ctx.clients_for(cond)):
            ctx.agent(c, "client").call("open_link", timeout=60, spec=self.client_spec(ctx, cond, c, k),
                                        host=host, port=int(facts["port"]),
                                        edge_minus_client_ns=e_off - ctx.offset(c)["offset_ns"],
                                        seed=ctx.scenario.workload.seed + k, secret=ctx.secret)

    def verify(self, ctx: Any, cond: Any) -> dict:
        return {"shared_uplink": ctx.state.get("shared_uplink_facts"), "clients": len(ctx.clients_for(cond))}

    def clear(self, ctx: Any) -> None:
        try:
            self.close_client_links(ctx)
        finally:
            self.close_edge_receiver(ctx)

    # -- client side -------------------------------------------------------
    def open_link(self, spec: dict, host: str, port: int, edge_minus_client_ns: int = 0, seed: int = 0) -> Any:
        """A plain TCP link to the edge's proxy: the shaping happens there, for every client at once."""
        from hilbed.nodes.link.tcp import DirectLink
        link = DirectLink(host, port, edge_minus_client_ns, packet_bytes=int(spec.get("packet_bytes", 1024)))
        link.kind = self.name
        return link

    # -- edge side ---------------------------------------------------------
    def open_receiver(self, edge: Any, spec: dict) -> dict:
        """Start the proxy in front of the edge's listener; returns its port."""
        from hilbed.nodes.link import schedules_for_spec
        from hilbed.nodes.link.shared_uplink import DEFAULT_QUEUE_BYTES, SharedUplinkProxy
        if edge.server is None:
            raise LinkSetupError("the edge is not listening yet: a shared uplink forwards to its listener")
        host, port = edge.server.getsockname()[:2]
        up, down = schedules_for_spec(spec)
        shaped_down = bool(spec.get("downlink_rate_kbps") or spec.get("downlink_trace"))
        self._proxy = SharedUplinkProxy(
            (host, 0), ("127.0.0.1" if host in ("0.0.0.0", "") else host, port), up, down if shaped_down else None,
            delay_ms=spec.get("delay_ms", 0.0), loss=spec.get("loss", 0.0),
            queue_bytes=spec.get("queue_bytes") or DEFAULT_QUEUE_BYTES, accounting=spec.get("accounting"),
            seed=int(spec.get("seed", 0)), log_path=spec.get("log_path"), medium_file=spec.get("medium_file"))
        p_host, p_port = self._proxy.address
        return {"host": p_host, "port": p_port, "forward": port, "uplink": up.describe(),
                "downlink": down.describe() if shaped_down else "unshaped",
                "queue_bytes": spec.get("queue_bytes") or DEFAULT_QUEUE_BYTES}

    def receiver_stats(self) -> dict:
        return self._proxy.stats() if self._proxy is not None else {}

    def close_receiver(self, edge: Any) -> dict:
        proxy, self._proxy = self._proxy, None
        return proxy.close() if proxy is not None else {}
