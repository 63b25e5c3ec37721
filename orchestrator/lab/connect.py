"""Which transport a node's config asks for: local process or SSH (fabric/paramiko imported only then)."""

from __future__ import annotations

from typing import Any

from hilbed.orchestrator.errors import SetupError
from hilbed.orchestrator.lab.transport import LocalTransport, Transport


def make_transport(node: str, cfg: Any) -> Transport:
    t = cfg.transport
    if t.kind == "local":
        return LocalTransport(node, t.python)
    if t.kind == "ssh":
        from hilbed.orchestrator.lab.ssh import SSHTransport
        return SSHTransport(node, t)
    raise SetupError(f"node {node}: unknown transport {t.kind!r}")
