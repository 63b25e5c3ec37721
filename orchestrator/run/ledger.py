"""What a condition actually applied: the jammer load each image was measured under, and what could not be applied.

The jammer reports its load in 1 s measurement windows (``jammer_load``
agent events in events.jsonl, on the jammer's clock); every function here
takes the run's events as read once by the store. A record's
``jammer_load`` is the window that covers the image's arrival; a record of a
jammed condition that no window covers gets ``null`` and a ``jammer_note``
saying why (never the load measured when the condition started). Such
records are the condition's *unapplied* span: the run then ends as
``complete_unapplied`` and the report names the condition, the span and the
records concerned.

Windows arrive up to a second after the images they cover, so the runner
stores records at once (nothing measured waits in memory) and this module
settles the loads when the run's results are written.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hilbed.nodes.link.linklog import read_linklog

#: an arrival this close after a window's end still counts as inside it (windows follow each other back to back)
WINDOW_SLACK_NS = 150_000_000
#: the last, unfinished window of a condition (the jammer is stopped mid-window and never reports it): images in
#: it take the preceding window's load, noted, if the jammer was still running (no lapse) until the condition ended
TAIL_NS = 1_500_000_000


@dataclass
class Windows:
    """One jammer's measurement windows on the controller's clock, sorted by start."""

    starts: list[int] = field(default_factory=list)
    spans: list[tuple[int, int, float, float]] = field(default_factory=list)  # (t0, t1, load, mbps)

    def add(self, t0: int, t1: int, load: float, mbps: float) -> None:
        i = bisect_right(self.starts, t0)
        self.starts.insert(i, t0)
        self.spans.insert(i, (t0, t1, load, mbps))

    def before(self, t_ns: int) -> tuple[int, int, float, float] | None:
        i = bisect_right(self.starts, t_ns) - 1
        return self.spans[i] if i >= 0 else None

    def starts_between(self, a_ns: int, b_ns: int) -> bool:
        i = bisect_right(self.starts, a_ns)
        return i < len(self.starts) and self.starts[i] <= b_ns

    def at(self, t_ns: int) -> tuple[float, float] | None:
        i = bisect_right(self.starts, t_ns) - 1
        if i >= 0:
            t0, t1, load, mbps = self.spans[i]
            if t_ns <= t1 + WINDOW_SLACK_NS:
                return load, mbps
        return None


def jammer_windows(events: list[dict], offsets: dict[str, dict]) -> dict[str, Windows]:
    """Every jammer's windows from the run's events, mapped to the controller clock with its measured offset."""
    out: dict[str, Windows] = {}
    for ev in events:
        e = ev.get("event")
        if ev.get("kind") != "agent_event" or not isinstance(e, dict) or e.get("event") != "jammer_load":
            continue
        try:
            node = str(ev["node"])
            o = offsets.get(node, {})
            off = int((o.get("current") or o.get("before") or {}).get("offset_ns", 0))
            out.setdefault(node, Windows()).add(int(float(e["t_start"]) * 1e9) - off, int(float(e["t_end"]) * 1e9) - off,
                                                float(e["load"]), float(e["mbps"]))
        except (KeyError, TypeError, ValueError):
            continue
    return out


def condition_starts(events: list[dict]) -> dict[str, int]:
    """When each condition's jamming was set (controller ns): schedules count their steps from here."""
    out: dict[str, int] = {}
    for ev in events:
        if ev.get("kind") == "jammer_level" and ev.get("condition") is not None:
            out[str(ev["condition"])] = int(ev.get("t_ns", 0))
    return out


def jammer_lapses(events: list[dict]) -> list[dict]:
    """Times the jammer was found not jamming (watchdog, crash) and re-armed, and the controller's stops at
    each condition's end, as the run recorded them (controller ns in ``t_ns``)."""
    return [ev for ev in events if ev.get("kind") in ("jammer_lapsed", "jammer_rearmed",
                                                                     "jammer_stopped")]


