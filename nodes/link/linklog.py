"""Link event logs in Mahimahi's ``mm-link --uplink-log`` format.

Header lines start with ``#`` (``# base timestamp: N`` is the one the plotting
scripts need, ``# init timestamp: N`` the unix ms of link time 0); events are
one per line with integer milliseconds::

    t + bytes          packet arrived at the link queue
    t - bytes delay    packet left the link (delay = t - arrival, ms)
    t # bytes          delivery opportunity (capacity) of that many bytes
    t d pkts bytes     packets dropped by the queue at arrival

Upstream ``mm-throughput-graph`` and ``mm-delay-graph`` read ``+ - #`` lines
and stop at ``d`` lines (only newer Mahimahi versions write them): pass
``drops=False`` to leave them out for those scripts. Capacity of rate
schedules is logged as 1 ms slices (their byte count, carried so the sum is
exact); capacity is the schedule the link served, so a jammed link logs its
capacity after jamming. Timestamps are floored to the millisecond; the
shaper itself keeps sub-millisecond times.

:class:`LinkLogWriter` writes from its own thread: a shaper only enqueues an
event (one queue put), so formatting lines -- one per millisecond of a rate
schedule, however long the link was idle -- and disk stalls never delay a
release. With a ``clock`` the writer holds each event until link time passes
it and writes capacity only for the past, so lines come in time order and
the capacity is final (a medium change affects only the future).
"""

from __future__ import annotations

import heapq
import math
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from hilbed.nodes.link.schedule import CapacitySchedule

_CLOSE = object()


