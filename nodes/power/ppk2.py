"""Nordic Power Profiler Kit II over USB serial through ``ppk2-api`` (not tried on hardware; docs/energy.md).

The PPK2 in source-meter mode supplies the radio board at ``source_mv`` and
streams current samples (100 kS/s); each batch is timestamped when it is read,
its samples spread back from there at the sampling period. The library is
imported when the meter is made: nodes without it run every other kind.
"""

from __future__ import annotations

import time

from .base import PowerMeterError, SampledMeter

#: PPK2 sampling rate (Nordic PPK2 user guide: 100 kS/s) and its largest current (1 A)
PPK2_RATE_HZ = 100_000
PPK2_MAX_A = 1.0


class Ppk2Meter(SampledMeter):
    """A PPK2 on ``port`` (auto-detected when None) sourcing ``source_mv``; ``api``: an injected device (tests)."""

    kind = "ppk2"

    def __init__(self, port: str | None = None, *, source_mv: int = 3000, interval_s: float = 0.01,
                 decimate: int = 100, range_mw: float | None = None, api=None):
        super().__init__(interval_s, range_mw or PPK2_MAX_A * source_mv)
        self.source_mv = int(source_mv)
        # 100 kS/s kept raw is ~10 MB a second in Python: the mean of ``decimate`` samples is kept instead
        self.decimate = max(1, int(decimate))
        self.sample_period_s = self.decimate / PPK2_RATE_HZ
        if api is None:
            try:
                from ppk2_api.ppk2_api import PPK2_API
            except ImportError:
                raise PowerMeterError("power meter ppk2: the ppk2-api package is not installed on this node "
                                      "(pip install ppk2-api)") from None
            if port is None:
                ports = PPK2_API.list_devices()
                if not ports:
                    raise PowerMeterError("power meter ppk2: no PPK2 found on any serial port")
                port = ports[0][0] if isinstance(ports[0], (tuple, list)) else ports[0]
            try:
                api = PPK2_API(port)
                api.get_modifiers()
                api.use_source_meter()
                api.set_source_voltage(self.source_mv)
                api.toggle_DUT_power("ON")
            except OSError as exc:
                raise PowerMeterError(f"power meter ppk2 on {port}: {exc}") from None
        self.api, self.port, self._measuring = api, port, False

    def start(self) -> None:
        if not self._measuring:
            self.api.start_measuring()
            self._measuring = True
        super().start()

    def stop(self) -> None:
        super().stop()
        if self._measuring:
            self.api.stop_measuring()
            self._measuring = False

    def read_batch(self) -> list[tuple[int, float | None]]:
        t_read = time.time_ns()
        data = self.api.get_data()
        if not data:
            return []
        out = self.api.get_samples(data)
        samples = out[0] if isinstance(out, tuple) else out  # newer ppk2-api also returns the digital channels
        period = 1e9 / PPK2_RATE_HZ
        n, out = len(samples), []
        for i in range(0, n, self.decimate):
            chunk = [s * self.source_mv / 1e6 for s in samples[i:i + self.decimate] if s is not None]  # uA*mV -> mW
            bad = [p for p in chunk if not self._ok(p)]
            # a bin with an implausible raw sample is flagged whole: a glitch is not averaged in
            p = bad[0] if bad else (sum(chunk) / len(chunk) if chunk else None)
            out.append((int(t_read - (n - 1 - min(n - 1, i + self.decimate - 1)) * period), p))
        return out

    def describe(self) -> dict:
        return {"kind": self.kind, "port": self.port, "source_mv": self.source_mv, "range_mw": self.range_mw}
