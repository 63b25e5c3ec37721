"""Lab sub-commands: ``hilbed provision`` and ``hilbed check``.

Every ``hilbed check`` is kept in the node health history (``hilbed.orchestrator.lab.health``):
a node failing N checks in a row is marked bad and runs refuse it until a check passes.
``--json`` prints the result as JSON on stdout and nothing else there.
Exit status: 0 every node ready, 1 a node failed (the table names it and the
fix), 2 bad input.
"""

from __future__ import annotations

import json
import sys
import time

from hilbed.orchestrator.cli.output import add_json_flag, console, emit, to_jsonable


def _testbed(args):
    from hilbed.orchestrator.config import load_testbed
    return load_testbed(args.testbed)


def cmd_provision(args) -> int:

    from hilbed.orchestrator.lab.provision import ProvisionError, provision, render_report, scenario_assets
    con = console(args)
    tb = _testbed(args)
    try:  # the default model is trained here once (cached), not on each edge on its first run
        if args.scenarios:
            con.print("[dim]preparing the scenarios' files (traces, codec artifacts, model weights)...[/]")
        assets = scenario_assets(args.scenarios or [])
    except Exception as exc:
        print(f"hilbed: cannot prepare the files of {', '.join(args.scenarios or [])}: "
              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 2
    nodes = [n for part in (args.nodes or []) for n in part.split(",") if n]
    try:
        rep = provision(tb, nodes=nodes or None, assets=assets, pip_args=args.pip_arg, force=args.force,
                        jobs=args.jobs, installer=args.installer)
    except ProvisionError as exc:
        print(f"hilbed: {exc}", file=sys.stderr)
        return 1
    from dataclasses import asdict

    def render(_):
        render_report(rep, con)
        for r in rep.results.values():
            if not r.ok:
                con.print(f"[red]✗ {r.node}[/]: {r.error}")

    emit(args, {"ok": rep.ok, "seconds": rep.seconds,
                "wheel": {"path": rep.wheel.path, "sha256": rep.wheel.sha256, "version": rep.wheel.version},
                "nodes": {n: {**asdict(r), "ok": r.ok} for n, r in rep.results.items()}}, render)
    return 0 if rep.ok else 1


def _health_lines(tb, checks, before: dict, after: dict) -> list[str]:
    """What the health history says now: newly bad, cleared, still bad."""
    out = []
    for nc in checks:
        b, a = before.get(nc.node, {}), after.get(nc.node, {})
        if a.get("bad") and not b.get("bad"):
            out.append(f"[red]✗ {nc.node}: marked bad[/] after {a['streak']} failed checks in a row "
                       f"({a['problem']}); runs refuse it until a check passes")
        elif a.get("bad"):
            out.append(f"[red]✗ {nc.node}: still marked bad[/] ({a['streak']} failed checks in a row)")
        elif b.get("bad") and nc.ok:
            out.append(f"[green]✓ {nc.node}: cleared[/] (passed after {b['streak']} failed checks)")
        elif a.get("streak"):
            out.append(f"[yellow]! {nc.node}: {a['streak']} failed check(s) in a row[/] (marked bad at "
                       f"{a['n']})")
    return out


def _scenario_assets(tb, args):
    """With ``--scenario``: node -> the pushed files it must have, and the command that pushes them."""
    from hilbed.orchestrator.lab.check import PROVISION_FIX
    if not getattr(args, "scenarios", None):
        return None, PROVISION_FIX
    from hilbed.orchestrator.config import load_scenario
    from hilbed.orchestrator.lab.provision import assets_of
    found = [a for sp in args.scenarios for a in assets_of(load_scenario(sp))]
    out = {n: [a for a in found if a.for_roles(c.roles)] for n, c in tb.nodes.items() if c.transport.kind == "ssh"}
    fix = f"hilbed provision --testbed {args.testbed or 'testbed.yaml'} " + \
        " ".join(f"--scenario {s}" for s in args.scenarios)
    return out, fix


def _check_round(tb, args, nodes):
    from hilbed.orchestrator.lab import health
    from hilbed.orchestrator.lab.check import check_testbed
    n = args.bad_after or health.bad_after()
    names = nodes or list(tb.nodes)
    before = health.status(tb, n, names)
    assets, fix = _scenario_assets(tb, args)
    checks = check_testbed(tb, clock=not args.no_clock, deep=args.deep, nodes=nodes or None, assets=assets,
                           provision_fix=fix)
    if not args.no_record:
        health.record(checks, tb, source="watch" if args.watch else "check")
    after = health.status(tb, n, names)
    for v in after.values():
        v["n"] = n
    return checks, before, after


def _states(checks) -> dict[tuple[str, str], tuple[str, str]]:
    return {(nc.node, k): (it.status, it.text) for nc in checks for k, it in nc.items.items()}


def _as_json(checks, after) -> dict:
    return {"ok": all(c.ok for c in checks), "nodes": {nc.node: {**nc.to_dict(), "health": after.get(nc.node)}
                                                        for nc in checks}}


def _json_line(data) -> None:
    sys.stdout.write(json.dumps(to_jsonable(data), sort_keys=True, allow_nan=False, default=str) + "\n")
    sys.stdout.flush()


def cmd_check(args) -> int:

    from hilbed.orchestrator.lab.check import render_checks
    con = console(args)
    tb = _testbed(args)
    nodes = [n for part in (args.nodes or []) for n in part.split(",") if n]
    unknown = [n for n in nodes if n not in tb.nodes]
    if unknown:
        print(f"hilbed: unknown node(s): {', '.join(unknown)} (testbed has: {', '.join(tb.nodes)})", file=sys.stderr)
        return 2
    if args.watch is not None and args.watch <= 0:
        print("hilbed: --watch needs an interval in seconds above 0", file=sys.stderr)
        return 2
    checks, before, after = _check_round(tb, args, nodes)

    def render(_):
        render_checks(checks, con, title=f"check: {tb.name}")
        for ln in _health_lines(tb, checks, before, after):
            con.print(ln)

    if args.json and args.watch is not None:  # one JSON document per line, per round
        _json_line(_as_json(checks, after))
    else:
        emit(args, _as_json(checks, after), render)
    if args.watch is None:
        return 0 if all(c.ok for c in checks) else 1
    rounds = 1
    prev = _states(checks)
    try:
        while args.count is None or rounds < args.count:
            time.sleep(args.watch)
            checks, before, after = _check_round(tb, args, nodes)
            rounds += 1
            cur = _states(checks)
            stamp = time.strftime("%H:%M:%S")
            changes = [{"node": k[0], "check": k[1], "was": prev.get(k, ("na", ""))[0], "now": v[0], "text": v[1]}
                       for k, v in cur.items() if prev.get(k, ("na", ""))[0] != v[0]]
            prev = cur
            if args.json:
                _json_line({"at": stamp, "changes": changes, **_as_json(checks, after)})
                continue
            if not changes:
                con.print(f"[dim]{stamp} no change ({sum(c.ok for c in checks)}/{len(checks)} ready)[/]")
            for c in changes:
                color = {"ok": "green", "warn": "yellow", "fail": "red"}.get(c["now"], "dim")
                con.print(f"{stamp} {c['node']}: {c['check']}: {c['was']} -> [{color}]{c['now']}[/]"
                          + (f" ({c['text']})" if c["text"] else ""))
            for ln in _health_lines(tb, checks, before, after):
                if "still marked bad" not in ln and "in a row[/] (marked" not in ln:
                    con.print(f"{stamp} {ln}")
    except KeyboardInterrupt:
        pass
    return 0 if all(c.ok for c in checks) else 1


def register(sub) -> None:
    p = sub.add_parser("provision", help="install this hilbed on every SSH node (idempotent, parallel)")
    p.add_argument("--testbed", "-t", default=None, help="testbed YAML (default testbed.yaml)")
    p.add_argument("--scenario", "-s", action="append", default=None, dest="scenarios",
                   help="also push this scenario's traces, codec artifacts and model weights (the default "
                        "model is trained here once) (repeatable)")
    p.add_argument("--nodes", "-n", action="append", default=None, help="only these nodes (comma-separated)")
    p.add_argument("--force", action="store_true", help="reinstall even where the node is up to date")
    p.add_argument("--pip-arg", action="append", default=[],
                   help="extra pip argument for missing dependencies, e.g. --pip-arg=--no-index "
                        "--pip-arg=--find-links=/srv/wheels (repeatable)")
    p.add_argument("--installer", choices=("unpack", "pip"), default="unpack",
                   help="how the hilbed wheel goes in: unpack (stdlib, fast, no pip needed) or pip")
    p.add_argument("--jobs", "-j", type=int, default=32, help="nodes provisioned at once")
    add_json_flag(p)
    p.set_defaults(fn=cmd_provision)

    c = sub.add_parser("check", help="check every node is ready (one table; exit 1 if one is not)")
    c.add_argument("--testbed", "-t", default=None, help="testbed YAML (default testbed.yaml)")
    c.add_argument("--nodes", "-n", action="append", default=None, help="only these nodes (comma-separated)")
    c.add_argument("--no-clock", action="store_true", help="skip the clock-offset probe")
    c.add_argument("--deep", action="store_true", help="check CUDA through torch on the edge even for device: auto")
    c.add_argument("--scenario", "-s", action="append", default=None, dest="scenarios",
                   help="also check every node holds this scenario's pushed files with the right hash (repeatable)")
    add_json_flag(c, "print the result as JSON on stdout (nothing else goes to stdout); with --watch one "
                     "JSON document per line and round")
    c.add_argument("--watch", type=float, default=None, metavar="SECONDS",
                   help="check again every SECONDS and print what changed (Ctrl-C stops)")
    c.add_argument("--count", type=int, default=None, help="with --watch: stop after this many rounds")
    c.add_argument("--no-record", action="store_true", help="do not add this check to the node health history")
    c.add_argument("--bad-after", type=int, default=None,
                   help="failed checks in a row that mark a node bad (default $HILBED_BAD_AFTER or 3)")
    c.set_defaults(fn=cmd_check)
