"""The link-kind interface: controller, client and edge sides of one ``link.kind`` together.

- controller side (runs in the controller, gets the run context duck-typed:
  ``testbed``, ``scenario``, ``clients_for(cond)``, ``agent()``, ``live_agent()``, ``offset()``,
  ``transport()``, ``event()``, ``state``, ``edge_port``): :meth:`setup` once
  per run before agents start, :meth:`apply` for each condition (opens the
  clients' links), :meth:`verify` (facts of what was applied, for the
  record), :meth:`clear` after the condition, :meth:`teardown` at the end;
- client side (in the client agent): :meth:`open_link` returns a ``Link``;
- edge side (in the edge agent): :meth:`open_receiver` for kinds whose data
  reaches the edge by another path than its TCP listener (radios).

A kind's module must import cheaply (heavy dependencies inside methods):
config validation looks kinds up to know the allowed names.
"""

from __future__ import annotations

from typing import Any, ClassVar


class LinkSetupError(RuntimeError):
    """A condition's link could not be made as asked; the message names the condition, node and fix."""


class LinkKind:
    name: ClassVar[str] = ""
    #: the kind needs ``rate_kbps`` or ``trace`` in its ``link:`` block
    needs_rate: ClassVar[bool] = False
    #: the jammer's measured load scales this kind's capacity (the medium file)
    jammable: ClassVar[bool] = False

    # -- controller side -------------------------------------------------
    def setup(self, ctx: Any) -> None:
        """Once per run, before agents start (e.g. start radio emulators)."""

    def apply(self, ctx: Any, cond: Any) -> None:
        """Make the condition's link: by default, open it on every client."""
        self.open_client_links(ctx, cond)

    def verify(self, ctx: Any, cond: Any) -> dict:
        """Facts of what was applied (kept in events.jsonl); empty when there is nothing to check."""
        return {}

    def clear(self, ctx: Any) -> None:
        """Undo :meth:`apply` (called on every path, also after a failed apply)."""
        self.close_client_links(ctx)

    def teardown(self, ctx: Any) -> None:
        """Once per run, at the end (on every path)."""

    # helpers for the controller side
    def client_spec(self, ctx: Any, cond: Any, client: str, index: int) -> dict:
        """The spec a client's :meth:`open_link` gets: the scenario's ``link:`` block, plus what the kind adds.
        ``index``: the client's place in the testbed's clients."""
        return cond.link.model_dump(mode="json")

    def open_client_links(self, ctx: Any, cond: Any) -> None:
        edge = ctx.testbed.edge
        e_off = ctx.offset(edge)["offset_ns"]
        for c in ctx.clients_for(cond):
            # a client's index is its place in the testbed, not in this condition: its seed (and a radio's
            # address) stay the same in every condition
            k = ctx.testbed.clients.index(c)
            ctx.agent(c, "client").call("open_link", timeout=60, spec=self.client_spec(ctx, cond, c, k),
                                        host=ctx.testbed.nodes[edge].address, port=ctx.edge_port,
                                        edge_minus_client_ns=e_off - ctx.offset(c)["offset_ns"],
                                        seed=ctx.scenario.workload.seed + k, secret=ctx.secret)

    def close_edge_receiver(self, ctx: Any) -> None:
        """Close the edge side :meth:`open_receiver` opened; its final counters go to events.jsonl."""
        h = ctx.live_agent(ctx.testbed.edge, "edge")
        if h is not None:
            try:
                ctx.event("link_stats", node=ctx.testbed.edge, condition=ctx.state.get("condition"),
                          result=h.call("close_receiver", timeout=30, kind=self.name))
            except Exception:  # a dying edge: the clients' records are already stored
                pass

    def close_client_links(self, ctx: Any) -> None:
        for n in ctx.testbed.clients:
            h = ctx.live_agent(n, "client")
            if h is not None:
                try:
                    ctx.event("link_stats", node=n, condition=ctx.state.get("condition"),
                              result=h.call("close_link", timeout=30))
                except Exception:  # a dying agent: its records are already stored
                    pass

    # -- client side -----------------------------------------------------
    def open_link(self, spec: dict, host: str, port: int, edge_minus_client_ns: int = 0, seed: int = 0) -> Any:
        raise NotImplementedError

    # -- edge side -------------------------------------------------------
    def open_receiver(self, edge: Any, spec: dict) -> dict:
        """Start receiving this kind's data at the edge; returns facts. Most kinds use the TCP listener."""
        return {}

    def receiver_stats(self) -> dict:
        """Counters of the edge-side receiver (frames, drops...) for ``op_stats``."""
        return {}

    def close_receiver(self, edge: Any) -> dict:
        """Stop receiving; returns the receiver's final counters."""
        return {}
