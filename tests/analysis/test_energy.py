"""Energy per image and per correct image (energy-run, numbers by hand in tests/data/analysis/README.md)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from hilbed.analysis import plots
from hilbed.analysis.load import load_run
from hilbed.analysis.metrics import summary, with_latency
from hilbed.analysis.report import build_report
from hilbed.analysis.styles import StyleRegistry

DATA = Path(__file__).resolve().parents[1] / "data" / "analysis"
ENERGY = DATA / "energy-run"
TINY = DATA / "tiny-run"


@pytest.fixture(scope="module")
def summ() -> pd.DataFrame:
    return summary(load_run(ENERGY)).set_index(["codec_label", "condition"])


def test_energy_per_image_and_per_correct_image_by_hand(summ):
    r = summ.loc[("jpeg-q10", "c1")]
    assert (r["energy_n"], r["energy_encode_mj_mean"], r["energy_tx_mj_mean"]) == (2, 15.0, 35.0)
    assert r["energy_mj_mean"] == pytest.approx(50.0)
    assert r["energy_per_correct_mj"] == pytest.approx(100.0)  # 100 mJ spent, one correct
    assert summ.loc[("webp-q50", "c1"), "energy_per_correct_mj"] == pytest.approx(50.0)
    assert summ.loc[("webp-q50", "c1"), "power_missed_sum"] == 2


def test_an_image_without_transmit_energy_is_left_out_not_counted_as_zero(summ):
    r = summ.loc[("jpeg-q10", "c2")]
    assert r["energy_n"] == 1
    assert r["energy_encode_mj_mean"] == pytest.approx(11.0)  # both encodes are known
    assert r["energy_mj_mean"] == pytest.approx(60.0)         # only the image with both parts
    assert r["energy_per_correct_mj"] == pytest.approx(60.0)
    assert r["power_flagged_sum"] == 3
    assert r["power_idle_mw_mean"] == pytest.approx(2800.0)


def test_no_correct_image_costs_infinite_energy_per_correct(summ):
    assert math.isinf(summ.loc[("webp-q50", "c2"), "energy_per_correct_mj"])


def test_runs_without_energy_have_null_energy_columns():
    s = summary(load_run(TINY))
    assert (s["energy_n"] == 0).all()
    assert s["energy_mj_mean"].isna().all() and s["energy_per_correct_mj"].isna().all()


def test_accuracy_vs_energy_figure_and_its_skip(tmp_path):
    lat = with_latency(load_run(ENERGY))
    fig = plots.accuracy_vs_energy(lat, tmp_path, StyleRegistry.from_frame(lat))
    assert fig.name == "accuracy_vs_energy" and fig.png.stat().st_size > 0
    tiny = with_latency(load_run(TINY))
    with pytest.raises(plots.SkipPlot, match="no energy"):
        plots.accuracy_vs_energy(tiny, tmp_path, StyleRegistry.from_frame(tiny))


def test_report_has_the_energy_table_csv_and_warnings(tmp_path):
    out = tmp_path / "rep"
    build_report([ENERGY], out)
    csv = pd.read_csv(out / "summary.csv")
    row = csv[(csv.codec_label == "jpeg-q10") & (csv.condition == "c1")].iloc[0]
    assert row["energy_per_correct_mj"] == pytest.approx(100.0)
    md = (out / "summary.md").read_text()
    assert "**Energy per image**" in md
    assert "| jpeg-q10 | c1 | 2 | 2 | 15.00 | 35.00 | 50.00 | 100.00 | 50.0 | 2700 | 10 | 0 | 0 |" in md
    assert "none correct" in md
    assert "3 implausible power sample(s)" in md
    assert "missed 2 sample(s)" in md
    assert "1 of 8 image(s) lack an encode or transmit energy" in md
    html = (out / "index.html").read_text()
    assert 'id="energy-table"' in html and "accuracy_vs_energy" in html


def test_report_without_energy_has_no_energy_section(tmp_path):
    out = tmp_path / "rep"
    build_report([TINY], out, figures=False)
    assert "Energy per image" not in (out / "summary.md").read_text()
    assert 'id="energy-table"' not in (out / "index.html").read_text()
