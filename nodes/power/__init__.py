"""Power meters on the client: energy per image for encode and transmit (docs/energy.md).

``make_meter({"kind": ..., ...})`` builds one from the client's ``power_meter``
settings; hardware libraries are imported only by the kind that needs them.
"""

from __future__ import annotations

from .base import Energy, PowerMeter, PowerMeterError, SampledMeter

KINDS = ("none", "emulated", "ina219", "ina226", "ppk2")


def make_meter(cfg: dict | None) -> PowerMeter | None:
    """A meter from ``{"kind": emulated|ina219|ina226|ppk2|none, **settings}``; None for kind none."""
    cfg = dict(cfg or {})
    kind = cfg.pop("kind", "none")
    try:
        if kind in (None, "none"):
            return None
        if kind == "emulated":
            from .emulated import EmulatedMeter
            return EmulatedMeter(**cfg)
        if kind in ("ina219", "ina226"):
            from .ina2xx import Ina2xxMeter
            if kind == "ina226":
                cfg.setdefault("backend", "hwmon")
            return Ina2xxMeter(kind, **cfg)
        if kind == "ppk2":
            from .ppk2 import Ppk2Meter
            return Ppk2Meter(**cfg)
    except TypeError as exc:  # an unknown setting: say which kind refused it
        raise PowerMeterError(f"power meter {kind}: {exc}") from None
    raise PowerMeterError(f"power meter kind {kind!r} (allowed: {', '.join(KINDS)})")


__all__ = ["Energy", "KINDS", "PowerMeter", "PowerMeterError", "SampledMeter", "make_meter"]
