"""The power-meter seam: a meter samples power in the background; the client asks it for the energy of a window.

Sampling meters (INA219/INA226, PPK2) keep ``(t_ns, mW)`` samples on the client's
wall clock and integrate them sample-and-hold; the emulated meter overrides the
per-phase methods with a power model. Implausible readings (negative, above the
meter's range) are kept as *flagged* and never integrated: a glitch must not
pass for energy.
"""

from __future__ import annotations

import bisect
import threading
import time
from dataclasses import dataclass


class PowerMeterError(RuntimeError):
    """The meter cannot be used here (library or hardware missing, bad settings)."""


@dataclass
class Energy:
    """The energy of one window and how much the meter saw of it (mj None: nothing valid to integrate)."""

    mj: float | None
    samples: int = 0
    missed: int = 0
    flagged: int = 0


class PowerMeter:
    """Base: a meter with no samples. Subclasses sample (``SampledMeter``) or model (``EmulatedMeter``)."""

    kind = "abstract"

    def start(self) -> None:
        """Begin sampling (idempotent)."""

    def stop(self) -> None:
        """Stop sampling; the samples taken stay available."""

    def close(self) -> None:
        self.stop()

    def describe(self) -> dict:
        return {"kind": self.kind}

    def integrate(self, t0_ns: int, t1_ns: int) -> Energy:
        raise NotImplementedError

    def baseline(self, duration_s: float) -> tuple[float | None, Energy]:
        """Idle power in mW over ``duration_s`` of doing nothing, and what the meter saw of it."""
        self.start()
        t0 = time.time_ns()
        time.sleep(duration_s)
        t1 = time.time_ns()
        e = self.integrate(t0, t1)
        return (None if e.mj is None else e.mj / ((t1 - t0) / 1e9)), e

    def encode_energy(self, t0_ns: int, t1_ns: int, cpu_ns: int) -> Energy:
        """Energy of an encode window; a measuring meter ignores ``cpu_ns``, a model uses it."""
        return self.integrate(t0_ns, t1_ns)

    def tx_energy(self, t0_ns: int, t1_ns: int, link: dict) -> Energy:
        """Energy of a transmit window; ``link``: the send report's facts (see :mod:`.emulated`)."""
        return self.integrate(t0_ns, t1_ns)


class SampledMeter(PowerMeter):
    """A meter read by a background thread every ``interval_s``; subclasses implement :meth:`read_batch`.

    ``range_mw``: the largest plausible reading (the meter's full scale); above
    it or below zero a sample is flagged. Memory is bounded: the oldest samples
    are dropped past ``max_samples``.
    """

    def __init__(self, interval_s: float, range_mw: float, max_samples: int = 2_000_000):
        if interval_s <= 0 or range_mw <= 0:
            raise PowerMeterError(f"interval_s {interval_s} and range_mw {range_mw} must be > 0")
        self.interval_s, self.range_mw, self.max_samples = float(interval_s), float(range_mw), int(max_samples)
        #: time between two samples the meter promises (a PPK2 delivers many per read)
        self.sample_period_s = self.interval_s
        self._t: list[int] = []
        self._p: list[float | None] = []  # None: a read that failed (missed)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def read_batch(self) -> list[tuple[int, float | None]]:
        """Samples since the last call as ``(t_ns, mW)``; ``mW`` None for a read that failed."""
        raise NotImplementedError

    def add(self, batch: list[tuple[int, float | None]]) -> None:
        """Append samples (in time order); public so tests and replay can feed a meter without a thread."""
        with self._lock:
            for t, p in batch:
                self._t.append(int(t))
                self._p.append(None if p is None else float(p))
            over = len(self._t) - self.max_samples
            if over > 0:
                del self._t[:over], self._p[:over]

    def _loop(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            try:
                batch = self.read_batch()
            except Exception:  # a bus error is a missed sample, not the end of the run
                batch = [(time.time_ns(), None)]
            self.add(batch)
            next_t += self.interval_s
            self._stop.wait(max(0.0, next_t - time.monotonic()))

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name=f"power-{self.kind}", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None

    def _ok(self, p: float | None) -> bool:
        return p is not None and 0.0 <= p <= self.range_mw

    def integrate(self, t0_ns: int, t1_ns: int) -> Energy:
        """Sample-and-hold integral of the valid samples over [t0, t1] in mJ.

        A valid sample holds until the next valid one; the window starts from the
        last valid sample at or before t0 (else the first inside it). ``samples``
        counts the readings inside the window, ``missed`` the failed reads plus
        the readings the interval promised and that did not come, ``flagged``
        the implausible ones (left out).
        """
        if t1_ns < t0_ns:
            raise ValueError("t1_ns before t0_ns")
        with self._lock:
            i0 = bisect.bisect_left(self._t, t0_ns)
            i1 = bisect.bisect_right(self._t, t1_ns)
            ts, ps = self._t[i0:i1], self._p[i0:i1]
            prev = next((self._p[j] for j in range(i0 - 1, max(-1, i0 - 64), -1) if self._ok(self._p[j])), None)
        failed = sum(1 for p in ps if p is None)
        flagged = sum(1 for p in ps if p is not None and not self._ok(p))
        expected = int((t1_ns - t0_ns) / 1e9 / self.sample_period_s)
        missed = failed + max(0, expected - len(ts))
        valid = [(t, p) for t, p in zip(ts, ps) if self._ok(p)]
        if prev is None and not valid:
            return Energy(None, len(ts), missed, flagged)
        level = prev if prev is not None else valid[0][1]
        t, uj = t0_ns, 0.0
        for ti, pi in valid:
            uj += level * (ti - t) / 1e9 * 1e3  # mW * s = mJ; kept in uJ until the end
            t, level = ti, pi
        uj += level * (t1_ns - t) / 1e9 * 1e3
        return Energy(uj / 1e3, len(ts), missed, flagged)
