"""Capacity schedules: when would ``n`` bytes queued at time ``t`` be served?

A schedule answers :meth:`CapacitySchedule.serve` exactly (no ticking), byte
by byte as a fluid for rate schedules, so senders can sleep until a packet's
last byte leaves with sub-millisecond precision. Capacity that passes while
the queue is empty is lost, as on a real link: serving always starts at the
packet's arrival or when the previous packet finished, whichever is later.
Times are seconds since the link's epoch.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass


class CapacitySchedule:
    def serve(self, nbytes: int, t_start: float) -> float:
        """Time at which the last of ``nbytes`` (queued at ``t_start``) is served."""
        raise NotImplementedError

    def rate_bps_at(self, t: float) -> float:
        raise NotImplementedError

    def describe(self) -> str:
        return type(self).__name__


@dataclass
class ConstantRate(CapacitySchedule):
    bits_per_s: float

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
        base_t = 0.0
        if self.loop:
            k = max(0, math.ceil(bits / self.bits_per_period) - 1)
            base_t, bits = k * self.period, bits - k * self.bits_per_period
        j = min(bisect.bisect_left(self.cum_end, bits), len(self.t) - 1)
        while self.r[j] == 0 and j < len(self.t) - 1:
            j += 1
        return base_t + self.t[j] + (bits - self.cum[j]) / self.r[j]

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
