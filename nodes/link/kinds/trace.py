"""``trace``: the client's own user-space shaper, from a constant rate, a CSV rate schedule or a Mahimahi trace.

On local clients the controller adds a Mahimahi link log in the run's logs
and, when a jammer shares this machine, the medium file the shaper follows
(capacity x (1 - measured load)).
"""

from __future__ import annotations

from typing import Any

from hilbed.nodes.link.kind import LinkKind


class TraceKind(LinkKind):
    name = "trace"
    needs_rate = True
    jammable = True

    def client_spec(self, ctx: Any, cond: Any, client: str, index: int) -> dict:
        spec = super().client_spec(ctx, cond, client, index)
        if ctx.is_local(client):
            spec["log_path"] = str(ctx.store.logs / f"link-{client}-{cond.name}.log")
            medium = ctx.local_medium_file()
            if medium is not None and (cond.jamming != "none" or cond.jamming_schedule):
                spec["medium_file"] = str(medium)
        return spec

    def open_link(self, spec: dict, host: str, port: int, edge_minus_client_ns: int = 0, seed: int = 0) -> Any:
        from hilbed.nodes.link import schedules_for_spec
        from hilbed.nodes.link.tcp import ShapedLink
        up, down = schedules_for_spec(spec)
        return ShapedLink(host, port, up, down, edge_minus_client_ns, delay_ms=spec.get("delay_ms", 0.0),
                          loss=spec.get("loss", 0.0), packet_bytes=spec.get("packet_bytes", 1024), seed=seed,
                          log_path=spec.get("log_path"), medium_file=spec.get("medium_file"),
                          queue_bytes=spec.get("queue_bytes"))
