"""``direct``: plain TCP to the edge, unshaped (a wired link, or a lab network as it is)."""

from __future__ import annotations

from typing import Any

from hilbed.nodes.link.kind import LinkKind


class DirectKind(LinkKind):
    name = "direct"

    def open_link(self, spec: dict, host: str, port: int, edge_minus_client_ns: int = 0, seed: int = 0) -> Any:
        from hilbed.nodes.link.tcp import DirectLink
        return DirectLink(host, port, edge_minus_client_ns)
