"""``hilbed plugins``: what plug-ins are installed, where they come from, what they added.

The CLI has loaded them before parsing (``nodes/plugins.py``); this command
shows the result so a user can see why a codec or model name is (not)
available. Exit 1 when one failed to load (the others are still listed).
"""

from __future__ import annotations

from hilbed.orchestrator.cli.output import add_json_flag, emit


def cmd_plugins(args) -> int:
    from hilbed.nodes.plugins import GROUPS, load_plugins
    loads = load_plugins()
    rows = [{"plugin": p.module, "group": p.group or "HILBED_PLUGINS", "entry_point": p.name,
             "distribution": p.dist, "version": p.version, "registered": list(p.registered),
             "ok": p.ok, "error": p.error} for p in loads]

    def show(_data) -> None:
        from rich.table import Table

        from hilbed.orchestrator.ui import make_console
        con = make_console()
        if not rows:
            con.print(f"no plug-ins (entry-point groups: {', '.join(GROUPS)}; or set HILBED_PLUGINS)")
            return
        t = Table(title="hilbed plug-ins")
        for col in ("plugin", "group", "distribution", "version", "registered", "status"):
            t.add_column(col, overflow="fold")
        for r in rows:
            status = "ok" if r["ok"] else f"[red]error[/red]: {r['error']}"
            t.add_row(r["plugin"] + (f" ({r['entry_point']})" if r["entry_point"] else ""), r["group"],
                      r["distribution"] or "-", r["version"] or "-", ", ".join(r["registered"]) or "-", status)
        con.print(t)

    emit(args, {"plugins": rows, "ok": all(r["ok"] for r in rows)}, show)
    return 0 if all(r["ok"] for r in rows) else 1


def register(sub) -> None:
    """Add ``hilbed plugins [--json]``."""
    p = sub.add_parser("plugins", help="list installed plug-ins (entry points, HILBED_PLUGINS) and what they add",
                       description="List plug-ins: HILBED_PLUGINS modules and entry points of the groups "
                                   "hilbed.codecs, hilbed.models, hilbed.link_kinds, hilbed.roles, "
                                   "hilbed.datasets, with their distribution, version, what each registered "
                                   "and whether it loaded. Exit 1 when one failed.")
    add_json_flag(p, "print {plugins: [...], ok} as JSON on stdout")
    p.set_defaults(fn=cmd_plugins)
