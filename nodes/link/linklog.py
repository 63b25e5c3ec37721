"""Link event logs in Mahimahi's ``mm-link --uplink-log`` format.

Header lines start with ``#`` (``# base timestamp: N`` is the one the plotting
scripts need); events are one per line with integer milliseconds::

    t + bytes          packet arrived at the link queue
    t - bytes delay    packet left the link (delay = t - arrival, ms)
    t # bytes          delivery opportunity (capacity) of that many bytes
    t d pkts bytes     packets dropped by the queue at arrival

Upstream ``mm-throughput-graph`` and ``mm-delay-graph`` read ``+ - #`` lines
and stop at ``d`` lines (only newer Mahimahi versions write them): pass
``drops=False`` to leave them out for those scripts. Capacity of rate
schedules is logged as 1 ms slices (their byte count, carried so the sum is
exact). Timestamps are floored to the millisecond; the shaper itself keeps
sub-millisecond times.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from .schedule import CapacitySchedule


class LinkLogWriter:
    def __init__(self, path: str | Path, link_name: str, schedule: CapacitySchedule | None = None,
                 trace_name: str = "", queue_desc: str = "infinite", command_line: str = "",
                 drops: bool = True, init_unix_ms: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f: IO[str] | None = open(self.path, "w", encoding="ascii", buffering=1 << 16)
        self.schedule = schedule
        self.drops = drops
        self._lock = threading.Lock()
        self._cap_until = 0.0  # capacity logged for [0, _cap_until)
        self._cap_carry = 0.0
        init = int(time.time() * 1000) if init_unix_ms is None else int(init_unix_ms)
        self._f.write(f"# mahimahi mm-link ({link_name}) [{trace_name}] > {self.path.name}\n")
        self._f.write(f"# command line: {command_line or 'hilbed ' + link_name}\n")
        self._f.write(f"# queue: {queue_desc}\n")
        self._f.write(f"# init timestamp: {init}\n")
        self._f.write("# base timestamp: 0\n")

    @staticmethod
    def _ms(t: float) -> int:
        return max(0, int(math.floor(t * 1000.0 + 1e-6)))

    def _capacity_to(self, t: float) -> None:
        if self.schedule is None or t <= self._cap_until or self._f is None:
            return
        for tc, n in self.schedule.capacity_events(self._cap_until, t):
            self._cap_carry += n
            whole = int(self._cap_carry + 1e-9)
            if whole > 0:
                self._cap_carry -= whole
                self._f.write(f"{self._ms(tc)} # {whole}\n")
        self._cap_until = t

    def arrival(self, t: float, nbytes: int) -> None:
        with self._lock:
            if self._f is None:
                return
            self._capacity_to(t)
            self._f.write(f"{self._ms(t)} + {int(nbytes)}\n")

    def departure(self, t: float, nbytes: int, t_arrival: float) -> None:
        with self._lock:
            if self._f is None:
                return
            self._capacity_to(t)
            ms = self._ms(t)
            self._f.write(f"{ms} - {int(nbytes)} {max(0, ms - self._ms(t_arrival))}\n")

    def drop(self, t: float, packets: int, nbytes: int) -> None:
        with self._lock:
            if self._f is None or not self.drops:
                return
            self._capacity_to(t)
            self._f.write(f"{self._ms(t)} d {int(packets)} {int(nbytes)}\n")

    def close(self, t_end: float | None = None) -> None:
        with self._lock:
            if self._f is None:
                return
            if t_end is not None:
                self._capacity_to(t_end)
            self._f.close()
            self._f = None


@dataclass
class LinkLog:
    base_ms: int | None = None
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


def read_linklog(path: str | Path) -> LinkLog:
    """Parse a link log with the same rules as Mahimahi's graph scripts (plus ``d``)."""
    log = LinkLog()
    with open(path, encoding="ascii", errors="replace") as f:
        for n, line in enumerate(f, start=1):
            line = line.rstrip("\n")
            if line.startswith("#"):
                log.headers.append(line)
                if line.startswith("# base timestamp: "):
                    if log.base_ms is not None:
                        raise LinkLogError(f"{path}:{n}: base timestamp multiply defined")
                    log.base_ms = int(line.split(":", 1)[1])
                continue
            parts = line.split()
            if len(parts) < 3 or not parts[0].isdigit() or not parts[2].isdigit():
                raise LinkLogError(f"{path}:{n}: expected 'timestamp event bytes [...]', got {line!r}")
            if log.base_ms is None:
                raise LinkLogError(f"{path}:{n}: log is missing its '# base timestamp:' header")
            t, ev, nb = int(parts[0]), parts[1], int(parts[2])
            if ev == "+":
                log.arrivals.append((t, nb))
            elif ev == "-":
                if len(parts) < 4 or not parts[3].isdigit():
                    raise LinkLogError(f"{path}:{n}: departure needs 'timestamp - bytes delay'")
                log.departures.append((t, nb, int(parts[3])))
            elif ev == "#":
                log.capacity.append((t, nb))
            elif ev == "d":
                if len(parts) < 4 or not parts[3].isdigit():
                    raise LinkLogError(f"{path}:{n}: drop needs 'timestamp d packets bytes'")
                log.drops.append((t, nb, int(parts[3])))
            else:
                raise LinkLogError(f"{path}:{n}: unknown event type {ev!r}")
    return log
