"""What happened to a run besides its records: host load, conditions not applied as asked, incidents.

Read from the manifest and ``events.jsonl`` only. A report shows these next to
the numbers, and ``compare`` refuses verdicts they undermine, because a record
claims only what was applied and measured:

- host facts (``manifest["host"]["before"/"after"]``, and per node
  ``manifest["node_hosts"][node]["before"/"after"]``): ``{"cpus", "load_avg":
  [1, 5, 15 min], "governor", "busy_processes"}``; a host whose 1-minute load
  average exceeds its CPU count was overloaded, and timing measured on it
  (latency, deadline misses) may reflect the host rather than the link;
- ``manifest["unapplied"]``: conditions that ran but could not be applied as
  asked (``state == "complete_unapplied"``);
- notable events: incidents, reconnects, jammer watchdog stops, resumes,
  failures, a replaced stale lock, changed inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone

UNAPPLIED_STATE = "complete_unapplied"
#: run states whose records are all there (the report shows what was not applied instead of asking to resume)
FINISHED_STATES = ("complete", UNAPPLIED_STATE)


# ------------------------------------------------------------ host load ---

@dataclass(frozen=True)
class HostLoad:
    """One host's load at one moment (before or after the run)."""

    host: str          # "vm (controller)" or a node name
    when: str          # before | after
    cpus: int | None
    load1: float | None
    load5: float | None
    load15: float | None
    governor: str | None
    busy: int | None

    @property
    def overloaded(self) -> bool:
        return bool(self.cpus and self.load1 is not None and self.load1 > self.cpus)

    def describe(self) -> str:
        loads = "/".join("?" if x is None else f"{x:.2f}" for x in (self.load1, self.load5, self.load15))
        parts = [f"load {loads} (1/5/15 min) on {self.cpus if self.cpus else '?'} CPU(s)"]
        if self.governor:
            parts.append(f"governor {self.governor}")
        if self.busy is not None:
            parts.append(f"{self.busy} other busy process(es)")
        return ", ".join(parts)


def _num(x) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _load(host: str, when: str, facts) -> HostLoad | None:
    if not isinstance(facts, dict):
        return None
    la = facts.get("load_avg")
    la = list(la) + [None] * 3 if isinstance(la, (list, tuple)) else [None] * 3
    cpus = _num(facts.get("cpus"))
    busy = _num(facts.get("busy_processes"))
    gov = facts.get("governor")
    return HostLoad(host, when, int(cpus) if cpus else None, _num(la[0]), _num(la[1]), _num(la[2]),
                    str(gov) if gov else None, int(busy) if busy is not None else None)


def host_loads(manifest: dict) -> list[HostLoad]:
    """Every host fact in a manifest: the controller's, then each node's, before and after."""
    out = []
    host = manifest.get("host") if isinstance(manifest.get("host"), dict) else {}
    name = f"{host.get('hostname') or 'controller'} (controller)"
    for when in ("before", "after"):
        h = _load(name, when, host.get(when))
        if h:
            out.append(h)
    nodes = manifest.get("node_hosts") if isinstance(manifest.get("node_hosts"), dict) else {}
    for node, facts in nodes.items():
        for when in ("before", "after"):
            h = _load(str(node), when, (facts or {}).get(when) if isinstance(facts, dict) else None)
            if h:
                out.append(h)
    return out


def overloads(manifest: dict) -> list[HostLoad]:
    return [h for h in host_loads(manifest) if h.overloaded]


def overload_text(h: HostLoad) -> str:
    """'vm (controller) before the run: load 3.42 over 1 min on 2 CPUs (1.42 above, 1.71x), 3 other busy ...'."""
    busy = f"; {h.busy} other busy process(es)" if h.busy else ""
    return (f"{h.host} {h.when} the run: load average {h.load1:.2f} over 1 min on {h.cpus} CPU(s) "
            f"({h.load1 - h.cpus:.2f} above the CPU count, {h.load1 / h.cpus:.2f}x){busy}")


