"""``tc``: kernel shaping on real nodes' interfaces, applied by the controller; clients send as on ``direct``.

The controller installs htb/tbf on each client's ``interface`` (uplink, to
the edge's address) and, for a downlink rate/trace, on the edge's; follows
the trace every 100 ms; and removes every qdisc in :meth:`clear`, which runs
on every path.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Any

from hilbed.nodes.link.kind import LinkKind, LinkSetupError

TC_UPDATE_S = 0.1


def _ip_or_none(addr: str | None) -> str | None:
    try:
        return str(ipaddress.ip_address(addr)) if addr else None
    except ValueError:
        return None


def _facts(facts: dict) -> dict:
    return {k: v for k, v in facts.items() if k != "commands"} | {"commands": list(facts.get("commands", []))[:12]}


class TcKind(LinkKind):
    name = "tc"
    needs_rate = True

    def apply(self, ctx: Any, cond: Any) -> None:
        self._shape(ctx, cond)
        self.open_client_links(ctx, cond)

    def clear(self, ctx: Any) -> None:
        try:
            self.close_client_links(ctx)
        finally:
            self.remove(ctx)

    def teardown(self, ctx: Any) -> None:
        self.remove(ctx)  # safety net: never leave kernel shaping behind

    def open_link(self, spec: dict, host: str, port: int, edge_minus_client_ns: int = 0, seed: int = 0) -> Any:
        from hilbed.nodes.link.tcp import DirectLink
        return DirectLink(host, port, edge_minus_client_ns)

    # -- kernel shaping ------------------------------------------------------
    @staticmethod
    def _shapers(ctx: Any) -> list:
        return ctx.state.setdefault("tc_shapers", [])

    def _shape(self, ctx: Any, cond: Any) -> None:
        from hilbed.nodes.link import schedules_for_spec
        from hilbed.nodes.link.schedule import ConstantRate
        from hilbed.nodes.link.tc import TcError, TcShaper
        from hilbed.nodes.link.traces import TraceError

        spec = cond.link.model_dump(mode="json")
        try:
            up, down = schedules_for_spec(spec)
        except (TraceError, ValueError) as exc:
            raise LinkSetupError(f"condition {cond.name}: {exc}") from None
        tb = ctx.testbed
        edge = tb.edge
        edge_ip = _ip_or_none(tb.nodes[edge].address)
        targets: list[tuple[str, Any, str | None]] = [(c, up, edge_ip) for c in tb.clients]
        if spec.get("downlink_rate_kbps") or spec.get("downlink_trace"):
            client_ip = _ip_or_none(tb.nodes[tb.clients[0]].address) if len(tb.clients) == 1 else None
            targets.append((edge, down, client_ip))
        for node, sched, match in targets:
            cfg = tb.nodes[node]
            if not cfg.interface:
                self.remove(ctx)
                raise LinkSetupError(f"condition {cond.name}: link kind 'tc' needs `interface:` on node {node} in "
                                     f"the testbed (the network interface to shape)")
            sudo = (cfg.transport.kind == "ssh" and bool(getattr(cfg.transport, "sudo", False))) or \
                (cfg.transport.kind == "local" and os.geteuid() != 0)
            tr = ctx.transport(node)
            shaper = TcShaper(lambda cmd, tr=tr: tr.run(cmd, timeout=30), cfg.interface,
                              discipline=spec.get("tc_discipline") or "htb", sudo=sudo, match_dst=match,
                              delay_ms=spec.get("delay_ms") or 0.0, loss=spec.get("loss") or 0.0,
                              queue_bytes=spec.get("queue_bytes"), node=node)
            self._shapers(ctx).append(shaper)
            try:
                facts = shaper.apply(sched.mean_bps(0.0, TC_UPDATE_S))
            except (TcError, OSError) as exc:
                self.remove(ctx)
                raise LinkSetupError(f"condition {cond.name}: {exc}") from None
            if not isinstance(sched, ConstantRate):
                shaper.follow(sched, TC_UPDATE_S)
            ctx.event("tc_applied", node=node, condition=cond.name, facts=_facts(facts))
            if facts.get("netem") is False:
                ctx.console.print(f"[yellow]{node}: {facts['netem_error']}[/]")

    def remove(self, ctx: Any) -> None:
        """Remove every qdisc this run installed; keep going on errors and report them all."""
        shapers = self._shapers(ctx)
        errors = []
        while shapers:
            shaper = shapers.pop()
            try:
                ctx.event("tc_removed", node=shaper.node, facts=_facts(shaper.remove()))
            except Exception as exc:
                errors.append(str(exc))
                try:
                    ctx.event("tc_remove_failed", node=shaper.node, error=str(exc))
                except Exception:
                    pass
        if errors:
            ctx.console.print(f"[red]could not remove tc shaping: {'; '.join(errors)}[/]")
