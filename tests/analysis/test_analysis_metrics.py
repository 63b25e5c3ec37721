"""Metrics against numbers worked out by hand (tests/data/analysis/README.md) and published intervals."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hilbed.analysis.load import load_run
from hilbed.analysis.metrics import latency_table, summary, throughput_series, with_latency
from hilbed.analysis.stats import bootstrap_ci, newcombe_diff, paired_diff, percentile_stat, wilson

TINY = Path(__file__).resolve().parents[1] / "data" / "analysis" / "tiny-run"


@pytest.fixture(scope="module")
def tiny() -> pd.DataFrame:
    return load_run(TINY)


def test_wilson_matches_published_values():
    assert wilson(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)   # Newcombe (1998), Table II
    assert wilson(2, 4) == pytest.approx((0.1500, 0.8500), abs=1e-4)
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == 1.0
    assert all(math.isnan(x) for x in wilson(0, 0))


def test_newcombe_matches_published_values():
    # Newcombe (1998) "Interval estimation for the difference between independent proportions", method 10
    assert newcombe_diff(56, 70, 48, 80)[1:] == pytest.approx((0.0524, 0.3339), abs=1e-4)
    assert newcombe_diff(9, 10, 3, 10)[1:] == pytest.approx((0.1705, 0.8090), abs=1e-4)


def test_paired_interval_close_to_wald_for_large_n():
    # 1000 pairs: 400 both right, 60 only base, 20 only run; Wald: 0.04 +- 1.96*sqrt(78.4)/1000
    x1 = np.array([1] * 400 + [1] * 60 + [0] * 20 + [0] * 520, bool)
    x2 = np.array([1] * 400 + [0] * 60 + [1] * 20 + [0] * 520, bool)
    d, lo, hi = paired_diff(x1, x2)
    assert d == pytest.approx(0.04)
    assert lo == pytest.approx(0.04 - 1.96 * math.sqrt(78.4) / 1000, abs=2e-3)
    assert hi == pytest.approx(0.04 + 1.96 * math.sqrt(78.4) / 1000, abs=2e-3)
    # the paired interval is narrower than treating the runs as independent
    assert hi - lo < newcombe_diff(460, 1000, 420, 1000)[2] - newcombe_diff(460, 1000, 420, 1000)[1]


def test_bootstrap_is_reproducible_and_brackets_the_estimate():
    v = np.arange(100.0)
    a, b = bootstrap_ci(v, percentile_stat(95)), bootstrap_ci(v, percentile_stat(95))
    assert a == b
    est, lo, hi = a
    assert est == pytest.approx(94.05) and lo < est <= hi


def test_loading_keeps_last_write_and_skips_torn_line(tiny):
    assert len(tiny) == 8
    img1 = tiny[(tiny.codec_label == "jpeg-q10") & (tiny.image_index == 1)]
    assert len(img1) == 1 and not bool(img1.correct1.iloc[0])


PARTS = ["wait", "encode", "queue", "transmit", "decode", "infer", "return"]


def test_latency_components_add_up(tiny):
    from hilbed.analysis.metrics import latency_parts_ns
    from hilbed.analysis.schema import LATENCY_COMPONENTS
    assert list(LATENCY_COMPONENTS) == PARTS
    d = with_latency(tiny)
    ns = latency_parts_ns(tiny)
    ok = ns["e2e_ns"].notna()
    assert ok.sum() == 7
    # exactly, on integers: every record with a reply
    total = sum(ns.loc[ok, f"{c}_ns"] for c in PARTS)
    assert (total == ns.loc[ok, "e2e_ns"]).all()
    assert np.allclose(d.loc[ok, [f"{c}_ms" for c in PARTS]].sum(axis=1), d.loc[ok, "e2e_ms"])
    row = d[(d.codec_label == "jpeg-q10") & (d.image_index == 2)].iloc[0]
    assert [row[f"{c}_ms"] for c in PARTS] + [row.e2e_ms] == pytest.approx([0.5, 3.5, 0, 96, 2, 4, 2, 108])
    # no reply: the parts up to the link are there, the rest and e2e are null
    lost = d[d.error.notna()].iloc[0]
    assert (lost.wait_ms, lost.encode_ms, lost.queue_ms) == pytest.approx((0.5, 4.5, 0.0))
    assert all(pd.isna(lost[f"{c}_ms"]) for c in ("transmit", "decode", "infer", "return", "e2e"))


def test_summary_by_hand(tiny):
    s = summary(tiny).set_index("codec_label")
    assert list(s.index) == ["jpeg-q10", "webp-q50"]
    a, b = s.loc["jpeg-q10"], s.loc["webp-q50"]
    assert a.n == 4 and a.top1 == 0.5 and a.top5 == 0.75 and a.miss_rate == 0.25
    assert (a.top1_lo, a.top1_hi) == pytest.approx((0.15, 0.85), abs=1e-4)
    assert a.bytes_mean == 525 and a.bytes_delivered_mean == 450
    assert a.delivered_frac == pytest.approx(1800 / 2100)
    assert a.goodput_kbps == pytest.approx(1800 * 8 / 0.168 / 1000)
    assert a.e2e_p50_ms == pytest.approx(36.0) and a.e2e_p95_ms == pytest.approx(97.8)
    assert a.transmit_p50_ms == pytest.approx(26.0) and a.transmit_p95_ms == pytest.approx(86.1)
    # encode is the codec alone (2.5, 1.5, 3.5, 1.5 ms), the 0.5 ms before it is waiting
    assert a.encode_p50_ms == pytest.approx(2.0) and a.wait_p50_ms == pytest.approx(0.5)
    assert a.return_p50_ms == pytest.approx(2.0)
    assert a.decoded_rate == 0.75 and a.no_reply == 0
    assert b.top1 == 0.75 and (b.top1_lo, b.top1_hi) == pytest.approx((0.3006, 0.9544), abs=1e-4)
    assert b.miss_rate == 0.25 and b.no_reply == 1
    assert b.bytes_mean == 250 and b.bytes_delivered_mean == 185
    assert b.goodput_kbps == pytest.approx(740 * 8 / 0.046 / 1000)
    assert b.e2e_p50_ms == pytest.approx(27.0) and b.e2e_p95_ms == pytest.approx(27.9)
    assert b.encode_p50_ms == pytest.approx(4.5)
    # four images: no early-stopping claim on any tail percentile; 1 of 4 missed: the miss rate is at most the u
    # with P(Binomial(4, u) <= 1) = (1 - u)^4 + 4u(1 - u)^3 = 1%
    assert np.isnan(a.e2e_p90_claim_ms) and np.isnan(a.e2e_p99_claim_ms)
    u = a.miss_claim_max
    assert (1 - u) ** 4 + 4 * u * (1 - u) ** 3 == pytest.approx(0.01) and u == pytest.approx(0.8591, abs=1e-4)
    assert a.jammer_mbps_mean == 4.0 and a.jammer_load_mean == pytest.approx(0.3)
    assert a.clock_uncertainty_ms == pytest.approx(3.0) and a.deadline_ms == 100.0


def test_group_by_any_field(tiny):
    s = summary(tiny, ["jamming_level"])
    assert len(s) == 1 and s.n.iloc[0] == 8 and s.top1.iloc[0] == 5 / 8
    s = summary(tiny, "image_index").set_index("image_index")
    assert s.loc[2, "miss_rate"] == 1.0 and s.loc[0, "top1"] == 1.0
    with pytest.raises(KeyError, match="nope"):
        summary(tiny, ["nope"])


def test_latency_table_long_format(tiny):
    t = latency_table(tiny)
    e2e = t[(t.codec_label == "webp-q50") & (t.component == "e2e")].iloc[0]
    assert e2e.n == 3 and e2e.p50_ms == pytest.approx(27.0) and e2e.mean_ms == pytest.approx(82 / 3)
    assert list(t[t.codec_label == "webp-q50"].component) == PARTS + ["e2e"]
    q = t[(t.codec_label == "jpeg-q10") & (t.component == "encode")].iloc[0]
    assert q.n == 4 and q.p50_ms == pytest.approx(2.0) and q.mean_ms == pytest.approx(2.25)


def test_throughput_series_spreads_bytes_over_link_time():
    ns = 1_000_000
    df = pd.DataFrame({"t_arrival_ns": [0, 0], "t_tx_start_ns": [0, 500 * ns], "t_edge_close_ns": [1000 * ns, 1500 * ns],
                       "bytes_delivered": [1000, 500]})
    tp = throughput_series(df, bin_s=0.5)
    # bin 0-0.5 s: 500 B of image 0; 0.5-1 s: 500 B + 250 B; 1-1.5 s: 250 B
    assert list(tp.kbps) == pytest.approx([500 * 8 / 0.5 / 1e3, 750 * 8 / 0.5 / 1e3, 250 * 8 / 0.5 / 1e3])


def _dense_throughput_kbps(start_s, end_s, nbytes, bin_s):
    """The image-by-bin definition the series must equal (only for small inputs)."""
    edges = np.arange(0.0, float(end_s.max()) + bin_s, bin_s)
    lo, hi = edges[:-1], edges[1:]
    overlap = np.clip(np.minimum(hi[None, :], end_s[:, None]) - np.maximum(lo[None, :], start_s[:, None]), 0, None)
    return (overlap / (end_s - start_s)[:, None] * nbytes[:, None]).sum(axis=0) * 8 / bin_s / 1e3


def _random_transfers(n: int, span_s: float, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    start = np.sort(rng.uniform(0, span_s, n))
    dur = rng.choice([1e-6, 2e-3, 0.03, 0.4, 3.0], n)   # instantaneous to multi-bin, overlapping
    return pd.DataFrame({"t_arrival_ns": (start * 1e9).astype(np.int64),
                         "t_tx_start_ns": (start * 1e9).astype(np.int64),
                         "t_edge_close_ns": ((start + dur) * 1e9).astype(np.int64),
                         "bytes_delivered": rng.integers(0, 5000, n).astype(float)})


def test_throughput_series_matches_the_per_image_definition():
    df = _random_transfers(400, 30.0)
    tp = throughput_series(df, bin_s=0.05, t0_ns=0)
    s = df["t_tx_start_ns"].to_numpy() / 1e9
    e = np.maximum(df["t_edge_close_ns"].to_numpy() / 1e9, s + 1e-6)
    want = _dense_throughput_kbps(s, e, df["bytes_delivered"].to_numpy(), 0.05)
    assert len(tp) == len(want)
    assert np.allclose(tp.kbps.to_numpy(), want, rtol=1e-6, atol=1e-3)
    assert tp.kbps.sum() * 0.05 * 1e3 / 8 == pytest.approx(df["bytes_delivered"].sum(), rel=1e-6)


def test_throughput_series_memory_is_linear_in_images_and_bins():
    """A 60,000-image, 20-minute run drove the report to 23 GB (an image-by-bin matrix) and the OOM killer."""
    import tracemalloc
    df = _random_transfers(20_000, 500.0)            # 10,000 bins: a matrix would be 1.6 GB per array
    tracemalloc.start()
    try:
        tp = throughput_series(df, bin_s=0.05)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(tp) >= 10_000 and peak < 50e6


def test_summary_columns_are_documented():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "analysis.md").read_text(encoding="utf-8")
    from hilbed.analysis.metrics import SUMMARY_COLUMNS
    for col, meaning in SUMMARY_COLUMNS.items():
        assert f"| `{col}` | {meaning} |" in doc, col
    from hilbed.analysis.metrics import ENERGY_COLUMNS
    energy_doc = (Path(__file__).resolve().parents[2] / "docs" / "energy.md").read_text(encoding="utf-8")
    for col, meaning in ENERGY_COLUMNS.items():
        assert f"| `{col}` | {meaning} |" in energy_doc, col
    s = summary(load_run(TINY))
    from hilbed.analysis.schema import LATENCY_COMPONENTS
    expected = {c for c in SUMMARY_COLUMNS if not c.startswith("<")} | set(ENERGY_COLUMNS)
    expected |= {f"{c}_p{q}_ms" for c in LATENCY_COMPONENTS for q in (50, 95)}
    assert set(s.columns) == {"codec_label", "condition"} | expected