def overload_warnings(manifest: dict) -> list[str]:
    hs = overloads(manifest)
    if not hs:
        return []
    run = manifest.get("run_id", "?")
    return [f"{run}: timing ran on an overloaded host: " + "; ".join(overload_text(h) for h in hs)
            + ". Latencies and deadline misses may reflect the host, not the link; rerun on an idle host"]


# ------------------------------------------------------------ unapplied ---

@dataclass(frozen=True)
class Unapplied:
    condition: str
    what: str
    asked: str
    measured: str
    t_start_ns: int | None
    t_end_ns: int | None
    records: int | None
    reason: str


def unapplied(manifest: dict) -> list[Unapplied]:
    out = []
    for u in manifest.get("unapplied") or []:
        if not isinstance(u, dict):
            continue
        ts, te, n = _num(u.get("t_start_ns")), _num(u.get("t_end_ns")), _num(u.get("records"))
        txt = lambda k, none: none if u.get(k) is None else str(u.get(k))  # noqa: E731
        out.append(Unapplied(txt("condition", "?"), txt("what", "?"), txt("asked", "?"), txt("measured", "nothing"),
                             int(ts) if ts is not None else None,
                             int(te) if te is not None else None, int(n) if n is not None else None,
                             str(u.get("reason") or "")))
    return out


def utc(t_ns: int | None, with_date: bool = True) -> str:
    if t_ns is None:
        return "?"
    d = datetime.fromtimestamp(t_ns / 1e9, timezone.utc)
    ms = f"{d:%H:%M:%S}.{d.microsecond // 1000:03d}"
    return f"{d:%Y-%m-%d} {ms}" if with_date else ms


def span_text(t_start_ns: int | None, t_end_ns: int | None) -> str:
    """'2027-01-15 08:01:41.500 - 08:01:42.900 UTC (1.4 s)'."""
    if t_start_ns is None and t_end_ns is None:
        return "time span not recorded"
    dur = f" ({(t_end_ns - t_start_ns) / 1e9:.1f} s)" if t_start_ns is not None and t_end_ns is not None else ""
    return f"{utc(t_start_ns)} - {utc(t_end_ns, with_date=False)} UTC{dur}"


def unapplied_text(manifest: dict, u: Unapplied) -> str:
    run = manifest.get("run_id", "?")
    recs = f"{u.records} record(s)" if u.records is not None else "records not counted"
    why = f"; reason: {u.reason}" if u.reason else ""
    return (f"{run}: condition '{u.condition}': {u.what} asked {u.asked}, measured {u.measured}{why}; "
            f"{span_text(u.t_start_ns, u.t_end_ns)}; {recs} concerned")


# --------------------------------------------------------------- events ---

#: category -> (label, colour) for the timeline and the events table
EVENT_STYLE = {
    "incident": ("incident", "#d62728"),
    "reconnect": ("reconnect", "#ff7f0e"),
    "watchdog": ("jammer watchdog stop", "#9467bd"),
    "jammer": ("jammer stop/re-arm", "#8c564b"),
    "resume": ("resume", "#2ca02c"),
    "failure": ("failure", "#000000"),
    "other": ("note", "#7f7f7f"),
}


@dataclass(frozen=True)
class RunMark:
    """A notable event of a run, placed in time."""

    t_ns: int | None
    category: str      # a key of EVENT_STYLE
    kind: str          # the events.jsonl kind (agent events: their own name)
    nodes: str
    text: str
    run_id: str = ""


def _nodes(e: dict) -> str:
    n = e.get("nodes") if e.get("nodes") is not None else e.get("node")
    return ", ".join(map(str, n)) if isinstance(n, (list, tuple)) else (str(n) if n else "")


