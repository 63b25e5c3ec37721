"""``hilbed``: the command line.

Exit status: 0 success, 1 a run failed or a regression was found, 2 bad input
(the message names file:line, the field and what is allowed).

Output (docs/cli.md, :mod:`.output`): ``--json`` is a switch that puts the
result on stdout as one JSON document and nothing else there; ``--output PATH``
writes a file; ``--version`` prints ``hilbed <version>``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from hilbed.nodes.plugins import load_plugins
from hilbed.orchestrator.cli import analysis, codecs, data, export, flash, lab, lease, plugins, trace
from hilbed.orchestrator.cli.defaults import DEFAULT_SCENARIO, DEFAULT_TESTBED, default_path
from hilbed.orchestrator.cli.output import add_json_flag, add_output, emit, wants_json, write_json
from hilbed.orchestrator.errors import RunError
from hilbed.orchestrator.yamlsrc import ConfigError


def _console(args=None):
    """Human output: stdout, or stderr when ``--json`` keeps stdout for the JSON document."""
    from hilbed.orchestrator.ui import make_console
    return make_console(stderr=wants_json(args))


def version_text() -> str:
    """``hilbed <version>`` and, on a second line, the Python and (if installed) torch versions."""
    import importlib.metadata as md
    import importlib.util
    import platform
    try:
        ver = md.version("hilbed")
    except md.PackageNotFoundError:
        ver = "unknown (not installed)"
    extra = f"Python {platform.python_version()}"
    if importlib.util.find_spec("torch") is not None:
        try:
            extra += f", torch {md.version('torch')}"
        except md.PackageNotFoundError:
            pass
    return f"hilbed {ver}\n{extra}"


def cmd_validate(args) -> int:
    """Each file on its own; with --testbed, every scenario also against that testbed (all its conditions
    must be applicable there)."""
    from hilbed.orchestrator.config import detect_kind, load_scenario, load_testbed
    from hilbed.orchestrator.pairing import check_pair, with_clients
    con = _console(args)
    bad = 0
    results = []
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
                check_pair(with_clients(testbed, cfg, args.pair_testbed), cfg, args.pair_testbed)
                kind += f" on {args.pair_testbed}"
            if not wants_json(args):
                con.print(f"{f}: ok ({kind})")
            results.append({"file": str(f), "ok": True, "kind": kind, "error": None})
        except ConfigError as exc:
            print(exc.one_line(), file=sys.stderr)
            results.append({"file": str(f), "ok": False, "kind": None, "error": exc.one_line()})
            bad += 1
    emit(args, {"ok": not bad, "testbed": args.pair_testbed, "files": results})
    return 2 if bad else 0


def cmd_plan(args) -> int:
    from rich.table import Table

    from hilbed.orchestrator.config import load_scenario, load_testbed
    from hilbed.orchestrator.pairing import check_pair, with_clients
    from hilbed.orchestrator.plan import make_plan
    sc = load_scenario(args.scenario)
    tb = with_clients(load_testbed(args.testbed), sc, args.testbed)
    check_pair(tb, sc, args.testbed)
    plan = make_plan(sc, tb)
    est = plan.estimated_s()
    if wants_json(args):
        emit(args, _plan_dict(plan, sc, tb, est, args))
        return 0
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
    con.print(f"{len(sc.codecs)} codec variants x {len(sc.conditions)} conditions x {sc.repetitions} repetitions "
              f"= {len(plan.trials)} trials, {plan.n_images} images on {len(tb.clients)} client(s); "
              f"estimated duration {est / 60:.1f} min (+ model load)")
    return 0


def _link_dict(link) -> dict:
    return {"kind": link.kind, "rate_kbps": link.rate_kbps, "trace": str(link.trace) if link.trace else None,
            "delay_ms": link.delay_ms}


def _plan_dict(plan, sc, tb, est: float, args) -> dict:
    trials = [{"index": t.index, "id": t.id, "codec": t.codec.display, "condition": t.condition.name,
               "link": _link_dict(t.condition.link), "jamming": t.condition.jamming, "deadline_ms": t.deadline_ms,
               "repetition": t.repetition, "images": t.n_images} for t in plan.trials]
    return {"scenario": sc.name, "scenario_file": str(args.scenario), "testbed": tb.name,
            "testbed_file": str(args.testbed), "codec_variants": len(sc.codecs), "conditions": len(sc.conditions),
            "repetitions": sc.repetitions, "n_trials": len(plan.trials), "n_images": plan.n_images,
            "clients": len(tb.clients), "estimated_s": round(est, 3), "trials": trials}


def _outcome_dict(out) -> dict:
    summary = []
    if out.summary is not None and len(out.summary):
        summary = out.summary.to_dict(orient="records")
    return {"run_dir": str(out.run_dir), "run_id": out.run_dir.name, "state": out.state, "records": out.records,
            "planned": out.planned, "wall_s": out.wall_s, "report": str(out.report) if out.report else None,
            "ok": out.state == "complete" and out.records == out.planned, "summary": summary}


def _finish_run(args, out) -> int:
    if getattr(args, "output", None):
        write_json(args.output, _outcome_dict(out))
    if wants_json(args):
        emit(args, _outcome_dict(out))
    else:
        _print_outcome(out)
    return 0 if out.state == "complete" and out.records == out.planned else 1


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


def _ray_missing(executor: str | None) -> str | None:
    """The one-line install hint when ``--executor ray`` is asked for without ray installed."""
    if executor != "ray":
        return None
    from hilbed.orchestrator.scale.executor import ExecutorError, require_ray
    try:
        require_ray()
    except ExecutorError as exc:
        return str(exc)
    return None


def cmd_run(args) -> int:
    """One testbed and the local executor: the plain run. Several testbeds (or Ray): one run over the benches
    (:mod:`hilbed.orchestrator.run.benches`)."""
    testbeds = args.testbed if isinstance(args.testbed, list) else [args.testbed]
    hint = _ray_missing(args.executor)
    if hint:
        print(f"hilbed: {hint}", file=sys.stderr)
        return 2
    if len(testbeds) == 1 and args.executor == "local":
        from hilbed.orchestrator.run.runner import Runner
        runner = Runner(testbeds[0], args.scenario, results_dir=args.results_dir, quiet=args.quiet,
                        make_report=not args.no_report, console=_console(args))
        return _finish_run(args, runner.execute())
    from hilbed.orchestrator.run.benches import BenchRun
    run = BenchRun(testbeds, args.scenario, results_dir=args.results_dir, executor=args.executor,
                   ray_address=args.ray_address, quiet=args.quiet, make_report=not args.no_report,
                   console=_console(args))
    return _finish_run(args, run.execute())


def cmd_resume(args) -> int:
    from hilbed.orchestrator.run.benches import BenchRun, is_bench_run
    if is_bench_run(args.run_dir):  # a run over several testbeds: each unfinished part on its bench
        hint = _ray_missing(args.executor)
        if hint:
            print(f"hilbed: {hint}", file=sys.stderr)
            return 2
        run = BenchRun(resume_dir=args.run_dir, executor=args.executor, ray_address=args.ray_address,
                       quiet=args.quiet, accept_changed_inputs=args.accept_changed_inputs,
                       force_unlock=args.force_unlock, console=_console(args))
        return _finish_run(args, run.execute())
    from hilbed.orchestrator.run.runner import Runner
    runner = Runner(resume_dir=args.run_dir, quiet=args.quiet, accept_changed_inputs=args.accept_changed_inputs,
                    force_unlock=args.force_unlock, console=_console(args))
    return _finish_run(args, runner.execute())


class _VersionAction(argparse.Action):
    """``--version``: two plain lines (argparse's own action would reflow them into one)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings=option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text())
        parser.exit(0)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hilbed", description="Hardware-in-the-loop testbed for DNN offloading "
                                "over constrained wireless links.",
                                epilog="Every command that prints a result takes --json (the result as JSON on "
                                       "stdout, nothing else there); --output/-o PATH writes a product to a file. "
                                       "Exit status: 0 ok, 1 a run failed or a regression, 2 bad input.")
    p.add_argument("--version", "-V", action=_VersionAction, help="print the version (and Python's, torch's) and exit")
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="replay a scenario on a testbed")
    r.add_argument("scenario", nargs="?", default=None, help=f"scenario YAML (default {DEFAULT_SCENARIO})")
    r.add_argument("--testbed", "-t", action="append", default=None,
                   help=f"testbed YAML (default {DEFAULT_TESTBED}); repeat it to spread the conditions over "
                        "several testbeds (benches) in one run (docs/scale.md)")
    r.add_argument("--results-dir", default=None, help="where runs/<id> go (default: the (first) testbed's "
                   "results_dir)")
    r.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="several testbeds: 'local' runs their parts one after another here, 'ray' runs each "
                        "bench's parts as Ray tasks at once (needs `pip install 'hilbed[ray]'`)")
    r.add_argument("--ray-address", default=os.environ.get("RAY_ADDRESS"),
                   help="Ray cluster to join with --executor ray (default $RAY_ADDRESS; none: a local Ray with "
                        "one resource per bench)")
    r.add_argument("--quiet", "-q", action="store_true", help="no progress display")
    r.add_argument("--no-report", action="store_true", help="skip building report/ (`hilbed report` builds it later)")
    add_json_flag(r, "print the outcome (run directory, state, records, summary rows) as JSON on stdout; "
                     "progress goes to stderr")
    add_output(r, "also write the outcome as JSON to this file", short=False)
    r.set_defaults(fn=cmd_run)

    v = sub.add_parser("validate", help="check testbed/scenario YAML files")
    v.add_argument("files", nargs="+")
    v.add_argument("--testbed", "-t", dest="pair_testbed", default=None,
                   help="also check each scenario against this testbed")
    add_json_flag(v, "print {ok, testbed, files: [{file, ok, kind, error}]} as JSON on stdout "
                     "(errors still go to stderr, one line each)")
    v.set_defaults(fn=cmd_validate)

    pl = sub.add_parser("plan", help="print the trial matrix of a scenario")
    pl.add_argument("scenario")
    pl.add_argument("--testbed", "-t", default=None)
    add_json_flag(pl, "print the trial matrix and totals as JSON on stdout")
    pl.set_defaults(fn=cmd_plan)

    rs = sub.add_parser("resume", help="finish an interrupted run without redoing finished images")
    rs.add_argument("run_dir")
    rs.add_argument("--quiet", "-q", action="store_true")
    rs.add_argument("--accept-changed-inputs", action="store_true",
                    help="resume although a trace, dataset, weight or artifact changed (recorded in the manifest)")
    rs.add_argument("--force-unlock", action="store_true",
                    help="take over the run directory's lock held on another host (the run there must be gone)")
    rs.add_argument("--executor", choices=("local", "ray"), default=None,
                    help="a run over several testbeds: resume its parts here or on Ray (default: as it ran)")
    rs.add_argument("--ray-address", default=os.environ.get("RAY_ADDRESS"),
                    help="Ray cluster to join with --executor ray (default $RAY_ADDRESS)")
    add_json_flag(rs, "print the outcome as JSON on stdout (as `run --json`)")
    add_output(rs, "also write the outcome as JSON to this file", short=False)
    rs.set_defaults(fn=cmd_resume)

    for register in (trace.register, lab.register, codecs.register, analysis.register, plugins.register,
                     data.register, lease.register, flash.register, export.register):
        register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command. A reader that goes away early (``hilbed plan X --json | head -1``) ends it quietly:
    no traceback, the rest of the output is dropped and the exit status is 141 (128 + SIGPIPE, what a
    program killed by SIGPIPE reports in the shell)."""
    try:
        for plugin in load_plugins():  # before parsing: plug-ins add codecs, link kinds and roles that configs name
            if not plugin.ok:
                print(f"hilbed: plug-in {plugin.module} failed to load: {plugin.error}", file=sys.stderr)
        parser = build_parser()
        args = parser.parse_args(analysis.legacy_argv(list(sys.argv[1:] if argv is None else argv)))
        if getattr(args, "testbed", "x") is None:
            args.testbed = default_path(DEFAULT_TESTBED)
        if getattr(args, "scenario", "x") is None:
            args.scenario = default_path(DEFAULT_SCENARIO)
        try:
            rc = args.fn(args)
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
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit where it cannot be caught
        return rc
    except SystemExit as exc:
        if not isinstance(exc.__context__, BrokenPipeError):  # rich's console exits 1 on a closed pipe
            raise
        return 141
    except BrokenPipeError:
        import os
        try:  # the interpreter flushes stdout at exit: point it at /dev/null so that flush cannot fail again
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141