def _tail(w: Windows, t_ns: int, marks: list[dict]) -> tuple[float, float] | None:
    """The preceding window's load for an image in a condition's unreported last window, else None."""
    prev = w.before(t_ns)
    if prev is None or t_ns - prev[1] > TAIL_NS:
        return None
    stop = next((int(ev["t_ns"]) for ev in marks if ev["kind"] == "jammer_stopped" and int(ev["t_ns"]) >= t_ns),
                None)
    if stop is None or w.starts_between(t_ns, stop):
        return None
    if any(ev["kind"] == "jammer_lapsed" and prev[1] <= int(ev["t_ns"]) <= stop for ev in marks):
        return None  # the jammer was found idle in between: nothing says it ran
    return prev[2], prev[3]


def _level_at(cond: Any, start_ns: int | None, t_ns: int) -> str:
    """The level a condition asked for at ``t_ns`` (a schedule's step, else its one level)."""
    if not cond.jamming_schedule:
        return cond.jamming
    if start_ns is None:
        return "unknown"
    el = (t_ns - start_ns) / 1e9
    level = "none"
    for step in sorted(cond.jamming_schedule, key=lambda s: s.at_s):
        if el >= step.at_s:
            level = step.level
    return level


def settle_jammer_loads(records: list[dict], scenario: Any, windows: dict[str, Windows], starts: dict[str, int],
                        lapses: list[dict] | None = None) -> tuple[list[dict], list[dict]]:
    """Each record's jammer load from the window covering its arrival; returns (records, unapplied spans).

    Several jammers: the highest load of the windows covering the image (the medium is as loaded as its
    busiest jammer makes it). A condition whose level is ``none`` at the image's time gets 0 (no traffic).
    """
    conds = {c.name: c for c in scenario.conditions}
    bad: dict[str, list[dict]] = {}
    marks = sorted((ev for ev in lapses or [] if "t_ns" in ev), key=lambda ev: int(ev["t_ns"]))
    why = ""
    if lapses:
        reasons = sorted({str(ev.get("reason")) for ev in lapses if ev.get("kind") == "jammer_lapsed"})
        why = f"; the jammer stopped ({', '.join(reasons)}) and was re-armed" if reasons else ""
    for r in records:
        cond = conds.get(r.get("condition"))
        t = r.get("t_arrival_ns")
        if cond is None or t is None:
            continue
        level = _level_at(cond, starts.get(cond.name), int(t))
        if level == "none" and not cond.jamming_schedule:
            continue  # the condition asked for no jamming; what the jammer reported at its start stands
        found = [f for f in (w.at(int(t)) for w in windows.values()) if f is not None]
        tails = [f for f in (_tail(w, int(t), marks) for w in windows.values()) if f is not None]
        if found:
            load, mbps = max(found)
            r["jammer_load"], r["jammer_mbps"], r["jammer_note"] = load, mbps, None
        elif tails:
            load, mbps = max(tails)
            r["jammer_load"], r["jammer_mbps"] = load, mbps
            r["jammer_note"] = "the preceding window's load: the condition ended before this window was reported"
        elif level == "none":
            r["jammer_load"], r["jammer_mbps"], r["jammer_note"] = 0.0, 0.0, None
        else:
            r["jammer_load"], r["jammer_mbps"] = None, None
            r["jammer_note"] = f"no load measured while this image was sent (level {level} asked){why}"
            bad.setdefault(cond.name, []).append(r)
    unapplied = []
    for name, rs in bad.items():
        ts = [int(r["t_arrival_ns"]) for r in rs]
        unapplied.append({"condition": name, "what": "jamming", "asked": conds[name].jamming if not
                          conds[name].jamming_schedule else "schedule", "measured": None,
                          "t_start_ns": min(ts), "t_end_ns": max(ts), "records": len(rs),
                          "reason": rs[0]["jammer_note"]})
    return records, unapplied


