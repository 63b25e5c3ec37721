"""``hilbed``: the command line.

Exit status: 0 success, 1 a run failed or a regression was found, 2 bad input
(the message names file:line, the field and what is allowed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hilbed.nodes.plugins import load_plugins
from hilbed.orchestrator.cli import analysis, codecs, data, flash, lab, lease, plugins, trace
from hilbed.orchestrator.cli.defaults import DEFAULT_SCENARIO, DEFAULT_TESTBED, default_path
from hilbed.orchestrator.errors import RunError
from hilbed.orchestrator.yamlsrc import ConfigError

def _console():
    from hilbed.orchestrator.ui import make_console
    return make_console()


def cmd_validate(args) -> int:
    """Each file on its own; with --testbed, every scenario also against that testbed (all its conditions
    must be applicable there)."""
    from hilbed.orchestrator.config import detect_kind, load_scenario, load_testbed
    from hilbed.orchestrator.pairing import check_pair
    con = _console()
    bad = 0
    testbed = None
    if args.pair_testbed:
        try:
            testbed = load_testbed(args.pair_testbed)
        except ConfigError as exc:
            print(exc.one_line(), file=sys.stderr)
            return 2
    for f in args.files:
        try:
            kind = detect_kind(f)
            cfg = (load_testbed if kind == "testbed" else load_scenario)(f)
            if kind == "scenario" and testbed is not None:
                check_pair(testbed, cfg, args.pair_testbed)
                kind += f" on {args.pair_testbed}"
            con.print(f"{f}: ok ({kind})")
        except ConfigError as exc:
            print(exc.one_line(), file=sys.stderr)
            bad += 1
    return 2 if bad else 0


def cmd_plan(args) -> int:
    from rich.table import Table

    from hilbed.orchestrator.config import load_scenario, load_testbed
    from hilbed.orchestrator.pairing import check_pair
    from hilbed.orchestrator.plan import make_plan
    tb = load_testbed(args.testbed)
    sc = load_scenario(args.scenario)
    check_pair(tb, sc, args.testbed)
    plan = make_plan(sc, tb)
    con = _console()
    table = Table(title=f"plan: {sc.name} on {tb.name}")
    for col in ("#", "trial id", "codec variant", "condition", "link", "jamming", "deadline ms", "rep", "images"):
        table.add_column(col, justify="right" if col in ("#", "deadline ms", "rep", "images") else "left")
    for t in plan.trials:
        link = t.condition.link
        ldesc = link.kind + (f" {link.rate_kbps:g} kbit/s" if link.rate_kbps else "") + \
            (f" {Path(link.trace).name}" if link.trace else "") + (f" +{link.delay_ms:g} ms" if link.delay_ms else "")
        table.add_row(str(t.index), t.id, t.codec.display, t.condition.name, ldesc, t.condition.jamming,
                      f"{t.deadline_ms:g}", str(t.repetition), str(t.n_images))
    con.print(table)
    est = plan.estimated_s()
    con.print(f"{len(sc.codecs)} codec variants x {len(sc.conditions)} conditions x {sc.repetitions} repetitions "
              f"= {len(plan.trials)} trials, {plan.n_images} images on {len(tb.clients)} client(s); "
              f"estimated duration {est / 60:.1f} min (+ model load)")
    return 0


def _print_outcome(out) -> None:
    from rich.table import Table
    con = _console()
    if out.summary is not None and len(out.summary):
        t = Table(title=f"summary: {out.run_dir.name}")
        for col in ("codec", "condition", "n", "top-1 %", "top-5 %", "mean bytes", "e2e p50 ms", "e2e p95 ms", "miss %"):
            t.add_column(col, justify="left" if col in ("codec", "condition") else "right")
        for _, r in out.summary.iterrows():
            t.add_row(str(r.codec_label), str(r.condition), str(int(r.n)), f"{100 * r.top1:.1f}", f"{100 * r.top5:.1f}",
                      f"{r.bytes_mean:.0f}", f"{r.e2e_p50_ms:.1f}", f"{r.e2e_p95_ms:.1f}", f"{100 * r.miss_rate:.1f}")
        con.print(t)
    con.print(f"run {out.state}: {out.records}/{out.planned} image records in {out.wall_s:.1f} s")
    con.print(f"run directory: {out.run_dir}")
    if out.report:
        con.print(f"report: {out.report}")


def cmd_run(args) -> int:
    from hilbed.orchestrator.run.runner import Runner
    runner = Runner(args.testbed, args.scenario, results_dir=args.results_dir, quiet=args.quiet,
                    make_report=not args.no_report)
    out = runner.execute()
    _print_outcome(out)
    return 0 if out.state == "complete" and out.records == out.planned else 1


def cmd_resume(args) -> int:
    from hilbed.orchestrator.run.runner import Runner
    runner = Runner(resume_dir=args.run_dir, quiet=args.quiet, accept_changed_inputs=args.accept_changed_inputs,
                    force_unlock=args.force_unlock)
    out = runner.execute()
    _print_outcome(out)
    return 0 if out.state == "complete" and out.records == out.planned else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hilbed", description="Hardware-in-the-loop testbed for DNN offloading "
                                "over constrained wireless links.")
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="replay a scenario on a testbed")
    r.add_argument("scenario", nargs="?", default=None, help=f"scenario YAML (default {DEFAULT_SCENARIO})")
    r.add_argument("--testbed", "-t", default=None, help=f"testbed YAML (default {DEFAULT_TESTBED})")
    r.add_argument("--results-dir", default=None, help="where runs/<id> go (default: testbed's results_dir)")
    r.add_argument("--quiet", "-q", action="store_true", help="no progress display")
    r.add_argument("--no-report", action="store_true", help="skip building report/ (`hilbed report` builds it later)")
    r.set_defaults(fn=cmd_run)

    v = sub.add_parser("validate", help="check testbed/scenario YAML files")
    v.add_argument("files", nargs="+")
    v.add_argument("--testbed", "-t", dest="pair_testbed", default=None,
                   help="also check each scenario against this testbed")
    v.set_defaults(fn=cmd_validate)

    pl = sub.add_parser("plan", help="print the trial matrix of a scenario")
    pl.add_argument("scenario")
    pl.add_argument("--testbed", "-t", default=None)
    pl.set_defaults(fn=cmd_plan)

    rs = sub.add_parser("resume", help="finish an interrupted run without redoing finished images")
    rs.add_argument("run_dir")
    rs.add_argument("--quiet", "-q", action="store_true")
    rs.add_argument("--accept-changed-inputs", action="store_true",
                    help="resume although a trace, dataset, weight or artifact changed (recorded in the manifest)")
    rs.add_argument("--force-unlock", action="store_true",
                    help="take over the run directory's lock held on another host (the run there must be gone)")
    rs.set_defaults(fn=cmd_resume)

    for register in (trace.register, lab.register, codecs.register, analysis.register, plugins.register,
                     data.register, lease.register, flash.register):
        register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    for plugin in load_plugins():  # before parsing: plug-ins add codecs, link kinds and roles that configs name
        if not plugin.ok:
            print(f"hilbed: plug-in {plugin.module} failed to load: {plugin.error}", file=sys.stderr)
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "testbed", "x") is None:
        args.testbed = default_path(DEFAULT_TESTBED)
    if getattr(args, "scenario", "x") is None:
        args.scenario = default_path(DEFAULT_SCENARIO)
    try:
        return args.fn(args)
    except ConfigError as exc:
        print(exc.one_line(), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if isinstance(exc, RunError):
            print(f"hilbed: {exc}", file=sys.stderr)
            return 1
        raise


