"""Applying and clearing a condition: the link (through its kind) and the jammer level.

Link kinds live in :mod:`hilbed.nodes.link.kinds` (controller, client and
edge sides together, looked up by ``link.kind``); this module only calls
their controller side and drives the jammers:

- jamming: ``set_level`` (or ``set_schedule``) on every jammer with the
  scenario's level parameters, then a heartbeat every second so the jammer's
  watchdog keeps it running only while this controller is alive and responsive.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from hilbed.nodes.events import RunEvent
from hilbed.nodes.link.kind import LinkKind, LinkSetupError
from hilbed.nodes.link.registry import link_kind
from hilbed.orchestrator.errors import SetupError
from hilbed.orchestrator.lab.transport import AgentFailed
from hilbed.orchestrator.run.context import RunContext

HEARTBEAT_S = 1.0
JAMMER_WATCHDOG_S = 5.0


class Jamming:
    """The jammers' level for the current condition, kept alive by heartbeats."""

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self._hb: tuple[threading.Thread, threading.Event] | None = None
        self._cond: Any = None  # the condition whose jamming is on

    def jammers(self) -> list[str]:
        return [n for n in self.ctx.testbed.jammers if (n, "jammer") in self.ctx.handles]

    def _level_params(self, level: str) -> dict | None:
        p = self.ctx.scenario.jamming_levels.get(level)
        return p.model_dump() if p is not None else None

    def set(self, cond: Any) -> dict:
        """Start the condition's jamming level; returns the jammer's measured facts."""
        ctx = self.ctx
        jammers = self.jammers()
        if not jammers:
            return {}
        self._cond = cond
        out: dict = {}
        for n in jammers:
            res = self._arm(n, cond)
            if cond.jamming_schedule:
                out = {"level": "schedule", "load": None, "mbps": None}
            else:
                out = {"level": res.get("level", cond.jamming), "load": res.get("load"), "mbps": res.get("mbps")}
            ctx.event(RunEvent.JAMMER_LEVEL, node=n, condition=cond.name, result=res)
        self._start_heartbeats(jammers)
        return out

    def _arm(self, node: str, cond: Any) -> dict:
        """Ask one jammer for the condition's level or schedule (also to re-arm it after a lapse)."""
        ctx = self.ctx
        medium = ctx.local_medium_file()
        common: dict[str, Any] = {"watchdog_s": JAMMER_WATCHDOG_S, "medium_file": str(medium) if medium else None}
        target = ctx.testbed.nodes[node].jammer_target
        if target:
            common["target"] = target
        h = ctx.agent(node, "jammer")
        if cond.jamming_schedule:
            steps = [{"at_s": s.at_s, "level": s.level, "params": self._level_params(s.level)}
                     for s in cond.jamming_schedule]
            return h.call("set_schedule", timeout=30, steps=steps, **common) or {}
        return h.call("set_level", timeout=60, level=cond.jamming, params=self._level_params(cond.jamming),
                      **common) or {}

    def _asks_traffic(self) -> bool:
        c = self._cond
        return c is not None and (c.jamming != "none" or bool(c.jamming_schedule))

    def _check(self, node: str, beat: dict) -> None:
        """A heartbeat found the jammer idle while the condition asks for traffic: record the lapse and re-arm."""
        if beat.get("active", True) or not self._asks_traffic():
            return
        cond = self._cond
        self.ctx.event(RunEvent.JAMMER_LAPSED, node=node, condition=cond.name, reason=beat.get("stop_reason"))
        self.ctx.console.print(f"[red]{node}: the jammer stopped ({beat.get('stop_reason')}) during condition "
                               f"{cond.name}: re-arming; images sent meanwhile get no jammer load[/]")
        t0 = time.monotonic()
        try:
            res = self._arm(node, cond)
        except Exception as exc:  # the next heartbeat tries again; the images meanwhile stay unmeasured
            self.ctx.event(RunEvent.JAMMER_REARM_FAILED, node=node, condition=cond.name, error=str(exc))
            return
        self.ctx.event(RunEvent.JAMMER_REARMED, node=node, condition=cond.name, result=res,
                       seconds=round(time.monotonic() - t0, 3))

    def stop(self) -> None:
        """Heartbeats first (so nothing re-arms a jammer being stopped), then every live jammer."""
        self._cond = None
        self._stop_heartbeats()
        for n in self.ctx.testbed.jammers:
            h = self.ctx.live_agent(n, "jammer")
            if h is not None:
                try:
                    self.ctx.event(RunEvent.JAMMER_STOPPED, node=n, result=h.call("stop", timeout=15))
                except AgentFailed:
                    pass

    def _start_heartbeats(self, jammers: list[str]) -> None:
        if self._hb is not None:
            return
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(HEARTBEAT_S):
                for n in jammers:
                    h = self.ctx.live_agent(n, "jammer")
                    if h is None:
                        continue
                    try:
                        beat = h.call("heartbeat", timeout=HEARTBEAT_S * 3)
                    except Exception:
                        continue  # the jammer's watchdog stops it if we cannot reach it
                    if not stop.is_set():
                        self._check(n, beat or {})

        t = threading.Thread(target=beat, name="jammer-heartbeat", daemon=True)
        self._hb = (t, stop)
        t.start()

    def _stop_heartbeats(self) -> None:
        hb, self._hb = self._hb, None
        if hb is not None:
            hb[1].set()
            hb[0].join(5)


class Conditions:
    """One condition at a time: ``apply`` makes its link and jamming, ``clear`` undoes both."""

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self.jamming = Jamming(ctx)
        self.kinds: dict[str, LinkKind] = {}
        self.current: LinkKind | None = None

    def kind(self, name: str) -> LinkKind:
        if name not in self.kinds:
            self.kinds[name] = link_kind(name)
        return self.kinds[name]

    def setup(self) -> None:
        """Once per run, before agents start: every link kind the scenario uses gets its ``setup``."""
        for name in dict.fromkeys(c.link.kind for c in self.ctx.scenario.conditions):
            try:
                self.kind(name).setup(self.ctx)
            except LinkSetupError as exc:
                raise SetupError(str(exc)) from None

    def open_link(self, cond: Any) -> None:
        kind = self.kind(cond.link.kind)
        self.current = kind
        self.ctx.state["condition"] = cond.name  # events of the kind's sides name the condition they belong to
        try:
            kind.apply(self.ctx, cond)
            facts = kind.verify(self.ctx, cond)
            if facts:
                self.ctx.event(RunEvent.LINK_APPLIED, condition=cond.name, link_kind=kind.name, facts=facts)
        except LinkSetupError as exc:
            raise SetupError(str(exc)) from None

    def close_link(self) -> None:
        if self.current is not None:
            kind, self.current = self.current, None
            kind.clear(self.ctx)

    def apply(self, cond: Any) -> dict:
        """Link first, then jamming; returns the jammer's facts for the records."""
        self.open_link(cond)
        return self.jamming.set(cond)

    def clear(self) -> None:
        try:
            self.jamming.stop()
        finally:
            self.close_link()

    def teardown(self) -> None:
        """End of run, on every path: clear, then each kind's teardown (tc removed, emulators stopped)."""
        try:
            self.clear()
        except Exception:
            pass
        for kind in self.kinds.values():
            try:
                kind.teardown(self.ctx)
            except Exception as exc:
                self.ctx.console.print(f"[red]teardown of link kind {kind.name} failed: {exc}[/]")