def applied_ledger(events: list[dict], logs: Path, scenario: Any, windows: dict[str, Windows],
                   records: list[dict]) -> dict:
    """Per condition: what was asked and what was measured, from the run's events (for the manifest).

    jamming: the level asked, the load of every 1 s window that fell in the condition, lapses and re-arms;
    link: the kind, what its ``verify`` found, tc rates set, each client link's statistics when it closed
    (bytes charged, accounting, late releases) and the images whose load could not be measured.
    """
    out: dict[str, dict] = {c.name: {"jamming": {"asked": c.jamming if not c.jamming_schedule else "schedule",
                                                 "schedule": [s.model_dump() for s in c.jamming_schedule or []] or None,
                                                 "set": [], "windows": 0, "load": None, "lapses": []},
                                     "link": {"kind": c.link.kind, "verified": [], "tc": [], "stats": {}}}
                           for c in scenario.conditions}
    spans: dict[str, list[int]] = {}
    for r in records:
        if r.get("t_arrival_ns") is not None and r.get("condition") in out:
            sp = spans.setdefault(r["condition"], [int(r["t_arrival_ns"])] * 2)
            sp[0], sp[1] = min(sp[0], int(r["t_arrival_ns"])), max(sp[1], int(r["t_arrival_ns"]))
    for ev in events:
        cond = out.get(str(ev.get("condition")))
        if cond is None:
            continue
        k = ev.get("kind")
        if k == "jammer_level":
            res = ev.get("result") or {}
            cond["jamming"]["set"].append({"node": ev.get("node"), "level": res.get("level"), "params": res.get(
                "params"), "first_load": res.get("load"), "first_mbps": res.get("mbps")})
        elif k in ("jammer_lapsed", "jammer_rearmed", "jammer_rearm_failed"):
            cond["jamming"]["lapses"].append({"kind": k, "node": ev.get("node"), "t_ns": ev.get("t_ns"),
                                              "reason": ev.get("reason") or ev.get("error")})
        elif k == "link_applied":
            cond["link"]["verified"].append(ev.get("facts"))
        elif k == "tc_applied":
            cond["link"]["tc"].append({"node": ev.get("node"), **(ev.get("facts") or {})})
        elif k == "link_stats":
            cond["link"]["stats"][str(ev.get("node"))] = ev.get("result")
    for name in out:
        for log in sorted(logs.glob(f"link-*-{name}.log")) if logs.is_dir() else []:
            client = log.name[len("link-"):-len(f"-{name}.log")]
            try:
                lg = read_linklog(log)
            except (OSError, ValueError) as exc:
                out[name]["link"].setdefault("served", {})[client] = {"error": str(exc)}
                continue
            base = lg.base_ms or 0
            end = lg.end_ms if lg.end_ms is not None else max([t for t, *_ in lg.capacity] or [base])
            secs = max(1e-3, (end - base) / 1000.0)
            cap = sum(n for _, n in lg.capacity)
            served = {"seconds": round(secs, 3), "kbps_mean": round(cap * 8 / 1000 / secs, 3),
                      "bytes_delivered": sum(d[1] for d in lg.departures), "from": log.name}
            span = spans.get(name)
            if span and lg.init_unix_ms is not None:  # while images were being sent (after jamming was set)
                a_ms = span[0] / 1e6 - lg.init_unix_ms + base
                b_ms = span[1] / 1e6 - lg.init_unix_ms + base
                during = sum(n for t, n in lg.capacity if a_ms <= t < b_ms)
                if b_ms > a_ms:
                    served["kbps_during_images"] = round(during * 8 / (b_ms - a_ms), 3)
            out[name]["link"].setdefault("served", {})[client] = served
    for name, (t0, t1) in spans.items():
        loads = [span[2] for w in windows.values() for span in w.spans if span[1] >= t0 and span[0] <= t1]
        if loads:
            out[name]["jamming"].update(windows=len(loads), load={"mean": round(sum(loads) / len(loads), 4),
                                                                  "min": round(min(loads), 4),
                                                                  "max": round(max(loads), 4)})
        out[name]["span_ns"] = [t0, t1]
    return out
