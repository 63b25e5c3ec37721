"""Analysis sub-commands: report, compare, fleet, schedule.

Exit status follows the CLI's rule: 0 success, 1 a regression (compare,
schedule run) or a failed action, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hilbed.orchestrator.cli.output import add_json_flag, add_output, deprecated, dumps, emit, wants_json
from hilbed.orchestrator.ui import make_console


def _bad_runs(dirs: list[str]) -> str | None:
    for d in dirs:
        p = Path(d)
        if not ((p / "manifest.json").exists() or (p / "trials.jsonl").exists() or (p / "results.parquet").exists()):
            return f"{d}: not a run directory (no manifest.json, trials.jsonl or results.parquet)"
    return None


def _console(args=None):
    return make_console(stderr=wants_json(args))


# ---------------------------------------------------------------- report ---

def _refuse_runs(cmd: str, runs: list) -> bool:
    """True (after one line on stderr) when a run argument is not a readable run directory."""
    for d in runs:
        if not Path(d).is_dir():
            print(f"hilbed {cmd}: {d}: {'not a directory' if Path(d).exists() else 'no such directory'}",
                  file=sys.stderr)
            return True
    bad = _bad_runs(runs)
    if bad:
        print(bad, file=sys.stderr)
        return True
    return False


def cmd_report(args) -> int:
    from hilbed.analysis.report import build_report
    if _refuse_runs("report", args.runs):
        return 2
    try:
        path = build_report(args.runs, args.output, by=args.by, title=args.title, figures=not args.no_figures)
    except KeyError as exc:
        print(f"hilbed report: {exc.args[0]}", file=sys.stderr)
        return 2
    summary_md = path.parent / "summary.md"
    if wants_json(args):
        emit(args, {"report": str(path), "directory": str(path.parent), "summary_md": str(summary_md)
                    if summary_md.exists() else None, "runs": [str(r) for r in args.runs]})
        return 0
    if args.markdown:
        sys.stdout.write(summary_md.read_text(encoding="utf-8"))
    print(f"report: {path}")
    return 0


# --------------------------------------------------------------- compare ---

def cmd_compare(args) -> int:
    from rich.markup import escape
    from rich.table import Table

    from hilbed.analysis.compare import compare_runs, fmt_delta
    json_file, md_file = args.json_file, args.markdown_file  # the old `--json FILE` / `--markdown FILE`
    if args.output:
        if Path(args.output).suffix.lower() in (".md", ".markdown"):
            md_file = args.output
        else:
            json_file = args.output
    fmt = "json" if args.json else "markdown" if args.markdown else args.format
    bad = _bad_runs([args.base, args.run])
    if bad:
        print(bad, file=sys.stderr)
        return 2
    overrides = {"top1_drop_points": args.top1_drop_points, "p95_latency_increase_pct": args.p95_increase_pct,
                 "miss_rate_increase_points": args.miss_increase_points}
    try:
        cmp = compare_runs(args.base, args.run, overrides, rule=args.rule, by=args.by, n_boot=args.bootstrap,
                           alpha=args.alpha, adjust=not args.per_cell)
    except KeyError as exc:
        print(f"hilbed compare: {exc.args[0]}", file=sys.stderr)
        return 2
    if not cmp.deltas:
        print(f"hilbed compare: no codec x condition cell is in both runs; nothing to compare "
              f"({'; '.join(cmp.missing) or 'no records'})", file=sys.stderr)
        return 2
    if md_file:
        Path(md_file).write_text(cmp.to_markdown(), encoding="utf-8")
    if json_file:
        Path(json_file).write_text(dumps(cmp.to_dict()) + "\n", encoding="utf-8")
    if fmt == "markdown":
        sys.stdout.write(cmp.to_markdown())
    elif fmt == "json":
        sys.stdout.write(dumps(cmp.to_dict()) + "\n")
    else:
        con = _console()
        th = ", ".join(f"{k} {v:g}" for k, v in cmp.thresholds.items())
        t = Table(title=f"{cmp.run_id} vs base {cmp.base_id}",
                  caption=f"thresholds: {th}; rule: {cmp.rule}; intervals at {100 * cmp.level:.4g}%")
        for col in [*cmp.by, "metric", "base", "run", "change [CI]", "threshold", "status"]:
            t.add_column(col, justify="left" if col in (*cmp.by, "metric", "status") else "right")
        colour = {"regression": "bold red", "inconclusive": "yellow", "improved": "green"}
        for d in cmp.deltas:
            cells = fmt_delta(d)  # the status cell keeps its detail ("not enough samples (n=30, need 130)")
            st = colour.get(d.status) or ("yellow" if d.status != "ok" else None)
            cells[-1] = f"[{st}]{escape(cells[-1])}[/]" if st else escape(cells[-1])
            t.add_row(*(str(d.cell[b]) for b in cmp.by), *cells)
        con.print(t)
        for line in cmp.missing + [n for n in cmp.notes if n not in cmp.warnings]:
            con.print(f"note: {line}")
        for w in cmp.warnings:
            con.print(f"[yellow]warning: {escape(w)}[/]")
        text = cmp.verdict_text()
        con.print(f"[bold red]{text}[/] beyond the thresholds" if cmp.failed else text)
    return 1 if cmp.failed else 0


# ----------------------------------------------------------------- fleet ---

def cmd_fleet(args) -> int:
    if _refuse_runs("fleet", args.runs):
        return 2
    from rich.markup import escape
    from rich.table import Table

    from hilbed.analysis import fleet
    from hilbed.analysis.load import load_runs
    df = load_runs(args.runs)
    agg, per = fleet.fleet_table(df), fleet.client_table(df)
    result = {"runs": [str(r) for r in args.runs], "is_fleet": fleet.is_fleet(df), "max_clients": fleet.max_clients(df),
              "fleet": agg.to_dict(orient="records"), "clients": per.to_dict(orient="records")}

    def render(_):
        con = _console(args)
        if not len(agg):
            con.print("no records")
            return
        head, rows = fleet.fleet_rows(agg)
        keep = [i for i, col in enumerate(head) if col != "conditions"]  # names are in --json; the table stays narrow
        head, rows = [head[i] for i in keep], [[row[i] for i in keep] for row in rows]
        t = Table(title=f"fleet: {', '.join(Path(r).name for r in args.runs)}",
                  caption="goodput: images that met the deadline and were decoded, per second of wall span, all "
                          "clients; Jain: fairness of the clients' goodput (1 = fair, 1/n = one client gets all)")
        for i, col in enumerate(head):
            t.add_column(col, justify="left" if i < 3 else "right", no_wrap=i < 2)
        for row in rows:
            t.add_row(*map(escape, row))
        con.print(t)
        if args.clients:
            chead, crows = fleet.client_rows(per)
            ct = Table(title="per client")
            for i, col in enumerate(chead):
                ct.add_column(col, justify="left" if i < 4 else "right")
            for row in crows:
                ct.add_row(*map(escape, row))
            con.print(ct)
        if not result["is_fleet"]:
            con.print("note: every condition ran one client (no fleet)")

    emit(args, result, render)
    return 0


# -------------------------------------------------------------- schedule ---

def cmd_schedule_install(args) -> int:
    from hilbed.orchestrator.cli import scheduled as sch
    from hilbed.orchestrator.cli.defaults import DEFAULT_TESTBED, default_path
    try:
        s, done = sch.install(args.name, args.scenario, args.baseline,
                              testbed=args.testbed or default_path(DEFAULT_TESTBED), backend=args.backend,
                              every=args.every, at=args.at, on_calendar=args.on_calendar, cron=args.cron,
                              state_dir=args.state_dir, enable=not args.no_enable)
    except sch.ScheduleError as exc:
        print(f"hilbed schedule: {exc}", file=sys.stderr)
        return 2
    for line in done:
        print(line)
    print(f"runs every {s.on_calendar if s.backend == 'systemd' else s.cron!r} ({s.backend}); "
          f"history: {s.dir / 'history.jsonl'}; latest report: {s.dir / 'latest'}")
    return 0


def cmd_schedule_list(args) -> int:
    from rich.table import Table

    from hilbed.orchestrator.cli import scheduled as sch
    rows = sch.list_schedules(args.state_dir)
    if wants_json(args):
        emit(args, rows)
        return 0
    if not rows:
        print(f"no schedules in {sch.state_root(args.state_dir)}")
        return 0
    t = Table(title=f"schedules in {sch.state_root(args.state_dir)}")
    for col in ("name", "backend", "when", "installed", "runs", "last run", "verdict", "scenario"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["name"], r["backend"], r["when"], "yes" if r["installed"] else "NO", str(r["runs"]),
                  str(r["last_at"] or "-"), str(r["last_verdict"] or "-"), Path(r["scenario"]).name)
    _console().print(t)
    return 0


def cmd_schedule_remove(args) -> int:
    from hilbed.orchestrator.cli import scheduled as sch
    try:
        for line in sch.remove(args.name, args.state_dir, purge=args.purge):
            print(line)
    except sch.ScheduleError as exc:
        print(f"hilbed schedule: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_schedule_run(args) -> int:
    from hilbed.orchestrator.cli import scheduled as sch
    try:
        rc, entry = sch.run_scheduled(args.name, args.state_dir)
    except sch.ScheduleError as exc:
        print(f"hilbed schedule: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(entry, default=str))
    return rc


def cmd_schedule_pin(args) -> int:
    from hilbed.orchestrator.cli import scheduled as sch
    try:
        s = sch.load_schedule(args.name, args.state_dir)
        sch.pin_baseline(args.baseline, s.dir / "baseline")
    except sch.ScheduleError as exc:
        print(f"hilbed schedule: {exc}", file=sys.stderr)
        return 2
    s.baseline_source = str(Path(args.baseline).resolve())
    sch.save_schedule(s)
    print(f"schedule {s.name}: baseline pinned from {s.baseline_source}")
    return 0


# -------------------------------------------------------------- register ---

def legacy_argv(argv: list[str]) -> list[str]:
    """``compare --json FILE`` / ``--markdown FILE`` (before ``--json`` became a switch) still work:
    a value after them that is not an option and not a directory (runs are directories) is the old FILE.
    The rewritten command prints a deprecation note on stderr."""
    pos = [i for i, a in enumerate(argv) if not a.startswith("-")]
    if not pos or argv[pos[0]] != "compare":
        return argv
    out = argv[:pos[0] + 1]
    rest = argv[pos[0] + 1:]
    i = 0
    while i < len(rest):
        a = rest[i]
        flag, eq, val = a.partition("=")
        if flag in ("--json", "--markdown") and a != "--":
            if not eq and i + 1 < len(rest) and not rest[i + 1].startswith("-") and not Path(rest[i + 1]).is_dir():
                val, eq = rest[i + 1], "="
                i += 1
            if eq:
                new = "--output FILE" if flag == "--json" else "--output FILE.md"
                deprecated(f"`compare {flag} FILE` is now `compare {new}` ({flag} alone prints to stdout); "
                           f"writing {val}")
                out += [f"{flag}-file", val]
                i += 1
                continue
        if a == "--":
            out += rest[i:]
            break
        out.append(a)
        i += 1
    return out


def register(sub) -> None:
    rp = sub.add_parser("report", help="(re)build the HTML report of one or more runs")
    rp.add_argument("runs", nargs="+")
    rp.add_argument("--output", "-o", default=None, help="output directory (default: <first run>/report)")
    rp.add_argument("--by", nargs="+", default=None, metavar="FIELD",
                    help="group by these record fields (default: codec_label condition)")
    rp.add_argument("--title", default=None)
    rp.add_argument("--markdown", action="store_true", help="also print the Markdown summary (for CI logs)")
    add_json_flag(rp, "print {report, directory, summary_md, runs} as JSON on stdout")
    rp.add_argument("--no-figures", action="store_true", help="tables only (faster)")
    rp.set_defaults(fn=cmd_report)

    cp = sub.add_parser("compare", help="compare RUN with BASE_RUN; exit 1 on a statistically supported regression")
    cp.add_argument("base", metavar="BASE_RUN")
    cp.add_argument("run", metavar="RUN")
    cp.add_argument("--top1-drop-points", type=float, default=None, help="override the scenario's threshold")
    cp.add_argument("--p95-increase-pct", type=float, default=None, help="override the scenario's threshold")
    cp.add_argument("--miss-increase-points", type=float, default=None, help="override the scenario's threshold")
    cp.add_argument("--rule", choices=("ci", "significant"), default="ci",
                    help="ci: the whole 95%% interval is past the threshold (default); significant: the estimate is "
                         "past the threshold and the interval excludes zero")
    cp.add_argument("--by", nargs="+", default=None, metavar="FIELD")
    cp.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for p95 (at least 2000; more "
                    "when adjusted intervals need deeper tails)")
    cp.add_argument("--alpha", type=float, default=0.05, help="family-wise error rate (default 0.05)")
    cp.add_argument("--per-cell", action="store_true", help="plain 95%% intervals per cell instead of Bonferroni-"
                    "adjusted simultaneous ones (more sensitive, more false alarms)")
    cp.add_argument("--format", choices=("table", "markdown", "json"), default="table",
                    help="what goes to stdout (--json and --markdown are short for json and markdown)")
    # switches; the old `--json FILE` / `--markdown FILE` still work (legacy_argv), with a note on stderr
    add_json_flag(cp, "print the comparison as JSON on stdout (nothing else goes to stdout)")
    cp.add_argument("--markdown", action="store_true", help="print the comparison as a Markdown table on stdout")
    cp.add_argument("--json-file", default=None, help=argparse.SUPPRESS)
    cp.add_argument("--markdown-file", default=None, help=argparse.SUPPRESS)
    add_output(cp, "also write the comparison to this file: Markdown if it ends in .md, else JSON")
    cp.set_defaults(fn=cmd_compare)

    fp = sub.add_parser("fleet", help="aggregate goodput, misses and fairness per condition group and number of "
                        "clients")
    fp.add_argument("runs", nargs="+", metavar="RUN_DIR")
    fp.add_argument("--clients", action="store_true", help="also print the per-client table")
    add_json_flag(fp, "print {runs, is_fleet, max_clients, fleet: [rows], clients: [rows]} as JSON on stdout")
    fp.set_defaults(fn=cmd_fleet)

    sp = sub.add_parser("schedule", help="scheduled regression runs (systemd user timer or crontab)")
    ssub = sp.add_subparsers(dest="schedule_cmd", required=True)
    state = {"default": None, "help": "state directory (default $HILBED_SCHEDULE_DIR or ~/.local/share/hilbed/schedules)"}
    si = ssub.add_parser("install", help="pin a baseline and install a timer that replays a scenario")
    si.add_argument("name")
    si.add_argument("--scenario", "-s", required=True)
    si.add_argument("--baseline", "-b", required=True, metavar="RUN_DIR", help="run to compare every run with "
                    "(a copy is pinned)")
    si.add_argument("--testbed", "-t", default=None)
    si.add_argument("--backend", choices=("auto", "systemd", "cron"), default="auto")
    si.add_argument("--every", choices=("hourly", "daily", "weekly"), default=None)
    si.add_argument("--at", default=None, metavar="HH:MM", help="time of day (default 03:00)")
    si.add_argument("--on-calendar", default=None, help="raw systemd OnCalendar expression")
    si.add_argument("--cron", default=None, help="raw five-field cron expression")
    si.add_argument("--no-enable", action="store_true", help="write the systemd units but do not enable them")
    si.add_argument("--state-dir", **state)
    si.set_defaults(fn=cmd_schedule_install)
    sl = ssub.add_parser("list", help="schedules, whether installed, last verdict")
    sl.add_argument("--state-dir", **state)
    add_json_flag(sl, "print the schedules as a JSON list on stdout")
    sl.set_defaults(fn=cmd_schedule_list)
    sr = ssub.add_parser("remove", help="uninstall a schedule's timer (history kept unless --purge)")
    sr.add_argument("name")
    sr.add_argument("--purge", action="store_true")
    sr.add_argument("--state-dir", **state)
    sr.set_defaults(fn=cmd_schedule_remove)
    sx = ssub.add_parser("run", help="one scheduled run now (what the timer calls)")
    sx.add_argument("name")
    sx.add_argument("--state-dir", **state)
    sx.set_defaults(fn=cmd_schedule_run)
    sb = ssub.add_parser("pin", help="pin a new baseline run for a schedule")
    sb.add_argument("name")
    sb.add_argument("baseline", metavar="RUN_DIR")
    sb.add_argument("--state-dir", **state)
    sb.set_defaults(fn=cmd_schedule_pin)
