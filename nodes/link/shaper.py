"""``TraceShaper``: the user-space trace link engine for open-loop traffic.

Each direction is a FIFO on a :class:`~hilbed.nodes.link.schedule.CapacitySchedule`
(Mahimahi opportunities or a rate fluid), accounted byte by byte: a packet
leaves when its last byte is served, an opportunity's leftover bytes serve
the next queued packet, and capacity that passes while the queue is empty is
lost. Because service is FIFO and the schedule is known, a packet's
departure is computed exactly when it arrives; a scheduler thread then
releases it at departure + one-way delay on the monotonic clock (sleep, then
a short spin, with 1 ns timer slack), so releases are sub-millisecond. On a
busy machine the OS scheduler, not the sleep, dominates release error: the
scheduler thread asks for ``SCHED_FIFO`` (``realtime=True``, best effort;
``stats()["realtime"]`` says whether it got it).

Queues (Mahimahi's names): ``infinite``, ``droptail`` with a ``packets`` and/or
``bytes`` limit. As in Mahimahi the packet being served does not count
against the limit. IID loss drops a packet after it used the link. Either
direction may write a Mahimahi link log.

:class:`UdpShaperProxy` puts a shaper between two UDP peers (mm-link for
datagrams): ``python -m hilbed.nodes.link.shaper --up TRACE --listen H:P --forward H:P``.
"""

from __future__ import annotations

import argparse
import ctypes
import heapq
import json
import math
import os
import random
import re
import selectors
import signal
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from .schedule import ByteServer, CapacitySchedule

_SPIN_S = 0.0002  # sleep until this close to a release, then spin


def _try_realtime(priority: int = 10) -> str | None:
    """SCHED_FIFO for the calling thread (needs root or CAP_SYS_NICE); the reason if refused."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
        return None
    except (AttributeError, OSError) as exc:
        return str(exc)


def _set_timer_slack_ns(ns: int = 1) -> None:
    """Tighten this thread's sleep timer slack (Linux prctl PR_SET_TIMERSLACK = 29)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(29, ctypes.c_ulong(ns), 0, 0, 0)
    except (OSError, AttributeError):
        pass


@dataclass(frozen=True)
class QueueSpec:
    """Link queue discipline: ``infinite`` or ``droptail`` limited by packets and/or bytes."""

    kind: str = "infinite"
    packets: int | None = None
    bytes: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("infinite", "droptail"):
            raise ValueError(f"unknown queue {self.kind!r} (allowed: infinite, droptail)")
        if self.kind == "droptail" and not (self.packets or self.bytes):
            raise ValueError("a droptail queue needs a packets= or bytes= limit")
        for v in (self.packets, self.bytes):
            if v is not None and v <= 0:
                raise ValueError("queue limits must be > 0")

    @classmethod
    def parse(cls, text: str | None) -> "QueueSpec":
        """``infinite`` | ``droptail:packets=100`` | ``droptail:bytes=30000[,packets=..]``."""
        if not text or text == "infinite":
            return cls()
        m = re.fullmatch(r"droptail:(.+)", text.strip())
        if not m:
            raise ValueError(f"bad queue {text!r} (allowed: infinite, droptail:packets=N, droptail:bytes=N)")
        args: dict[str, int] = {}
        for part in m.group(1).split(","):
            k, _, v = part.partition("=")
            k = k.strip()
            if k not in ("packets", "bytes") or not v.strip().isdigit():
                raise ValueError(f"bad queue argument {part!r} (allowed: packets=N, bytes=N)")
            args[k] = int(v)
        return cls("droptail", args.get("packets"), args.get("bytes"))

    def admits(self, queued_packets: int, queued_bytes: int, nbytes: int) -> bool:
        if self.kind == "infinite":
            return True
        if self.packets is not None and queued_packets + 1 > self.packets:
            return False
        if self.bytes is not None and queued_bytes + nbytes > self.bytes:
            return False
        return True

    def describe(self) -> str:
        if self.kind == "infinite":
            return "infinite"
        args = [f"{k}={v}" for k, v in (("bytes", self.bytes), ("packets", self.packets)) if v]
        return f"droptail [{', '.join(args)}]"


