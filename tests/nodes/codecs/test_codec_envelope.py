"""Bytes vs JPEG's best envelope at equal top-1 (nodes/codecs/fitting/envelope.py), on synthetic curves."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hilbed.nodes.codecs.fitting.envelope import (
    compare_to_envelope,
    describe,
    envelope,
    log_bytes_at,
    ratio_vs_envelope,
)


def curve(codec, scale=1.0, accs=np.linspace(0.40, 0.85, 19), **params):
    # a concave accuracy-vs-log-bytes curve: top-1 = 0.9 - 0.5 exp(-(log b - 4)), i.e. log b = 4 - log((0.9 - a) / 0.5)
    return [{"codec": codec, "label": f"{codec}{i}", "params": dict(params, quality=i), "top1": float(a),
             "bytes_payload": scale * math.exp(4 - math.log((0.9 - a) / 0.5))} for i, a in enumerate(accs)]


def test_known_ratio_is_recovered():
    jpeg = curve("jpeg")
    for k in (0.8, 0.5, 1.25):
        c = ratio_vs_envelope(curve("grace", k), jpeg)
        assert c["ratio"] == pytest.approx(k, rel=1e-9)
        assert c["min"] == pytest.approx(k) and c["max"] == pytest.approx(k)
        assert (c["lo"], c["hi"], c["coverage"]) == pytest.approx((0.70, 0.82, 1.0))


def test_envelope_is_best_of_all_jpeg_variants_and_drops_dominated_points():
    a = curve("jpeg", subsampling="4:2:0")
    b = curve("jpeg", 1.3, subsampling="4:4:4")               # everywhere worse: contributes nothing
    bad = [{"codec": "jpeg", "params": {}, "label": "q50", "top1": 0.70, "bytes_payload": 1e4}]  # dominated
    under = [{"codec": "jpeg", "params": {}, "label": "u", "top1": 0.75, "bytes_payload": 10.0 ** 9}]
    g = curve("grace", 0.8)
    cmp = compare_to_envelope(a + b + bad + under + g)
    assert cmp["grace"]["ratio"] == pytest.approx(0.8)
    # a JPEG point better than the curve lowers the envelope (and raises the ratio) where it is
    better = [{"codec": "jpeg-progressive", "params": {}, "label": "p", "top1": 0.76, "bytes_payload": 50.0}]
    assert compare_to_envelope(a + better + g)["grace"]["ratio"] > 0.8


def test_convex_hull_drops_a_point_under_the_chord_monotone_keeps_it():
    rows = [{"top1": 0.5, "bytes_payload": 100.0}, {"top1": 0.6, "bytes_payload": 200.0},
            {"top1": 0.9, "bytes_payload": 400.0}]
    # in log bytes the chord from 100 to 400 passes 0.7 at 200 bytes: 0.6 lies under it
    assert len(envelope(rows)) == 2 and len(envelope(rows, hull="monotone")) == 3
    env = envelope(rows)
    assert math.exp(log_bytes_at(env, 0.7)) == pytest.approx(200.0)
    assert np.isnan(log_bytes_at(env, 0.95))


def test_overlap_coverage_and_no_overlap():
    jpeg = curve("jpeg")
    g = curve("grace", 0.8, accs=np.linspace(0.40, 0.775, 16))  # JPEG's vertices up to 77.5 %
    c = ratio_vs_envelope(g, jpeg)
    assert c["ratio"] == pytest.approx(0.8)
    assert c["hi"] == pytest.approx(0.775) and c["coverage"] == pytest.approx(0.625)
    low = curve("grace", 0.8, accs=np.linspace(0.30, 0.60, 5))
    c = ratio_vs_envelope(low, jpeg)
    assert c["ratio"] is None and "no overlap" in describe("grace", c)
    assert compare_to_envelope(low) == {}                     # no JPEG rows, nothing to compare


def test_varying_ratio_is_the_geometric_mean_and_series_are_separate():
    jpeg = curve("jpeg")
    accs = np.linspace(0.40, 0.85, 91)
    g = curve("grace", 1.0, accs=accs, colour="bt601")
    for r in g:  # ratio 0.6 below 76 %, 0.9 above: equal halves of 70-82 %
        r["bytes_payload"] *= 0.6 if r["top1"] < 0.76 - 1e-9 else 0.9
    other = curve("grace", 0.7, colour="gyuv")
    # the codec's own convex hull would bridge the step; the monotone front keeps it
    cmp = compare_to_envelope(jpeg + g + other, hull="monotone")
    assert set(cmp) == {"grace(colour=bt601)", "grace(colour=gyuv)", "grace (all)"}
    assert cmp["grace(colour=gyuv)"]["ratio"] == pytest.approx(0.7)
    assert cmp["grace(colour=bt601)"]["ratio"] == pytest.approx(math.sqrt(0.6 * 0.9), rel=0.02)
    assert cmp["grace (all)"]["ratio"] <= cmp["grace(colour=gyuv)"]["ratio"] + 1e-9
    assert "0.700x" in describe("g", cmp["grace(colour=gyuv)"])
