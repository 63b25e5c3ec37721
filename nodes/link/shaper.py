"""``TraceShaper``: the trace engine for open-loop traffic, and a UDP proxy around it.

Each direction is a :class:`~hilbed.nodes.link.stages.Pipeline` (drop-tail
queue, byte-exact rate server on the schedule, delay, IID loss, link log):
``submit()`` decides a packet's fate and departure when it arrives, and a
:class:`~hilbed.nodes.link.stages.ReleaseThread` releases it at departure +
one-way delay on the monotonic clock (sleep, then a short spin, with 1 ns
timer slack), so releases are sub-millisecond. On a busy machine the OS
scheduler, not the sleep, dominates release error: the release thread asks
for ``SCHED_FIFO`` (``realtime=True``, best effort; ``stats()["realtime"]``
says whether it got it). ``ShapedLink`` (the client's ``trace`` link) uses
the same pipeline.

Queues (Mahimahi's names): ``infinite``, ``droptail`` with a ``packets`` and/or
``bytes`` limit. As in Mahimahi the packet being served does not count
against the limit. IID loss drops a packet after it used the link. Either
direction may write a Mahimahi link log.

:class:`UdpShaperProxy` puts a shaper between two UDP peers (mm-link for
datagrams): ``python -m hilbed.nodes.link.shaper --up TRACE --listen H:P --forward H:P``.
"""

from __future__ import annotations

import argparse
import json
import random
import selectors
import signal
import socket
import sys
import threading
import time
from typing import Any, Callable

from hilbed.nodes.link.schedule import CapacitySchedule
from hilbed.nodes.link.stages import DROPPED, SENT, Accounting, Pipeline, QueueSpec, ReleaseThread

__all__ = ["Accounting", "QueueSpec", "TraceShaper", "UdpShaperProxy", "main"]


class _Direction:
    """A pipeline plus what the shaper does at release: deliver and count."""

    def __init__(self, name: str, pipeline: Pipeline, deliver: Callable[[Any], None] | None):
        self.name = name
        self.pipeline = pipeline
        self.deliver = deliver
        self.released = {"packets_out": 0, "bytes_out": 0, "lost_packets": 0, "lost_bytes": 0}

    @property
    def log(self):
        return self.pipeline.log

    @property
    def queue(self) -> QueueSpec:
        return self.pipeline.queue.spec

    @property
    def schedule(self) -> CapacitySchedule:
        return self.pipeline.schedule

    @property
    def counters(self) -> dict:
        c = self.pipeline.counters
        return {"packets_in": c["packets_in"], "bytes_in": c["bytes_in"], "payload_bytes_in": c["payload_bytes_in"],
                **self.released,
                "dropped_packets": c["dropped_packets"], "dropped_bytes": c["dropped_bytes"],
                "never_served": c["never_served"]}


