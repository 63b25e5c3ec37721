"""Warnings a reader of a report must see before trusting its numbers.

- a clock-offset uncertainty larger than a latency component that crosses
  clocks (transmit: client -> edge, return: edge -> client), or clocks that
  drifted during the run by more than that uncertainty;
- differences between codecs that the table shows but the sample size cannot
  support, and cells with few images;
- a jamming level whose measured load fell short of the scenario's target, or
  was not measured at all;
- incomplete runs, images without a reply, fewer records than planned;
- timing measured on an overloaded host, a jammer its watchdog stopped
  (:mod:`hilbed.analysis.runlog`).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .load import scenario_of
from .metrics import _num, summary
from .runlog import FINISHED_STATES, overload_warnings, run_marks, utc
from .stats import Z95, newcombe_diff

MIN_CELL = 30
JAMMER_SHORTFALL = 0.9
CROSS_CLOCK = ("transmit", "return")
WATCHDOG_SAME_NS = 10_000_000_000


def _cells(cells: list[str], k: int = 3) -> str:
    more = f" and {len(cells) - k} more" if len(cells) > k else ""
    return ", ".join(cells[:k]) + more


def clock_warnings(lat: pd.DataFrame, manifests: list[dict]) -> list[str]:
    out = []
    for m in manifests:
        run = m.get("run_id", "?")
        for node, c in (m.get("clock_offsets") or {}).items():
            if not isinstance(c, dict):
                continue
            b, a = c.get("before"), c.get("after")
            if isinstance(b, dict) and isinstance(a, dict) and "offset_ns" in b and "offset_ns" in a:
                drift = abs(a["offset_ns"] - b["offset_ns"])
                unc = max(a.get("uncertainty_ns", 0), b.get("uncertainty_ns", 0))
                if drift > unc:
                    out.append(f"{run}: the clock offset of {node} moved by {drift / 1e6:.3f} ms during the run, more "
                               f"than its uncertainty (±{unc / 1e6:.3f} ms); cross-node latencies may be skewed")
    if len(lat) == 0 or lat["clock_uncertainty_ns"].notna().sum() == 0:
        return out
    for run, r in lat.groupby(lat["run_id"].astype(str), sort=False):
        s = summary(r)
        hits = []
        for _, row in s.iterrows():
            unc = row["clock_uncertainty_ms"]
            for comp in CROSS_CLOCK:
                med = row[f"{comp}_p50_ms"]
                if unc == unc and med == med and unc > abs(med):
                    hits.append((comp, f"{row['codec_label']} / {row['condition']}", med, unc))
        if hits:
            comps = sorted({h[0] for h in hits})
            worst = max(hits, key=lambda h: h[3] / max(abs(h[2]), 1e-9))
            out.append(f"{run}: clock uncertainty (±{worst[3]:.3f} ms, client + edge) exceeds the median "
                       f"{' and '.join(comps)} latency in {len(hits)} cell(s), e.g. {worst[1]} ({worst[0]} p50 "
                       f"{worst[2]:.3f} ms); those components are not resolved by the clock sync")
    return out


def n_needed(p1: float, p2: float, power_z: float = 0.8416) -> int:
    """Images per cell to detect p1 vs p2 at 5% two-sided, 80% power (normal approximation)."""
    d = abs(p1 - p2)
    if d == 0:
        return 0
    return int(math.ceil((Z95 + power_z) ** 2 * (p1 * (1 - p1) + p2 * (1 - p2)) / d ** 2))


def sample_warnings(summ: pd.DataFrame) -> list[str]:
    out = []
    if len(summ) == 0:
        return out
    small = summ[summ["n"] < MIN_CELL]
    if len(small):
        out.append(f"{len(small)} of {len(summ)} cells have fewer than {MIN_CELL} images (min {int(small['n'].min())}): "
                   "intervals are wide and differences of a few points are not significant")
    for cond, g in summ.groupby("condition", sort=False, dropna=False):
        g = g.sort_values("top1", ascending=False, kind="stable")
        rows = list(g.itertuples(index=False))
        vague = []
        for hi, lo in zip(rows, rows[1:]):
            k1, k2 = round(hi.top1 * hi.n), round(lo.top1 * lo.n)
            d, dlo, dhi = newcombe_diff(k1, int(hi.n), k2, int(lo.n))
            if d >= 0.01 and dlo <= 0:
                vague.append(f"{hi.codec_label} > {lo.codec_label} by {100 * d:.1f} points "
                             f"(95% CI {100 * dlo:+.1f}..{100 * dhi:+.1f}; ~{n_needed(hi.top1, lo.top1)} images "
                             "per cell would resolve it)")
        if vague:
            out.append(f"{cond}: top-1 ranking not supported by the sample size: {'; '.join(vague[:4])}"
                       + (f"; and {len(vague) - 4} more" if len(vague) > 4 else ""))
    return out


def jammer_targets(manifests: list[dict], events: list[dict] | None = None) -> dict[str, float]:
    """Target Mbit/s per jamming level: the scenario's ``jamming_levels``, then the levels as the jammer
    resolved them (``jammer_level`` events, which also cover the built-in light/heavy)."""
    targets: dict[str, float] = {}
    for m in manifests:
        for lv, cfg in (scenario_of(m).get("jamming_levels") or {}).items():
            if isinstance(cfg, dict) and cfg.get("bitrate_mbps") is not None:
                targets[str(lv)] = float(cfg["bitrate_mbps"])
    for e in events or []:
        res = e.get("result") if e.get("kind") == "jammer_level" else None
        params = (res or {}).get("params") if isinstance(res, dict) else None
        if isinstance(params, dict) and params.get("bitrate_mbps") is not None and res.get("level"):
            targets[str(res["level"])] = float(params["bitrate_mbps"])
    return targets


def jammer_warnings(df: pd.DataFrame, manifests: list[dict], events: list[dict] | None = None) -> list[str]:
    out = []
    if len(df) == 0:
        return out
    targets = jammer_targets(manifests, events)
    for lv, g in df.groupby(df["jamming_level"].astype(str), sort=False):
        if lv in ("none", "nan", "<NA>"):
            continue
        mbps = _num(g["jammer_mbps"])
        load = _num(g["jammer_load"])
        if np.isnan(mbps).all() and np.isnan(load).all():
            out.append(f"jamming level '{lv}' was requested but no jammer load was measured "
                       "(no jammer node, or its agent reported nothing): results under it may be unjammed")
            continue
        tgt = targets.get(lv)
        if tgt and not np.isnan(mbps).all():
            got = float(np.nanmean(mbps))
            if got < JAMMER_SHORTFALL * tgt:
                out.append(f"jamming level '{lv}' reached {got:.2f} Mbit/s on average, below its target of "
                           f"{tgt:g} Mbit/s ({100 * got / tgt:.0f}%)")
    return out


def run_warnings(df: pd.DataFrame, manifests: list[dict]) -> list[str]:
    out = []
    for m in manifests:
        run = m.get("run_id", "?")
        if m.get("state") not in (*FINISHED_STATES, None):
            out.append(f"{run}: run state is '{m.get('state')}' (finish it with `hilbed resume`)")
        planned = (m.get("plan") or {}).get("images")
        if planned:
            have = int((df["run_id"].astype(str) == str(run)).sum()) if len(df) else 0
            if have < planned:
                out.append(f"{run}: {have} of {planned} planned image records")
        git = m.get("git") or {}
        if git.get("dirty"):
            out.append(f"{run}: measured from a working tree with uncommitted changes (git sha {git.get('sha')})")
        out += overload_warnings(m)
    if len(df):
        errs = df["error"].dropna()
        if len(errs):
            out.append(f"{len(errs)} image(s) got no reply from the edge; first: {errs.iloc[0]}")
    return out


def watchdog_warnings(events: list[dict] | None) -> list[str]:
    """A jammer that stopped by itself left the condition unjammed until the next level was set."""
    out = []
    last: dict[str, int] = {}
    for mk in run_marks(events or []):
        # the jammer's own report and the controller's heartbeat may both tell of one stop
        if mk.category == "watchdog" and not (mk.nodes in last and mk.t_ns is not None
                                              and mk.t_ns - last[mk.nodes] < WATCHDOG_SAME_NS):
            last[mk.nodes] = mk.t_ns or 0
            out.append(f"the jammer on node {mk.nodes or '?'} stopped by its watchdog at {utc(mk.t_ns)} UTC: records "
                       "after it (until the jammer was set or re-armed again) may have run unjammed")
    return out


#: a shaped link whose releases were later than this at p99 did not serve the trace as written
RELEASE_P99_LIMIT_MS = 1.0


def release_warnings(events: list[dict] | None) -> list[str]:
    """Shaped links report how late their packet releases were; the trace holds only if that stayed small."""
    out = []
    for ev in events or []:
        r = ev.get("result") if ev.get("kind") == "link_stats" else None
        if not isinstance(r, dict):
            continue
        p99 = r.get("late_release_ms_p99")
        if isinstance(p99, (int, float)) and p99 > RELEASE_P99_LIMIT_MS:
            rt = "" if r.get("realtime_priority", True) else " without real-time priority"
            out.append(f"the shaped link of {ev.get('node', '?')} released packets {p99:.2f} ms late at p99{rt} "
                       f"(limit {RELEASE_P99_LIMIT_MS:g} ms over {r.get('releases_timed')} releases): its latencies "
                       "include host scheduling delay the trace does not have")
    return out


def delivery_warnings(manifests: list[dict], events: list[dict] | None) -> list[str]:
    """What a run asked for and did not get as asked: AMP the edge ignored, jammer loads the medium relay could
    not bring to a remote node, node files (link logs) that never reached the run directory."""
    out = []
    for m in manifests:
        b = m.get("edge_batching")
        if isinstance(b, dict) and b.get("amp") and b.get("amp_applied") is False:
            out.append(f"the scenario asked for AMP at the edge, which was not applied ({b.get('amp_note') or 'no CUDA'}): "
                       "inference ran in float32")
        for cond, nodes in (m.get("medium_relay") or {}).items():
            for node, st in (nodes or {}).items():
                if isinstance(st, dict) and (st.get("failed") or not st.get("updates")):
                    out.append(f"condition {cond}: {st.get('failed', 0)} jammer load update(s) failed to reach {node} "
                               f"({st.get('updates', 0)} arrived{'; ' + str(st['error']) if st.get('error') else ''}): "
                               "its link may not have followed the jammer")
    for ev in events or []:
        if ev.get("kind") == "node_file_not_fetched":
            out.append(f"{ev.get('path', '?')} on {ev.get('node', '?')} was not fetched into the run ({ev.get('error')}): "
                       "figures that read it are missing")
    return out


def all_warnings(lat: pd.DataFrame, summ: pd.DataFrame, manifests: list[dict],
                 events: list[dict] | None = None) -> list[str]:
    if len(lat) == 0:
        return ["no records"] + run_warnings(lat, manifests) + delivery_warnings(manifests, events)
    return (run_warnings(lat, manifests) + clock_warnings(lat, manifests) + jammer_warnings(lat, manifests, events)
            + watchdog_warnings(events) + release_warnings(events) + delivery_warnings(manifests, events)
            + sample_warnings(summ))
