"""Applying and clearing a condition: the link (through its kind) and the jammer level.

Link kinds live in :mod:`hilbed.nodes.link.kinds` (controller, client and
edge sides together, looked up by ``link.kind``); this module only calls
their controller side and drives the jammers:

- jamming: ``set_level`` (or ``set_schedule``) on every jammer with the
  scenario's level parameters, then a heartbeat every second so the jammer's
  watchdog keeps it running only while this controller is alive and responsive;
- the medium relay: where the jammer and a link that follows its load are on
  different machines, each load the jammer measures is forwarded over the
  agent channel into the reader's node-local medium file (and into the run's
  medium file here when the jammer is remote).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from hilbed.nodes.events import AgentEvent, RunEvent
from hilbed.nodes.link.kind import LinkKind, LinkSetupError
from hilbed.nodes.link.registry import link_kind
from hilbed.orchestrator.errors import SetupError
from hilbed.orchestrator.lab.transport import AgentFailed
from hilbed.orchestrator.run.assets import MEDIUM_READERS
from hilbed.orchestrator.run.context import RunContext

HEARTBEAT_S = 1.0
JAMMER_WATCHDOG_S = 5.0
#: the relay's per-condition counts (TODO(lead): a RunEvent member, then drop this registration)

log = logging.getLogger("hilbed.run")


class MediumRelay:
    """Forwards the jammer's measured load to the nodes whose links follow it on other machines.

    The jammer's agent reports every measurement window (``jammer_load``); the relay writes it, through
    each reader's agent (``op_medium``), into that node's own medium file, and into the run's medium file
    on this machine when the jammer is remote (local shaped links, emulated radios). Records keep the
    jammer's own measurement; the relay only moves it. How old each update was when it reached the node
    is kept per condition (``medium_relay`` events, ``manifest["medium_relay"]``).
    """

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self._lock = threading.Lock()
        self._cond: Any = None
        self._targets: dict[tuple[str, str], str] = {}
        self._local = False
        self._stats: dict[str, dict] = {}

    def install(self) -> None:
        """Put the relay in front of the run's event handler, so every agent started afterwards feeds it."""
        inner = self.ctx.on_event

        def on_event(node: str, role: str, msg: dict) -> None:
            if msg.get("event") == AgentEvent.JAMMER_LOAD:
                try:
                    self.on_jammer_load(node, msg)
                except Exception as exc:  # the relay must never cost the run its jammer windows
                    log.warning("medium relay: %s: %s", type(exc).__name__, exc)
            if inner is not None:
                inner(node, role, msg)

        self.ctx.on_event = on_event

    def start(self, cond: Any) -> None:
        """Relay for ``cond``: to the registered readers on other machines than a jammer's, and here too when a
        jammer runs elsewhere."""
        ctx = self.ctx
        readers = dict(ctx.state.get(MEDIUM_READERS, {}))
        jammers = list(ctx.testbed.jammers)
        with self._lock:
            prev, self._cond = self._cond, cond
            self._targets = {k: p for k, p in readers.items() if not ctx.is_local(k[0])}
            self._local = any(not ctx.is_local(j) for j in jammers)
            same = self._stats if prev is cond else {}  # re-armed after a reconnect: keep counting
            self._stats = {n: same.get(n) or {"updates": 0, "failed": 0, "ages_s": []} for n, _ in self._targets}

    def on_jammer_load(self, node: str, msg: dict) -> None:
        """One measurement from jammer ``node`` (its clock): forwarded without waiting for the replies."""
        with self._lock:
            cond, targets, local = self._cond, dict(self._targets), self._local
        if cond is None or (not targets and not local):
            return
        ctx = self.ctx
        off_j = ctx.offset(node)["offset_ns"] / 1e9
        t0 = float(msg["t_start"]) - off_j if msg.get("t_start") is not None else None  # controller clock
        t1 = float(msg["t_end"]) - off_j if msg.get("t_end") is not None else None
        load, mbps, level = float(msg.get("load") or 0.0), float(msg.get("mbps") or 0.0), msg.get("level")
        if local and not ctx.is_local(node):
            from hilbed.nodes.link.medium import write_medium
            try:
                write_medium(ctx.medium_file, load, mbps, level=level, relayed=True, t_window_end=t1)
            except OSError as exc:
                log.warning("medium relay: cannot write %s: %s", ctx.medium_file, exc)
        for (n, role), path in targets.items():
            self._send(n, role, path, load, mbps, level, t0, t1)

    def _send(self, n: str, role: str, path: str, load: float, mbps: float, level: Any,
              t0: float | None, t1: float | None) -> None:
        h = self.ctx.live_agent(n, role)
        if h is None:
            return
        off_n = self.ctx.offset(n)["offset_ns"] / 1e9
        fut = h.call_async("medium", load=load, mbps=mbps, level=level, path=path,
                           t_start=None if t0 is None else t0 + off_n, t_end=None if t1 is None else t1 + off_n)
        fut.add_done_callback(lambda f, n=n: self._done(n, f))

    def _done(self, n: str, fut: Any) -> None:
        with self._lock:
            st = self._stats.get(n)
            if st is None:
                return
            if fut.exception() is not None:
                st["failed"] += 1
                st.setdefault("error", str(fut.exception()))
                return
            st["updates"] += 1
            age = (fut.result() or {}).get("age_s")
            if age is not None:
                st["ages_s"].append(float(age))

    def stop(self) -> None:
        """End of the condition: the readers' medium goes idle (as a local jammer's stop writes load 0) and the
        relay's counts are recorded."""
        with self._lock:
            cond, targets, stats = self._cond, dict(self._targets), self._stats
            self._cond, self._targets, self._local = None, {}, False
        if cond is None:
            return
        for (n, role), path in targets.items():
            h = self.ctx.live_agent(n, role)
            if h is not None:
                try:
                    h.call("medium", timeout=10, load=0.0, mbps=0.0, level="none", path=path)
                except Exception:
                    pass
        out = {}
        for n, st in stats.items():
            ages = sorted(st["ages_s"])
            out[n] = {"updates": st["updates"], "failed": st["failed"],
                      "age_s": {"mean": round(sum(ages) / len(ages), 4), "p50": round(ages[len(ages) // 2], 4),
                                "max": round(ages[-1], 4)} if ages else None,
                      **({"error": st["error"]} if "error" in st else {})}
            try:
                self.ctx.event(RunEvent.MEDIUM_RELAY, node=n, condition=cond.name, **out[n])
            except Exception as exc:  # a store refusing a write is reported by the run's next write
                log.warning("medium relay: cannot record its counts: %s", exc)
        if out:
            self.ctx.manifest.setdefault("medium_relay", {})[cond.name] = out


class Jamming:
    """The jammers' level for the current condition, kept alive by heartbeats."""

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self._hb: tuple[threading.Thread, threading.Event] | None = None
        self._cond: Any = None  # the condition whose jamming is on
        self.relay = MediumRelay(ctx)

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
        self.relay.start(cond)  # before arming: the jammer's first measurement already goes out
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
        try:
            for n in self.ctx.testbed.jammers:
                h = self.ctx.live_agent(n, "jammer")
                if h is not None:
                    try:
                        self.ctx.event(RunEvent.JAMMER_STOPPED, node=n, result=h.call("stop", timeout=15))
                    except AgentFailed:
                        pass
        finally:
            self.relay.stop()

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
        self.jamming.relay.install()  # before any agent starts: they take the run's handler when started
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
            try:
                self.close_link()
            finally:
                with self.ctx.lock:
                    self.ctx.state.pop(MEDIUM_READERS, None)  # the next condition's links register again

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
