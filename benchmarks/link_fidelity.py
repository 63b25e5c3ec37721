"""Trace-shaper fidelity: does saturating traffic get exactly the trace's capacity, on time?

For each trace -- the Mahimahi traces in ../shared/data/traces/mahimahi (when
present) and generated LoRa SF7 and LTE-M traces -- a generator keeps the
:class:`~hilbed.nodes.link.shaper.TraceShaper` queue non-empty for ``--duration-s``
of the trace, and the benchmark measures:

- delivered bytes per 1 s window (by actual release time, minus the fixed
  delay) against the trace's capacity in that window: median and max
  relative error (windows with capacity), and absolute error in bytes;
- packet release-time error (actual release - scheduled release) p50/p99/max.

``--mode udp`` sends real datagrams through :class:`UdpShaperProxy` and
counts them at a UDP receiver, which also reads the kernel's receive time of
every datagram (``SO_TIMESTAMPNS``): ``kernel_err_ms_*`` compares those with
each packet's scheduled release, so the release error includes the proxy's
send path and is read off the kernel's clock, not only the shaper's.
``--log`` has the shaper write its Mahimahi link log meanwhile (the writer
thread must not move releases). Trace files given as arguments (Mahimahi or
CSV ``t_ms,kbps``) are measured instead of the default set. Prints one JSON
document.
Goal: median window error <= 1 %, p99 release error <= 1 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hilbed.nodes.link.gen import gen_lora, gen_ltem  # noqa: E402
from hilbed.nodes.link.schedule import OpportunitySchedule  # noqa: E402
from hilbed.nodes.link.shaper import TraceShaper, UdpShaperProxy  # noqa: E402
from hilbed.nodes.link.traces import load_mahimahi_schedule, load_schedule, write_mahimahi  # noqa: E402

#: Linux's SO_TIMESTAMPNS (= SCM_TIMESTAMPNS; asm-generic value, not exported by Python's socket module)
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
SHARED_TRACES = REPO.parent / "shared" / "data" / "traces" / "mahimahi"


def pct(xs: list[float], p: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(p / 100.0 * (len(s) - 1))))]


def traces(tmp: Path, only: list[str] | None, files: list[str] | None = None,
           packet_bytes: int = 1504) -> list[tuple[str, OpportunitySchedule, int]]:
    """(name, schedule, packet bytes) for every trace to measure: the files given, else the default set."""
    if files:
        return [(Path(f).name, load_schedule(f, loop=True, opportunity_bytes=packet_bytes), packet_bytes)
                for f in files]
    out = []
    if SHARED_TRACES.is_dir():
        for p in sorted(SHARED_TRACES.iterdir()):
            if p.is_file():
                out.append((p.name, load_mahimahi_schedule(p), 1504))
    lora = gen_lora(duration_s=120, sf=7, bw_khz=125, cr=1, payload_bytes=51, duty_cycle=1.0)
    write_mahimahi(tmp / "lora-sf7.up", lora.times_ms)
    out.append(("gen:lora-sf7-bw125-51B", load_mahimahi_schedule(tmp / "lora-sf7.up", opportunity_bytes=51), 51))
    ltem = gen_ltem(duration_s=120, seed=0)
    write_mahimahi(tmp / "ltem.up", ltem.times_ms)
    out.append(("gen:ltem-catm1-hd-seed0", load_mahimahi_schedule(tmp / "ltem.up", opportunity_bytes=125), 125))
    if only:
        out = [t for t in out if any(o in t[0] for o in only)]
    return out


def run_inproc(sched, pkt: int, duration_s: float, delay_ms: float, log_path: str | None = None,
               backlog_s: float = 0.5):
    got: list[tuple[float, int]] = []
    sh = TraceShaper(sched, deliver_up=lambda p: got.append((time.monotonic(), p)), delay_ms=delay_ms,
                     log_path=log_path)
    _saturate(sh, sched, pkt, duration_s, backlog_s, lambda: sh.send_up(pkt, nbytes=pkt))
    sh.close()
    return sh, [(t - sh.epoch, n) for t, n in got]


def run_udp(sched, pkt: int, duration_s: float, delay_ms: float, log_path: str | None = None,
            backlog_s: float = 0.5):
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    proxy = UdpShaperProxy({"delay_ms": delay_ms, "log_path": log_path}, sched, None, ("127.0.0.1", 0),
                           rx.getsockname())
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
    tx.connect(proxy.address)
    got: list[tuple[float, int]] = []
    kernel: list[float] = []  # kernel receive times, on the shaper's clock (seconds since its epoch)
    stop = threading.Event()
    rx.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    real_minus_mono = time.time() - time.monotonic()

    def receive() -> None:
        rx.settimeout(0.2)
        while not stop.is_set():
            try:
                data, anc, _flags, _addr = rx.recvmsg(65535, socket.CMSG_SPACE(16))
            except socket.timeout:
                continue
            got.append((time.monotonic(), len(data)))
            for level, kind, raw in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(raw) >= 16:
                    sec, nsec = struct.unpack("qq", raw[:16])
                    kernel.append(sec + nsec / 1e9 - real_minus_mono - proxy.shaper.epoch)

    handed: list[float] = []  # when the shaper handed each delivered packet to the proxy's socket (its clock)
    up = proxy.shaper.dirs["up"]
    deliver = up.deliver

    def note_delivery(payload):
        handed.append(proxy.shaper.now())
        deliver(payload)

    up.deliver = note_delivery
    threads = [threading.Thread(target=proxy.serve, daemon=True), threading.Thread(target=receive, daemon=True)]
    for t in threads:
        t.start()
    payload = b"\0" * pkt
    _saturate(proxy.shaper, sched, pkt, duration_s, backlog_s, lambda: tx.send(payload))
    time.sleep(0.3 + delay_ms / 1000)
    proxy.stop()
    stop.set()
    for t in threads:
        t.join(2)
    proxy.close()
    rx.close()
    tx.close()
    proxy.shaper.kernel_rx_s = kernel  # type: ignore[attr-defined]
    # scheduled release = handed - how late the shaper says it was (release_errors_s, in the same order)
    proxy.shaper.scheduled_s = [h - late for h, late in zip(handed, proxy.shaper.release_errors_s)]  # type: ignore
    return proxy.shaper, [(t - proxy.shaper.epoch, n) for t, n in got]


def _saturate(sh: TraceShaper, sched, pkt: int, duration_s: float, backlog_s: float, send) -> None:
    """Keep at least ``backlog_s`` of the trace's capacity queued (never lets the queue run dry)."""
    sent = 0
    t_end = duration_s + 0.05
    while True:
        now = sh.now()
        if now >= t_end:
            return
        want = sched.bytes_until(now + backlog_s) + pkt  # capacity up to a little ahead
        while sent < want:
            send()
            sent += pkt
        time.sleep(0.005)


