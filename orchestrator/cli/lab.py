"""Lab sub-commands: ``hilbed provision`` and ``hilbed check``.

Exit status: 0 every node ready, 1 a node failed (the table names it and the
fix), 2 bad input.
"""

from __future__ import annotations

from hilbed.orchestrator.ui import make_console

import sys


def _testbed(args):
    from hilbed.orchestrator.config import load_testbed
    return load_testbed(args.testbed)


def cmd_provision(args) -> int:

    from hilbed.orchestrator.lab.provision import ProvisionError, provision, render_report, scenario_assets
    con = make_console()
    tb = _testbed(args)
    assets = scenario_assets(args.scenarios or [])
    nodes = [n for part in (args.nodes or []) for n in part.split(",") if n]
    try:
        rep = provision(tb, nodes=nodes or None, assets=assets, pip_args=args.pip_arg, force=args.force,
                        jobs=args.jobs, installer=args.installer)
    except ProvisionError as exc:
        print(f"hilbed: {exc}", file=sys.stderr)
        return 1
    render_report(rep, con)
    for r in rep.results.values():
        if not r.ok:
            con.print(f"[red]✗ {r.node}[/]: {r.error}")
    return 0 if rep.ok else 1


def cmd_check(args) -> int:

    from hilbed.orchestrator.lab.check import check_testbed, render_checks
    con = make_console()
    tb = _testbed(args)
    nodes = [n for part in (args.nodes or []) for n in part.split(",") if n]
    unknown = [n for n in nodes if n not in tb.nodes]
    if unknown:
        print(f"hilbed: unknown node(s): {', '.join(unknown)} (testbed has: {', '.join(tb.nodes)})", file=sys.stderr)
        return 2
    checks = check_testbed(tb, clock=not args.no_clock, deep=args.deep, nodes=nodes or None)
    render_checks(checks, con, title=f"check: {tb.name}")
    return 0 if all(c.ok for c in checks) else 1


def register(sub) -> None:
    p = sub.add_parser("provision", help="install this hilbed on every SSH node (idempotent, parallel)")
    p.add_argument("--testbed", "-t", default=None, help="testbed YAML (default testbed.yaml)")
    p.add_argument("--scenario", "-s", action="append", default=None, dest="scenarios",
                   help="also push this scenario's traces and codec artifacts (repeatable)")
    p.add_argument("--nodes", "-n", action="append", default=None, help="only these nodes (comma-separated)")
    p.add_argument("--force", action="store_true", help="reinstall even where the node is up to date")
    p.add_argument("--pip-arg", action="append", default=[],
                   help="extra pip argument for missing dependencies, e.g. --pip-arg=--no-index "
                        "--pip-arg=--find-links=/srv/wheels (repeatable)")
    p.add_argument("--installer", choices=("unpack", "pip"), default="unpack",
                   help="how the hilbed wheel goes in: unpack (stdlib, fast, no pip needed) or pip")
    p.add_argument("--jobs", "-j", type=int, default=32, help="nodes provisioned at once")
    p.set_defaults(fn=cmd_provision)

    c = sub.add_parser("check", help="check every node is ready (one table; exit 1 if one is not)")
    c.add_argument("--testbed", "-t", default=None, help="testbed YAML (default testbed.yaml)")
    c.add_argument("--nodes", "-n", action="append", default=None, help="only these nodes (comma-separated)")
    c.add_argument("--no-clock", action="store_true", help="skip the clock-offset probe")
    c.add_argument("--deep", action="store_true", help="check CUDA through torch on the edge even for device: auto")
    c.set_defaults(fn=cmd_check)
