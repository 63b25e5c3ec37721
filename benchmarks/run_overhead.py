#!/usr/bin/env python3
"""Per-trial controller overhead on the embedded testbed, as JSON.

Overhead of a trial = wall time the controller spends on it (from asking the
clients to start it until it asks for the next one) minus the measured work
(first image arrival -> last reply). It covers the start margin, agent round
trips, record handling and the gap between trials.

    python benchmarks/run_overhead.py [--trials 12] [--images 5] [--period-ms 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--images", type=int, default=5)
    ap.add_argument("--period-ms", type=float, default=20.0)
    ap.add_argument("--link", default="direct", choices=["direct", "trace"])
    args = ap.parse_args()

    from hilbed.analysis.load import read_jsonl
    from hilbed.orchestrator.run.runner import Runner

    qualities = [5 + (90 * i) // max(1, args.trials - 1) for i in range(args.trials)]
    link = "{kind: direct}" if args.link == "direct" else "{kind: trace, rate_kbps: 10000}"
    codecs = "\n".join(f"  - {{codec: jpeg, params: {{quality: {q}}}, label: q{q}-{i}}}" for i, q in enumerate(qualities))
    with tempfile.TemporaryDirectory() as d:
        sc = Path(d) / "overhead.yaml"
        sc.write_text(f"name: overhead\nworkload: {{images_per_trial: {args.images}}}\n"
                      f"stream: {{period_ms: {args.period_ms}}}\ncodecs:\n{codecs}\n"
                      f"conditions:\n  - {{name: c, link: {link}}}\n")
        t0 = time.monotonic()
        out = Runner(REPO / "testbed.yaml", sc, results_dir=Path(d) / "runs", quiet=True, make_report=False).execute()
        wall = time.monotonic() - t0
        events = [e for e in read_jsonl(out.run_dir / "events.jsonl") if e["kind"] == "trial_done"]
        recs = read_jsonl(out.run_dir / "trials.jsonl")
    last_result = {}
    for r in recs:
        last_result[r["trial_id"]] = max(last_result.get(r["trial_id"], 0), r["t_result_ns"] or 0)
    per_trial = []
    for i, e in enumerate(events):
        nxt = events[i + 1]["t_call_ns"] if i + 1 < len(events) else e["t_done_ns"]
        work = last_result[e["trial_id"]] - e["start_ns"]
        per_trial.append((nxt - e["t_call_ns"] - work) / 1e6)
    measured = sum(last_result[e["trial_id"]] - e["start_ns"] for e in events) / 1e9
    print(json.dumps({
        "trials": len(events), "images_per_trial": args.images, "period_ms": args.period_ms, "link": args.link,
        "overhead_ms_per_trial": {"p50": round(statistics.median(per_trial), 2),
                                  "mean": round(statistics.mean(per_trial), 2),
                                  "max": round(max(per_trial), 2)},
        "measured_work_s": round(measured, 3),
        "run_wall_s": round(wall, 3),
        "setup_and_teardown_s": round(wall - measured - sum(per_trial) / 1e3, 3),
        "records": out.records, "planned": out.planned,
    }, indent=2))


if __name__ == "__main__":
    main()