def measure(name: str, sched, pkt: int, duration_s: float, delay_ms: float, mode: str,
            log_path: str | None = None) -> dict:
    run = run_udp if mode == "udp" else run_inproc
    t0 = time.monotonic()
    sh, got = run(sched, pkt, duration_s, delay_ms, log_path)
    wall = time.monotonic() - t0
    nwin = int(duration_s)
    delivered = [0] * nwin
    d = delay_ms / 1000.0
    for t, n in got:
        k = int((t - d) // 1.0)
        if 0 <= k < nwin:
            delivered[k] += n
    rel, absb, zero = [], [], 0
    for k in range(nwin):
        cap = sched.bytes_until(k + 1.0) - sched.bytes_until(float(k))
        absb.append(abs(delivered[k] - cap))
        if cap > 0:
            rel.append(abs(delivered[k] - cap) / cap * 100.0)
        else:
            zero += 1
    st = sh.stats()
    errs_ms = [e * 1000.0 for e in sh.release_errors_s]
    kernel = getattr(sh, "kernel_rx_s", None) or []
    kerr_ms = [(k - sch) * 1000.0 for k, sch in zip(kernel, getattr(sh, "scheduled_s", None) or [])]
    cap_total = sched.bytes_until(float(nwin))
    return {
        "trace": name, "mode": mode, "link_log": bool(log_path), "packet_bytes": pkt, "opportunity_bytes": getattr(sched, "opp", None),
        "duration_s": nwin, "wall_s": round(wall, 2),
        "capacity_kbps": round(cap_total * 8 / nwin / 1000, 3),
        "delivered_kbps": round(sum(delivered) * 8 / nwin / 1000, 3),
        "windows": nwin, "windows_zero_capacity": zero,
        "window_err_pct_median": _r(pct(rel, 50)), "window_err_pct_max": _r(max(rel) if rel else None),
        "window_abs_err_bytes_median": _r(pct(absb, 50)), "window_abs_err_bytes_max": _r(max(absb) if absb else None),
        "release_err_ms_p50": _r(pct(errs_ms, 50), 4), "release_err_ms_p99": _r(pct(errs_ms, 99), 4),
        "release_err_ms_max": _r(max(errs_ms) if errs_ms else None, 4),
        "kernel_err_ms_p50": _r(pct(kerr_ms, 50), 4), "kernel_err_ms_p99": _r(pct(kerr_ms, 99), 4),
        "kernel_err_ms_max": _r(max(kerr_ms) if kerr_ms else None, 4), "kernel_timestamps": len(kerr_ms),
        "packets_released": len(errs_ms), "packets_received": len(got),
        "dropped": st["up"]["dropped_packets"],
    }


def _r(x, nd: int = 3):
    return None if x is None else round(x, nd)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration-s", type=float, default=20.0, help="seconds of each trace (default 20)")
    ap.add_argument("--delay-ms", type=float, default=10.0)
    ap.add_argument("--mode", choices=("inproc", "udp"), default="inproc")
    ap.add_argument("--only", nargs="*", help="substrings of trace names to run")
    ap.add_argument("--log", action="store_true", help="write the Mahimahi link log while measuring")
    ap.add_argument("--packet-bytes", type=int, default=1504, help="packet size for trace files given (default 1504)")
    ap.add_argument("trace_files", nargs="*", help="Mahimahi or CSV traces to measure instead of the default set")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as td:
        results = [measure(n, s, pkt, a.duration_s, a.delay_ms, a.mode,
                           str(Path(td) / f"link-{i}.log") if a.log else None)
                   for i, (n, s, pkt) in enumerate(traces(Path(td), a.only, a.trace_files, a.packet_bytes))]
    ok = all((r["window_err_pct_median"] or 0) <= 1.0 and (r["release_err_ms_p99"] or 0) <= 1.0 for r in results)
    doc = {"benchmark": "link_fidelity", "goal": {"window_err_pct_median_max": 1.0, "release_err_ms_p99_max": 1.0},
           "meets_goal": ok, "host": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                      "platform": platform.platform(), "loadavg": os.getloadavg()},
           "shared_traces": SHARED_TRACES.is_dir(), "results": results}
    print(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
