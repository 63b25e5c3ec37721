"""The timeline's link capacity comes from the run directory (the link logs the links wrote), never from trace files."""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest

from hilbed.analysis import plots
from hilbed.analysis.load import load_run
from hilbed.analysis.metrics import with_latency
from hilbed.analysis.styles import StyleRegistry
from hilbed.nodes.link.linklog import LinkLogWriter, read_capacity, read_linklog
from hilbed.nodes.link.medium import MediumScaledSchedule
from hilbed.nodes.link.schedule import OpportunitySchedule

DATA = Path(__file__).resolve().parents[1] / "data" / "analysis"
sys.path.insert(0, str(DATA))
import synth  # noqa: E402

COND = ("trace-jammed", "heavy", 150.0, 0.5)
CLIENT = "client-1"
INIT_MS = synth.T0_NS // 1_000_000 - 100  # the link opened 100 ms before the first image
# 150-byte opportunities every ms for half of each second, none in the other half; the jammer takes half
BASE = OpportunitySchedule(list(range(1, 501)) + [1000], 150)


def _run(tmp_path: Path, rate_kbps: float | None = None) -> Path:
    run_id = "capacity-run"
    recs = synth.records(run_id, n_images=12, codecs=synth.CODECS[:1], conditions=[COND])
    for r in recs:
        r.update(link_kind="trace", link_rate_kbps=rate_kbps, trace_name="gone.up")
    return synth.write_run(tmp_path / run_id, recs,
                           synth.manifest(run_id, 12, len(recs), codecs=synth.CODECS[:1], conditions=[COND]))


def _write_log(run: Path, t_end_s: float = 2.5, load: float = 0.5, cond: str = COND[0]) -> Path:
    """What ShapedLink writes on a jammed link (capacity after jamming), closed at ``t_end_s``."""
    sched = MediumScaledSchedule(BASE, lambda: 1 - load, lambda: 0.0)
    path = plots.link_log_path(run, CLIENT, cond)
    w = LinkLogWriter(path, "uplink", sched, trace_name=sched.describe(), init_unix_ms=INIT_MS)
    w.arrival(0.2, 500)
    w.departure(0.25, 500, 0.2)
    w.close(t_end_s)
    return path


def _frame(run: Path):
    df = with_latency(load_run(run))
    return df, StyleRegistry.from_frame(df)


def test_capacity_is_what_the_link_log_says(tmp_path):
    run = _run(tmp_path)
    path = _write_log(run)
    t, kbps = plots.link_capacity(run, CLIENT, COND[0], bin_s=0.1)
    per_bin = read_linklog(path).per_bin(100)["capacity"]
    assert len(t) == len(kbps) == 25  # bins up to the link's close (2.5 s)
    assert list(np.round(kbps * 100 / 8).astype(int)) == [per_bin.get(k, 0) for k in range(len(kbps))]
    assert t[0] == pytest.approx(INIT_MS / 1000) and np.allclose(np.diff(t), 0.1)
    # the served capacity after jamming (75 B per opportunity), not the trace's 150 B, and no 1500-byte guess
    assert kbps.sum() * 100 / 8 == pytest.approx(0.5 * BASE.bytes_until(2.5))
    assert kbps[1] == pytest.approx(75 * 100 * 8 / 100) and kbps[7] == 0
    assert read_capacity(path, 100).bytes == [per_bin.get(k, 0) for k in range(len(kbps))]
    # a link the jammer silenced has no capacity lines at all: zero until it closed, not a missing curve
    _write_log(run, load=1.0, cond="silenced")
    t, kbps = plots.link_capacity(run, CLIENT, "silenced", bin_s=0.1)
    assert len(kbps) == 25 and not kbps.any()


def test_the_timeline_draws_the_link_log(tmp_path):
    run = _run(tmp_path)
    _write_log(run)
    df, styles = _frame(run)
    _, d = plots._first_run(df)
    fig, notes = plots._timeline_axes(d, styles, run, "t", zoom=False)
    try:
        (line,) = [ln for ln in fig.axes[0].lines if ln.get_label() == "link capacity"]
        x, y = np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)
    finally:
        plt.close(fig)
    assert notes == []
    bin_s = 0.15  # the timeline bins capacity like throughput: one stream period
    t, kbps = plots.link_capacity(run, CLIENT, COND[0], bin_s=bin_s)
    xs = t - synth.T0_NS / 1e9
    te = (d["t_arrival_ns"].max() - synth.T0_NS) / 1e9 + bin_s
    keep = (xs + bin_s > 0) & (xs < te)
    assert np.allclose(y[:-1], kbps[keep]) and np.allclose(x[1:-1], xs[keep][1:])
    assert x[0] == 0.0 and x[-1] == pytest.approx(min(xs[keep][-1] + bin_s, te))


def test_no_log_no_curve_and_the_figure_says_so(tmp_path):
    run = _run(tmp_path)  # a trace link without a link log (e.g. a remote client): nothing to draw
    df, styles = _frame(run)
    fig = plots.timeline(df, tmp_path / "out", styles, {}, run_dirs=[run])
    assert "No capacity curve for trace-jammed: no logs/link-client-1-trace-jammed.log in the run directory" \
        in fig.caption
    fig = plots.timeline(df, tmp_path / "out", styles, {})
    assert "No capacity curve for trace-jammed: no run directory given" in fig.caption


def test_a_constant_rate_is_drawn_without_a_log(tmp_path):
    run = _run(tmp_path, rate_kbps=64.0)
    df, styles = _frame(run)
    _, d = plots._first_run(df)
    fig, notes = plots._timeline_axes(d, styles, run, "t", zoom=False)
    try:
        (line,) = [ln for ln in fig.axes[0].lines if ln.get_label() == "link capacity"]
        assert list(line.get_ydata()) == [64.0, 64.0] and notes == []
    finally:
        plt.close(fig)
