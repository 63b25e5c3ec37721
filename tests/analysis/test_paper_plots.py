"""The seed-paper figures (analysis/paper_plots.py) on synthetic records with the record contract's columns."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from hilbed.analysis import paper_plots
from hilbed.analysis.metrics import with_latency
from hilbed.analysis.paper_plots import ADACOMPRESS_COLUMNS, adacompress_timeline, inferred_states
from hilbed.analysis.plots import SkipPlot
from hilbed.analysis.styles import StyleRegistry
from hilbed.nodes.record import FIELDS

N = 120
T0 = 1_800_000_000_000_000_000
PERIOD_NS = 30_000_000


def _trial(label: str, codec: str, params: dict, estimated, sizes, correct, trial_id: str) -> list[dict]:
    rows = []
    for k in range(N):
        r = {name: None for name in FIELDS}
        t = T0 + k * PERIOD_NS
        r.update(run_id="paper-adacompress-20270101-000000-abcd", trial_id=trial_id, scenario="paper-adacompress",
                 codec=codec, codec_label=label, codec_params=json.dumps(params, sort_keys=True), condition="direct",
                 jamming_level="none", link_kind="direct", deadline_ms=2000.0, period_ms=30.0, n_clients=1,
                 repetition=0, client="client-1", image_index=k, label=k % 10, bytes_total=int(sizes[k]),
                 header_bytes=37, bytes_delivered=int(sizes[k]), chunks_total=2 if estimated[k] else 1,
                 chunks_delivered=2 if estimated[k] else 1, t_arrival_ns=t, t_encode_start_ns=t + 100_000,
                 t_encode_end_ns=t + 600_000, t_tx_start_ns=t + 700_000, t_tx_end_ns=t + 900_000,
                 t_rx_end_ns=t + 1_000_000, t_edge_close_ns=t + 1_000_000, t_decode_end_ns=t + 1_200_000,
                 t_infer_end_ns=t + 4_000_000, t_result_ns=t + 4_500_000, deadline_met=True, decoded=True,
                 top1=k % 10 if correct[k] else (k + 1) % 10, correct1=bool(correct[k]), correct5=True)
        rows.append(r)
    return rows


def _frame(with_state: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    # untrained agent: retraining (every image estimated) for the first 40 images, then inference with a few estimates
    est = np.zeros(N, bool)
    est[:40] = True
    est[[55, 80, 81, 100]] = True
    ref = np.where(est, 330, 0)
    sizes = rng.integers(150, 260, N) + ref
    correct = rng.random(N) < np.where(np.arange(N) < 40, 0.6, 0.75)
    rows = _trial("adacompress-untrained", "adacompress", {"artifact": "none", "headers": "abbreviated"}, est, sizes,
                  correct, "t-untrained")
    rows += _trial("adacompress-frozen", "adacompress", {"learn": False, "headers": "abbreviated"}, np.zeros(N, bool),
                   rng.integers(200, 300, N), rng.random(N) < 0.7, "t-frozen")
    rows += _trial("jpeg-q75-abbr", "jpeg", {"quality": 75, "headers": "abbreviated"}, np.zeros(N, bool),
                   np.full(N, 333), rng.random(N) < 0.81, "t-q75")
    rows += _trial("jpeg-q30", "jpeg", {"quality": 30}, np.zeros(N, bool), np.full(N, 454), rng.random(N) < 0.65,
                   "t-q30")
    df = pd.DataFrame(rows)
    if with_state:
        state = np.where(df["codec"] == "adacompress", "inference", None).astype(object)
        state[:40] = "retraining"
        df["codec_state"] = state
    return with_latency(df)


def test_columns_are_record_fields():
    assert set(ADACOMPRESS_COLUMNS) <= set(FIELDS)
    assert paper_plots.STATE_COLUMN in FIELDS  # recorded by the client; older runs lack it and the figure infers it


def test_inferred_states_marks_long_runs_of_estimates():
    est = np.array([1] * 12 + [0, 1, 0] + [1] * 3 + [0], bool)
    s = inferred_states(est, run=10)
    assert list(s[:12]) == ["querying/retraining"] * 12
    assert set(s[12:]) == {"inference"}  # a lone estimate and a short run stay in inference


def test_adacompress_timeline_draws_png_and_svg(tmp_path):
    df = _frame()
    fig = adacompress_timeline(df, tmp_path, StyleRegistry.from_frame(df))
    assert fig.name == "adacompress_timeline"
    assert {p.suffix for p in fig.paths} == {".png", ".svg"}
    assert all(p.exists() and p.stat().st_size > 0 for p in fig.paths)
    assert "inferred" in fig.caption and "q75" in fig.caption
    assert "no benchmark line" not in fig.caption


def test_adacompress_timeline_uses_a_recorded_state(tmp_path):
    df = _frame(with_state=True)
    fig = adacompress_timeline(df, tmp_path, StyleRegistry.from_frame(df))
    assert "as recorded" in fig.caption


def test_adacompress_timeline_without_benchmark_notes_it(tmp_path):
    df = _frame()
    df = df[df["codec"] != "jpeg"]
    fig = adacompress_timeline(df, tmp_path, StyleRegistry.from_frame(df))
    assert "no benchmark line" in fig.caption


def test_adacompress_timeline_skips_without_adacompress(tmp_path):
    df = _frame()
    with pytest.raises(SkipPlot, match="no AdaCompress"):
        adacompress_timeline(df[df["codec"] == "jpeg"], tmp_path, StyleRegistry.from_frame(df))


def test_adacompress_timeline_skips_without_columns(tmp_path):
    df = _frame().drop(columns=["chunks_total"])
    with pytest.raises(SkipPlot, match="chunks_total"):
        adacompress_timeline(df, tmp_path, StyleRegistry.from_frame(df))


def test_registered_for_the_report():
    assert adacompress_timeline in paper_plots.ALL
