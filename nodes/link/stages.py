"""The trace engine: Mahimahi's link stages, shared by every user-space shaped path.

One link direction is a :class:`Pipeline` of small stages, in Mahimahi's
order (``mm-link`` queue and rate server, then ``mm-delay``, then
``mm-loss``), observed by the link log:

1. :class:`DropTailQueue` -- admits or drops a packet at its arrival
   (``infinite``, or ``droptail`` by packets and/or bytes; the packet in
   service does not count, as in Mahimahi);
2. rate server -- a :class:`~hilbed.nodes.link.schedule.ByteServer` on the
   :class:`~hilbed.nodes.link.schedule.CapacitySchedule`: byte-exact FIFO
   service, opportunity leftovers serve the next queued packet, idle
   capacity is lost; a packet leaves when its last byte is served. A
   deadline makes it refuse (and not charge) a packet that would leave later;
3. :class:`Delay` -- a fixed one-way delay;
4. :class:`IidLoss` -- a seeded IID drop after the packet used the link;
5. link log -- a :class:`~hilbed.nodes.link.linklog.LinkLogWriter` gets the
   arrival, drop and departure events (one queue put each; it writes them
   from its own thread).

Because service is FIFO and the schedule is known, :meth:`Pipeline.offer`
computes a packet's fate and release time exactly when it arrives; nothing
ticks. Releasing is the caller's: :class:`ReleaseThread` for open-loop
traffic (``TraceShaper``), :func:`wait_until` inline for a closed-loop sender
(``ShapedLink``, which plans its next packet only once the previous one
left, so a change of the jammer's medium load applies from then on). Both
sleep to :data:`SPIN_S` before the release and spin the rest.
"""

from __future__ import annotations

import contextlib
import ctypes
import heapq
import math
import os
import random
import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from hilbed.nodes.link.schedule import ByteServer, CapacitySchedule

#: sleep until this close to a release, then spin
SPIN_S = 0.0002

# packet fates
SENT = "sent"          # served; released at t_release unless lost
DROPPED = "dropped"    # the queue was full at arrival
REFUSED = "refused"    # would leave after the deadline: not queued, link not charged
STALLED = "stalled"    # queued but never served (a trace run once has ended)


# ----------------------------------------------------------- accounting ---

#: bytes Mahimahi charges per packet beyond the IP packet: the tun device's packet-information header
#: (mm-link opens its tun without IFF_NO_PI; 1500 MTU + 4 is why an opportunity is 1504 bytes)
TUN_PI_BYTES = 4
IPV4_HEADER_BYTES = 20
#: Linux sends TCP timestamps by default: a 20-byte header plus a 12-byte option on every segment
TCP_HEADER_BYTES = 32
UDP_HEADER_BYTES = 8
MTU_BYTES = 1500


