"""Leases: who is using a lab node right now, agreed on by every controller without a server.

The lease is a small JSON file kept *on the node* (``<workdir>/lease.json`` for
an SSH node, ``<state dir>/leases/<testbed>/<node>.json`` for a local one), so
two laptops in one lab see the same lease. Every change is a compare-and-swap
run as one shell command over the node's transport: a ``mkdir`` lock directory
makes the read-compare-replace atomic among controllers, and the new file is
written to a temporary name and renamed into place.

Expiry is judged on the *node's* clock: the shell stamps ``date +%s`` when it
writes, and the lease stores ``expires_node_s`` on that clock. Controllers'
clocks never enter the decision, so skew between laptops cannot make a live
lease look expired (or a dead one look live). A holder renews every ``ttl/3``;
a holder that dies stops renewing and its lease expires on its own.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import shlex
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from hilbed.orchestrator.errors import RunError
from hilbed.orchestrator.lab.transport import Transport, shell_path

log = logging.getLogger("hilbed.lease")

DEFAULT_TTL_S = 120.0
#: a manual lease (``hilbed lease take``) is not renewed: it lasts this long unless released
MANUAL_TTL_S = 3600.0
MANUAL_RUN_ID = "manual"
#: a lock directory older than this (node clock) was left by a controller that died inside the swap
STALE_LOCK_S = 20
CAS_ATTEMPTS = 6
ABSENT = "-"


class LeaseError(RunError):
    """A lease could not be read or written (the node is unreachable, its disk refuses)."""


class LeaseLost(RunError):
    """A lease we held is gone: someone released it with --force (or it expired and was taken)."""


class LeaseHeld(RunError):
    """The node is leased by someone else; the message names the holder and when the lease expires."""

    def __init__(self, node: str, lease: dict, node_now_s: int):
        self.node, self.lease, self.node_now_s = node, lease, node_now_s
        self.holder = holder_text(lease)
        self.expires_in_s = int(lease.get("expires_node_s", 0)) - node_now_s
        super().__init__(f"node {node} is leased by {self.holder} until {node_time_text(lease.get('expires_node_s'))} "
                         f"(node clock; expires in {self.expires_in_s} s unless renewed): wait, or if that run is "
                         f"gone, `hilbed lease release --force -n {node}`")


def holder_text(lease: Mapping) -> str:
    o = lease.get("owner") or {}
    return f"{o.get('user', '?')} (run {o.get('run_id', '?')})"


def node_time_text(s: Any) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(int(s)))
    except (TypeError, ValueError, OverflowError):
        return "?"


def default_owner(run_id: str | None = None) -> dict:
    """Who takes a lease: user@host names the person and machine, run_id the run (``manual`` from the CLI)."""
    try:
        user = getpass.getuser()
    except Exception:
        user = str(os.getuid())
    return {"user": f"{user}@{socket.gethostname()}", "run_id": run_id or MANUAL_RUN_ID, "pid": os.getpid()}


def same_owner(a: Mapping | None, b: Mapping | None) -> bool:
    """The same person and the same run: a resumed run takes its own dead lease back over."""
    return bool(a and b) and a.get("user") == b.get("user") and a.get("run_id") == b.get("run_id")


def lease_path(testbed: Any, node: str) -> str:
    """Where a node's lease lives: on the node (SSH), or in this machine's state dir (local nodes)."""
    cfg = testbed.nodes[node]
    if cfg.transport.kind == "ssh":
        return f"{cfg.transport.workdir.rstrip('/')}/lease.json"
    from hilbed.orchestrator.lab.health import state_dir
    return str(state_dir() / "leases" / testbed.name / f"{node}.json")


def leased_nodes(testbed: Any) -> list[str]:
    """The nodes a run leases by default: SSH nodes, and local nodes driving a real radio (hardware that
    another run on this machine could also open). Local processes with emulated radios share nothing, so
    the embedded testbed runs (and the test suite running many at once) need no lease."""
    out = []
    for n, c in testbed.nodes.items():
        radio = getattr(c, "radio", None)
        if c.transport.kind != "local" or (radio is not None and radio.port != "emulated"):
            out.append(n)
    return sorted(out)


def _script_lock(path: str) -> str:
    f = shell_path(path)
    return (f"f={f}; l=\"$f.lock\"; mkdir -p \"$(dirname \"$f\")\" || exit 4; n=0; "
            f"while ! mkdir \"$l\" 2>/dev/null; do n=$((n+1)); "
            f"if [ $n -gt 40 ]; then m=$(stat -c %Y \"$l\" 2>/dev/null || echo 0); "
            f"if [ $(( $(date +%s) - m )) -gt {STALE_LOCK_S} ]; then rmdir \"$l\" 2>/dev/null; fi; fi; "
            f"if [ $n -gt 400 ]; then echo BUSY; exit 3; fi; sleep 0.05; done; "
            f"trap 'rmdir \"$l\" 2>/dev/null' EXIT; ")


def read_script(path: str) -> str:
    """Prints ``NOW <node epoch s>`` then the lease file (``-`` when there is none)."""
    f = shell_path(path)
    return f"echo NOW $(date +%s); cat {f} 2>/dev/null || echo {ABSENT}"


def cas_script(path: str, expected: str, new_body: dict | None, ttl_s: float, taken_node_s: int | None) -> str:
    """Replace the lease iff it still reads ``expected``; the node stamps its own clock into the new one."""
    head = _script_lock(path)
    exp = shlex.quote(expected)
    tail = "echo NOW $(date +%s); cat \"$f\" 2>/dev/null || echo " + ABSENT
    if new_body is None:
        write = "rm -f \"$f\""
    else:
        body = json.dumps(new_body, sort_keys=True, separators=(", ", ": "))[:-1]
        taken = str(int(taken_node_s)) if taken_node_s is not None else "$now"
        write = (f"now=$(date +%s); exp=$((now + {int(round(ttl_s))})); "
                 f"printf '%s, \"taken_node_s\": %s, \"renewed_node_s\": %s, \"expires_node_s\": %s}}\\n' "
                 f"{shlex.quote(body)} {taken} \"$now\" \"$exp\" > \"$f.tmp.$$\" && mv -f \"$f.tmp.$$\" \"$f\"")
    return (f"{head}cur=$(cat \"$f\" 2>/dev/null || echo {ABSENT}); "
            f"if [ \"$cur\" = {exp} ]; then {write} || exit 5; echo SWAPPED; else echo CONFLICT; fi; {tail}")


@dataclass
class Observed:
    """A lease as read from the node: the raw text (the swap compares it) and the node's clock then."""
    node: str
    node_now_s: int
    raw: str
    lease: dict | None

    @property
    def live(self) -> bool:
        return self.lease is not None and int(self.lease.get("expires_node_s", 0)) > self.node_now_s

    def facts(self, path: str, status: str) -> dict:
        le = self.lease or {}
        return {"node": self.node, "path": path, "status": status, "owner": le.get("owner"),
                "holder": holder_text(le) if le else None, "taken_node_s": le.get("taken_node_s"),
                "expires_node_s": le.get("expires_node_s"), "ttl_s": le.get("ttl_s"), "node_now_s": self.node_now_s,
                "expires_in_s": (int(le["expires_node_s"]) - self.node_now_s) if le.get("expires_node_s") else None,
                "live": self.live}


