"""Links between a client and the edge: ``open_link(spec, ...)``.

Kinds: ``direct`` (plain TCP), ``trace`` (user-space shaper from a constant
rate, a CSV rate schedule or a Mahimahi trace), ``tc`` (kernel shaping applied
by the controller on a real node; the client then sends as on ``direct``) and
``radio`` (802.15.4 through firmware_bridge).

Besides the scenario's ``link:`` fields, a spec may carry ``log_path`` (write
a Mahimahi link log) and ``medium_file`` (scale capacity by the jammer's
published medium load), both added by the controller.
"""

from __future__ import annotations

from typing import Any

from hilbed.nodes.link.base import Link, SendReport
from hilbed.nodes.link.schedule import ByteServer, CapacitySchedule, ConstantRate, OpportunitySchedule, PiecewiseRate
from hilbed.nodes.link.tcp import DirectLink, ShapedLink
from hilbed.nodes.link.traces import TraceError, load_schedule


def schedule_for(rate_kbps: float | None, trace: str | None, loop: bool, opportunity_bytes: int) -> CapacitySchedule | None:
    if trace:
        return load_schedule(trace, loop=loop, opportunity_bytes=opportunity_bytes)
    if rate_kbps:
        return ConstantRate(rate_kbps * 1000.0)
    return None


def schedules_for_spec(spec: dict[str, Any]) -> tuple[CapacitySchedule, CapacitySchedule]:
    """(uplink, downlink) schedules of a ``trace``/``tc`` link spec; the downlink defaults to the uplink."""
    loop = spec.get("loop", True)
    opp = spec.get("opportunity_bytes") or 1504
    up = schedule_for(spec.get("rate_kbps"), spec.get("trace"), loop, opp)
    if up is None:
        raise ValueError(f"a '{spec.get('kind')}' link needs rate_kbps or trace")
    down = schedule_for(spec.get("downlink_rate_kbps"), spec.get("downlink_trace"), loop, opp) or up
    return up, down


def open_link(spec: dict[str, Any], host: str, port: int, edge_minus_client_ns: int = 0, seed: int = 0) -> Link:
    """The client side of ``spec["kind"]`` (see :mod:`hilbed.nodes.link.registry`)."""
    from hilbed.nodes.link.registry import link_kind
    return link_kind(spec.get("kind", "direct")).open_link(spec, host, port, edge_minus_client_ns, seed)


__all__ = ["ByteServer", "CapacitySchedule", "ConstantRate", "DirectLink", "Link", "OpportunitySchedule",
           "PiecewiseRate", "SendReport", "ShapedLink", "TraceError", "open_link", "schedules_for_spec"]
