"""Mahimahi packet-delivery traces: reader, writer, schedule.

Format (what ``mm-link`` accepts): one integer per line, the millisecond
since trace start of one delivery opportunity (1504 bytes in Mahimahi;
configurable here); repeated values are several opportunities in that
millisecond; the values are non-decreasing and the last one must be > 0 (it
is also the loop period). Lines are split on ``\\n`` only. The reader
rejects what Mahimahi's ``LinkQueue`` rejects -- an empty line, a value
``strtol`` would not consume completely (trailing spaces, a CR from CRLF
files, comments, decimals), a value above ``INT_MAX``, a decreasing value,
an empty file, a trace ending at 0 -- and, on top of that, negative values
(Mahimahi would silently wrap them to huge unsigned times). Every error names
``file:line``.
"""

from __future__ import annotations

import re
from pathlib import Path

from .schedule import OpportunitySchedule
from .traces import TraceError

MAHIMAHI_OPPORTUNITY_BYTES = 1504
INT_MAX = 2**31 - 1
# strtol(base 10): optional leading isspace(), optional sign, digits -- and
# Mahimahi's myatoi() requires the whole string to be consumed.
_STRTOL = re.compile(rb"[ \t\n\v\f\r]*([+-]?)([0-9]+)")


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
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TraceError(path, None, "file not found") from None
    except IsADirectoryError:
        raise TraceError(path, None, "is a directory, not a trace file") from None
    return parse_mahimahi(data, path)


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
    data = format_mahimahi(times_ms)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def constant_rate_trace(kbps: float, duration_ms: int = 1000, opportunity_bytes: int = MAHIMAHI_OPPORTUNITY_BYTES) -> list[int]:
    """Opportunity times of a constant ``kbps`` kbit/s link over about ``duration_ms``.

    Opportunity ``k`` (from 1) falls at ``round(k / per_ms)``; the loop period
    is the last one, so the looped mean rate is ``K * opportunity_bytes * 8 / last``.
    """
    per_ms = kbps / 8.0 / opportunity_bytes  # opportunities per ms
    k_total = max(1, round(per_ms * duration_ms))
    out = [max(1, round(k / per_ms)) for k in range(1, k_total + 1)]
    return out


def load_mahimahi_schedule(path: str | Path, loop: bool = True,
                           opportunity_bytes: int = MAHIMAHI_OPPORTUNITY_BYTES) -> OpportunitySchedule:
    times = read_mahimahi(path)
    return OpportunitySchedule(times, opportunity_bytes=opportunity_bytes, loop=loop, name=Path(path).name)