class _Direction:
    def __init__(self, name: str, schedule: CapacitySchedule, deliver: Callable[[Any], None] | None,
                 delay_s: float, loss: float, queue: QueueSpec, rng: random.Random, log):
        self.name = name
        self.schedule = schedule
        self.server = ByteServer(schedule)
        self.deliver = deliver
        self.delay_s = delay_s
        self.loss = loss
        self.queue = queue
        self.rng = rng
        self.log = log
        self.backlog: deque = deque()  # (t_first_byte, t_done, nbytes) of accepted packets not yet gone
        self.backlog_bytes = 0
        self.counters = {"packets_in": 0, "bytes_in": 0, "packets_out": 0, "bytes_out": 0, "dropped_packets": 0,
                         "dropped_bytes": 0, "lost_packets": 0, "lost_bytes": 0, "never_served": 0}

    def _occupancy(self, t: float) -> tuple[int, int]:
        bl = self.backlog
        while bl and bl[0][1] <= t:
            self.backlog_bytes -= bl.popleft()[2]
        n, b = len(bl), self.backlog_bytes
        if bl and bl[0][0] <= t:  # the packet in service does not count against the limit
            n, b = n - 1, b - bl[0][2]
        return n, b


class TraceShaper:
    """Open-loop trace shaper for one or two directions (``up``/``down``).

    ``submit(direction, payload, nbytes)`` queues a packet now; the
    ``deliver_up``/``deliver_down`` callback gets ``payload`` at its release
    time. ``clock`` is the monotonic clock; link time 0 is the shaper's start.
    """

    def __init__(self, uplink: CapacitySchedule, downlink: CapacitySchedule | None = None, *,
                 deliver_up: Callable[[Any], None] | None = None, deliver_down: Callable[[Any], None] | None = None,
                 delay_ms: float = 0.0, loss: float = 0.0, queue: QueueSpec | str | None = None,
                 downlink_queue: QueueSpec | str | None = None, seed: int = 0,
                 log_path: str | None = None, downlink_log_path: str | None = None, log_drops: bool = True,
                 medium_file: str | None = None, record_release_errors: bool = True, realtime: bool = True,
                 clock: Callable[[], float] = time.monotonic):
        if not 0 <= loss < 1:
            raise ValueError("loss must be in [0, 1)")
        if delay_ms < 0:
            raise ValueError("delay_ms must be >= 0")
        self.clock = clock
        self.epoch = clock()
        if medium_file:
            from .medium import MediumScaledSchedule, MediumWatcher
            self.medium = MediumWatcher(medium_file)
            uplink = MediumScaledSchedule(uplink, self.medium.factor, self.now)
            if downlink is not None:
                downlink = MediumScaledSchedule(downlink, self.medium.factor, self.now)
        else:
            self.medium = None
        q_up = queue if isinstance(queue, QueueSpec) else QueueSpec.parse(queue)
        q_down = downlink_queue if isinstance(downlink_queue, QueueSpec) else (
            QueueSpec.parse(downlink_queue) if downlink_queue else q_up)
        self.dirs: dict[str, _Direction] = {}
        for name, sched, deliver, q, lp in (("up", uplink, deliver_up, q_up, log_path),
                                            ("down", downlink, deliver_down, q_down, downlink_log_path)):
            if sched is None:
                continue
            log = None
            if lp:
                from .linklog import LinkLogWriter
                log = LinkLogWriter(lp, f"{name}link", sched, trace_name=sched.describe(), queue_desc=q.describe(),
                                    drops=log_drops, init_unix_ms=int((time.time() - (clock() - self.epoch)) * 1000))
            self.dirs[name] = _Direction(name, sched, deliver, delay_ms / 1000.0, loss, q,
                                         random.Random(f"{seed}:{name}"), log)
        self._heap: list = []
        self._seq = 0
        self._cv = threading.Condition()
        self._closed = False
        self.record_release_errors = record_release_errors
        self.release_errors_s: list[float] = []
        self.late_max_s = 0.0
        self.realtime = realtime
        self.realtime_error: str | None = "not requested" if not realtime else None
        self._thread = threading.Thread(target=self._run, name="trace-shaper", daemon=True)
        self._thread.start()

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
        with self._cv:
            if self._closed:
                return False
            t_arr = self.now() if t is None else t
            d.counters["packets_in"] += 1
            d.counters["bytes_in"] += n
            if d.log is not None:
                d.log.arrival(t_arr, n)
            qn, qb = d._occupancy(t_arr)
            if not d.queue.admits(qn, qb, n):
                d.counters["dropped_packets"] += 1
                d.counters["dropped_bytes"] += n
                if d.log is not None:
                    d.log.drop(t_arr, 1, n)
                return False
            start, first, done = d.server.plan(n, t_arr)
            d.server.commit(start, n)
            d.backlog.append((first, done, n))
            d.backlog_bytes += n
            if math.isinf(done):  # a trace run once has ended: the packet waits forever
                d.counters["never_served"] += 1
                return True
            lost = d.loss > 0 and d.rng.random() < d.loss
            self._seq += 1
            heapq.heappush(self._heap, (done + d.delay_s, self._seq, d, payload, n, t_arr, done, lost))
            if self._heap[0][1] == self._seq:
                self._cv.notify()
            return True

    def send_up(self, payload: Any, nbytes: int | None = None) -> bool:
        return self.submit("up", payload, nbytes)

    def send_down(self, payload: Any, nbytes: int | None = None) -> bool:
        return self.submit("down", payload, nbytes)

    # ------------------------------------------------------- scheduler ---
    def _run(self) -> None:
        _set_timer_slack_ns(1)
        if self.realtime:  # only this mostly-sleeping thread; its spins are bounded by _SPIN_S
            self.realtime_error = _try_realtime()
        while True:
            with self._cv:
                while not self._closed and not self._heap:
                    self._cv.wait()
                if self._closed:
                    return
                t_rel = self._heap[0][0]
                dt = t_rel - self.now()
                if dt > _SPIN_S:
                    self._cv.wait(dt - _SPIN_S)
                    continue
            while self.now() < t_rel:  # short spin outside the lock
                pass
            due = []
            with self._cv:
                now = self.now()
                while self._heap and self._heap[0][0] <= now:
                    due.append(heapq.heappop(self._heap))
            for t_rel_i, _seq, d, payload, n, t_arr, done, lost in due:
                d.counters["packets_out"] += 1
                d.counters["bytes_out"] += n
                if d.log is not None:
                    d.log.departure(done, n, t_arr)
                if lost:
                    d.counters["lost_packets"] += 1
                    d.counters["lost_bytes"] += n
                    continue
                err = self.now() - t_rel_i
                if err > self.late_max_s:
                    self.late_max_s = err
                if self.record_release_errors:
                    self.release_errors_s.append(err)
                if d.deliver is not None:
                    try:
                        d.deliver(payload)
                    except Exception:  # a broken consumer must not stop the link
                        d.counters.setdefault("deliver_errors", 0)
                        d.counters["deliver_errors"] += 1

    # --------------------------------------------------------- results ---
    def pending(self) -> int:
        with self._cv:
            return len(self._heap)

    def stats(self) -> dict:
        out: dict[str, Any] = {name: {**d.counters, "queue": d.queue.describe(), "schedule": d.schedule.describe()}
                               for name, d in self.dirs.items()}
        errs = sorted(self.release_errors_s)
        if errs:
            def pct(p: float) -> float:
                return errs[min(len(errs) - 1, int(p / 100.0 * len(errs)))] * 1000.0
            out["release_error_ms"] = {"p50": pct(50), "p99": pct(99), "max": errs[-1] * 1000.0, "n": len(errs)}
        out["realtime"] = self.realtime and self.realtime_error is None
        if self.realtime_error and self.realtime:
            out["realtime_error"] = self.realtime_error
        return out

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join(5)
        t_end = self.now()
        for d in self.dirs.values():
            if d.log is not None:
                d.log.close(t_end)


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
    from .traces import TraceError, load_schedule
    from .schedule import ConstantRate
    p = argparse.ArgumentParser(prog="python -m hilbed.nodes.link.shaper", description="UDP trace-shaping proxy")
    p.add_argument("--up", help="uplink trace (Mahimahi or .csv)")
    p.add_argument("--up-kbps", type=float, help="constant uplink rate instead of a trace")
    p.add_argument("--down", help="downlink trace (default: unshaped replies are dropped unless given)")
    p.add_argument("--opportunity-bytes", type=int, default=1504)
    p.add_argument("--once", action="store_true", help="run the trace once instead of looping")
    p.add_argument("--delay-ms", type=float, default=0.0)
    p.add_argument("--loss", type=float, default=0.0)
    p.add_argument("--queue", default="infinite", help="infinite | droptail:packets=N | droptail:bytes=N")
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
        proxy = UdpShaperProxy({"delay_ms": a.delay_ms, "loss": a.loss, "queue": a.queue, "log_path": a.log},
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
