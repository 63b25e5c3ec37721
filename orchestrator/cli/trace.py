"""``hilbed trace info|lint|gen``: inspect, check and make link traces.

Exit status: 0 fine, 1 lint found warnings, 2 the file would be rejected (or
bad arguments); problems print as ``file:line: level: message``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hilbed.orchestrator.cli.output import add_json_flag, add_output, dumps, emit, wants_json

KINDS = ("lora", "ltem", "ieee802154")


def _fmt_rate(kbps: float) -> str:
    return f"{kbps:.4g} kbit/s" if kbps < 1000 else f"{kbps / 1000:.4g} Mbit/s"


def _report(args):
    from hilbed.nodes.link.lint import analyze
    try:
        return analyze(args.file, opportunity_bytes=args.opportunity_bytes, deadline_ms=args.deadline_ms,
                       kind=args.kind)
    except ValueError as exc:
        print(f"hilbed trace: {exc}", file=sys.stderr)
        return None


def cmd_info(args) -> int:
    rep = _report(args)
    if rep is None:
        return 2
    if wants_json(args):
        for f in rep.errors:  # bad input keeps its line on stderr
            print(f, file=sys.stderr)
        emit(args, rep.as_dict())
        return 2 if rep.errors else 0
    if rep.errors:
        for f in rep.findings:
            print(f, file=sys.stderr)
        return 2
    f = rep.facts
    print(f"{rep.path}: {rep.format} trace")
    if rep.format == "mahimahi":
        assumed = " (assumed; set --opportunity-bytes)" if f["opportunity_bytes_assumed"] else ""
        print(f"  opportunities: {f['lines']} x {f['opportunity_bytes']} B{assumed}")
    else:
        print(f"  rows: {f['rows']} (rates {f['min_kbps']:g}..{f['max_kbps']:g} kbit/s)")
    print(f"  duration: {f['duration_s']:.3f} s (loop period)")
    print(f"  mean rate: {_fmt_rate(f['mean_kbps'])}")
    print(f"  1 s windows ({f['windows_1s']}): min {_fmt_rate(f['min_kbps_1s'])}, max {_fmt_rate(f['max_kbps_1s'])}")
    print(f"  longest gap without capacity: {f['max_gap_ms']:g} ms")
    for w in rep.warnings:
        print(f"  {w}")
    return 0


def cmd_lint(args) -> int:
    worst = 0
    js = wants_json(args)
    reports = []
    for path in args.files:
        args.file = path
        rep = _report(args)
        if rep is None:
            return 2
        if js:
            for f in rep.errors:
                print(f, file=sys.stderr)
            reports.append({**rep.as_dict(), "status": "error" if rep.errors else "warning" if rep.warnings
                            else "ok"})
            worst = max(worst, 2 if rep.errors else 1 if rep.warnings else 0)
            continue
        for f in rep.findings:
            print(f, file=sys.stderr if f.level == "error" else sys.stdout)
        if rep.errors:
            worst = 2
        elif rep.warnings:
            worst = max(worst, 1)
        else:
            print(f"{path}: ok ({rep.format}, {_fmt_rate(rep.facts['mean_kbps'])} mean, "
                  f"{rep.facts['duration_s']:.3f} s)")
    if js:
        emit(args, {"ok": worst == 0, "exit": worst, "files": reports})
    return worst


def cmd_gen(args) -> int:
    from hilbed.nodes.link import gen
    from hilbed.nodes.link.traces import write_csv_rates, write_mahimahi
    try:
        if args.kind == "lora":
            cr = args.cr
            if isinstance(cr, str) and "/" in cr:
                cr = int(cr.split("/")[1]) - 4
            tr = gen.gen_lora(args.duration_s, sf=args.sf, bw_khz=args.bw_khz, cr=int(cr),
                              payload_bytes=args.payload_bytes, duty_cycle=args.duty_cycle, preamble=args.preamble)
        elif args.kind == "ltem":
            tr = gen.gen_ltem(args.duration_s, seed=args.seed, median_kbps=args.median_kbps, min_kbps=args.min_kbps,
                              max_kbps=args.max_kbps, sigma_db=args.sigma_db, coherence_s=args.coherence_s,
                              gaps_per_s=args.gaps_per_s, duplex=args.duplex,
                              opportunity_bytes=args.opportunity_bytes)
        else:
            tr = gen.gen_ieee802154(args.duration_s, seed=args.seed, payload_bytes=args.payload_bytes,
                                    ack=not args.no_ack, csma=not args.no_csma)
        out = Path(args.output)
        if out.suffix.lower() == ".csv":
            ts, rs = gen.opportunities_to_rates(tr.times_ms, tr.opportunity_bytes, args.csv_step_ms)
            write_csv_rates(out, ts, [r for r in rs])
            fmt = "csv"
        else:
            write_mahimahi(out, tr.times_ms)
            fmt = "mahimahi"
    except (ValueError, OSError) as exc:
        print(f"hilbed trace gen: {exc}", file=sys.stderr)
        return 2
    summary = {"output": str(out), "format": fmt, "kind": tr.kind, "opportunities": len(tr.times_ms),
               "opportunity_bytes": tr.opportunity_bytes, "duration_ms": tr.times_ms[-1],
               "mean_kbps": round(tr.mean_kbps, 4), "params": tr.params,
               "facts": {k: round(v, 4) if isinstance(v, float) else v for k, v in tr.facts.items()}}
    sys.stdout.write(dumps(summary) + "\n")  # gen always prints its summary as JSON (--json is accepted)
    if fmt == "mahimahi":
        print(f"# scenario link: {{kind: trace, trace: {out.name}, opportunity_bytes: {tr.opportunity_bytes}}}",
              file=sys.stderr)
    return 0


def register(sub) -> None:
    t = sub.add_parser("trace", help="inspect, lint and generate link traces (Mahimahi or CSV t_ms,kbps)")
    ts = t.add_subparsers(dest="trace_cmd", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--opportunity-bytes", type=int, default=None,
                       help="bytes per Mahimahi opportunity (default 1504)")
        p.add_argument("--deadline-ms", type=float, default=None, help="warn about gaps longer than this")
        p.add_argument("--kind", choices=KINDS, default=None, help="check rates against this link's physical range")

    i = ts.add_parser("info", help="duration, mean/min/max rate over 1 s windows, warnings")
    i.add_argument("file")
    common(i)
    add_json_flag(i, "print the facts and findings as JSON on stdout")
    i.set_defaults(fn=cmd_info)

    li = ts.add_parser("lint", help="check traces; exit 1 on warnings, 2 on errors")
    li.add_argument("files", nargs="+")
    common(li)
    add_json_flag(li, "print {ok, exit, files: [facts, findings, status]} as JSON on stdout")
    li.set_defaults(fn=cmd_lint)

    g = ts.add_parser("gen", help="generate a LoRa, LTE-M or 802.15.4 trace (see docs/links.md)")
    gs = g.add_subparsers(dest="kind", required=True)
    lo = gs.add_parser("lora", help="LoRa: SF/BW/CR, AN1200.13 time on air, duty-cycle limit")
    lo.add_argument("--sf", type=int, default=7)
    lo.add_argument("--bw-khz", type=float, default=125.0)
    lo.add_argument("--cr", default="4/5", help="coding rate 4/5..4/8 (or 1..4)")
    lo.add_argument("--payload-bytes", type=int, default=51)
    lo.add_argument("--duty-cycle", type=float, default=0.01, help="0.01 = 1 %% (EU868 g1); 1 = none")
    lo.add_argument("--preamble", type=int, default=8)
    lt = gs.add_parser("ltem", help="LTE-M Cat-M1 uplink: 50..375 kbit/s, slow fading, scheduling gaps")
    lt.add_argument("--seed", type=int, default=0)
    lt.add_argument("--median-kbps", type=float, default=180.0)
    lt.add_argument("--min-kbps", type=float, default=50.0)
    lt.add_argument("--max-kbps", type=float, default=None)
    lt.add_argument("--sigma-db", type=float, default=3.0)
    lt.add_argument("--coherence-s", type=float, default=2.0)
    lt.add_argument("--gaps-per-s", type=float, default=2.0)
    lt.add_argument("--duplex", choices=("hd", "fd"), default="hd")
    lt.add_argument("--opportunity-bytes", type=int, default=125,
                    help="bytes per opportunity (125 = one 1000-bit Cat-M1 transport block)")
    ie = gs.add_parser("ieee802154", help="802.15.4 2.4 GHz, 250 kbit/s PHY with CSMA-CA and ACKs")
    ie.add_argument("--seed", type=int, default=0)
    ie.add_argument("--payload-bytes", type=int, default=116)
    ie.add_argument("--no-ack", action="store_true")
    ie.add_argument("--no-csma", action="store_true")
    for p in (lo, lt, ie):
        p.add_argument("--duration-s", type=float, default=60.0)
        add_output(p, "the trace FILE to write (.csv = rate schedule, else Mahimahi)", required=True)
        p.add_argument("--json", action="store_true", help="accepted for consistency: the summary on stdout is "
                       "always JSON")
        p.add_argument("--csv-step-ms", type=int, default=100, help="bin width when writing CSV")
        p.set_defaults(fn=cmd_gen)