def run_marks(events: list[dict], run_id: str = "") -> list[RunMark]:
    """Incidents, reconnects, jammer watchdog stops, resumes and failures of a run, in time order."""
    out = []
    for e in events:
        if not isinstance(e, dict):
            continue
        kind, t = str(e.get("kind", "")), e.get("t_ns")
        t = int(t) if isinstance(t, (int, float)) else None
        nodes = _nodes(e)
        if kind == "incident":
            reasons = e.get("reasons") if isinstance(e.get("reasons"), dict) else {}
            why = "; ".join(f"{n}: {r}" for n, r in reasons.items()) or e.get("error") or ""
            out.append(RunMark(t, "incident", kind, nodes, f"trial {e.get('trial_id', '?')} interrupted "
                               f"(attempt {e.get('attempt', '?')}): {why}", run_id))
        elif kind == "reconnect_retry":
            out.append(RunMark(t, "reconnect", kind, nodes, f"reconnect attempt {e.get('attempt', '?')} failed: "
                               f"{e.get('error', '')}", run_id))
        elif kind == "reconnect_failed":
            out.append(RunMark(t, "failure", kind, nodes, f"gave up reconnecting: {e.get('error', '')}", run_id))
        elif kind == "recovered":
            out.append(RunMark(t, "reconnect", kind, nodes, f"reconnected after {e.get('seconds', '?')} s", run_id))
        elif kind == "trial_recovered":
            out.append(RunMark(t, "reconnect", kind, nodes, f"trial {e.get('trial_id', '?')} completed after "
                               f"{e.get('attempts', '?')} attempts", run_id))
        elif kind == "resumed":
            out.append(RunMark(t, "resume", kind, nodes, f"resumed with {e.get('done_images', '?')} image(s) done"
                               + (f", {e['torn_bytes_dropped']} torn bytes dropped"
                                  if e.get("torn_bytes_dropped") else ""), run_id))
        elif kind == "failed":
            out.append(RunMark(t, "failure", kind, nodes, f"run failed: {e.get('error', '')}", run_id))
        elif kind in ("stale_lock_replaced", "inputs_changed", "inputs_unverified"):
            detail = e.get("reason") or e.get("problems") or ""
            out.append(RunMark(t, "other", kind, nodes, f"{kind.replace('_', ' ')}: {detail}", run_id))
        elif kind == "jammer_lapsed":
            reason = e.get("reason") or "?"
            out.append(RunMark(t, "watchdog" if reason == "watchdog" else "jammer", kind, nodes,
                               f"the controller found the jammer stopped ({reason}) during condition "
                               f"{e.get('condition', '?')}: re-arming", run_id))
        elif kind == "jammer_rearmed":
            out.append(RunMark(t, "jammer", kind, nodes, f"jammer re-armed for condition {e.get('condition', '?')} "
                               f"after {e.get('seconds', '?')} s", run_id))
        elif kind == "jammer_rearm_failed":
            out.append(RunMark(t, "jammer", kind, nodes, f"re-arming the jammer failed: {e.get('error', '')}", run_id))
        elif kind == "agent_event" and isinstance(e.get("event"), dict):
            ev = e["event"]
            if ev.get("event") == "jammer_stopped":
                reason = ev.get("reason", "?")
                idle = f" after {ev['idle_s']} s without a heartbeat" if ev.get("idle_s") is not None else ""
                out.append(RunMark(t, "watchdog" if reason == "watchdog" else "jammer", "jammer_stopped", nodes,
                                   f"the jammer stopped by itself ({reason}{idle}): jamming off until set again",
                                   run_id))
    return sorted(out, key=lambda m: (m.t_ns is None, m.t_ns or 0))


def marks_summary(marks: list[RunMark]) -> str:
    """'1 incident, 2 reconnect events, 1 jammer watchdog stop, 1 resume'."""
    counts: dict[str, int] = {}
    for m in marks:
        counts[m.category] = counts.get(m.category, 0) + 1
    return ", ".join(f"{counts[c]} {label}{'s' if counts[c] > 1 else ''}" for c, (label, _) in EVENT_STYLE.items()
                     if c in counts) or "none"
