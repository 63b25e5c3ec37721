"""Capacity schedules: when would ``n`` bytes queued at time ``t`` be served?

A schedule is a cumulative capacity curve: :meth:`bytes_until` is how many
bytes the link could have carried in ``[0, t)``, :meth:`time_of_bytes` its
inverse (the earliest time by which ``b`` bytes were carried). Rate schedules
are a byte fluid; :class:`OpportunitySchedule` (Mahimahi traces) is a step
curve of delivery opportunities. Senders keep a byte *cursor* on that curve
(:class:`ByteServer`): a packet starts at its arrival or where the previous
packet ended, whichever is later, and leaves when its last byte is served, so
leftover bytes of an opportunity serve the next packet and capacity that
passes while the queue is empty is lost, as on a real link. Answers are exact
(no ticking), so senders sleep until a packet leaves with sub-millisecond
precision. Times are seconds since the link's epoch.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass


class CapacitySchedule:
    def bytes_until(self, t: float) -> float:
        """Bytes the link could carry in ``[0, t)`` (opportunities at ``t`` not yet counted)."""
        raise NotImplementedError

    def time_of_bytes(self, b: float) -> float:
        """Earliest time at which ``b`` bytes have been carried (``inf`` if never)."""
        raise NotImplementedError

    def serve(self, nbytes: int, t_start: float) -> float:
        """Time at which the last of ``nbytes`` (queued at ``t_start`` on an idle link) is served."""
        return self.time_of_bytes(self.bytes_until(t_start) + nbytes)

    def rate_bps_at(self, t: float) -> float:
        raise NotImplementedError

    def mean_bps(self, t0: float, t1: float) -> float:
        """Mean capacity over ``[t0, t1)`` in bit/s."""
        if t1 <= t0:
            return self.rate_bps_at(t0)
        return (self.bytes_until(t1) - self.bytes_until(t0)) * 8.0 / (t1 - t0)

    def capacity_events(self, t0: float, t1: float, step_s: float = 0.001):
        """``(t, nbytes)`` capacity chunks in ``[t0, t1)`` for link logs: opportunities
        for traces, ``step_s`` slices of the fluid for rate schedules."""
        k0 = math.floor(t0 / step_s)
        k1 = math.floor(t1 / step_s)
        for k in range(k0, k1):
            a, b = k * step_s, (k + 1) * step_s
            n = self.bytes_until(b) - self.bytes_until(a)
            if n > 0:
                yield a, n

    def describe(self) -> str:
        return type(self).__name__


class ByteServer:
    """A FIFO's position on a schedule's capacity curve (one link direction)."""

    def __init__(self, schedule: CapacitySchedule):
        self.schedule = schedule
        self.pos = 0.0  # bytes of the capacity curve already used or lost

    def plan(self, nbytes: int, t_arrival: float) -> tuple[float, float, float]:
        """(start position, service-start time, last-byte time) without committing."""
        start = max(self.pos, self.schedule.bytes_until(t_arrival))
        first = max(t_arrival, self.schedule.time_of_bytes(start + 1e-6))
        done = self.schedule.time_of_bytes(start + nbytes)
        return start, first, done

    def commit(self, start: float, nbytes: int) -> None:
        self.pos = start + nbytes

    def idle_until(self, t: float) -> None:
        """The link was held (or idle) until ``t``: capacity before ``t`` is gone."""
        self.pos = max(self.pos, self.schedule.bytes_until(t))


@dataclass
class ConstantRate(CapacitySchedule):
    bits_per_s: float

    def bytes_until(self, t: float) -> float:
        return max(0.0, t) * self.bits_per_s / 8.0

    def time_of_bytes(self, b: float) -> float:
        return max(0.0, b) * 8.0 / self.bits_per_s

    def serve(self, nbytes: int, t_start: float) -> float:
        return t_start + nbytes * 8.0 / self.bits_per_s

    def rate_bps_at(self, t: float) -> float:
        return self.bits_per_s

    def describe(self) -> str:
        return f"constant {self.bits_per_s / 1000:g} kbit/s"


class PiecewiseRate(CapacitySchedule):
    """A rate schedule: rate ``rates_bps[i]`` from ``times_s[i]`` until the next point.

    With ``loop`` the schedule repeats with period ``period_s`` (the last
    point's rate holds until the period ends); without it the last rate holds.
    """

    def __init__(self, times_s: list[float], rates_bps: list[float], period_s: float | None = None, loop: bool = True):
        if not times_s or len(times_s) != len(rates_bps):
            raise ValueError("need matching, non-empty times and rates")
        if times_s[0] != 0:
            times_s, rates_bps = [0.0] + list(times_s), [rates_bps[0]] + list(rates_bps)
        if any(b < a for a, b in zip(times_s, times_s[1:])):
            raise ValueError("times must be non-decreasing")
        self.t = list(times_s)
        self.r = [max(0.0, float(x)) for x in rates_bps]
        self.loop = loop
        self.period = period_s if period_s is not None else (self.t[-1] if self.t[-1] > 0 else 1.0)
        if loop and self.period <= self.t[-1]:
            # the last point needs some duration: give it the mean step
            step = self.t[-1] / max(1, len(self.t) - 1) if len(self.t) > 1 else 1.0
            self.period = self.t[-1] + step
        # cumulative bits at each breakpoint within one period
        self.cum = [0.0]
        for i in range(1, len(self.t)):
            self.cum.append(self.cum[-1] + self.r[i - 1] * (self.t[i] - self.t[i - 1]))
        self.bits_per_period = self.cum[-1] + self.r[-1] * (self.period - self.t[-1])
        self.cum_end = self.cum[1:] + [self.bits_per_period if loop else math.inf]
        if loop and self.bits_per_period <= 0:
            raise ValueError("the schedule never carries any bits")
        if not loop and self.r[-1] <= 0:
            raise ValueError("a non-looping schedule must end with a positive rate")

    def _bits_until(self, t: float) -> float:
        """Bits the link could carry in [0, t)."""
        if t <= 0:
            return 0.0
        if self.loop:
            k, tt = divmod(t, self.period)
            return k * self.bits_per_period + self._bits_in_period(tt)
        if t >= self.t[-1]:
            return self.cum[-1] + self.r[-1] * (t - self.t[-1])
        return self._bits_in_period(t)

    def _bits_in_period(self, tt: float) -> float:
        i = bisect.bisect_right(self.t, tt) - 1
        return self.cum[i] + self.r[i] * (tt - self.t[i])

    def _time_of_bits(self, bits: float) -> float:
        """Inverse of _bits_until: the earliest time by which ``bits`` were carried."""
        if bits <= 0:
            return 0.0
        base_t = 0.0
        if self.loop:
            k = max(0, math.ceil(bits / self.bits_per_period) - 1)
            base_t, bits = k * self.period, bits - k * self.bits_per_period
        j = min(bisect.bisect_left(self.cum_end, bits), len(self.t) - 1)
        while self.r[j] == 0 and j < len(self.t) - 1:
            j += 1
        return base_t + self.t[j] + (bits - self.cum[j]) / self.r[j]

    def bytes_until(self, t: float) -> float:
        return self._bits_until(t) / 8.0

    def time_of_bytes(self, b: float) -> float:
        return self._time_of_bits(b * 8.0)

    def serve(self, nbytes: int, t_start: float) -> float:
        return self._time_of_bits(self._bits_until(t_start) + nbytes * 8.0)

    def rate_bps_at(self, t: float) -> float:
        if self.loop:
            t = t % self.period
        i = bisect.bisect_right(self.t, t) - 1
        return self.r[max(i, 0)]

    def describe(self) -> str:
        mean = self.bits_per_period / self.period if self.loop else None
        return f"piecewise {len(self.t)} points" + (f", mean {mean / 1000:.1f} kbit/s" if mean else "")


class OpportunitySchedule(CapacitySchedule):
    """Mahimahi delivery opportunities: ``opportunity_bytes`` at each listed millisecond.

    As in Mahimahi, a looping trace restarts with its base advanced by the
    last timestamp (so the last line of one pass and the first line of the
    next may share an instant); without ``loop`` the link carries nothing
    after the last opportunity. A packet that arrives at exactly an
    opportunity's time may use it.
    """

    def __init__(self, times_ms: list[int] | list[float], opportunity_bytes: int = 1504, loop: bool = True,
                 name: str = "trace"):
        if not len(times_ms):
            raise ValueError("a trace needs at least one opportunity")
        if opportunity_bytes <= 0:
            raise ValueError("opportunity_bytes must be > 0")
        self.ms = [float(x) for x in times_ms]
        if any(b < a for a, b in zip(self.ms, self.ms[1:])):
            raise ValueError("opportunity times must be non-decreasing")
        if self.ms[0] < 0:
            raise ValueError("opportunity times must be >= 0")
        self.period_ms = self.ms[-1]
        if loop and self.period_ms <= 0:
            raise ValueError("a looping trace must last for a nonzero amount of time")
        self.n = len(self.ms)
        self.opp = int(opportunity_bytes)
        self.loop = loop
        self.name = name

    # opportunities strictly before t (ms)
    def _count_before(self, t_ms: float) -> int:
        if t_ms <= 0:
            return 0
        if not self.loop:
            return bisect.bisect_left(self.ms, t_ms)
        c = math.floor(t_ms / self.period_ms)
        r = t_ms - c * self.period_ms
        count = bisect.bisect_left(self.ms, r)
        if c >= 1:
            count += (c - 1) * self.n + bisect.bisect_left(self.ms, r + self.period_ms)
        return count

    def _time_of_index_ms(self, k: int) -> float:
        if k < 0:
            return 0.0
        if not self.loop:
            return self.ms[k] if k < self.n else math.inf
        c, i = divmod(k, self.n)
        return c * self.period_ms + self.ms[i]

    def bytes_until(self, t: float) -> float:
        return float(self._count_before(t * 1000.0) * self.opp)

    def time_of_bytes(self, b: float) -> float:
        if b <= 0:
            return 0.0
        k = math.ceil(b / self.opp - 1e-9) - 1
        return self._time_of_index_ms(k) / 1000.0

    def rate_bps_at(self, t: float) -> float:
        return self.mean_bps(max(0.0, t - 0.5), t + 0.5)

    def mean_bps_per_period(self) -> float:
        return self.n * self.opp * 8.0 / (self.period_ms / 1000.0) if self.period_ms > 0 else math.inf

    def capacity_events(self, t0: float, t1: float, step_s: float = 0.001):
        k = self._count_before(t0 * 1000.0)
        while True:
            t = self._time_of_index_ms(k) / 1000.0
            if t >= t1 or math.isinf(t):
                return
            yield t, self.opp
            k += 1

    def describe(self) -> str:
        return (f"mahimahi {self.name}: {self.n} opportunities x {self.opp} B over {self.period_ms / 1000:g} s, "
                f"mean {self.mean_bps_per_period() / 1000:.1f} kbit/s{'' if self.loop else ', once'}")