def _parse(node: str, out: str, marker: bool = False) -> tuple[str | None, Observed]:
    lines = out.splitlines()
    verdict = None
    if marker:
        if not lines or lines[0] not in ("SWAPPED", "CONFLICT"):
            raise LeaseError(f"node {node}: lease swap answered {out.strip()[:200]!r}")
        verdict, lines = lines[0], lines[1:]
    if not lines or not lines[0].startswith("NOW "):
        raise LeaseError(f"node {node}: cannot read the node's clock for its lease: {out.strip()[:200]!r}")
    now = int(lines[0].split()[1])
    raw = "\n".join(lines[1:]).rstrip("\n")
    lease = None
    if raw != ABSENT:
        try:
            lease = json.loads(raw)
        except ValueError:
            lease = None  # a torn or foreign file: treated as free, replaced by the swap (which compares raw)
        if not isinstance(lease, dict):
            lease = None
    return verdict, Observed(node, now, raw, lease)


class NodeLease:
    """One node's lease file, driven over that node's transport."""

    def __init__(self, node: str, path: str, transport: Transport):
        self.node, self.path, self.transport = node, path, transport

    def _run(self, script: str) -> str:
        try:
            r = self.transport.run(script, timeout=30)
        except Exception as exc:
            raise LeaseError(f"node {self.node}: cannot reach its lease ({self.path}): "
                             f"{getattr(exc, 'problem', None) or exc}") from None
        if r.returncode == 3 or r.stdout.startswith("BUSY"):
            raise LeaseError(f"node {self.node}: its lease lock {self.path}.lock stayed taken (another controller "
                             f"is mid-swap, or remove the stale lock directory)")
        if not r.ok:
            raise LeaseError(f"node {self.node}: lease command failed ({r.returncode}): {r.stderr.strip()[:300]}")
        return r.stdout

    def read(self) -> Observed:
        return _parse(self.node, self._run(read_script(self.path)))[1]

    def swap(self, expected: Observed, new_body: dict | None, ttl_s: float = 0,
             taken_node_s: int | None = None) -> tuple[bool, Observed]:
        out = self._run(cas_script(self.path, expected.raw, new_body, ttl_s, taken_node_s))
        verdict, now = _parse(self.node, out, marker=True)
        return verdict == "SWAPPED", now

    def take(self, owner: dict, ttl_s: float, force: bool = False) -> tuple[str, Observed]:
        """Take (or renew our own) lease. Returns (status, lease now): ``taken`` (new or replaced an expired
        one), ``renewed`` (it was ours), ``borrowed`` (a manual lease of the same user: used, not touched).
        Raises LeaseHeld while someone else's lease is live (unless ``force``)."""
        body = {"owner": dict(owner), "node": self.node, "ttl_s": int(round(ttl_s)),
                "controller_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        cur = self.read()
        for _ in range(CAS_ATTEMPTS):
            le = cur.lease
            mine = le is not None and same_owner(le.get("owner"), owner)
            if cur.live and not mine and not force:
                o = le.get("owner") or {}
                if o.get("run_id") == MANUAL_RUN_ID and o.get("user") == owner.get("user"):
                    return "borrowed", cur
                raise LeaseHeld(self.node, le, cur.node_now_s)
            keep = int(le["taken_node_s"]) if mine and cur.live and le.get("taken_node_s") else None
            ok, cur = self.swap(cur, body, ttl_s, keep)
            if ok:
                return ("renewed" if keep is not None else "taken"), cur
        raise LeaseError(f"node {self.node}: its lease kept changing under us ({CAS_ATTEMPTS} tries)")

    def renew(self, owner: dict, ttl_s: float) -> Observed:
        """Push our lease's expiry on; LeaseHeld/LeaseLost when it is no longer ours (never re-created: a
        lease someone released with --force stays released)."""
        cur = self.read()
        for _ in range(CAS_ATTEMPTS):
            le = cur.lease
            if le is None or not same_owner(le.get("owner"), owner):
                if le is not None and cur.live:
                    raise LeaseHeld(self.node, le, cur.node_now_s)
                raise LeaseLost(f"node {self.node}: our lease is gone (released by someone else, or it expired and "
                                f"was removed)")
            keep = int(le["taken_node_s"]) if le.get("taken_node_s") else None
            ok, cur = self.swap(cur, {**{k: v for k, v in le.items() if k not in
                                         ("taken_node_s", "renewed_node_s", "expires_node_s")}}, ttl_s, keep)
            if ok:
                return cur
        raise LeaseError(f"node {self.node}: its lease kept changing under us ({CAS_ATTEMPTS} tries)")

    def release(self, owner: dict | None, force: bool = False) -> tuple[str, Observed]:
        """Remove the lease when it is ours (any lease with ``force``). Returns (``released``|``free``|``not-ours``)."""
        cur = self.read()
        for _ in range(CAS_ATTEMPTS):
            if cur.raw == ABSENT:
                return "free", cur
            if not force and not (cur.lease and same_owner(cur.lease.get("owner"), owner)):
                return "not-ours", cur
            ok, cur = self.swap(cur, None)
            if ok:
                return "released", cur
        raise LeaseError(f"node {self.node}: its lease kept changing under us ({CAS_ATTEMPTS} tries)")


def _getter(transports: Callable[[str], Transport] | Mapping[str, Transport]) -> Callable[[str], Transport]:
    if callable(transports) and not isinstance(transports, Mapping):
        return transports
    return lambda n: transports[n]  # type: ignore[index]


def read_leases(testbed: Any, transports, nodes: Iterable[str] | None = None) -> dict[str, dict]:
    """Every node's lease as facts (``status``: ``held`` | ``expired`` | ``free``); unreachable -> ``error``."""
    get = _getter(transports)
    out = {}
    for n in (list(nodes) if nodes else list(testbed.nodes)):
        path = lease_path(testbed, n)
        try:
            ob = NodeLease(n, path, get(n)).read()
        except Exception as exc:
            out[n] = {"node": n, "path": path, "status": "error", "error": str(exc)}
            continue
        out[n] = ob.facts(path, "free" if ob.lease is None else ("held" if ob.live else "expired"))
    return out


class LeaseSet:
    """The leases of one run on every node it uses: acquire before touching them, renew while running,
    release at the end. A holder that dies simply stops renewing; its leases expire on the nodes' clocks."""

    def __init__(self, testbed: Any, transports_getter, owner: dict, ttl_s: float = DEFAULT_TTL_S,
                 nodes: Iterable[str] | None = None, on_lost: Callable[[str, str], None] | None = None):
        if ttl_s < 3:
            raise ValueError("lease ttl_s must be at least 3 s (renewed every ttl/3)")
        self.testbed, self.owner, self.ttl_s = testbed, dict(owner), float(ttl_s)
        # one order for everyone: no two runs each hold half a lab
        self.nodes = sorted(leased_nodes(testbed) if nodes is None else nodes)
        self._get = _getter(transports_getter)
        self.on_lost = on_lost
        self.held: dict[str, NodeLease] = {}  # nodes whose lease we took (and must renew and release)
        #: nodes used under the user's own manual lease; taken over by the run when that lease runs out
        self.borrowed: dict[str, NodeLease] = {}
        self.facts: dict[str, dict] = {}
        #: node -> why the lease was lost while renewing (forced away, or taken by another after it expired)
        self.lost: dict[str, str] = {}
        self.renewals = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def acquire(self) -> dict[str, dict]:
        """Take every node's lease or none: LeaseHeld (naming holder and expiry) after giving back what was taken."""
        try:
            for n in self.nodes:
                nl = NodeLease(n, lease_path(self.testbed, n), self._get(n))
                status, ob = nl.take(self.owner, self.ttl_s)
                (self.borrowed if status == "borrowed" else self.held)[n] = nl
                self.facts[n] = ob.facts(nl.path, status)
        except BaseException:
            self.release()
            raise
        return dict(self.facts)

    def renew_once(self) -> None:
        """Renew every held lease, nodes in parallel: one unreachable node must not let the others expire."""
        from concurrent.futures import ThreadPoolExecutor

        def one(item: tuple[str, NodeLease]) -> None:
            n, nl = item
            try:
                if n in self.borrowed:
                    status, ob = nl.take(self.owner, self.ttl_s)
                    if status != "borrowed":  # the manual lease ran out mid-run: the run holds the node now
                        self.held[n] = self.borrowed.pop(n)
                        self.facts[n] = ob.facts(nl.path, status)
                    return
                ob = nl.renew(self.owner, self.ttl_s)
                self.facts[n] = ob.facts(nl.path, self.facts.get(n, {}).get("status", "taken"))
            except (LeaseHeld, LeaseLost) as exc:
                self._lose(n, str(exc))
            except LeaseError as exc:  # unreachable for now: try again next period, the lease may still hold
                log.warning("lease renewal on %s failed: %s", n, exc)

        with self._lock:
            items = [(n, nl) for n, nl in [*self.held.items(), *self.borrowed.items()] if n not in self.lost]
            if items:
                with ThreadPoolExecutor(max_workers=min(16, len(items))) as ex:
                    list(ex.map(one, items))
            self.renewals += 1

    def _lose(self, node: str, why: str) -> None:
        self.lost[node] = why
        self.held.pop(node, None)
        log.warning("lease on %s lost: %s", node, why)
        if self.on_lost:
            try:
                self.on_lost(node, why)
            except Exception:
                log.debug("on_lost handler failed", exc_info=True)

    def start_renewing(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(self.ttl_s / 3):
                self.renew_once()

        self._thread = threading.Thread(target=loop, daemon=True, name="hilbed-lease-renew")
        self._thread.start()

    def stop_renewing(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=35)
            self._thread = None

    def release(self) -> dict[str, str]:
        """Stop renewing and remove our leases; never raises (an unreachable node's lease expires by itself)."""
        from concurrent.futures import ThreadPoolExecutor
        self.stop_renewing()

        def one(item: tuple[str, NodeLease]) -> tuple[str, str]:
            n, nl = item
            try:
                return n, nl.release(self.owner)[0]
            except Exception as exc:
                log.warning("lease release on %s failed (it expires by itself): %s", n, exc)
                return n, f"error: {exc}"

        with self._lock:
            items = list(self.held.items())
            self.held.clear()
            self.borrowed.clear()
        if not items:
            return {}
        with ThreadPoolExecutor(max_workers=min(16, len(items))) as ex:
            return dict(ex.map(one, items))

    def __enter__(self) -> "LeaseSet":
        self.acquire()
        self.start_renewing()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
