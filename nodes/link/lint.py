"""Trace facts and lint: what a trace file really describes, and its pitfalls.

:func:`analyze` reads a Mahimahi trace or a CSV rate schedule and returns
its facts (duration, mean/min/max rate over 1 s windows) and findings: hard
errors (the file would be rejected, with ``file:line``) and warnings -- a
one-line Mahimahi trace such as ``500000`` (one opportunity per 500 s, not
500 kbit/s), CRLF line endings, gaps longer than the deadline, rates outside
the physical range of the link kind.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from hilbed.nodes.link.traces import (
    MAHIMAHI_OPPORTUNITY_BYTES,
    TraceError,
    csv_schedule,
    parse_mahimahi,
    parse_value,
    read_csv_rates,
    split_lines,
)

#: physical uplink rate ranges (kbit/s) of the emulated link kinds
KIND_RANGES_KBPS = {
    # SF12/BW125/CR4/8 .. SF5/BW500/CR4/5 (SX126x)
    "lora": (12 * 125_000 / 2 ** 12 * 4 / 8 / 1000, 5 * 500_000 / 2 ** 5 * 4 / 5 / 1000),
    # Cat-M1 uplink: full-duplex FDD peak 1 Mbit/s (half-duplex 375 kbit/s)
    "ltem": (0.0, 1000.0),
    # 2.4 GHz O-QPSK PHY
    "ieee802154": (0.0, 250.0),
}
KIND_NOTES = {"ltem": "above 375 kbit/s needs a full-duplex FDD Cat-M1 device"}


@dataclass
class Finding:
    level: str  # "error" | "warning"
    path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        loc = f"{self.path}:{self.line}" if self.line else self.path
        return f"{loc}: {self.level}: {self.message}"


@dataclass
class TraceReport:
    path: str
    format: str
    facts: dict = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "warning"]

    def as_dict(self) -> dict:
        return {"path": self.path, "format": self.format, **self.facts,
                "findings": [{"level": f.level, "line": f.line, "message": f.message} for f in self.findings]}


def _window_rates_kbps(bytes_per_window: list[float], last_window_s: float) -> list[float]:
    out = [b * 8 / 1000 for b in bytes_per_window]
    if out and 0 < last_window_s < 1:
        out[-1] = bytes_per_window[-1] * 8 / 1000 / last_window_s
    return out


def _scan_mahimahi_errors(data: bytes, path: str, limit: int = 10) -> list[Finding]:
    """All rejected lines (not just the first), for lint."""
    out: list[Finding] = []
    lines = split_lines(data)
    crlf = [i for i, raw in enumerate(lines, 1) if raw.endswith(b"\r")]
    if crlf:
        out.append(Finding("error", path, crlf[0], f"CRLF line endings on {len(crlf)} line(s): Mahimahi rejects "
                                                  "them; convert with `dos2unix` or `sed -i 's/\\r$//'`"))
    prev = None
    shown = 0
    for n, raw in enumerate(lines, 1):
        problem = None
        try:
            v = parse_value(raw[:-1] if raw.endswith(b"\r") else raw)  # CRs were reported once above
        except ValueError as exc:
            problem = str(exc)
        else:
            if prev is not None and v < prev:
                problem = f"timestamps must be non-decreasing ({v} after {prev})"
            prev = v if prev is None else max(prev, v)
        if problem is not None:
            out.append(Finding("error", path, n, problem))
            shown += 1
            if shown >= limit:
                out.append(Finding("error", path, None, "(more errors not shown)"))
                return out
    if not lines:
        out.append(Finding("error", path, 1, "no valid timestamps found (empty trace)"))
    elif prev == 0 and not out:
        out.append(Finding("error", path, len(lines), "trace must last for a nonzero amount of time "
                                                      "(last timestamp is 0)"))
    return out


def analyze(path: str | Path, opportunity_bytes: int | None = None, deadline_ms: float | None = None,
            kind: str | None = None) -> TraceReport:
    path = Path(path)
    if kind is not None and kind not in KIND_RANGES_KBPS:
        raise ValueError(f"unknown link kind {kind!r} (allowed: {', '.join(KIND_RANGES_KBPS)})")
    if path.suffix.lower() == ".csv":
        return _analyze_csv(path, deadline_ms, kind)
    return _analyze_mahimahi(path, opportunity_bytes or MAHIMAHI_OPPORTUNITY_BYTES, deadline_ms, kind,
                             opportunity_given=opportunity_bytes is not None)


def _analyze_mahimahi(path: Path, opp: int, deadline_ms: float | None, kind: str | None,
                      opportunity_given: bool) -> TraceReport:
    rep = TraceReport(str(path), "mahimahi")
    try:
        data = path.read_bytes()
    except OSError as exc:
        rep.findings.append(Finding("error", str(path), None, f"cannot read: {exc.strerror or exc}"))
        return rep
    try:
        times = parse_mahimahi(data, path)
    except TraceError as exc:
        found = _scan_mahimahi_errors(data, str(path))
        rep.findings.extend(found or [Finding("error", str(path), exc.line, exc.problem)])
        return rep
    period = times[-1]
    n = len(times)
    mean_kbps = n * opp * 8 / period
    nwin = max(1, math.ceil(period / 1000))
    per_win = [0.0] * nwin
    for t in times:
        per_win[min(nwin - 1, t // 1000)] += opp
    last_s = (period - (nwin - 1) * 1000) / 1000
    rates = _window_rates_kbps(per_win, last_s)
    rep.facts = {"lines": n, "opportunity_bytes": opp, "opportunity_bytes_assumed": not opportunity_given,
                 "duration_ms": period, "duration_s": period / 1000, "mean_kbps": mean_kbps,
                 "windows_1s": nwin, "min_kbps_1s": min(rates), "max_kbps_1s": max(rates),
                 "distinct_ms": len(set(times))}
    # gaps between consecutive opportunities (the loop wrap counts: last -> period + first)
    gaps = [(b - a, i + 2) for i, (a, b) in enumerate(zip(times, times[1:])) if b - a > 0]
    gaps.append((times[0], 1))  # after the wrap, the first opportunity comes times[0] ms into the pass
    max_gap, max_gap_line = max(gaps) if gaps else (0, None)
    rep.facts["max_gap_ms"] = max_gap
    if n <= 2 or (mean_kbps < 1.0 and n < 10):
        v = times[-1]
        rep.findings.append(Finding(
            "warning", str(path), 1,
            f"only {n} line(s): this trace is {n} delivery opportunit{'y' if n == 1 else 'ies'} of {opp} bytes every "
            f"{period} ms = {mean_kbps:.4g} kbit/s, not {v} kbit/s. Mahimahi lines are opportunity times, not "
            f"rates; for a constant {v} kbit/s link use a CSV rate schedule ('t_ms,kbps' then '0,{v}') or "
            f"`hilbed trace gen`"))
    if deadline_ms is not None:
        long_gaps = sorted([g for g in gaps if g[0] > deadline_ms], reverse=True)
        if long_gaps:
            worst, line = long_gaps[0]
            where = "at the loop wrap (before line 1)" if line == 1 else f"before line {line}"
            rep.findings.append(Finding(
                "warning", str(path), line,
                f"{len(long_gaps)} gap(s) without any opportunity longer than the {deadline_ms:g} ms deadline; "
                f"the longest is {worst} ms {where}: every image in flight then misses its deadline"))
    _kind_findings(rep, kind, rates, mean_kbps)
    return rep


def _analyze_csv(path: Path, deadline_ms: float | None, kind: str | None) -> TraceReport:
    rep = TraceReport(str(path), "csv")
    try:
        times, kbps = read_csv_rates(path)
        sched = csv_schedule(path, loop=True)
    except TraceError as exc:
        rep.findings.append(Finding("error", str(path), exc.line, exc.problem))
        return rep
    try:
        raw = path.read_bytes()
    except OSError:
        raw = b""
    period_s = sched.period
    nwin = max(1, math.ceil(period_s - 1e-9))
    per_win = [sched.bytes_until(min(period_s, k + 1)) - sched.bytes_until(k) for k in range(nwin)]
    rates = _window_rates_kbps(per_win, period_s - (nwin - 1))
    mean_kbps = sched.bytes_until(period_s) * 8 / period_s / 1000
    rep.facts = {"rows": len(times), "duration_ms": period_s * 1000, "duration_s": period_s, "mean_kbps": mean_kbps,
                 "windows_1s": nwin, "min_kbps_1s": min(rates), "max_kbps_1s": max(rates),
                 "min_kbps": min(kbps), "max_kbps": max(kbps)}
    if b"\r\n" in raw:
        rep.findings.append(Finding("warning", str(path), 1, "CRLF line endings (accepted for CSV, but Mahimahi "
                                                             "tools and `tc` scripts may not)"))
    # zero-rate stretches (rows are change points; the last row holds until the period ends)
    ends = times[1:] + [period_s * 1000]
    zero = [(e - t, i + 2) for i, (t, e, r) in enumerate(zip(times, ends, kbps)) if r == 0 and e > t]
    rep.facts["max_gap_ms"] = max((z[0] for z in zero), default=0.0)
    if deadline_ms is not None:
        long_gaps = sorted([z for z in zero if z[0] > deadline_ms], reverse=True)
        if long_gaps:
            rep.findings.append(Finding(
                "warning", str(path), long_gaps[0][1],
                f"{len(long_gaps)} zero-rate stretch(es) longer than the {deadline_ms:g} ms deadline; the longest "
                f"is {long_gaps[0][0]:g} ms"))
    _kind_findings(rep, kind, rates, mean_kbps, rows=list(zip(kbps, range(2, len(kbps) + 2))))
    return rep


def _kind_findings(rep: TraceReport, kind: str | None, rates: list[float], mean_kbps: float,
                   rows: list[tuple[float, int]] | None = None) -> None:
    if kind is None:
        return
    lo, hi = KIND_RANGES_KBPS[kind]
    over = [(r, i) for i, r in enumerate(rates) if r > hi * 1.001]
    if rows:
        bad = [(r, line) for r, line in rows if r > hi * 1.001]
        if bad:
            r, line = max(bad)
            rep.findings.append(Finding("warning", rep.path, line,
                                        f"{len(bad)} row(s) above the {kind} physical maximum of {hi:g} kbit/s "
                                        f"(highest {r:g} kbit/s)"))
            return
    if over:
        r, i = max(over)
        rep.findings.append(Finding("warning", rep.path, None,
                                    f"{len(over)} 1-s window(s) above the {kind} physical maximum of {hi:g} kbit/s "
                                    f"(highest {r:.1f} kbit/s in second {i})"
                                    + (f"; {KIND_NOTES[kind]}" if kind in KIND_NOTES else "")))
    elif kind in KIND_NOTES and max(rates) > 375:
        rep.findings.append(Finding("warning", rep.path, None, f"rates above 375 kbit/s: {KIND_NOTES[kind]}"))
    busy = [r for r in rates if r > 0]  # windows with capacity (duty-cycle pauses are legitimate)
    if lo > 0 and busy and min(busy) < lo * 0.999:
        rep.findings.append(Finding("warning", rep.path, None,
                                    f"a 1-s window with capacity carries only {min(busy):.4g} kbit/s, below the "
                                    f"slowest {kind} rate ({lo:.3g} kbit/s); check --opportunity-bytes"))