@dataclass(frozen=True)
class Accounting:
    """What the rate server charges for a packet: ``payload`` (the bytes hilbed writes, as before) or ``frame``.

    ``frame`` charges what Mahimahi's ``mm-link`` takes from its tun device for the
    same payload: per IP packet 4 (tun PI) + 20 (IPv4) + 32 (TCP with timestamps)
    bytes, a payload above the MSS (1500 - 52 = 1448) split into several segments;
    for UDP 4 + 20 + 8 bytes, a datagram above 1472 bytes split into IP fragments
    of at most 1480 bytes, each with its own tun and IP header, the UDP header
    once. Reverse-direction TCP ACKs are not charged.
    """

    mode: str = "payload"
    protocol: str = "tcp"
    mtu: int = MTU_BYTES

    def __post_init__(self) -> None:
        if self.mode not in ("payload", "frame"):
            raise ValueError(f"unknown accounting {self.mode!r} (allowed: payload, frame)")
        if self.protocol not in ("tcp", "udp"):
            raise ValueError(f"unknown protocol {self.protocol!r} (allowed: tcp, udp)")

    @classmethod
    def parse(cls, value: "str | Accounting | None", protocol: str = "tcp") -> "Accounting":
        if isinstance(value, Accounting):
            return value
        return cls(value or "payload", protocol)

    @property
    def mss(self) -> int:
        return self.mtu - IPV4_HEADER_BYTES - TCP_HEADER_BYTES

    def charge(self, nbytes: int) -> int:
        """Bytes of link capacity a packet of ``nbytes`` payload uses."""
        if self.mode == "payload":
            return nbytes
        if self.protocol == "tcp":
            segments = max(1, -(-nbytes // self.mss))
            return nbytes + segments * (TUN_PI_BYTES + IPV4_HEADER_BYTES + TCP_HEADER_BYTES)
        frag = (self.mtu - IPV4_HEADER_BYTES) // 8 * 8
        fragments = max(1, -(-(nbytes + UDP_HEADER_BYTES) // frag))
        return nbytes + UDP_HEADER_BYTES + fragments * (TUN_PI_BYTES + IPV4_HEADER_BYTES)

    def describe(self) -> dict:
        out: dict[str, Any] = {"mode": self.mode}
        if self.mode == "frame":
            per = TUN_PI_BYTES + IPV4_HEADER_BYTES + (TCP_HEADER_BYTES if self.protocol == "tcp" else UDP_HEADER_BYTES)
            out |= {"protocol": self.protocol, "per_packet_bytes": per, "mtu": self.mtu,
                    **({"mss": self.mss} if self.protocol == "tcp" else {})}
        return out


# ------------------------------------------------------------- queueing ---

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
    def parse(cls, text: "str | QueueSpec | None") -> "QueueSpec":
        """``infinite`` | ``droptail:packets=100`` | ``droptail:bytes=30000[,packets=..]``."""
        if isinstance(text, QueueSpec):
            return text
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


class DropTailQueue:
    """Stage 1: admission at arrival against the backlog of packets not yet gone."""

    def __init__(self, spec: QueueSpec | str | None = None):
        self.spec = QueueSpec.parse(spec)
        self._backlog: deque = deque()  # (t_first_byte, t_done, nbytes) of admitted packets
        self._backlog_bytes = 0

    def occupancy(self, t: float) -> tuple[int, int]:
        """(packets, bytes) waiting at ``t``, the one in service not counted."""
        bl = self._backlog
        while bl and bl[0][1] <= t:
            self._backlog_bytes -= bl.popleft()[2]
        n, b = len(bl), self._backlog_bytes
        if bl and bl[0][0] <= t:
            n, b = n - 1, b - bl[0][2]
        return n, b

    def admit(self, t: float, nbytes: int) -> bool:
        if self.spec.kind == "infinite":
            return True
        return self.spec.admits(*self.occupancy(t), nbytes)

    def hold(self, t_first: float, t_done: float, nbytes: int) -> None:
        """The admitted packet occupies the queue until ``t_done``."""
        if self.spec.kind != "infinite":
            self._backlog.append((t_first, t_done, nbytes))
            self._backlog_bytes += nbytes


class Delay:
    """Stage 3: a fixed one-way delay."""

    def __init__(self, delay_s: float = 0.0):
        if delay_s < 0:
            raise ValueError("delay_ms must be >= 0")
        self.delay_s = delay_s


class IidLoss:
    """Stage 4: each served packet is lost with probability ``p`` (one draw per served packet)."""

    def __init__(self, p: float = 0.0, rng: random.Random | None = None):
        if not 0 <= p < 1:
            raise ValueError("loss must be in [0, 1)")
        self.p = p
        self.rng = rng or random.Random(0)

    def lost(self) -> bool:
        return self.p > 0 and self.rng.random() < self.p


@dataclass
class Packet:
    """One packet's way through a :class:`Pipeline` (link times in seconds)."""

    t_arrival: float
    nbytes: int
    fate: str = SENT
    t_first: float = math.nan    # its first byte is served
    t_done: float = math.nan     # its last byte is served: it leaves the link
    t_release: float = math.nan  # it reaches the far end
    lost: bool = False
    charged: int = 0             # bytes of capacity it uses (``nbytes`` unless frame accounting)


class Pipeline:
    """One link direction: queue -> rate server -> delay -> loss, with a link log watching.

    ``accounting`` decides the bytes each packet costs (queue, server and log
    all see the charged size); ``offer(nbytes)`` always takes the payload.
    """

    def __init__(self, schedule: CapacitySchedule, queue: DropTailQueue | QueueSpec | str | None = None,
                 delay: Delay | float = 0.0, loss: IidLoss | float = 0.0, rng: random.Random | None = None,
                 log: Any = None, accounting: Accounting | str | None = None):
        self.schedule = schedule
        self.accounting = Accounting.parse(accounting)
        self.queue = queue if isinstance(queue, DropTailQueue) else DropTailQueue(queue)
        self.server = ByteServer(schedule)
        self.delay = delay if isinstance(delay, Delay) else Delay(delay)
        self.loss = loss if isinstance(loss, IidLoss) else IidLoss(loss, rng)
        self.log = log
        self.counters = {"packets_in": 0, "bytes_in": 0, "dropped_packets": 0, "dropped_bytes": 0,
                         "refused": 0, "never_served": 0, "payload_bytes_in": 0}
        #: called with each packet after :meth:`offer` decided its fate (tests, benchmarks)
        self.on_packet: Callable[[Packet], None] | None = None

    def offer(self, nbytes: int, t_arrival: float, deadline: float = math.inf) -> Packet:
        """A packet of ``nbytes`` payload arrives at ``t_arrival``: its fate and times, committed to the link."""
        payload = nbytes
        nbytes = self.accounting.charge(payload)
        pkt = Packet(t_arrival, payload, charged=nbytes)
        c, log = self.counters, self.log
        if not self.queue.admit(t_arrival, nbytes):
            pkt.fate = DROPPED
            c["packets_in"] += 1
            c["bytes_in"] += nbytes
            c["dropped_packets"] += 1
            c["dropped_bytes"] += nbytes
            if log is not None:
                log.arrival(t_arrival, nbytes)
                log.drop(t_arrival, 1, nbytes)
            return self._decided(pkt)
        start, first, done = self.server.plan(nbytes, t_arrival)
        if done > deadline:
            pkt.fate = REFUSED
            c["refused"] += 1
            return self._decided(pkt)
        self.server.commit(start, nbytes)
        self.queue.hold(first, done, nbytes)
        c["packets_in"] += 1
        c["bytes_in"] += nbytes
        c["payload_bytes_in"] += payload
        pkt.t_first, pkt.t_done = first, done
        if log is not None:
            log.arrival(t_arrival, nbytes)
            log.departure(done, nbytes, t_arrival)
        if math.isinf(done):
            pkt.fate = STALLED
            c["never_served"] += 1
            return self._decided(pkt)
        pkt.t_release = done + self.delay.delay_s
        pkt.lost = self.loss.lost()
        return self._decided(pkt)

    def _decided(self, pkt: Packet) -> Packet:
        if self.on_packet is not None:
            self.on_packet(pkt)
        return pkt

    def idle_until(self, t: float) -> None:
        """The link was held (or idle) until ``t``: capacity before ``t`` is gone."""
        self.server.idle_until(t)

    def close_log(self, t_end: float) -> None:
        if self.log is not None:
            self.log.close(t_end)


# ------------------------------------------------------------- releasing ---

def try_realtime(priority: int = 10) -> str | None:
    """SCHED_FIFO for the calling thread (needs root or CAP_SYS_NICE); the reason if refused."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
        return None
    except (AttributeError, OSError) as exc:
        return str(exc)


def set_timer_slack_ns(ns: int = 1) -> None:
    """Tighten this thread's sleep timer slack (Linux prctl PR_SET_TIMERSLACK = 29)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(29, ctypes.c_ulong(ns), 0, 0, 0)
    except (OSError, AttributeError):
        pass


class RealtimeSection:
    """Run a sleep-then-send under SCHED_FIFO when the process may (root / CAP_SYS_NICE).

    On a busy machine the OS scheduler, not the sleep, decides when a woken
    sender runs; real-time priority only while waiting for a release keeps
    releases sub-millisecond without running the encoder at that priority.
    """

    def __init__(self) -> None:
        self.ok = hasattr(os, "SCHED_FIFO")

    @contextlib.contextmanager
    def __call__(self):
        if not self.ok:
            yield
            return
        try:
            policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
        except OSError:
            self.ok = False
            yield
            return
        try:
            yield
        finally:
            try:
                os.sched_setscheduler(0, policy, param)
            except OSError:
                pass


def wait_until(now: Callable[[], float], t: float) -> float:
    """Block until ``now() >= t``; returns how late that was (seconds, >= 0)."""
    if not math.isfinite(t):
        raise ValueError(f"cannot wait until {t}")
    while True:
        dt = t - now()
        if dt <= 0:
            return -dt
        if dt > SPIN_S:
            time.sleep(dt - SPIN_S)
            continue
        while now() < t:  # the last SPIN_S: a sleep would overshoot it
            pass


class ReleaseThread:
    """Releases items at their link time from one thread (``SCHED_FIFO`` when allowed).

    ``on_release(item, late_s)`` runs on that thread, outside the lock.
    """

    def __init__(self, now: Callable[[], float], on_release: Callable[[Any, float], None], realtime: bool = True,
                 name: str = "trace-release"):
        self.now = now
        self.on_release = on_release
        self.realtime = realtime
        self.realtime_error: str | None = None if realtime else "not requested"
        self._heap: list = []
        self._seq = 0
        self._cv = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def schedule(self, t_release: float, item: Any) -> bool:
        with self._cv:
            if self._closed:
                return False
            self._seq += 1
            heapq.heappush(self._heap, (t_release, self._seq, item))
            if self._heap[0][1] == self._seq:  # a new earliest release: re-arm the wait
                self._cv.notify()
            return True

    def pending(self) -> int:
        with self._cv:
            return len(self._heap)

    def close(self, timeout: float = 5.0) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join(timeout)

    def _run(self) -> None:
        set_timer_slack_ns(1)
        if self.realtime:  # only this mostly-sleeping thread; its spins are bounded by SPIN_S
            self.realtime_error = try_realtime()
        while True:
            with self._cv:
                while not self._closed and not self._heap:
                    self._cv.wait()
                if self._closed:
                    return
                t_rel = self._heap[0][0]
                dt = t_rel - self.now()
                if dt > SPIN_S:
                    self._cv.wait(dt - SPIN_S)
                    continue
            while self.now() < t_rel:  # short spin outside the lock
                pass
            due = []
            with self._cv:
                now = self.now()
                while self._heap and self._heap[0][0] <= now:
                    due.append(heapq.heappop(self._heap))
            for t_rel_i, _seq, item in due:
                self.on_release(item, self.now() - t_rel_i)
