#!/usr/bin/env python3
"""Wall time of one eval-codecs sweep run sequentially in-process vs on a local Ray, as JSON.

The sequential side is what ``hilbed eval-codecs`` does by default (each
variant over all images, one after the other); the Ray side is
``--executor ray`` (each (variant, shard) a 1-CPU task) on a local Ray with
``--workers`` CPUs. Ray's start-up is timed apart from the sweep. Both sides
must give the same rows (timings aside): ``rows_equal`` says whether they did.
``overhead_ms_per_task`` is the wall time of ``--trivial`` empty tasks divided
by their number (what each task costs in scheduling and transfer).

The load average before and after is recorded: on a shared machine other
processes take CPU time from both sides and the speedup drops.

    python benchmarks/sweep_scale.py [--n 2400] [--codecs SPEC ...] [--workers 2] [--shard-size 600]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("HILBED_CACHE_DIR", str(REPO / ".hilbed-cache"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="synthetic")
    ap.add_argument("--n", type=int, default=2400, help="images (default 2400: 20-35 s sequential on one shared core)")
    ap.add_argument("--codecs", nargs="+", default=["jpeg:quality=20,40,60,80", "webp:quality=20,40,60,80"])
    ap.add_argument("--workers", type=int, default=2, help="CPUs of the local Ray (default 2)")
    ap.add_argument("--shard-size", type=int, default=600)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--trivial", type=int, default=200, help="empty tasks for the per-task overhead")
    a = ap.parse_args()

    from hilbed.nodes.codecs.fitting import load_images, load_target, open_dataset, set_threads
    from hilbed.nodes.codecs.fitting.evaluate import evaluate_variant, parse_variants
    from hilbed.orchestrator.scale import RayExecutor, Task, require_ray
    from hilbed.orchestrator.scale.sweep import Settings, run_sweep
    set_threads(1)
    load0 = os.getloadavg()
    variants = parse_variants(a.codecs)
    x, y = load_images(open_dataset(a.dataset, 32, "test", a.n), a.n, shuffle=False)
    model = load_target("synthetic-cnn", "cpu", 32)

    t0 = time.perf_counter()
    seq = [evaluate_variant(v, x, y, model, a.batch) for v in variants]
    t_seq = time.perf_counter() - t0
    print(f"sequential: {t_seq:.1f} s", file=sys.stderr)

    ray = require_ray()
    t0 = time.perf_counter()
    ray.init(num_cpus=a.workers, include_dashboard=False, log_to_driver=False)
    t_init = time.perf_counter() - t0
    try:
        ex = RayExecutor()
        # the workers load the model and import codecs once per process: warm them as a real cluster would be
        t0 = time.perf_counter()
        k = a.batch * a.workers * 2
        run_sweep(ex, variants[:1], x[:k], y[:k], Settings("synthetic-cnn", batch=a.batch), shard_size=a.batch)
        t_warm = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = run_sweep(ex, variants, x, y, Settings("synthetic-cnn", batch=a.batch), shard_size=a.shard_size)
        t_ray = time.perf_counter() - t0
        n_tasks = len(variants) * -(-len(x) // max(a.batch, -(-a.shard_size // a.batch) * a.batch))
        print(f"ray: {t_ray:.1f} s", file=sys.stderr)
        t0 = time.perf_counter()
        list(ex.run([Task(k, json.loads, ("0",)) for k in range(a.trivial)]))
        t_triv = time.perf_counter() - t0
    finally:
        ray.shutdown()

    def strip(rows):
        return [{k: v for k, v in r.items() if k != "encode_ms"} for r in rows]
    rows = [r for _, rs in out for r in rs]
    print(json.dumps({
        "work": {"dataset": a.dataset, "images": int(len(x)), "variants": len(variants), "codecs": a.codecs,
                 "shard_size": a.shard_size, "tasks": n_tasks},
        "cpus": os.cpu_count(), "ray_workers": a.workers, "ray_version": ray.__version__,
        "sequential_s": round(t_seq, 2), "ray_s": round(t_ray, 2), "speedup": round(t_seq / t_ray, 2),
        "ray_init_s": round(t_init, 2), "ray_warmup_s": round(t_warm, 2),
        "overhead_ms_per_task": round(1e3 * t_triv / a.trivial, 2), "trivial_tasks": a.trivial,
        "rows_equal": strip(rows) == strip(seq),
        "loadavg_before": [round(v, 2) for v in load0], "loadavg_after": [round(v, 2) for v in os.getloadavg()],
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
