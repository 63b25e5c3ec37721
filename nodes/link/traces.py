"""Trace files that drive shaped links: the one place their formats are read and written.

Two formats, chosen by extension (:func:`load_schedule`):

- ``.csv`` is a rate schedule: a header ``t_ms,kbps`` then one row per
  change point (``t_ms`` non-decreasing from 0, ``kbps`` >= 0; blank lines
  and ``#`` comments are allowed);
- anything else is a Mahimahi packet-delivery trace, as ``mm-link`` reads
  it: one integer per line, the millisecond since trace start of one
  delivery opportunity (1504 bytes in Mahimahi; configurable here); repeated
  values are several opportunities in that millisecond; the values are
  non-decreasing and the last one must be > 0 (it is also the loop period).
  Lines are split on ``\\n`` only. The reader rejects what Mahimahi's
  ``LinkQueue`` rejects -- an empty line, a value ``strtol`` would not
  consume completely (trailing spaces, a CR from CRLF files, comments,
  decimals), a value above ``INT_MAX``, a decreasing value, an empty file, a
  trace ending at 0 -- and, on top of that, negative values (Mahimahi would
  silently wrap them to huge unsigned times).

Every error is a :class:`TraceError` naming ``file:line``. Parsing and
writing need the standard library only; the ``*_schedule`` helpers turn what
was read into :mod:`hilbed.nodes.link.schedule` objects.
"""

from __future__ import annotations

import re
from pathlib import Path

MAHIMAHI_OPPORTUNITY_BYTES = 1504
INT_MAX = 2**31 - 1
CSV_HEADER = ("t_ms", "kbps")
# strtol(base 10): optional leading isspace(), optional sign, digits -- and
# Mahimahi's myatoi() requires the whole string to be consumed.
_STRTOL = re.compile(rb"[ \t\n\v\f\r]*([+-]?)([0-9]+)")


class TraceError(ValueError):
    def __init__(self, path: str | Path, line: int | None, problem: str):
        self.path, self.line, self.problem = str(path), line, problem
        super().__init__(f"{path}:{line}: {problem}" if line else f"{path}: {problem}")


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise TraceError(path, None, "file not found") from None
    except IsADirectoryError:
        raise TraceError(path, None, "is a directory, not a trace file") from None


