"""A record claims only what was applied and measured: latency parts, counts from the data, host load, unapplied
conditions and run events, against the hand-made run tests/data/analysis/loaded-run (numbers in its README)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest
from test_report_build import tables  # noqa: E402 (same directory)

from hilbed.analysis import plots
from hilbed.analysis.checks import watchdog_warnings
from hilbed.analysis.load import load_events, load_manifest, load_run
from hilbed.analysis.metrics import encode_overhead, latency_parts_ns, reference_jpeg, summary, with_latency
from hilbed.analysis.report import build_report
from hilbed.analysis.runlog import host_loads, overloads, run_marks, unapplied
from hilbed.analysis.styles import StyleRegistry

DATA = Path(__file__).resolve().parents[1] / "data" / "analysis"
LOADED = DATA / "loaded-run"
TINY = DATA / "tiny-run"
T0 = 1_800_000_100_000_000_000
PARTS = ["wait", "encode", "queue", "transmit", "decode", "infer", "return"]


@pytest.fixture(scope="module")
def lat() -> pd.DataFrame:
    return with_latency(load_run(LOADED))


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    return build_report([LOADED], tmp_path_factory.mktemp("loaded-report"))


def _row(d: pd.DataFrame, label: str, k: int) -> pd.Series:
    return d[(d.codec_label == label) & (d.t_arrival_ns == T0 + k * 10**9)].iloc[0]


# ---------------------------------------------------------------- latency parts ---

def test_encode_is_the_codec_and_waiting_is_its_own_part(lat):
    r = _row(lat, "jpeg-q90", 4)
    assert [r[f"{c}_ms"] for c in PARTS] == pytest.approx([8.2, 0.3, 3.0, 1100.0, 1.0, 4.0, 20.0])
    assert r.e2e_ms == pytest.approx(1136.5)
    # what the old breakdown called "encode" (arrival -> encoded) is 8.5 ms of which the codec took 0.3
    assert r.wait_ms + r.encode_ms == pytest.approx(8.5)
    s = summary(lat).set_index("codec_label")
    assert s.loc["jpeg-q90", "encode_p50_ms"] == pytest.approx(0.3)
    assert s.loc["jpeg-q90", "wait_p50_ms"] == pytest.approx(8.2)
    assert s.loc["jpeg-q90", "queue_p50_ms"] == pytest.approx(2.5)
    assert s.loc["jpeg-q75", "wait_p95_ms"] == pytest.approx(0.2 + 0.9 * 8.0)     # 0.1, 0.2, 8.2
    assert s.loc["jpeg-q75", "transmit_p50_ms"] == pytest.approx(700.0)
    # goodput over the time on the link: (2500 + 3000 + 3000) B * 8 / 3.299 s
    assert s.loc["jpeg-q75", "goodput_kbps"] == pytest.approx(8500 * 8 / 3.299 / 1e3)


def test_parts_sum_to_e2e_exactly_per_record(lat):
    ns = latency_parts_ns(load_run(LOADED))
    replied = ns["e2e_ns"].notna()
    assert replied.sum() == 5
    assert (sum(ns.loc[replied, f"{c}_ns"] for c in PARTS) == ns.loc[replied, "e2e_ns"]).all()
    assert list(ns.loc[replied, "e2e_ns"]) == [625_900_000, 734_900_000, 2_025_000_000, 935_500_000, 1_136_500_000]
    lost = _row(lat, "jpeg-q90", 5)
    assert (lost.wait_ms, lost.encode_ms, lost.queue_ms) == pytest.approx((8.2, 0.3, 2.5)) and pd.isna(lost.e2e_ms)


def test_encode_overhead_table_by_hand(lat):
    t, ref = encode_overhead(lat)
    assert ref == "jpeg-q75"
    t = t.set_index("codec_label")
    q75, q90 = t.loc["jpeg-q75"], t.loc["jpeg-q90"]
    assert (q75.encode_p50_ms, q75.encode_p95_ms) == pytest.approx((0.2, 0.29))       # 0.2, 0.2, 0.3
    assert (q90.encode_p50_ms, q90.wait_p50_ms, q90.queue_p50_ms) == pytest.approx((0.3, 8.2, 2.5))
    assert (q75.bytes_mean, q90.bytes_mean) == (3000, 4500)
    assert (q90.encode_vs_ref, q90.bytes_vs_ref) == pytest.approx((1.5, 1.5))
    assert (q75.encode_vs_ref, q75.bytes_vs_ref) == (1.0, 1.0)
    # the reference: quality 75, else the nearest (ties: the higher), else none
    only = lat[lat.codec_label == "jpeg-q90"]
    assert reference_jpeg(only) == "jpeg-q90"
    pair = pd.DataFrame({"codec": ["jpeg", "jpeg", "webp"], "codec_label": ["a", "b", "c"],
                         "codec_params": ['{"quality": 70}', '{"quality": 80}', '{"quality": 75}']})
    assert reference_jpeg(pair) == "b"
    t, ref = encode_overhead(lat.assign(codec="webp"))
    assert ref is None and t["encode_vs_ref"].isna().all()


def test_breakdown_figure_stacks_the_seven_parts(lat, tmp_path):
    with plt.rc_context({"svg.fonttype": "none"}):  # text as text, so the legend can be read back
        fig = plots.latency_breakdown(lat, tmp_path, StyleRegistry.from_frame(lat))
    assert "wait (hatched" in fig.caption and "add up to its end-to-end latency" in fig.caption
    svg = (tmp_path / "latency_breakdown.svg").read_text()
    legend = re.findall(r">(\w+) \(p50\)</text>", svg)
    assert legend == PARTS


# ------------------------------------------------------------------ manifest facts ---

def test_host_loads_and_unapplied_from_the_manifest():
    m = load_manifest(LOADED)
    hs = host_loads(m)
    assert [(h.host, h.when) for h in hs] == [("vm (controller)", "before"), ("vm (controller)", "after"),
                                              ("client-1", "before"), ("client-1", "after"), ("jammer", "before")]
    assert [(h.host, h.when, h.load1, h.cpus) for h in overloads(m)] == [("vm (controller)", "before", 3.42, 2),
                                                                          ("client-1", "after", 4.5, 4)]
    (u,) = unapplied(m)
    assert (u.condition, u.records, u.t_end_ns - u.t_start_ns) == ("lpwan-37k5", 1, 1_400_000_000)
    # the runner writes measured: null when nothing was measured
    assert unapplied({"unapplied": [{"condition": "c", "measured": None}]})[0].measured == "nothing"


def test_run_marks_from_events():
    marks = run_marks(load_events(LOADED))
    assert [(m.category, m.kind, round((m.t_ns - T0) / 1e9, 1)) for m in marks] == [
        ("watchdog", "jammer_stopped", 1.5), ("resume", "resumed", 2.9), ("incident", "incident", 5.3),
        ("reconnect", "reconnect_retry", 5.8), ("reconnect", "recovered", 7.0)]
    assert marks[2].text == "trial bbbb000000000002 interrupted (attempt 1): edge: ssh channel closed"
    # the jammer's own report and the controller's heartbeat tell of one stop: one warning
    ev = load_events(LOADED) + [{"t_ns": T0 + 2_000_000_000, "kind": "jammer_lapsed", "node": "jammer",
                                 "condition": "lpwan-37k5", "reason": "watchdog"}]
    assert len(watchdog_warnings(ev)) == 1


# ------------------------------------------------------------------------- report ---

def test_report_opens_with_a_red_notice_for_conditions_not_applied(report):
    html = report.read_text(encoding="utf-8")
    body = html[html.index("<body>"):]
    assert body.index('id="unapplied"') < body.index('id="warnings"') < body.index('id="summary"')
    notice = re.search(r'<div class="unapplied" id="unapplied" role="alert">(.*?)</div>', html, re.S).group(1)
    assert ("lpwan-20270102-000000-0002: condition &#39;lpwan-37k5&#39;: jamming asked light (2 Mbit/s), measured "
            "0 Mbit/s; reason: the jammer stopped by its watchdog (no heartbeat for 5.2 s); 2027-01-15 08:01:41.500 "
            "- 08:01:42.900 UTC (1.4 s); 1 record(s) concerned") in notice
    assert re.search(r"\.unapplied \{[^}]*border: 2px solid #c00", html)
    rows = tables(html)["summary-table"]
    assert [r[1] for r in rows[1:]] == ["lpwan-37k5 †", "lpwan-37k5 †"]
    assert "finish it with `hilbed resume`" not in html   # complete_unapplied is finished, not interrupted
    md = (report.parent / "summary.md").read_text(encoding="utf-8")
    assert md.startswith("> [!CAUTION]\n> **Conditions not applied as asked**")
    assert "> - lpwan-20270102-000000-0002: condition 'lpwan-37k5': jamming asked light" in md


def test_report_counts_records_from_the_data(report, tmp_path):
    assert "records" not in load_manifest(LOADED)          # as `hilbed run` had it when it built the report
    html = report.read_text(encoding="utf-8")
    assert "(complete_unapplied, 6 of 6 images)" in html and "None" not in html.split("<h2")[0]
    # a manifest that says something else does not win either
    run = tmp_path / "tiny"
    shutil.copytree(TINY, run)
    m = json.loads((run / "manifest.json").read_text())
    m["records"], m["plan"] = 600, {"images": 600}
    (run / "manifest.json").write_text(json.dumps(m))
    html = build_report([run], tmp_path / "r", figures=False).read_text(encoding="utf-8")
    assert "(complete, 8 of 600 images)" in html and "8 of 600 planned image records" in html


def test_report_warns_about_the_overloaded_hosts_and_shows_their_facts(report):
    html = report.read_text(encoding="utf-8")
    warns = "\n".join(re.findall(r'<div class="warn">(.*?)</div>', html, re.S))
    assert ("lpwan-20270102-000000-0002: timing ran on an overloaded host: vm (controller) before the run: load "
            "average 3.42 over 1 min on 2 CPU(s) (1.42 above the CPU count, 1.71x); 3 other busy process(es); "
            "client-1 after the run: load average 4.50 over 1 min on 4 CPU(s) (0.50 above the CPU count, 1.12x); 2 "
            "other busy process(es).") in warns
    assert "the jammer on node jammer stopped by its watchdog at 2027-01-15 08:01:41.500 UTC" in warns
    host = re.search(r"<dt>host</dt><dd>(.*?)</dd>", html, re.S).group(1).split("<br>")
    assert host[0].startswith("hostname vm, platform Linux-6.1.0-x86_64, cpus 2")
    assert host[1] == ("vm (controller) before: load 3.42/2.10/1.05 (1/5/15 min) on 2 CPU(s), governor powersave, "
                       "3 other busy process(es); OVERLOADED")
    assert host[5] == "jammer before: load 0.10/0.10/0.10 (1/5/15 min) on 4 CPU(s), governor ondemand, 0 other busy " \
        "process(es)"


def test_report_lists_run_events_and_draws_them(report):
    html = report.read_text(encoding="utf-8")
    assert "1 incident, 2 reconnects, 1 jammer watchdog stop, 1 resume." in html
    ev = tables(html)["events-table"]
    assert [r[2:4] for r in ev[1:]] == [["+1.5 s", "jammer watchdog stop"], ["+2.9 s", "resume"],
                                        ["+5.3 s", "incident"], ["+5.8 s", "reconnect"], ["+7.0 s", "reconnect"]]
    assert ev[3][4:] == ["edge", "trial bbbb000000000002 interrupted (attempt 1): edge: ssh channel closed"]
    cap = re.search(r'<figure id="fig-timeline">.*?<figcaption>(.*?)</figcaption>', html, re.S).group(1)
    assert ("Dash-dot lines: 1 incident (red), 2 reconnects (orange), 1 jammer watchdog stop (purple), 1 resume "
            "(green)") in cap
    assert "Red hatched band: &#39;lpwan-37k5&#39; (jamming) not applied as asked." in cap


def test_timeline_draws_events_where_they_happened(lat):
    _, d = plots._first_run(lat)
    marks, spans = run_marks(load_events(LOADED)), unapplied(load_manifest(LOADED))
    fig, _ = plots._timeline_axes(d, StyleRegistry.from_frame(lat), None, "t", zoom=False, marks=marks, spans=spans)
    try:
        ax2 = fig.axes[1]
        lines = {ln.get_label(): ln.get_xdata()[0] for ln in ax2.lines if not ln.get_label().startswith("_")}
        assert lines["incident"] == pytest.approx(5.3) and lines["resume"] == pytest.approx(2.9)
        assert lines["jammer watchdog stop"] == pytest.approx(1.5) and lines["reconnect"] == pytest.approx(5.8)
        (band,) = [p for p in ax2.patches if p.get_label() == "not applied as asked"]
        # a Rectangle (matplotlib >= 3.9) or a Polygon (older)
        xs = [band.get_x(), band.get_x() + band.get_width()] if hasattr(band, "get_width") else band.get_xy()[:, 0]
        assert min(xs) == pytest.approx(1.5) and max(xs) == pytest.approx(2.9)
    finally:
        plt.close(fig)
    # a trial's close-up shows only what fell within it: trial A (0..2 s) has the watchdog stop, not the incident
    trial = d[d.codec_label == "jpeg-q75"]
    vm, vs = plots.visible_marks(trial, marks, spans)
    assert [m.category for m in vm] == ["watchdog", "resume"] and len(vs) == 1


def test_csvs_carry_the_parts_and_claims(report):
    out = report.parent
    s = pd.read_csv(out / "summary.csv")
    for c in ("wait_p50_ms", "queue_p95_ms", "e2e_p99_ms", "e2e_p90_claim_ms", "miss_claim_max"):
        assert c in s.columns, c
    assert s.loc[s.codec_label == "jpeg-q90", "wait_p50_ms"].iloc[0] == pytest.approx(8.2)
    lt = pd.read_csv(out / "latency.csv")
    assert list(lt[lt.codec_label == "jpeg-q90"].component) == PARTS + ["e2e"]
    q = lt[(lt.codec_label == "jpeg-q90") & (lt.component == "queue")].iloc[0]
    assert (q.n, q.p50_ms, q.mean_ms) == (3, pytest.approx(2.5), pytest.approx(2.5))
    enc = pd.read_csv(out / "encode_overhead.csv")
    assert list(enc.reference.unique()) == ["jpeg-q75"] and list(enc.encode_vs_ref) == pytest.approx([1.0, 1.5])
    t = tables(report.read_text(encoding="utf-8"))
    assert t["encode-table"][2] == ["jpeg-q90", "jpeg", "3", "0.30", "0.30", "8.20", "8.20", "2.50", "4500", "1.50x",
                                    "1.50x"]
    assert t["claims-table"][2][3:] == ["1", "need 64 (n=3)", "need 130 (n=3)", "need 662 (n=3)", "≤ 94.1%"]


def test_a_shaped_link_late_at_p99_is_a_warning():
    from hilbed.analysis.checks import release_warnings
    ok = {"kind": "link_stats", "node": "client-1", "result": {"late_release_ms_p99": 0.2, "releases_timed": 900}}
    late = {"kind": "link_stats", "node": "client-2",
            "result": {"late_release_ms_p99": 3.5, "releases_timed": 900, "realtime_priority": False}}
    (w,) = release_warnings([ok, late, {"kind": "link_stats", "result": None}])
    assert "client-2" in w and "3.50 ms late at p99 without real-time priority" in w


def test_what_was_asked_and_not_delivered_is_a_warning():
    """AMP the edge ignored, relay updates that did not arrive, node files not fetched: each a report warning;
    a run that got what it asked for has none."""
    from hilbed.analysis.checks import delivery_warnings
    ok = {"edge_batching": {"max_batch": 8, "amp": True, "amp_applied": True},
          "medium_relay": {"c": {"client-1": {"updates": 12, "failed": 0}}}}
    assert delivery_warnings([ok], [{"kind": "link_stats"}]) == []
    bad = {"edge_batching": {"amp": True, "amp_applied": False, "amp_note": "device cpu"},
           "medium_relay": {"c": {"client-1": {"updates": 3, "failed": 2, "error": "timed out"}},
                            "d": {"client-2": {"updates": 0, "failed": 0}}}}
    ev = [{"kind": "node_file_not_fetched", "node": "client-1", "path": "/w/runs/r/link.log", "error": "ENOENT"}]
    w = delivery_warnings([bad], ev)
    assert len(w) == 4
    assert "AMP" in w[0] and "device cpu" in w[0]
    assert "2 jammer load update(s) failed to reach client-1" in w[1] and "timed out" in w[1]
    assert "client-2" in w[2] and "0 arrived" in w[2]
    assert "/w/runs/r/link.log on client-1 was not fetched" in w[3]