class LinkLogWriter:
    """A Mahimahi link log fed by :meth:`arrival`/:meth:`departure`/:meth:`drop`, written by a thread.

    ``clock`` gives link time now (seconds); without one, events are written
    as they come (every ``flush_s``). ``lag_s`` is how long the writer waits
    behind the clock for events computed just before now. :meth:`hold` keeps
    it from writing past a time while events at that time may still come
    (a closed-loop sender queues a whole message at once but plans its
    packets one by one).
    """

    BATCH_LINES = 256  # lines formatted between GIL hand-backs

    def __init__(self, path: str | Path, link_name: str, schedule: CapacitySchedule | None = None,
                 trace_name: str = "", queue_desc: str = "infinite", command_line: str = "",
                 drops: bool = True, init_unix_ms: int | None = None, clock: Callable[[], float] | None = None,
                 flush_s: float = 0.05, lag_s: float = 0.02):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "w", encoding="ascii", buffering=1 << 16)
        self.schedule = schedule
        self.drops = drops
        self.clock = clock
        self.flush_s = flush_s
        self.lag_s = lag_s
        self.error: str | None = None
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._stop = threading.Event()
        self._closed = False
        self._hold: float | None = None
        self._heap: list = []
        self._seq = 0
        self._cap_until = 0.0  # capacity logged for [0, _cap_until)
        self._cap_carry = 0.0
        self._buf: list[str] = []
        init = int(time.time() * 1000) if init_unix_ms is None else int(init_unix_ms)
        self._f.write(f"# mahimahi mm-link ({link_name}) [{trace_name}] > {self.path.name}\n"
                      f"# command line: {command_line or 'hilbed ' + link_name}\n"
                      f"# queue: {queue_desc}\n"
                      f"# init timestamp: {init}\n"
                      "# base timestamp: 0\n")
        self._thread = threading.Thread(target=self._run, name=f"linklog-{link_name}", daemon=True)
        self._thread.start()

    # ------------------------------------------------- shaper side (cheap) ---
    def arrival(self, t: float, nbytes: int) -> None:
        if not self._closed:
            self._q.put((t, "+", int(nbytes), 0.0))

    def departure(self, t: float, nbytes: int, t_arrival: float) -> None:
        if not self._closed and math.isfinite(t):
            self._q.put((t, "-", int(nbytes), t_arrival))

    def drop(self, t: float, packets: int, nbytes: int) -> None:
        if not self._closed and self.drops:
            self._q.put((t, "d", int(packets), int(nbytes)))

    def hold(self, t: float | None) -> None:
        """Write nothing after link time ``t`` until ``hold(None)``."""
        self._hold = t

    def close(self, t_end: float | None = None) -> None:
        """Write what happened up to ``t_end`` (capacity included) and close the file."""
        if self._closed:
            return
        self._closed = True
        self._q.put((_CLOSE, t_end))
        self._stop.set()
        self._thread.join()

    # ------------------------------------------------------ writer thread ---
    @staticmethod
    def _ms(t: float) -> int:
        return max(0, int(math.floor(t * 1000.0 + 1e-6)))

    def _emit(self, line: str) -> None:
        self._buf.append(line)
        if len(self._buf) >= self.BATCH_LINES:
            self._flush_buf()
            time.sleep(0)  # hand the GIL to a release thread that may be waiting for it

    def _flush_buf(self) -> None:
        if self._buf:
            self._f.write("".join(self._buf))
            self._buf.clear()

    def _capacity_to(self, t: float) -> None:
        if self.schedule is None or t <= self._cap_until or math.isinf(t):
            return
        for tc, n in self.schedule.capacity_events(self._cap_until, t):
            self._cap_carry += n
            whole = int(self._cap_carry + 1e-9)
            if whole > 0:
                self._cap_carry -= whole
                self._emit(f"{self._ms(tc)} # {whole}\n")
        self._cap_until = t

    def _write_until(self, due: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= due:
            t, _seq, kind, a, b = heapq.heappop(heap)
            self._capacity_to(t)
            ms = self._ms(t)
            if kind == "-":
                self._emit(f"{ms} - {a} {max(0, ms - self._ms(b))}\n")
            elif kind == "d":
                self._emit(f"{ms} d {a} {b}\n")
            else:
                self._emit(f"{ms} + {a}\n")
        self._capacity_to(due)

    def _drain(self) -> tuple[bool, float | None]:
        closing, t_end = False, None
        while True:
            try:
                ev = self._q.get_nowait()
            except queue.Empty:
                return closing, t_end
            if ev[0] is _CLOSE:
                closing, t_end = True, ev[1]
                continue
            self._seq += 1
            heapq.heappush(self._heap, (ev[0], self._seq, *ev[1:]))

    def _run(self) -> None:
        while True:
            self._stop.wait(self.flush_s)
            closing, t_end = self._drain()
            try:
                if closing:
                    self._write_until(math.inf if t_end is None else t_end)
                    self._heap.clear()  # events after the end never happened on this link
                    if t_end is not None:  # a comment to Mahimahi's scripts: capacity was logged until here
                        self._emit(f"# end timestamp: {self._ms(t_end)}\n")
                    self._flush_buf()
                    self._f.close()
                    return
                if self.error is not None:
                    self._heap.clear()
                    continue
                due = math.inf if self.clock is None else self.clock() - self.lag_s
                if self._hold is not None:
                    due = min(due, self._hold)
                self._write_until(due)
                self._flush_buf()
            except (OSError, ValueError) as exc:  # a full disk must not take the link down
                self.error = self.error or str(exc)
                self._buf.clear()
                if closing:
                    try:
                        self._f.close()
                    except OSError:
                        pass
                    return


# ----------------------------------------------------------------- reader ---

@dataclass
class LinkLog:
    base_ms: int | None = None
    init_unix_ms: int | None = None
    end_ms: int | None = None  # the link closed here (capacity is complete up to it)
    headers: list[str] = field(default_factory=list)
    arrivals: list[tuple[int, int]] = field(default_factory=list)
    departures: list[tuple[int, int, int]] = field(default_factory=list)
    capacity: list[tuple[int, int]] = field(default_factory=list)
    drops: list[tuple[int, int, int]] = field(default_factory=list)

    def per_bin(self, bin_ms: int = 1000) -> dict[str, dict[int, int]]:
        """Bytes per ``bin_ms`` bin (relative to the base timestamp) for each stream."""
        out: dict[str, dict[int, int]] = {"capacity": {}, "arrivals": {}, "departures": {}}
        base = self.base_ms or 0
        for name, rows in (("capacity", self.capacity), ("arrivals", self.arrivals), ("departures", self.departures)):
            d = out[name]
            for row in rows:
                k = (row[0] - base) // bin_ms
                d[k] = d.get(k, 0) + row[1]
        return out


class LinkLogError(ValueError):
    pass


def iter_linklog(path: str | Path, log: LinkLog | None = None) -> Iterator[tuple[int, str, int, int | None]]:
    """``(t, event, bytes_or_packets, extra)`` per event line, with the rules of Mahimahi's graph scripts
    (plus ``d``); header values go into ``log`` when given."""
    log = log if log is not None else LinkLog()
    with open(path, encoding="ascii", errors="replace") as f:
        for n, line in enumerate(f, start=1):
            line = line.rstrip("\n")
            if line.startswith("#"):
                log.headers.append(line)
                if line.startswith("# base timestamp: "):
                    if log.base_ms is not None:
                        raise LinkLogError(f"{path}:{n}: base timestamp multiply defined")
                    log.base_ms = int(line.split(":", 1)[1])
                elif line.startswith(("# init timestamp: ", "# end timestamp: ")):
                    try:
                        v = int(line.split(":", 1)[1])
                    except ValueError:
                        raise LinkLogError(f"{path}:{n}: bad timestamp header {line!r}") from None
                    if line.startswith("# init"):
                        log.init_unix_ms = v
                    else:
                        log.end_ms = v
                continue
            parts = line.split()
            if len(parts) < 3 or not parts[0].isdigit() or not parts[2].isdigit():
                raise LinkLogError(f"{path}:{n}: expected 'timestamp event bytes [...]', got {line!r}")
            if log.base_ms is None:
                raise LinkLogError(f"{path}:{n}: log is missing its '# base timestamp:' header")
            ev = parts[1]
            if ev in ("+", "#"):
                yield int(parts[0]), ev, int(parts[2]), None
            elif ev in ("-", "d"):
                if len(parts) < 4 or not parts[3].isdigit():
                    what = "departure needs 'timestamp - bytes delay'" if ev == "-" else \
                        "drop needs 'timestamp d packets bytes'"
                    raise LinkLogError(f"{path}:{n}: {what}")
                yield int(parts[0]), ev, int(parts[2]), int(parts[3])
            else:
                raise LinkLogError(f"{path}:{n}: unknown event type {ev!r}")


def read_linklog(path: str | Path) -> LinkLog:
    """Parse a whole link log."""
    log = LinkLog()
    streams = {"+": log.arrivals, "#": log.capacity}
    for t, ev, a, b in iter_linklog(path, log):
        if ev in streams:
            streams[ev].append((t, a))
        elif ev == "-":
            log.departures.append((t, a, b))
        else:
            log.drops.append((t, a, b))
    return log


@dataclass
class CapacitySeries:
    """A link log's capacity (``#`` lines) in bins: ``bytes[k]`` were deliverable in
    ``[k * bin_ms, (k + 1) * bin_ms)`` after the base timestamp, for every bin up to the link's close
    (``# end timestamp``) or, in logs without it, the last event."""

    init_unix_ms: int | None
    bin_ms: int
    bytes: list[int]

    def kbps(self) -> list[float]:
        return [b * 8.0 / self.bin_ms for b in self.bytes]

    def bin_starts_unix_s(self) -> list[float] | None:
        if self.init_unix_ms is None:
            return None
        return [(self.init_unix_ms + k * self.bin_ms) / 1000.0 for k in range(len(self.bytes))]


def read_capacity(path: str | Path, bin_ms: int = 100) -> CapacitySeries:
    """The capacity a link log records, binned (bins without ``#`` lines read 0 bytes)."""
    if bin_ms <= 0:
        raise ValueError("bin_ms must be > 0")
    log = LinkLog()
    bins: dict[int, int] = {}
    last = -1
    for t, ev, a, _b in iter_linklog(path, log):
        k = (t - (log.base_ms or 0)) // bin_ms
        last = max(last, k)
        if ev == "#":
            bins[k] = bins.get(k, 0) + a
    if log.end_ms is not None:
        last = max(last, -(-(log.end_ms - (log.base_ms or 0)) // bin_ms) - 1)
    return CapacitySeries(log.init_unix_ms, bin_ms, [bins.get(k, 0) for k in range(last + 1)])
