"""``hilbed data list|fetch NAME``: datasets and model weights by name (see docs/data.md).

Scenarios name ``cifar10:test`` or ``cifar-resnet:cifar10-resnet20``; these
commands show where each name resolves (data root, mirror, missing) and put
it into the data root with its checksums checked. Exit 2 on an unknown name,
1 when a fetch or a checksum fails (one line on stderr).
"""

from __future__ import annotations

import sys

from hilbed.orchestrator.cli.output import add_json_flag, emit


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def cmd_list(args) -> int:
    from hilbed.nodes.workload import catalog
    checks = catalog.check_all()
    rows = []
    for c in checks:
        e = catalog.CATALOG[c.name]
        rows.append({**c.as_dict(), "kind": "weights" if isinstance(e, catalog.WeightsEntry) else "dataset",
                     "what": e.what})
    data = {"data_dir": str(catalog.data_dir()), "mirror": str(catalog.mirror_dir() or "") or None,
            "entries": rows, "ok": all(r["checksum"] != "bad" for r in rows)}

    def show(_d) -> None:
        from rich.table import Table

        from hilbed.orchestrator.ui import make_console
        con = make_console()
        t = Table(title=f"hilbed data (root {data['data_dir']}; mirror {data['mirror'] or 'unset'})")
        for col in ("name", "kind", "where", "size", "checksum", "path / fetch"):
            t.add_column(col, overflow="fold")
        for r in rows:
            mark = {"ok": "[green]ok[/green]", "bad": f"[red]bad[/red]: {r['detail']}", "-": "-"}[r["checksum"]]
            t.add_row(r["name"], r["kind"], r["where"], _fmt_bytes(r["bytes"]) if r["bytes"] else "-", mark,
                      r["path"] or f"hilbed data fetch {r['name']}")
        con.print(t)

    emit(args, data, show)
    return 0 if data["ok"] else 1


def cmd_fetch(args) -> int:
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    from hilbed.nodes.workload import catalog
    if args.name not in catalog.CATALOG:
        print(f"hilbed data fetch: unknown name {args.name!r} (allowed: {', '.join(catalog.CATALOG)})",
              file=sys.stderr)
        return 2
    cols = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    con = _stderr_console()
    with Progress(*cols, transient=True, console=con, disable=not con.is_terminal) as bar:
        task = bar.add_task(f"fetch {args.name}", total=None)

        def progress(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        try:
            path = catalog.fetch(args.name, progress, force=args.force)
        except catalog.CatalogError as exc:
            bar.stop()
            print(f"hilbed data fetch: {exc}", file=sys.stderr)
            return 1
    c = catalog.CATALOG[args.name].check()
    emit(args, {"name": args.name, "path": str(path), "checksum": "ok" if c.ok else "bad", "bytes": c.bytes},
         lambda _d: print(f"{args.name}: {path} ({c.detail})"))
    return 0 if c.ok else 1


def _stderr_console():
    from rich.console import Console
    return Console(stderr=True)


def register(sub) -> None:
    """Add ``hilbed data list [--json]`` and ``hilbed data fetch NAME [--force] [--json]``."""
    p = sub.add_parser("data", help="datasets and model weights by name: list, fetch",
                       description="Named datasets (cifar10:test, cifar10:train, cifar10:dev, cifar10:fit) and "
                                   "model weights (cifar10-resnet20, cifar10-resnet56) in the data root "
                                   "(HILBED_DATA_DIR, default the user cache) or a local mirror "
                                   "(HILBED_DATA_MIRROR). See docs/data.md.")
    dsub = p.add_subparsers(dest="data_cmd", required=True)
    ls = dsub.add_parser("list", help="each name: where it is (root/mirror/missing), size, checksum status")
    add_json_flag(ls)
    ls.set_defaults(fn=cmd_list)
    f = dsub.add_parser("fetch", help="put NAME into the data root (from the mirror, else the network), "
                                      "checksums verified")
    f.add_argument("name", metavar="NAME")
    f.add_argument("--force", action="store_true", help="fetch again even when a verified copy is there")
    add_json_flag(f)
    f.set_defaults(fn=cmd_fetch)