class TraceShaper:
    """Open-loop trace shaper for one or two directions (``up``/``down``).

    ``submit(direction, payload, nbytes)`` queues a packet now; the
    ``deliver_up``/``deliver_down`` callback gets ``payload`` at its release
    time. ``clock`` is the monotonic clock; link time 0 is the shaper's start.
    ``accounting``: ``payload`` (charge ``nbytes``, the default) or ``frame``
    (charge what Mahimahi would for a ``protocol`` packet of that payload:
    tun + IP + UDP/TCP headers, see :class:`~hilbed.nodes.link.stages.Accounting`).
    """

    def __init__(self, uplink: CapacitySchedule, downlink: CapacitySchedule | None = None, *,
                 deliver_up: Callable[[Any], None] | None = None, deliver_down: Callable[[Any], None] | None = None,
                 delay_ms: float = 0.0, loss: float = 0.0, queue: QueueSpec | str | None = None,
                 downlink_queue: QueueSpec | str | None = None, seed: int = 0,
                 log_path: str | None = None, downlink_log_path: str | None = None, log_drops: bool = True,
                 medium_file: str | None = None, record_release_errors: bool = True, realtime: bool = True,
                 clock: Callable[[], float] = time.monotonic, accounting: Accounting | str | None = None,
                 protocol: str = "udp"):
        if not 0 <= loss < 1:
            raise ValueError("loss must be in [0, 1)")
        if delay_ms < 0:
            raise ValueError("delay_ms must be >= 0")
        self.accounting = Accounting.parse(accounting, protocol)
        self.clock = clock
        self.epoch = clock()
        if medium_file:
            from hilbed.nodes.link.medium import MediumScaledSchedule, MediumWatcher
            self.medium = MediumWatcher(medium_file)
            uplink = MediumScaledSchedule(uplink, self.medium.factor, self.now)
            if downlink is not None:
                downlink = MediumScaledSchedule(downlink, self.medium.factor, self.now)
        else:
            self.medium = None
        q_up = QueueSpec.parse(queue)
        q_down = QueueSpec.parse(downlink_queue) if downlink_queue else q_up
        init_unix_ms = int((time.time() - (clock() - self.epoch)) * 1000)
        self.dirs: dict[str, _Direction] = {}
        for name, sched, deliver, q, lp in (("up", uplink, deliver_up, q_up, log_path),
                                            ("down", downlink, deliver_down, q_down, downlink_log_path)):
            if sched is None:
                continue
            log = None
            if lp:
                from hilbed.nodes.link.linklog import LinkLogWriter
                log = LinkLogWriter(lp, f"{name}link", sched, trace_name=sched.describe(), queue_desc=q.describe(),
                                    drops=log_drops, init_unix_ms=init_unix_ms, clock=self.now)
            pipe = Pipeline(sched, q, delay_ms / 1000.0, loss, random.Random(f"{seed}:{name}"), log, self.accounting)
            self.dirs[name] = _Direction(name, pipe, deliver)
        self._lock = threading.Lock()
        self._closed = False
        self.record_release_errors = record_release_errors
        self.release_errors_s: list[float] = []
        self.late_max_s = 0.0
        self.realtime = realtime
        self._releaser = ReleaseThread(self.now, self._release, realtime=realtime, name="trace-shaper")

    @property
    def realtime_error(self) -> str | None:
        return self._releaser.realtime_error

    # ------------------------------------------------------------ time ---
    def now(self) -> float:
        return self.clock() - self.epoch

    # ----------------------------------------------------------- input ---
    def submit(self, direction: str, payload: Any, nbytes: int | None = None, t: float | None = None) -> bool:
        """Queue a packet arriving now (or at link time ``t``); False if the queue dropped it."""
        d = self.dirs[direction]
        n = int(nbytes if nbytes is not None else len(payload))
        if n <= 0:
            raise ValueError("a packet needs at least one byte")
        with self._lock:
            if self._closed:
                return False
            pkt = d.pipeline.offer(n, self.now() if t is None else t)
            if pkt.fate == SENT:
                self._releaser.schedule(pkt.t_release, (d, payload, pkt))
            return pkt.fate != DROPPED

    def send_up(self, payload: Any, nbytes: int | None = None) -> bool:
        return self.submit("up", payload, nbytes)

    def send_down(self, payload: Any, nbytes: int | None = None) -> bool:
        return self.submit("down", payload, nbytes)

    # --------------------------------------------------------- release ---
    def _release(self, item: tuple, late_s: float) -> None:
        d, payload, pkt = item
        r = d.released
        r["packets_out"] += 1
        r["bytes_out"] += pkt.nbytes
        if pkt.lost:
            r["lost_packets"] += 1
            r["lost_bytes"] += pkt.nbytes
            return
        if late_s > self.late_max_s:
            self.late_max_s = late_s
        if self.record_release_errors:
            self.release_errors_s.append(late_s)
        if d.deliver is not None:
            try:
                d.deliver(payload)
            except Exception:  # a broken consumer must not stop the link
                r["deliver_errors"] = r.get("deliver_errors", 0) + 1

    # --------------------------------------------------------- results ---
    def pending(self) -> int:
        return self._releaser.pending()

    def stats(self) -> dict:
        out: dict[str, Any] = {name: {**d.counters, "queue": d.queue.describe(), "schedule": d.schedule.describe()}
                               for name, d in self.dirs.items()}
        errs = sorted(self.release_errors_s)
        if errs:
            def pct(p: float) -> float:
                return errs[min(len(errs) - 1, int(p / 100.0 * len(errs)))] * 1000.0
            out["release_error_ms"] = {"p50": pct(50), "p99": pct(99), "max": errs[-1] * 1000.0, "n": len(errs)}
        out["accounting"] = self.accounting.describe()
        out["realtime"] = self.realtime and self.realtime_error is None
        if self.realtime_error and self.realtime:
            out["realtime_error"] = self.realtime_error
        return out

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._releaser.close(5)
        t_end = self.now()
        for d in self.dirs.values():
            d.pipeline.close_log(t_end)


