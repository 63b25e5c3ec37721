"""Node health history: every check's result per node, and nodes marked bad (LAVA-style).

Each ``hilbed check`` (and each pre-run check) appends one JSON line per node to
``<state dir>/health.jsonl``. A node whose last ``n`` checks all failed is
*bad*: runs refuse it, naming the failing check, before touching it, until a
passing ``hilbed check`` clears it. Keeping this on the controller (not the
node) means a node that cannot be reached at all still gets marked.

Nodes are keyed by what they physically are (``ssh://user@host:port``; a local
node by testbed and name), so two testbed files naming the same Pi share its
history. The state dir is ``$HILBED_STATE_DIR``, else the user state dir
(``~/.local/state/hilbed``).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any, Iterable

from hilbed.orchestrator.errors import RunError

HISTORY = "health.jsonl"
#: failed checks in a row that mark a node bad (``$HILBED_BAD_AFTER`` overrides)
BAD_AFTER = 3
#: the history is cut back to this many lines per node when the file grows past COMPACT_BYTES
KEEP_PER_NODE = 200
COMPACT_BYTES = 4 * 2**20


class NodeMarkedBad(RunError):
    """A node failed its checks too often in a row; the message names the check and how to clear it."""

    def __init__(self, bad: dict[str, str], n: int):
        self.bad = bad
        parts = "; ".join(f"{node}: {why}" for node, why in bad.items())
        nodes = ",".join(bad)
        super().__init__(f"node(s) marked bad after {n} failed checks in a row, nothing was started: {parts}; "
                         f"fix it, then `hilbed check -n {nodes}` (a passing check clears the mark)")


def state_dir() -> Path:
    env = os.environ.get("HILBED_STATE_DIR")
    if env:
        return Path(env).expanduser()
    try:
        from platformdirs import user_state_dir
        return Path(user_state_dir("hilbed"))
    except ImportError:  # pragma: no cover
        return Path.home() / ".local" / "state" / "hilbed"


def history_path() -> Path:
    return state_dir() / HISTORY


def bad_after() -> int:
    try:
        return max(1, int(os.environ.get("HILBED_BAD_AFTER", BAD_AFTER)))
    except ValueError:
        return BAD_AFTER


def node_key(testbed: Any, node: str) -> str:
    cfg = testbed.nodes[node]
    t = cfg.transport
    if t.kind == "ssh":
        return f"ssh://{t.user or ''}@{t.host}:{t.port}"
    return f"local:{testbed.name}/{node}"


#: check items about what a scenario needs pushed, not about the node: they never count towards "bad"
SCENARIO_ITEMS = ("assets",)


def _health_failures(nc: Any) -> list:
    return [(k, v) for k, v in nc.failures if k not in SCENARIO_ITEMS]


def _failure_text(nc: Any) -> str:
    return "; ".join(f"{k}: {v.text}" for k, v in _health_failures(nc))


def record(checks: Iterable[Any], testbed: Any, source: str = "check") -> list[dict]:
    """Append one line per node check (``NodeCheck``); returns the lines written."""
    at = time.time()
    lines = []
    for nc in checks:
        lines.append({"t": round(at, 3), "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at)),
                      "testbed": testbed.name, "node": nc.node, "key": node_key(testbed, nc.node),
                      "ok": not _health_failures(nc), "failed": [k for k, _ in _health_failures(nc)],
                      "problem": _failure_text(nc), "source": source})
    if not lines:
        return lines
    p = history_path()
    p.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(x, separators=(",", ":")) + "\n" for x in lines).encode()
    fd = os.open(p, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another controller process (a --watch, a run) appends too
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":  # a killed writer's torn line: end it, keep ours whole
            data = b"\n" + data
        os.write(fd, data)
        os.fsync(fd)
        if os.fstat(fd).st_size > COMPACT_BYTES:
            _compact(p)
    finally:
        os.close(fd)  # closing drops the lock
    return lines


def _compact(p: Path) -> None:
    """Keep the last KEEP_PER_NODE lines of every node (called under the history's lock)."""
    per: dict[str, list[str]] = {}
    order = []
    for ln in p.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            k = json.loads(ln)["key"]
        except (ValueError, KeyError, TypeError):
            continue
        per.setdefault(k, []).append(ln)
        order.append((k, len(per[k]) - 1))
    keep = {k: len(v) - KEEP_PER_NODE for k, v in per.items()}
    out = [per[k][i] for k, i in order if i >= keep[k]]
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text("".join(x + "\n" for x in out), encoding="utf-8")
    os.replace(tmp, p)


def load(testbed: Any | None = None, nodes: Iterable[str] | None = None) -> dict[str, list[dict]]:
    """Node name -> its history (oldest first); with a testbed, matched by node key, for its nodes."""
    p = history_path()
    rows = []
    if p.exists():
        for ln in p.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                x = json.loads(ln)
            except ValueError:
                continue  # a torn line from a killed writer
            if isinstance(x, dict) and "key" in x:
                rows.append(x)
    if testbed is None:
        out: dict[str, list[dict]] = {}
        for x in rows:
            out.setdefault(x.get("node", "?"), []).append(x)
        return out
    names = list(nodes) if nodes else list(testbed.nodes)
    keys = {node_key(testbed, n): n for n in names}
    out = {n: [] for n in names}
    for x in rows:
        if x["key"] in keys:
            out[keys[x["key"]]].append(x)
    return out


def streak(entries: list[dict]) -> int:
    """Failed checks in a row at the end of a node's history."""
    k = 0
    for x in reversed(entries):
        if x.get("ok"):
            break
        k += 1
    return k


def status(testbed: Any, n: int | None = None, nodes: Iterable[str] | None = None) -> dict[str, dict]:
    """Per node: ``bad``, the failure ``streak``, the ``last`` entry and the failing check (``problem``)."""
    n = n or bad_after()
    out = {}
    for node, ent in load(testbed, nodes).items():
        s = streak(ent)
        last = ent[-1] if ent else None
        out[node] = {"bad": s >= n, "streak": s, "checks": len(ent), "last": last,
                     "problem": (last or {}).get("problem", "") if s else ""}
    return out


def bad_nodes(testbed: Any, n: int | None = None, nodes: Iterable[str] | None = None) -> dict[str, str]:
    """Nodes whose last ``n`` checks failed -> the failing check of the latest one."""
    return {node: st["problem"] or "failed" for node, st in status(testbed, n, nodes).items() if st["bad"]}


def refuse_bad(testbed: Any, nodes: Iterable[str] | None = None, n: int | None = None) -> None:
    """For the runner, before it touches a node: NodeMarkedBad naming each bad node's failing check."""
    n = n or bad_after()
    bad = bad_nodes(testbed, n, nodes)
    if bad:
        raise NodeMarkedBad(bad, n)
