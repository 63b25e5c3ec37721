"""Trace files (one module): Mahimahi as mm-link reads it, CSV rate schedules; errors name file:line."""

from __future__ import annotations

import pytest

from hilbed.nodes.link.schedule import OpportunitySchedule, PiecewiseRate
from hilbed.nodes.link.traces import (
    TraceError,
    constant_rate_trace,
    format_mahimahi,
    load_mahimahi_schedule,
    load_schedule,
    parse_csv_rates,
    read_csv_rates,
    read_mahimahi,
    write_csv_rates,
    write_mahimahi,
)


def test_every_shared_trace_is_accepted(shared_data):
    files = sorted((shared_data / "traces" / "mahimahi").iterdir())
    assert files, "no shared Mahimahi traces"
    for f in files:
        times = read_mahimahi(f)
        lines = f.read_bytes().count(b"\n")
        assert len(times) == lines
        assert times == sorted(times) and times[-1] > 0
        s = load_mahimahi_schedule(f)
        # average rate = lines * 12032 bit / last_ms (the data README's formula)
        assert s.mean_bps_per_period() == pytest.approx(lines * 12032 / (times[-1] / 1000))


@pytest.mark.parametrize("content, line, problem", [
    (b"1\n\n3\n", 2, "empty line"),
    (b"1\r\n2\r\n", 1, "carriage return"),
    (b"1\n2 \n", 2, "trailing whitespace"),
    (b"# comment\n1\n", 1, "comments are not allowed"),
    (b"1\n2.5\n", 2, "not an integer"),
    (b"5\n3\n", 2, "non-decreasing"),
    (b"0\n0\n", 2, "nonzero amount of time"),
    (b"", 1, "no valid timestamps"),
    (b"1\n2147483648\n", 2, "INT_MAX"),
    (b"-1\n5\n", 1, "negative"),
    (b"1\n   \n", 2, "whitespace-only"),
    (b"1\nabc\n", 2, "invalid integer"),
])
def test_malformed_traces_are_rejected_with_file_and_line(tmp_path, content, line, problem):
    p = tmp_path / "bad.up"
    p.write_bytes(content)
    with pytest.raises(TraceError) as ei:
        read_mahimahi(p)
    assert ei.value.line == line
    assert problem in ei.value.problem
    assert str(ei.value).startswith(f"{p}:{line}: ")
    with pytest.raises(TraceError):  # the scenario path goes through the same reader
        load_schedule(p)


@pytest.mark.parametrize("content, expected", [
    (b"1\n2\n3", [1, 2, 3]),            # no final newline: getline still reads the last line
    (b" 5\n+7\n", [5, 7]),               # strtol skips leading space and takes a sign
    (b"0\n0\n4\n4\n4\n", [0, 0, 4, 4, 4]),  # repeated values = several opportunities
    (b"2147483647\n", [2147483647]),
])
def test_what_mahimahi_accepts_is_accepted(tmp_path, content, expected):
    p = tmp_path / "ok.up"
    p.write_bytes(content)
    assert read_mahimahi(p) == expected


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(TraceError, match="file not found"):
        read_mahimahi(tmp_path / "nope.up")


def test_writer_round_trips_and_refuses_bad_input(tmp_path):
    p = tmp_path / "w.up"
    write_mahimahi(p, [0, 0, 3, 10])
    assert p.read_bytes() == b"0\n0\n3\n10\n"
    assert read_mahimahi(p) == [0, 0, 3, 10]
    for bad in ([], [3, 1], [0, 0], [1.5, 2]):
        with pytest.raises(ValueError):
            format_mahimahi(bad)


def test_constant_rate_trace_has_the_rate(tmp_path):
    times = constant_rate_trace(250, 2000, opportunity_bytes=116)
    s = OpportunitySchedule(times, 116)
    assert s.mean_bps_per_period() == pytest.approx(250_000, rel=0.01)
    # 500 kbit/s of 1504-byte opportunities is ~41.6 per second, not 500 lines
    assert len(constant_rate_trace(500, 1000)) == 42


def test_load_schedule_dispatches_on_extension(tmp_path):
    m = tmp_path / "t.up"
    m.write_text("1\n2\n")
    c = tmp_path / "t.csv"
    write_csv_rates(c, [0, 500], [100, 50])
    assert isinstance(load_schedule(m, opportunity_bytes=10), OpportunitySchedule)
    assert load_schedule(m, opportunity_bytes=10).opp == 10
    assert isinstance(load_schedule(c), PiecewiseRate)
    assert read_csv_rates(c) == ([0, 500], [100, 50])
    with pytest.raises(ValueError):
        write_csv_rates(c, [5, 1], [1, 1])


@pytest.mark.parametrize("text, line, problem", [
    ("t,kbps\n0,1\n", 1, "header must be"),
    ("t_ms,kbps\n0,1,2\n", 2, "expected 2 columns"),
    ("t_ms,kbps\n0,x\n", 2, "not numbers"),
    ("t_ms,kbps\n0,5\n10,-1\n", 3, ">= 0"),
    ("t_ms,kbps\n0,5\n10,1\n5,1\n", 4, "non-decreasing"),
    ("t_ms,kbps\n5,1\n", 2, "first row must be at t_ms 0"),
    ("t_ms,kbps\n# only a comment\n", 2, "no data rows"),
])
def test_csv_errors_name_file_and_line(tmp_path, text, line, problem):
    p = tmp_path / "bad.csv"
    p.write_text(text)
    with pytest.raises(TraceError) as ei:
        read_csv_rates(p)
    assert ei.value.line == line and problem in ei.value.problem and str(ei.value).startswith(f"{p}:{line}: ")
    with pytest.raises(TraceError):
        parse_csv_rates(text, "x.csv")


def test_trace_format_module_needs_only_the_standard_library():
    """Parsing traces must not pull numpy or the shaping code: the module imports stdlib only."""
    import ast
    import sys

    import hilbed.nodes.link.traces as traces
    tree = ast.parse(open(traces.__file__, encoding="utf-8").read())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = {(n.module if isinstance(n, ast.ImportFrom) else a.name).split(".")[0]
             for n in top for a in (n.names if isinstance(n, ast.Import) else [n])}
    assert names <= set(sys.stdlib_module_names) | {"__future__"}, names
