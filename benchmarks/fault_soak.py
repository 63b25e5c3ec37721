"""Soak the fault-injection suite over many seeds: ``.venv/bin/python benchmarks/fault_soak.py --seeds 10``.

CI runs ``tests/e2e/test_faults.py`` with one seed; a soak finds the rare injection points (a kill between a
record's write and its fsync, a full disk while the manifest is being replaced). Each seed is one pytest run
of the chosen cases with ``HILBED_FAULT_SEED`` set; prints one JSON line per seed and a summary, and exits 1
when any seed failed (its pytest output is kept under --keep).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CASES = "sigkill or sigstop or agent or full_disk"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=5, help="how many seeds (default 5)")
    ap.add_argument("--first", type=int, default=1, help="first seed (default 1)")
    ap.add_argument("-k", default=DEFAULT_CASES, help=f"pytest -k expression (default: {DEFAULT_CASES!r})")
    ap.add_argument("--keep", default="/tmp/hilbed-fault-soak", help="where failing seeds' output goes")
    args = ap.parse_args(argv)
    keep = Path(args.keep)
    failed = []
    t_all = time.monotonic()
    for seed in range(args.first, args.first + args.seeds):
        env = dict(os.environ, HILBED_FAULT_SEED=str(seed))
        env.setdefault("HILBED_CACHE_DIR", str(REPO / ".hilbed-cache"))
        t0 = time.monotonic()
        p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "-k", args.k,
                            "tests/e2e/test_faults.py"], cwd=REPO, env=env, capture_output=True, text=True)
        row = {"seed": seed, "ok": p.returncode == 0, "seconds": round(time.monotonic() - t0, 1),
               "summary": (p.stdout.strip().splitlines() or [""])[-1]}
        if p.returncode != 0:
            keep.mkdir(parents=True, exist_ok=True)
            out = keep / f"seed-{seed}.log"
            out.write_text(p.stdout + p.stderr)
            row["log"] = str(out)
            failed.append(seed)
        print(json.dumps(row), flush=True)
    print(json.dumps({"seeds": args.seeds, "failed": failed, "seconds": round(time.monotonic() - t_all, 1)}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
