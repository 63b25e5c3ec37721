"""``trace``: the client's own user-space shaper, from a constant rate, a CSV rate schedule or a Mahimahi trace.

The controller hands each client its node's paths (the run context's ``files``): the trace
files (on an SSH client the copies ``hilbed provision --scenario`` pushed), a Mahimahi link log (in the
run's logs here; on an SSH client under its workdir, fetched into the run's logs when the condition
clears) and, when the condition jams, the medium file the shaper follows (capacity x (1 - measured
load)): the run's file here, the node's own elsewhere, fed by the medium relay.
"""

from __future__ import annotations

from typing import Any

from hilbed.nodes.link.kind import LinkKind

#: (node, log name) of link logs written on SSH clients and not fetched yet
PENDING_LOGS = "trace_logs_pending"


class TraceKind(LinkKind):
    name = "trace"
    needs_rate = True
    jammable = True

    def client_spec(self, ctx: Any, cond: Any, client: str, index: int) -> dict:
        spec = super().client_spec(ctx, cond, client, index)
        files = ctx.files
        for attr in ("trace", "downlink_trace"):
            if spec.get(attr):
                spec[attr] = files.path(client, spec[attr])
        name = f"link-{client}-{cond.name}.log"
        spec["log_path"] = files.log_path(client, name)
        if files.is_remote(client):
            pending = ctx.state.setdefault(PENDING_LOGS, [])
            if (client, name) not in pending:
                pending.append((client, name))
        if cond.jamming != "none" or cond.jamming_schedule:
            spec["medium_file"] = ctx.medium_reader(client, "client")
        return spec

    def clear(self, ctx: Any) -> None:
        try:
            super().clear(ctx)  # the clients close their links: their logs are complete
        finally:
            self.fetch_logs(ctx)

    def teardown(self, ctx: Any) -> None:
        self.fetch_logs(ctx)  # whatever a failed clear left behind

    @staticmethod
    def fetch_logs(ctx: Any) -> None:
        """Bring the SSH clients' link logs into the run's logs (where the ledger and plots read them)."""
        files = ctx.files
        pending = ctx.state.get(PENDING_LOGS) or []
        while pending:
            node, name = pending.pop(0)
            files.fetch(node, name)
            files.fetch(node, name + ".down", optional=True)

    def open_link(self, spec: dict, host: str, port: int, edge_minus_client_ns: int = 0, seed: int = 0) -> Any:
        from hilbed.nodes.link import schedules_for_spec
        from hilbed.nodes.link.tcp import ShapedLink
        up, down = schedules_for_spec(spec)
        return ShapedLink(host, port, up, down, edge_minus_client_ns, delay_ms=spec.get("delay_ms", 0.0),
                          loss=spec.get("loss", 0.0), packet_bytes=spec.get("packet_bytes", 1024), seed=seed,
                          log_path=spec.get("log_path"), medium_file=spec.get("medium_file"),
                          queue_bytes=spec.get("queue_bytes"))
