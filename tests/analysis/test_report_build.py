"""Reports: every figure written, numbers in the tables checked by hand, warnings, the CLI."""

from __future__ import annotations

import glob
import json
import re
import shutil
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest

from hilbed.analysis.report import build_report

DATA = Path(__file__).resolve().parents[1] / "data" / "analysis"
TINY = DATA / "tiny-run"
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(DATA))
import synth  # noqa: E402

ALL_FIGURES = ["latency_breakdown", "accuracy_vs_jamming", "accuracy_vs_deadline", "rate_accuracy", "latency_cdf",
               "miss_heatmap", "accuracy_vs_energy", "timeline", "timeline_trial"]


class Tables(HTMLParser):
    """Rows of every <table id=...> in a page, as lists of cell texts."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._t = self._row = self._cell = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self._t = dict(attrs).get("id", f"t{len(self.tables)}")
            self.tables[self._t] = []
        elif tag == "tr" and self._t:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append(self._cell.strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[self._t].append(self._row)
            self._row = None
        elif tag == "table":
            self._t = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def tables(html: str) -> dict[str, list[list[str]]]:
    p = Tables()
    p.feed(html)
    return p.tables


@pytest.fixture(scope="module")
def synthetic_report(tmp_path_factory) -> Path:
    return synth.cached_report(tmp_path_factory, n_images=20)


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory) -> Path:
    return build_report([TINY], tmp_path_factory.mktemp("tiny-report"))


def test_every_figure_exists_as_png_and_svg(synthetic_report):
    out = synthetic_report.parent
    for name in ALL_FIGURES:
        png, svg = out / f"{name}.png", out / f"{name}.svg"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert png.stat().st_size > 5000, name
        assert ET.parse(svg).getroot().tag.endswith("svg"), name
    html = synthetic_report.read_text(encoding="utf-8")
    assert html.count('src="data:image/png;base64,') == len(ALL_FIGURES)
    assert "skipped" not in html
    for f in ("summary.csv", "latency.csv", "summary.md"):
        assert (out / f).stat().st_size > 100


def test_report_is_self_contained(synthetic_report):
    html = synthetic_report.read_text(encoding="utf-8")
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert "<script" not in html and "<link" not in html and "@import" not in html
    srcs = re.findall(r'<img src="([^"]+)"', html)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)


def test_synthetic_summary_matches_the_records(synthetic_report):
    """Every row of the table against a plain-Python count over trials.jsonl."""
    run = synthetic_report.parent.parent
    recs = [json.loads(line) for line in (run / "trials.jsonl").read_text().splitlines()]
    rows = tables(synthetic_report.read_text(encoding="utf-8"))["summary-table"][1:]
    assert len(rows) == 15
    for row in rows:
        cell = [r for r in recs if r["codec_label"] == row[0] and r["condition"] == row[1]]
        n = len(cell)
        assert row[2] == str(n)
        assert row[3] == f"{100 * sum(r['correct1'] for r in cell) / n:.1f}"
        assert row[5] == f"{100 * sum(r['correct5'] for r in cell) / n:.1f}"
        assert row[6] == f"{sum(r['bytes_total'] for r in cell) / n:.0f}"
        assert row[11] == f"{100 * sum(not r['deadline_met'] for r in cell) / n:.1f}"


def test_tiny_report_numbers_by_hand(tiny_report):
    html = tiny_report.read_text(encoding="utf-8")
    t = tables(html)
    head, a, b = t["summary-table"]
    assert head[:4] == ["codec", "condition", "n", "top-1 %"]
    assert a == ["jpeg-q10", "c1", "4", "50.0", "15.0-85.0", "75.0", "525", "450", "85.7", "36.0", "97.8", "25.0",
                 "4.00"]
    assert b == ["webp-q50", "c1", "4", "75.0", "30.1-95.4", "75.0", "250", "185", "128.7", "27.0", "27.9", "25.0",
                 "4.00"]
    lat = t["latency-table"]
    assert lat[0][2:5] == ["wait p50 / p95", "encode p50 / p95", "queue p50 / p95"]
    # encode (the codec alone) 2.5, 1.5, 3.5, 1.5 ms: p95 = 2.5 + 0.85 * (3.5 - 2.5); 0.5 ms wait before it
    assert lat[1][:6] == ["jpeg-q10", "c1", "0.50 / 0.50", "2.00 / 3.35", "0.00 / 0.00", "26.00 / 86.10"]
    assert lat[1][-1] == "36.0 / 97.8"
    # four images a cell: no tail claim, the images each needs instead
    claims = t["claims-table"]
    assert claims[0][4:7] == ["e2e p90 (need 64)", "e2e p95 (need 130)", "e2e p99 (need 662)"]
    assert claims[1] == ["jpeg-q10", "c1", "4", "0", "need 64 (n=4)", "need 130 (n=4)", "need 662 (n=4)", "≤ 85.9%"]
    # the record count is the data's (8), the run's state line says so
    assert "(complete, 8 of 8 images)" in html
    md = (tiny_report.parent / "summary.md").read_text(encoding="utf-8")
    assert "| jpeg-q10 | c1 | 4 | 50.0 | 15.0-85.0 | 75.0 | 525 | 450 | 85.7 | 36.0 | 97.8 | 25.0 | 4.00 |" in md


def test_tiny_report_warnings_and_notes(tiny_report):
    html = tiny_report.read_text(encoding="utf-8")
    warns = re.findall(r'<div class="warn">(.*?)</div>', html, re.S)
    text = "\n".join(warns)
    assert re.search(r"clock uncertainty \(±3\.000 ms.*exceeds the median return latency", text)
    assert "clock offset of client-1 moved by 4.000 ms" in text
    assert "jamming level &#39;light&#39; reached 4.00 Mbit/s on average, below its target of 8 Mbit/s (50%)" in text
    assert "2 of 2 cells have fewer than 30 images" in text
    assert "webp-q50 &gt; jpeg-q10 by 25.0 points" in text
    assert "1 image(s) got no reply from the edge; first: edge connection lost" in text
    # single jamming level and deadline: those figures are skipped with a note, the rest exist
    assert "accuracy vs jamming skipped: only one jamming level in the data (light)" in html
    assert "accuracy vs deadline skipped: only one deadline in the data (100 ms)" in html
    out = tiny_report.parent
    assert not (out / "accuracy_vs_jamming.png").exists()
    assert "accuracy vs energy skipped: no energy in the records (no power meter on the clients)" in html
    assert not (out / "accuracy_vs_energy.png").exists()
    for name in set(ALL_FIGURES) - {"accuracy_vs_jamming", "accuracy_vs_deadline", "accuracy_vs_energy"}:
        assert (out / f"{name}.png").exists() and (out / f"{name}.svg").exists()
    # manifest facts
    assert "feedfacefeedfacefeedfacefeedfacefeedface" in html
    assert "client-1: before: -0.001 ms ± 1.500 ms" in html
    assert "client-1: client via local (local), radio spinel on emulated ch 15" in html


def _pct(sorted_v: list[float], q: float) -> float:
    pos = (len(sorted_v) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(sorted_v) - 1)
    return sorted_v[lo] + (sorted_v[hi] - sorted_v[lo]) * (pos - lo)


def test_real_quickstart_run(tmp_path):
    runs = sorted(glob.glob(str(REPO / "runs" / "quickstart-*")))
    runs = [r for r in runs if (Path(r) / "trials.jsonl").exists()]
    if not runs:
        pytest.skip("no quickstart run in runs/ (`make run` makes one)")
    run = Path(runs[-1])
    index = build_report([run], tmp_path / "report")
    recs = {}
    for line in (run / "trials.jsonl").read_text().splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        recs[(r["trial_id"], r["client"], r["image_index"])] = r
    rows = tables(index.read_text(encoding="utf-8"))["summary-table"][1:]
    assert rows
    for row in rows:
        cell = [r for r in recs.values() if r["codec_label"] == row[0] and r["condition"] == row[1]]
        n = len(cell)
        e2e = sorted((r["t_result_ns"] - r["t_arrival_ns"]) / 1e6 for r in cell if r["t_result_ns"] is not None)
        assert row[2] == str(n)
        assert row[3] == f"{100 * sum(r['correct1'] for r in cell) / n:.1f}"
        assert row[6] == f"{sum(r['bytes_total'] for r in cell) / n:.0f}"
        assert row[9] == f"{_pct(e2e, 50):.1f}" and row[10] == f"{_pct(e2e, 95):.1f}"
        assert row[11] == f"{100 * sum(not r['deadline_met'] for r in cell) / n:.1f}"
    for name in ("latency_breakdown", "rate_accuracy", "latency_cdf", "miss_heatmap", "timeline", "timeline_trial"):
        assert (tmp_path / "report" / f"{name}.png").exists()


def test_cli_report(tmp_path, capsys):
    from hilbed.orchestrator.cli.main import main
    run = tmp_path / "tiny"
    shutil.copytree(TINY, run)
    assert main(["report", str(run), "--markdown", "--by", "jamming_level", "--no-figures"]) == 0
    out = capsys.readouterr().out
    assert "| light | 8 | 62.5 |" in out and (run / "report" / "index.html").exists()
    assert not list((run / "report").glob("*.png"))
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert main(["report", str(run), "--by", "nope", "-o", str(tmp_path / "x")]) == 2


def test_style_registry_one_colour_per_variant_one_marker_per_family():
    from hilbed.analysis.styles import PALETTE, StyleRegistry
    fams = {"jpeg-q10": "jpeg", "jpeg-q50": "jpeg", "jpeg-q90": "jpeg", "pjpeg-q90": "jpeg-progressive",
            "webp-q50": "webp", "png": "png", "pnc-64": "pnc", "starfish": "starfish", "deepcod": "deepcod"}
    reg = StyleRegistry(fams, fams)
    colours = [reg.style(lb)["color"] for lb in fams]
    assert len(set(colours)) == 9 and set(colours) <= set(PALETTE)
    assert len({reg.style(lb)["marker"] for lb in ("jpeg-q10", "jpeg-q50", "jpeg-q90")}) == 1
    assert reg.style("jpeg-q10")["marker"] != reg.style("webp-q50")["marker"]
    assert StyleRegistry(reversed(list(fams)), fams).style("png") == reg.style("png")  # order does not matter


def test_jammer_target_from_the_jammers_own_report():
    """Built-in levels have no target in the scenario: the jammer's resolved level (events.jsonl) gives it."""
    from hilbed.analysis.checks import jammer_warnings
    from hilbed.analysis.load import load_run
    df = load_run(TINY)
    assert jammer_warnings(df, [{}]) == []  # no target known: nothing to compare with
    ev = [{"kind": "jammer_level", "node": "jammer", "condition": "c1",
           "result": {"level": "light", "params": {"bitrate_mbps": 4.2}, "load": 0.3, "mbps": 4.0}}]
    assert jammer_warnings(df, [{}], ev) == []  # 4.0 of 4.2 is within 90%
    ev[0]["result"]["params"]["bitrate_mbps"] = 14.0
    (w,) = jammer_warnings(df, [{}], ev)
    assert "below its target of 14 Mbit/s (29%)" in w
    unmeasured = df.assign(jammer_mbps=None, jammer_load=None)
    (w,) = jammer_warnings(unmeasured, [{}])
    assert "requested but no jammer load was measured" in w
