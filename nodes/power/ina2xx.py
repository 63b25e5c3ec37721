"""INA219 / INA226 current-shunt monitors on the Pi's I2C bus (not tried on hardware; see docs/energy.md).

Two ways to read them, both maintained outside hilbed:

- ``backend: pi-ina219`` (INA219 only): the ``pi-ina219`` package (``from ina219 import INA219``),
  imported when the meter is made, so nodes without it still run every other kind;
- ``backend: hwmon`` (INA219 and INA226): the Linux ``ina2xx`` hwmon driver (device-tree overlay on the
  Pi), read from ``/sys/class/hwmon/hwmon*/power1_input`` in microwatts; no Python library at all.

The meter's range (what a reading above is implausible) is the full-scale shunt
voltage / shunt resistance x the largest bus voltage: 0.32 V (INA219, PGA /8)
or 0.08192 V (INA226) per datasheet.
"""

from __future__ import annotations

import glob
import os
import time

from .base import PowerMeterError, SampledMeter

#: full-scale shunt voltage, V (INA219 datasheet SBOS448: +-320 mV at PGA /8; INA226 SBOS547: 81.92 mV)
SHUNT_FULL_SCALE_V = {"ina219": 0.32, "ina226": 0.08192}


class PiIna219Reader:
    """``power_mw()`` from the pi-ina219 library; an over-range reading comes back as +inf (flagged)."""

    def __init__(self, shunt_ohms: float, max_expected_amps: float | None, address: int, busnum: int | None):
        try:
            from ina219 import INA219, DeviceRangeError  # pi-ina219
        except ImportError:
            raise PowerMeterError("power meter ina219 (backend pi-ina219): the pi-ina219 package is not installed "
                                  "on this node (pip install pi-ina219), or use backend: hwmon") from None
        self._range_error = DeviceRangeError
        try:
            self.dev = INA219(shunt_ohms, max_expected_amps, address=address, busnum=busnum)
            self.dev.configure()
        except OSError as exc:  # no I2C bus, nothing at the address
            raise PowerMeterError(f"power meter ina219 at I2C 0x{address:02x}: {exc}") from None

    def power_mw(self) -> float:
        try:
            return float(self.dev.power())
        except self._range_error:
            return float("inf")


def _read(path: str) -> str:
    with open(path, encoding="ascii") as f:
        return f.read().strip()


class HwmonReader:
    """``power_mw()`` from the kernel's ina2xx hwmon driver (``power1_input``, microwatts)."""

    def __init__(self, chip: str, path: str | None = None, root: str = "/sys/class/hwmon"):
        if path is None:
            found = [os.path.dirname(n) for n in sorted(glob.glob(os.path.join(root, "hwmon*", "name")))
                     if _read(n) == chip]
            if not found:
                raise PowerMeterError(f"power meter {chip} (backend hwmon): no hwmon device named {chip} under "
                                      f"{root} (is the ina2xx overlay loaded?)")
            path = found[0]
        self.file = os.path.join(path, "power1_input")
        if not os.path.exists(self.file):
            raise PowerMeterError(f"power meter {chip} (backend hwmon): {self.file} does not exist")

    def power_mw(self) -> float:
        return int(_read(self.file)) / 1000.0


class Ina2xxMeter(SampledMeter):
    """An INA219/INA226 read every ``interval_s`` through ``reader`` (anything with ``power_mw()``)."""

    def __init__(self, chip: str = "ina219", *, backend: str = "pi-ina219", shunt_ohms: float = 0.1,
                 bus_max_v: float = 5.5, interval_s: float = 0.005, address: int = 0x40, busnum: int | None = None,
                 max_expected_amps: float | None = None, hwmon_path: str | None = None,
                 range_mw: float | None = None, reader=None):
        if chip not in SHUNT_FULL_SCALE_V:
            raise PowerMeterError(f"power meter chip {chip!r} (allowed: {', '.join(SHUNT_FULL_SCALE_V)})")
        if shunt_ohms <= 0:
            raise PowerMeterError(f"shunt_ohms {shunt_ohms} must be > 0")
        self.kind, self.chip, self.backend = chip, chip, backend
        full = SHUNT_FULL_SCALE_V[chip] / shunt_ohms * bus_max_v * 1000.0
        super().__init__(interval_s, range_mw or full)
        if reader is None:
            if backend == "pi-ina219":
                if chip != "ina219":
                    raise PowerMeterError(f"power meter {chip}: backend pi-ina219 reads INA219 only (use hwmon)")
                reader = PiIna219Reader(shunt_ohms, max_expected_amps, address, busnum)
            elif backend == "hwmon":
                reader = HwmonReader(chip, hwmon_path)
            else:
                raise PowerMeterError(f"power meter backend {backend!r} (allowed: pi-ina219, hwmon)")
        self.reader = reader

    def read_batch(self) -> list[tuple[int, float | None]]:
        try:
            p = self.reader.power_mw()
        except OSError:  # an I2C NAK or a read that timed out: missed, the next one may work
            p = None
        return [(time.time_ns(), p)]

    def describe(self) -> dict:
        return {"kind": self.kind, "backend": self.backend, "interval_s": self.interval_s, "range_mw": self.range_mw}