def _atomic_write(path: str | Path, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


# ------------------------------------------------------------- Mahimahi ---

def _problem(raw: bytes) -> str:
    if raw.endswith(b"\r"):
        return "line ends with a carriage return (CRLF file?); Mahimahi rejects it: convert with `dos2unix`"
    if raw.lstrip().startswith(b"#"):
        return "comments are not allowed in Mahimahi traces"
    text = raw.decode("utf-8", "replace")
    if re.fullmatch(r"\s*[+-]?[0-9]*\.[0-9]*\s*", text):
        return f"not an integer number of milliseconds: {text!r}"
    if text.strip() == "":
        return "whitespace-only line (Mahimahi: invalid integer)"
    if re.fullmatch(r"\s*[+-]?[0-9]+\s+", text):
        return f"trailing whitespace after the value: {text!r} (Mahimahi: invalid integer)"
    return f"invalid integer {text[:60]!r}"


def parse_value(raw: bytes) -> int:
    """One line's value as Mahimahi reads it; ValueError(problem) if it would reject the line."""
    if raw.isdigit():  # fast path: plain ASCII digits
        v = int(raw)
    else:
        if raw == b"":
            raise ValueError("invalid empty line (Mahimahi rejects blank lines)")
        m = _STRTOL.fullmatch(raw)
        if m is None:
            raise ValueError(_problem(raw))
        v = int(m.group(2)) * (-1 if m.group(1) == b"-" else 1)
        if v < 0:
            raise ValueError(f"negative timestamp {v} (milliseconds since trace start must be >= 0)")
    if v > INT_MAX:
        raise ValueError(f"value {v} exceeds INT_MAX (Mahimahi: invalid integer)")
    return v


def split_lines(data: bytes) -> list[bytes]:
    """Lines as ``getline`` sees them: split on LF; a final LF ends the last line."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return lines


def parse_mahimahi(data: bytes, path: str | Path = "<trace>") -> list[int]:
    """Milliseconds of each opportunity; :class:`TraceError` names ``path:line``."""
    out: list[int] = []
    append = out.append
    prev = 0
    for n, raw in enumerate(split_lines(data), start=1):
        if raw.isdigit():
            v = int(raw)
            if v > INT_MAX:
                raise TraceError(path, n, f"value {v} exceeds INT_MAX (Mahimahi: invalid integer)")
        else:
            try:
                v = parse_value(raw)
            except ValueError as exc:
                raise TraceError(path, n, str(exc)) from None
        if out and v < prev:
            raise TraceError(path, n, f"timestamps must be non-decreasing ({v} after {prev})")
        append(v)
        prev = v
    if not out:
        raise TraceError(path, 1, "no valid timestamps found (empty trace)")
    if out[-1] == 0:
        raise TraceError(path, len(out), "trace must last for a nonzero amount of time (last timestamp is 0)")
    return out


def read_mahimahi(path: str | Path) -> list[int]:
    path = Path(path)
    return parse_mahimahi(_read_bytes(path), path)


def format_mahimahi(times_ms: list[int]) -> bytes:
    """Trace text for ``times_ms`` (validated: integers, non-decreasing, last > 0)."""
    vals = [int(t) for t in times_ms]
    if any(int(t) != t for t in times_ms):
        raise ValueError("Mahimahi timestamps must be whole milliseconds")
    if not vals:
        raise ValueError("a trace needs at least one opportunity")
    if vals[0] < 0 or any(b < a for a, b in zip(vals, vals[1:])):
        raise ValueError("timestamps must be >= 0 and non-decreasing")
    if vals[-1] <= 0:
        raise ValueError("the last timestamp must be > 0")
    return ("\n".join(map(str, vals)) + "\n").encode("ascii")


def write_mahimahi(path: str | Path, times_ms: list[int]) -> None:
    _atomic_write(path, format_mahimahi(times_ms))


def constant_rate_trace(kbps: float, duration_ms: int = 1000,
                        opportunity_bytes: int = MAHIMAHI_OPPORTUNITY_BYTES) -> list[int]:
    """Opportunity times of a constant ``kbps`` kbit/s link over about ``duration_ms``.

    Opportunity ``k`` (from 1) falls at ``round(k / per_ms)``; the loop period
    is the last one, so the looped mean rate is ``K * opportunity_bytes * 8 / last``.
    """
    per_ms = kbps / 8.0 / opportunity_bytes  # opportunities per ms
    k_total = max(1, round(per_ms * duration_ms))
    return [max(1, round(k / per_ms)) for k in range(1, k_total + 1)]


# ------------------------------------------------------------------ CSV ---

def parse_csv_rates(text: str, path: str | Path = "<trace>") -> tuple[list[float], list[float]]:
    """(times in ms, rates in kbit/s) of a ``t_ms,kbps`` text; :class:`TraceError` names ``path:line``."""
    times: list[float] = []
    rates: list[float] = []
    lines = text.splitlines()
    if not lines:
        raise TraceError(path, 1, "empty file (expected header 't_ms,kbps')")
    header = tuple(h.strip() for h in lines[0].split(","))
    if header != CSV_HEADER:
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


def read_csv_rates(path: str | Path) -> tuple[list[float], list[float]]:
    """Read a ``t_ms,kbps`` CSV; returns (times in ms, rates in kbit/s)."""
    path = Path(path)
    try:
        text = _read_bytes(path).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TraceError(path, None, f"not UTF-8 text ({exc.reason})") from None
    return parse_csv_rates(text, path)


def format_csv_rates(times_ms: list[float], kbps: list[float]) -> bytes:
    if not times_ms or len(times_ms) != len(kbps):
        raise ValueError("need matching, non-empty times and rates")
    if times_ms[0] != 0 or any(b < a for a, b in zip(times_ms, times_ms[1:])) or min(kbps) < 0:
        raise ValueError("t_ms must start at 0 and be non-decreasing; kbps must be >= 0")
    lines = [",".join(CSV_HEADER)] + [f"{t:.10g},{r:.10g}" for t, r in zip(times_ms, kbps)]
    return ("\n".join(lines) + "\n").encode("utf-8")


def write_csv_rates(path: str | Path, times_ms: list[float], kbps: list[float]) -> None:
    _atomic_write(path, format_csv_rates(times_ms, kbps))


# ------------------------------------------------------------ schedules ---

def csv_schedule(path: str | Path, loop: bool = True):
    """A CSV rate schedule; when looping, the period is the last row's time plus the last step."""
    from hilbed.nodes.link.schedule import PiecewiseRate
    times, rates = read_csv_rates(path)
    period = times[-1] + (times[-1] - times[-2]) if len(times) > 1 else 1000.0
    try:
        return PiecewiseRate([t / 1000 for t in times], [r * 1000 for r in rates], period_s=period / 1000, loop=loop)
    except ValueError as exc:
        raise TraceError(path, None, str(exc)) from None


def load_mahimahi_schedule(path: str | Path, loop: bool = True,
                           opportunity_bytes: int = MAHIMAHI_OPPORTUNITY_BYTES):
    from hilbed.nodes.link.schedule import OpportunitySchedule
    return OpportunitySchedule(read_mahimahi(path), opportunity_bytes=opportunity_bytes, loop=loop,
                               name=Path(path).name)


def load_schedule(path: str | Path, loop: bool = True, opportunity_bytes: int = MAHIMAHI_OPPORTUNITY_BYTES):
    """A :class:`CapacitySchedule` from a trace file: ``.csv`` = rate schedule, else Mahimahi."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        return csv_schedule(path, loop=loop)
    return load_mahimahi_schedule(path, loop=loop, opportunity_bytes=opportunity_bytes)