class UdpShaperProxy:
    """Forwards datagrams ``listen -> forward`` through the uplink and replies back through the downlink."""

    def __init__(self, shaper_kwargs: dict, uplink: CapacitySchedule, downlink: CapacitySchedule | None,
                 listen: tuple[str, int], forward: tuple[str, int]):
        self.listen_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.listen_sock.bind(listen)
        self.out_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.out_sock.connect(forward)
        for s in (self.listen_sock, self.out_sock):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        self.peer: tuple[str, int] | None = None
        self.shaper = TraceShaper(uplink, downlink, deliver_up=self._up_out, deliver_down=self._down_out,
                                  **shaper_kwargs)
        self._stop = threading.Event()

    @property
    def address(self) -> tuple[str, int]:
        return self.listen_sock.getsockname()

    def _up_out(self, data: bytes) -> None:
        try:
            self.out_sock.send(data)
        except OSError:
            pass

    def _down_out(self, data: bytes) -> None:
        if self.peer is not None:
            try:
                self.listen_sock.sendto(data, self.peer)
            except OSError:
                pass

    def serve(self, until: Callable[[], bool] | None = None) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.listen_sock, selectors.EVENT_READ, "up")
        sel.register(self.out_sock, selectors.EVENT_READ, "down")
        while not self._stop.is_set() and not (until and until()):
            for key, _ in sel.select(0.2):
                try:
                    if key.data == "up":
                        data, addr = self.listen_sock.recvfrom(65535)
                        self.peer = addr
                        self.shaper.submit("up", data)
                    elif "down" in self.shaper.dirs:
                        data = self.out_sock.recv(65535)
                        self.shaper.submit("down", data)
                    else:
                        self.out_sock.recv(65535)
                except OSError:
                    continue

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self.shaper.close()
        self.listen_sock.close()
        self.out_sock.close()


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def main(argv: list[str] | None = None) -> int:
    from hilbed.nodes.link.schedule import ConstantRate
    from hilbed.nodes.link.traces import TraceError, load_schedule
    p = argparse.ArgumentParser(prog="python -m hilbed.nodes.link.shaper", description="UDP trace-shaping proxy")
    p.add_argument("--up", help="uplink trace (Mahimahi or .csv)")
    p.add_argument("--up-kbps", type=float, help="constant uplink rate instead of a trace")
    p.add_argument("--down", help="downlink trace (default: unshaped replies are dropped unless given)")
    p.add_argument("--opportunity-bytes", type=int, default=1504)
    p.add_argument("--once", action="store_true", help="run the trace once instead of looping")
    p.add_argument("--delay-ms", type=float, default=0.0)
    p.add_argument("--loss", type=float, default=0.0)
    p.add_argument("--queue", default="infinite", help="infinite | droptail:packets=N | droptail:bytes=N")
    p.add_argument("--accounting", choices=("payload", "frame"), default="payload",
                   help="charge datagram payload bytes (default) or whole frames as Mahimahi does (+tun/IP/UDP)")
    p.add_argument("--listen", required=True, help="HOST:PORT to receive datagrams on")
    p.add_argument("--forward", required=True, help="HOST:PORT to release them to")
    p.add_argument("--log", help="Mahimahi uplink log path")
    p.add_argument("--stats-json", help="write stats here at exit")
    p.add_argument("--duration-s", type=float, default=None)
    a = p.parse_args(argv)
    try:
        if a.up:
            up = load_schedule(a.up, loop=not a.once, opportunity_bytes=a.opportunity_bytes)
        elif a.up_kbps:
            up = ConstantRate(a.up_kbps * 1000)
        else:
            p.error("give --up TRACE or --up-kbps RATE")
        down = load_schedule(a.down, loop=not a.once, opportunity_bytes=a.opportunity_bytes) if a.down else None
        proxy = UdpShaperProxy({"delay_ms": a.delay_ms, "loss": a.loss, "queue": a.queue, "log_path": a.log,
                                "accounting": a.accounting, "protocol": "udp"},
                               up, down, _hostport(a.listen), _hostport(a.forward))
    except (TraceError, ValueError, OSError) as exc:
        print(f"shaper: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: proxy.stop())
    print(json.dumps({"listening": list(proxy.address)}), flush=True)
    t_end = time.monotonic() + a.duration_s if a.duration_s else None
    try:
        proxy.serve(until=(lambda: time.monotonic() >= t_end) if t_end else None)
    except KeyboardInterrupt:
        pass
    proxy.close()
    stats = proxy.shaper.stats()
    if a.stats_json:
        with open(a.stats_json, "w", encoding="utf-8") as f:
            json.dump(stats, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
