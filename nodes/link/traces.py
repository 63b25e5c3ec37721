"""Trace files that drive shaped links.

Two formats, chosen by extension (:func:`load_schedule`): ``.csv`` is a rate
schedule -- a header ``t_ms,kbps`` then one row per change point (``t_ms``
non-decreasing from 0, ``kbps`` >= 0; blank lines and ``#`` comments are
allowed) -- and anything else is a Mahimahi packet-delivery trace
(:mod:`hilbed.nodes.link.mahimahi`). Errors name ``file:line``.
"""

from __future__ import annotations

from pathlib import Path

from .schedule import PiecewiseRate


class TraceError(ValueError):
    def __init__(self, path: str | Path, line: int | None, problem: str):
        self.path, self.line, self.problem = str(path), line, problem
        super().__init__(f"{path}:{line}: {problem}" if line else f"{path}: {problem}")


def read_csv_rates(path: str | Path) -> tuple[list[float], list[float]]:
    """Read a ``t_ms,kbps`` CSV; returns (times in ms, rates in kbit/s)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TraceError(path, None, "file not found") from None
    times: list[float] = []
    rates: list[float] = []
    lines = text.splitlines()
    if not lines:
        raise TraceError(path, 1, "empty file (expected header 't_ms,kbps')")
    header = [h.strip() for h in lines[0].split(",")]
    if header != ["t_ms", "kbps"]:
        raise TraceError(path, 1, f"header must be 't_ms,kbps', got {lines[0]!r}")
    for n, raw in enumerate(lines[1:], start=2):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        cells = [c.strip() for c in raw.split(",")]
        if len(cells) != 2:
            raise TraceError(path, n, f"expected 2 columns 't_ms,kbps', got {len(cells)}")
        try:
            t, r = float(cells[0]), float(cells[1])
        except ValueError:
            raise TraceError(path, n, f"not numbers: {raw.strip()!r}") from None
        if t < 0 or r < 0:
            raise TraceError(path, n, "t_ms and kbps must be >= 0")
        if times and t < times[-1]:
            raise TraceError(path, n, f"t_ms must be non-decreasing ({t:g} after {times[-1]:g})")
        times.append(t)
        rates.append(r)
    if not times:
        raise TraceError(path, len(lines), "no data rows")
    if times[0] != 0:
        raise TraceError(path, 2, "the first row must be at t_ms 0")
    return times, rates


def write_csv_rates(path: str | Path, times_ms: list[float], kbps: list[float]) -> None:
    if not times_ms or len(times_ms) != len(kbps):
        raise ValueError("need matching, non-empty times and rates")
    if times_ms[0] != 0 or any(b < a for a, b in zip(times_ms, times_ms[1:])) or min(kbps) < 0:
        raise ValueError("t_ms must start at 0 and be non-decreasing; kbps must be >= 0")
    lines = ["t_ms,kbps"] + [f"{t:.10g},{r:.10g}" for t, r in zip(times_ms, kbps)]
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(path)


def csv_schedule(path: str | Path, loop: bool = True) -> PiecewiseRate:
    """A CSV rate schedule; when looping, the period is the last row's time plus the last step."""
    times, rates = read_csv_rates(path)
    period = times[-1] + (times[-1] - times[-2]) if len(times) > 1 else 1000.0
    try:
        return PiecewiseRate([t / 1000 for t in times], [r * 1000 for r in rates], period_s=period / 1000, loop=loop)
    except ValueError as exc:
        raise TraceError(path, None, str(exc)) from None


def load_schedule(path: str | Path, loop: bool = True, opportunity_bytes: int = 1504):
    """A :class:`CapacitySchedule` from a trace file: ``.csv`` = rate schedule, else Mahimahi."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        return csv_schedule(path, loop=loop)
    from .mahimahi import load_mahimahi_schedule
    return load_mahimahi_schedule(path, loop=loop, opportunity_bytes=opportunity_bytes)
