"""Analysis sub-commands: report (more come with the analysis package)."""

from __future__ import annotations

import sys
from pathlib import Path


def cmd_report(args) -> int:
    from analysis.report import build_report
    for d in args.runs:
        if not (Path(d) / "manifest.json").exists() and not (Path(d) / "trials.jsonl").exists():
            print(f"{d}: not a run directory (no manifest.json or trials.jsonl)", file=sys.stderr)
            return 2
    path = build_report(args.runs, args.output)
    print(f"report: {path}")
    return 0


def register(sub) -> None:
    rp = sub.add_parser("report", help="(re)build the HTML report of one or more runs")
    rp.add_argument("runs", nargs="+")
    rp.add_argument("--output", "-o", default=None, help="output directory (default: <first run>/report)")
    rp.set_defaults(fn=cmd_report)
