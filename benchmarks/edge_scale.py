#!/usr/bin/env python3
"""How the edge scales with clients, batching off and on, as one JSON object.

A real :class:`~hilbed.nodes.edge.EdgeAgent` (this process) serves the
pretrained CIFAR ResNet-20 at 32 px on the CPU over real TCP; the clients
run in a second process (so their Python does not share the edge's GIL),
each a thread with its own :class:`~hilbed.nodes.link.tcp.DirectLink`
sending JPEG (q75) images of CIFAR-10 (the data mirror; the synthetic set
without it), encoded before the clock starts.

Runs:

* ``sequential``: one client, closed loop (next image when the reply is in),
  batching off: the edge's one-client sequential throughput.
* ``open``: 1, 4 and 16 clients, each sending one image every ``period_ms``
  (unsynchronised phases) for ``duration_s``, batching off and on. Offered
  load is ``clients * 1000 / period_ms`` images/s; an image meets its deadline
  when its reply is back within ``deadline_ms`` of its scheduled send.
* ``saturation``: 16 clients, closed loop: the most the edge serves, off and on.

End-to-end latency is from the image's scheduled send time to its reply's
arrival at the client (one clock: both processes are on this machine).

    python benchmarks/edge_scale.py [--period-ms 50] [--deadline-ms 100] [--duration-s 4]
        [--max-batch 16] [--max-wait-ms 2] [--clients 1,4,16]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HILBED_CACHE_DIR", str(REPO / ".hilbed-cache"))
_MIRROR = REPO.parent / "shared" / "data"
if _MIRROR.is_dir():
    os.environ.setdefault("HILBED_DATA_MIRROR", str(_MIRROR))
os.environ.setdefault("HILBED_DATA_OFFLINE", "1")

MODEL = "cifar-resnet:cifar10-resnet20"
CODEC = {"codec": "jpeg", "params": {"quality": 75}}
POOL = 64  # distinct images the clients cycle through


# ------------------------------------------------------------ client side ---

def _pool(n: int) -> tuple[str, list[list[bytes]]]:
    from hilbed.nodes.codecs import make_codec
    from hilbed.nodes.workload import open_dataset
    try:
        ds, name = open_dataset("cifar10:dev", 32, 0), "cifar10:dev"
    except Exception:  # no mirror: the self-contained default
        ds, name = open_dataset("synthetic", 32, 0), "synthetic"
    codec = make_codec(CODEC["codec"], CODEC["params"])
    return name, [codec.encode(ds[i][0]).chunks for i in range(n)]


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return round(s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))], 3)


def client_main(cfg: dict) -> None:
    """The client process: ``cfg`` in (argv), one JSON summary of the run out (stdout)."""
    import random

    from hilbed.nodes.link.tcp import DirectLink
    dataset, pool = _pool(POOL)
    n, period_ns = cfg["clients"], int(cfg["period_ms"] * 1e6)
    deadline_ns, closed = int(cfg["deadline_ms"] * 1e6), cfg["mode"] != "open"
    links = [DirectLink("127.0.0.1", cfg["port"]) for _ in range(n)]
    for link in links:
        link.authenticate(None)
        link.announce_codec(CODEC["codec"], CODEC["params"])
    t_start = time.time_ns() + 300_000_000
    t_stop = t_start + int(cfg["duration_s"] * 1e9)
    rows: list[tuple[int, int | None, bool, int | None, float | None]] = []  # (t_send, t_reply, decoded, batch, wait)
    lock = threading.Lock()
    rng = random.Random(7)
    phases = [rng.randrange(period_ns) if not closed else 0 for _ in range(n)]

    def run(k: int, link: DirectLink) -> None:
        sent: list[tuple[int, int]] = []
        i = 0
        while True:
            t_send = t_start + phases[k] + i * period_ns if not closed else max(time.time_ns(), t_start)
            if t_send >= t_stop:
                break
            while (dt := t_send - time.time_ns()) > 0:
                time.sleep(dt / 1e9)
            mid = i + 1
            link.send_message(mid, dict(CODEC), pool[(k * 7 + i) % len(pool)], t_send + deadline_ns)
            sent.append((mid, t_send))
            if closed:
                _collect(link, [(mid, t_send)])
            i += 1
        if not closed:
            _collect(link, sent)

    def _collect(link: DirectLink, sent: list[tuple[int, int]]) -> None:
        out = []
        for mid, t_send in sent:
            try:
                r = link.result(mid, max(1.0, (t_send + deadline_ns - time.time_ns()) / 1e9) + 10.0)
                out.append((t_send, r.get("t_result_ns"), bool(r.get("decoded")), r.get("batch_size"),
                            r.get("batch_wait_ms")))
            except Exception:  # no reply: counted as a miss
                out.append((t_send, None, False, None, None))
        with lock:
            rows.extend(out)

    threads = [threading.Thread(target=run, args=(k, link)) for k, link in enumerate(links)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for link in links:
        link.close()
    done = [r for r in rows if r[1] is not None and r[2]]
    lat = [(r[1] - r[0]) / 1e6 for r in done]
    t_first = min(r[0] for r in rows) if rows else t_start
    t_last = max((r[1] for r in done), default=t_first + 1)
    span_s = max(1e-9, (max(t_last, t_stop) - t_first) / 1e9) if not closed else max(1e-9, (t_last - t_first) / 1e9)
    batches = [r[3] for r in done if r[3] is not None]
    waits = [r[4] for r in done if r[4] is not None]
    print(json.dumps({
        "dataset": dataset, "sent": len(rows), "replied": len(done),
        "images_per_s": round(len(done) / span_s, 1),
        "latency_ms_p50": _pct(lat, 0.5), "latency_ms_p95": _pct(lat, 0.95), "latency_ms_max": _pct(lat, 1.0),
        "deadline_met": round(sum(1 for x in lat if x <= cfg["deadline_ms"]) / len(rows), 4) if rows else None,
        "mean_batch": round(sum(batches) / len(batches), 2) if batches else None,
        "max_batch_seen": max(batches) if batches else None,
        "batch_wait_ms_p95": _pct(waits, 0.95),
    }))


# -------------------------------------------------------------- edge side ---

def _run_clients(cfg: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--client", json.dumps(cfg)], capture_output=True, text=True,
                         timeout=cfg["duration_s"] + 120)
    if out.returncode != 0:
        raise RuntimeError(f"client process failed: {out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--period-ms", type=float, default=50.0, help="each client's image period (open loop); 16 clients at 50 ms offer 320 images/s, about 3x what one client gets through sequentially on 2 cores")
    ap.add_argument("--deadline-ms", type=float, default=100.0, help="per image, from its scheduled send")
    ap.add_argument("--duration-s", type=float, default=4.0)
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--max-wait-ms", type=float, default=2.0)
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--torch-threads", type=int, default=0, help="intra-op threads of the edge's model (0: torch's)")
    ap.add_argument("--client", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client:
        client_main(json.loads(args.client))
        return

    import torch

    from hilbed.nodes.edge import EdgeAgent
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    out = sys.stdout  # the agent sends stray prints to stderr (its stdout is the protocol's): keep ours
    edge = EdgeAgent()
    loaded = edge.op_load(MODEL, device="cpu", size=32)
    port = edge.op_listen("127.0.0.1", 0, limits={"max_connections": 128})["port"]
    load_before = os.getloadavg()
    base = {"port": port, "period_ms": args.period_ms, "deadline_ms": args.deadline_ms, "duration_s": args.duration_s}
    on = {"max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms}
    off = {"max_batch": 1, "max_wait_ms": 0.0}

    def run(label: str, clients: int, mode: str, batching: dict) -> dict:
        edge.op_batching(**batching)
        c0, e0 = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
        res = _run_clients({**base, "clients": clients, "mode": mode})
        c1, e1 = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
        cpu = lambda a, b: round((b.ru_utime + b.ru_stime) - (a.ru_utime + a.ru_stime), 2)  # noqa: E731
        res |= {"edge_cpu_s": cpu(e0, e1), "clients_cpu_s": cpu(c0, c1)}
        offered = round(clients * 1000.0 / args.period_ms, 1) if mode == "open" else None
        row = {"run": label, "clients": clients, "mode": mode, "batching": "on" if batching["max_batch"] > 1 else "off",
               "offered_images_per_s": offered, **res}
        print(json.dumps(row), file=sys.stderr)  # progress
        return row

    _run_clients({**base, "clients": 1, "mode": "closed", "duration_s": 1.0})  # warm-up (caches, codec, model)
    seq = run("sequential", 1, "closed", off)
    rows = []
    for n in [int(x) for x in args.clients.split(",")]:
        for b in (off, on):
            rows.append(run("open", n, "open", b))
    sat = [run("saturation", max(int(x) for x in args.clients.split(",")), "closed", b) for b in (off, on)]
    edge.teardown()

    top = max(int(x) for x in args.clients.split(","))
    on_top = next(r for r in rows if r["clients"] == top and r["batching"] == "on")
    print(json.dumps({
        "benchmark": "edge_scale", "model": MODEL, "image_px": 32, "device": loaded["device"],
        "codec": CODEC, "dataset": seq["dataset"], "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(), "python": platform.python_version(),
        "load_avg_1m_before": round(load_before[0], 2), "load_avg_1m_after": round(os.getloadavg()[0], 2),
        "note": "edge and clients share this machine's CPUs (clients in a second process); other jobs may share them "
                "too (see load_avg): absolute numbers are this machine's, compare runs within one report",
        "period_ms": args.period_ms, "deadline_ms": args.deadline_ms, "duration_s": args.duration_s,
        "batching_on": on,
        "sequential": seq, "open_loop": rows, "saturation": sat,
        "goal": {
            "sequential_images_per_s": seq["images_per_s"],
            f"clients_{top}_batched_images_per_s": on_top["images_per_s"],
            f"offered_images_per_s_at_{top}": on_top["offered_images_per_s"],
            "throughput_ratio": round(on_top["images_per_s"] / seq["images_per_s"], 2),
            "ratio_ge_3": on_top["images_per_s"] >= 3 * seq["images_per_s"],
            "p95_ms": on_top["latency_ms_p95"],
            "p95_within_deadline": on_top["latency_ms_p95"] is not None
            and on_top["latency_ms_p95"] <= args.deadline_ms,
            "saturation_ratio_on_vs_off": round(sat[1]["images_per_s"] / max(1e-9, sat[0]["images_per_s"]), 2),
        },
    }, indent=1), file=out)


if __name__ == "__main__":
    main()
