"""``hilbed lease list|take|release``: who holds the lab's nodes, taking them by hand, giving them back.

A manual lease (run id ``manual``) is not renewed: it lasts ``--ttl`` unless released. Your own runs use
nodes you leased by hand; everyone else's runs refuse them, naming you and the expiry.
Exit status: 0 done, 1 a node is held by someone else or unreachable, 2 bad input.
"""

from __future__ import annotations

import sys

from hilbed.orchestrator.cli.output import add_json_flag, console, emit


def _setup(args):
    from hilbed.orchestrator.config import load_testbed
    tb = load_testbed(args.testbed)
    nodes = [n for part in (args.nodes or []) for n in part.split(",") if n]
    unknown = [n for n in nodes if n not in tb.nodes]
    if unknown:
        print(f"hilbed: unknown node(s): {', '.join(unknown)} (testbed has: {', '.join(tb.nodes)})", file=sys.stderr)
        return tb, None
    return tb, (nodes or list(tb.nodes))


class _Transports(dict):
    """Transports made on first use and closed together."""

    def __init__(self, tb):
        super().__init__()
        self.tb = tb

    def __missing__(self, node):
        from hilbed.orchestrator.lab.connect import make_transport
        t = self[node] = make_transport(node, self.tb.nodes[node])
        return t

    def close(self):
        for t in self.values():
            try:
                t.close()
            except Exception:
                pass


def cmd_list(args) -> int:
    from rich.table import Table

    from hilbed.orchestrator.lab.lease import node_time_text, read_leases
    tb, nodes = _setup(args)
    if nodes is None:
        return 2
    trs = _Transports(tb)
    try:
        rows = read_leases(tb, trs, nodes)
    finally:
        trs.close()

    def render(_):
        t = Table(title=f"leases: {tb.name}")
        for c in ("node", "state", "holder", "expires (node clock)", "in"):
            t.add_column(c)
        for n, r in rows.items():
            st = r["status"]
            color = {"held": "yellow", "free": "green", "expired": "dim", "error": "red"}[st]
            t.add_row(n, f"[{color}]{st}[/]", r.get("holder") or r.get("error", "") or "-",
                      node_time_text(r["expires_node_s"]) if r.get("expires_node_s") else "-",
                      f"{r['expires_in_s']} s" if st == "held" else "-")
        console(args).print(t)

    emit(args, rows, render)
    return 1 if any(r["status"] == "error" for r in rows.values()) else 0


def cmd_take(args) -> int:
    from hilbed.orchestrator.lab.lease import LeaseError, LeaseHeld, NodeLease, default_owner, lease_path
    tb, nodes = _setup(args)
    if nodes is None:
        return 2
    me = default_owner(args.run_id)
    trs = _Transports(tb)
    taken, rc = [], 0
    try:
        for n in sorted(nodes):
            try:
                status, ob = NodeLease(n, lease_path(tb, n), trs[n]).take(me, args.ttl, force=args.force)
            except (LeaseHeld, LeaseError) as exc:
                print(f"hilbed: {exc}", file=sys.stderr)
                rc = 1
                break
            taken.append(n)
            print(f"{n}: {status} by {me['user']} (run {me['run_id']}) for {args.ttl:g} s")
        if rc and not args.partial:  # all or nothing, like a run
            for n in taken:
                NodeLease(n, lease_path(tb, n), trs[n]).release(me)
            if taken:
                print(f"gave back: {', '.join(taken)}", file=sys.stderr)
    finally:
        trs.close()
    return rc


def cmd_release(args) -> int:
    from hilbed.orchestrator.lab.lease import LeaseError, NodeLease, default_owner, holder_text, lease_path
    tb, nodes = _setup(args)
    if nodes is None:
        return 2
    me = default_owner(args.run_id)
    trs = _Transports(tb)
    rc = 0
    try:
        for n in sorted(nodes):
            try:
                status, ob = NodeLease(n, lease_path(tb, n), trs[n]).release(me, force=args.force)
            except LeaseError as exc:
                print(f"hilbed: {exc}", file=sys.stderr)
                rc = 1
                continue
            if status == "not-ours":
                print(f"hilbed: node {n} is leased by {holder_text(ob.lease or {})}, not by {me['user']} "
                      f"(run {me['run_id']}): left alone (--force releases it)", file=sys.stderr)
                rc = 1
            else:
                print(f"{n}: {status}")
    finally:
        trs.close()
    return rc


def register(sub) -> None:
    """``hilbed lease list|take|release``."""
    from hilbed.orchestrator.lab.lease import MANUAL_RUN_ID, MANUAL_TTL_S
    lp = sub.add_parser("lease", help="who holds the lab's nodes; take or release them by hand")
    lsub = lp.add_subparsers(dest="lease_cmd", required=True)

    def common(p):
        p.add_argument("--testbed", "-t", default=None, help="testbed YAML (default testbed.yaml)")
        p.add_argument("--nodes", "-n", action="append", default=None, help="only these nodes (comma-separated)")

    ls = lsub.add_parser("list", help="every node's lease: holder and expiry (on the node's clock)")
    common(ls)
    add_json_flag(ls)
    ls.set_defaults(fn=cmd_list)
    tk = lsub.add_parser("take", help="lease nodes by hand (all or none; not renewed: lasts --ttl)")
    common(tk)
    tk.add_argument("--ttl", type=float, default=MANUAL_TTL_S, help=f"seconds (default {MANUAL_TTL_S:g})")
    tk.add_argument("--run-id", default=MANUAL_RUN_ID, help="owner's run id (default: manual)")
    tk.add_argument("--force", action="store_true", help="take nodes even from a live lease of someone else")
    tk.add_argument("--partial", action="store_true", help="keep the nodes taken when a later one is held")
    tk.set_defaults(fn=cmd_take)
    rl = lsub.add_parser("release", help="give nodes back (only your own leases unless --force)")
    common(rl)
    rl.add_argument("--run-id", default=MANUAL_RUN_ID, help="owner's run id (default: manual)")
    rl.add_argument("--force", action="store_true", help="release someone else's lease (their run must be gone)")
    rl.set_defaults(fn=cmd_release)
