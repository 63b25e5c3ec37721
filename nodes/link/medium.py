"""The shared 2.4 GHz medium on the embedded testbed: a small JSON file.

The jammer publishes its *measured* load as ``{"load": 0..1, "mbps": x,
"t": unix_time}`` (atomic rename, so readers never see half a file); the
emulated radios (firmware_bridge ``--medium-file``) and user-space shaped
links read it about every 100 ms. ``load`` is the fraction of air time the
interferer keeps busy: measured Mbit/s over a nominal 802.11g channel
capacity of 20 Mbit/s (see docs/jammer.md). A shaped link loses capacity in
proportion: effective capacity = trace capacity x (1 - load).

A missing, unreadable or stale file (older than ``stale_s``; a jammer that
died can no longer refresh it) reads as load 0.

On another machine than the jammer's the file is the node's own: the
controller relays each measured load to the node's agent (``op_medium``),
which writes it here with ``relayed: true`` and the measurement window's end.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

from hilbed.nodes.link.schedule import CapacitySchedule

MEDIUM_ENV = "HILBED_MEDIUM_FILE"
#: nominal 802.11g channel capacity the load is measured against (Mbit/s)
NOMINAL_CHANNEL_MBPS = 20.0
#: a medium file older than this reads as an idle medium
DEFAULT_STALE_S = 5.0


def node_medium_path() -> Path:
    """This node's medium file: ``HILBED_MEDIUM_FILE`` as the controller set it, else a file of this run
    under the temp directory (an agent started without it still has one place its link and the relay share)."""
    env = os.environ.get(MEDIUM_ENV)
    if env:
        return Path(env)
    return Path(tempfile.gettempdir()) / f"hilbed-medium-{os.getuid()}" / (os.environ.get("HILBED_RUN_ID") or
                                                                          "run") / "medium.json"


def write_medium(path: str | Path, load: float, mbps: float, t: float | None = None, **extra) -> None:
    """Atomically replace the medium file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"load": round(min(1.0, max(0.0, float(load))), 6), "mbps": round(float(mbps), 6),
           "t": time.time() if t is None else t, **extra}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def read_medium(path: str | Path, stale_s: float = DEFAULT_STALE_S, now: float | None = None) -> dict:
    """The medium's state; ``{"load": 0.0, ...}`` when missing, bad or stale."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        load = float(doc.get("load", 0.0))
        t = float(doc.get("t", 0.0))
    except (OSError, ValueError, TypeError, AttributeError):
        return {"load": 0.0, "mbps": 0.0, "t": None, "state": "missing"}
    now = time.time() if now is None else now
    if not math.isfinite(load) or now - t > stale_s:
        return {"load": 0.0, "mbps": 0.0, "t": t, "state": "stale"}
    return {"load": min(1.0, max(0.0, load)), "mbps": float(doc.get("mbps", 0.0) or 0.0), "t": t, "state": "fresh"}


class MediumWatcher:
    """Cached reader: re-reads the file at most every ``interval_s``."""

    def __init__(self, path: str | Path, interval_s: float = 0.1, stale_s: float = DEFAULT_STALE_S):
        self.path = Path(path)
        self.interval_s = interval_s
        self.stale_s = stale_s
        self._next = 0.0
        self._load = 0.0
        self._lock = threading.Lock()

    def load(self) -> float:
        now = time.monotonic()
        with self._lock:
            if now >= self._next:
                self._load = read_medium(self.path, self.stale_s)["load"]
                self._next = now + self.interval_s
            return self._load

    def factor(self) -> float:
        """Fraction of capacity left to the link: ``1 - load``."""
        return 1.0 - self.load()


class MediumScaledSchedule(CapacitySchedule):
    """``base`` capacity x ``factor()`` where the factor is sampled as time goes on.

    The factor seen at link time ``now()`` holds from then on until it
    changes (the past is kept exactly), so packets already served keep their
    times and the next ones see the new medium.
    """

    def __init__(self, base: CapacitySchedule, factor: Callable[[], float], now: Callable[[], float]):
        self.base = base
        self._factor = factor
        self._now = now
        f0 = self._clip(factor())
        self.t = [0.0]
        self.f = [f0]
        self.b = [0.0]  # base bytes at each breakpoint
        self.c = [0.0]  # scaled bytes at each breakpoint
        self._lock = threading.Lock()

    @staticmethod
    def _clip(f: float) -> float:
        return min(1.0, max(0.0, float(f)))

    def _refresh(self) -> None:
        f = self._clip(self._factor())
        with self._lock:
            if f == self.f[-1]:
                return
            now = max(self._now(), self.t[-1])
            b_now = self.base.bytes_until(now)
            c_now = self.c[-1] + self.f[-1] * (b_now - self.b[-1])
            self.t.append(now)
            self.f.append(f)
            self.b.append(b_now)
            self.c.append(c_now)

    def current_factor(self) -> float:
        self._refresh()
        return self.f[-1]

    def bytes_until(self, t: float) -> float:
        self._refresh()
        i = max(0, bisect.bisect_right(self.t, t) - 1)
        return self.c[i] + self.f[i] * (self.base.bytes_until(t) - self.b[i])

    def time_of_bytes(self, b: float) -> float:
        self._refresh()
        if b <= 0:
            return 0.0
        i = max(0, bisect.bisect_left(self.c, b) - 1)
        while True:
            f = self.f[i]
            if f <= 0:
                if i + 1 < len(self.t):
                    i += 1
                    continue
                return math.inf
            t = self.base.time_of_bytes(self.b[i] + (b - self.c[i]) / f)
            if i + 1 < len(self.t) and t > self.t[i + 1]:
                i += 1
                continue
            return max(t, self.t[i])

    def rate_bps_at(self, t: float) -> float:
        i = max(0, bisect.bisect_right(self.t, t) - 1)
        return self.base.rate_bps_at(t) * self.f[i]

    def capacity_events(self, t0: float, t1: float, step_s: float = 0.001):
        # a link log's writer thread calls this while the sender may add breakpoints:
        # read only the breakpoints complete when we start (the lists only grow)
        with self._lock:
            n_pts = len(self.t)
        for t, n in self.base.capacity_events(t0, t1, step_s):
            i = max(0, bisect.bisect_right(self.t, t, 0, n_pts) - 1)
            if self.f[i] > 0:
                yield t, n * self.f[i]

    def describe(self) -> str:
        return f"{self.base.describe()} x (1 - medium load)"
