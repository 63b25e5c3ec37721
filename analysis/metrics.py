"""Metrics over per-image records: accuracy, latency components, misses."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .schema import LATENCY_COMPONENTS


def with_latency(df: pd.DataFrame) -> pd.DataFrame:
    """Add latency columns in ms; the five components add up to ``e2e_ms``.

    encode = arrival -> encode end (includes waiting when the client lags),
    transmit = encode end -> edge closes the message (queue + transmit +
    propagation, up to END or the deadline), decode, infer, return.
    """
    d = df.copy()
    ms = lambda a, b: (d[b].astype("float64") - d[a].astype("float64")) / 1e6  # noqa: E731
    d["encode_ms"] = ms("t_arrival_ns", "t_encode_end_ns")
    d["transmit_ms"] = ms("t_encode_end_ns", "t_edge_close_ns")
    d["decode_ms"] = ms("t_edge_close_ns", "t_decode_end_ns")
    d["infer_ms"] = ms("t_decode_end_ns", "t_infer_end_ns")
    d["return_ms"] = ms("t_infer_end_ns", "t_result_ns")
    d["e2e_ms"] = ms("t_arrival_ns", "t_result_ns")
    d["encode_only_ms"] = ms("t_encode_start_ns", "t_encode_end_ns")
    return d


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a proportion k/n."""
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, centre - half), min(1.0, centre + half))


GROUP = ["codec_label", "condition"]


def summary(df: pd.DataFrame, by: list[str] | None = None) -> pd.DataFrame:
    """Per group: n, top-1/top-5 (with Wilson 95% CI), bytes, p50/p95 e2e latency, miss rate."""
    by = by or GROUP
    d = with_latency(df)
    rows = []
    for key, g in d.groupby(by, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        n = len(g)
        k1, k5 = int(g["correct1"].fillna(False).sum()), int(g["correct5"].fillna(False).sum())
        lo1, hi1 = wilson(k1, n)
        miss = int((~g["deadline_met"].fillna(False).astype(bool)).sum())
        e2e = g["e2e_ms"].dropna()
        rows.append({
            **dict(zip(by, key)), "n": n,
            "top1": k1 / n, "top1_lo": lo1, "top1_hi": hi1, "top5": k5 / n,
            "bytes_mean": float(g["bytes_total"].mean()),
            "bytes_delivered_mean": float(g["bytes_delivered"].mean()),
            "e2e_p50_ms": float(np.percentile(e2e, 50)) if len(e2e) else math.nan,
            "e2e_p95_ms": float(np.percentile(e2e, 95)) if len(e2e) else math.nan,
            "miss_rate": miss / n,
            "decoded_rate": float(g["decoded"].fillna(False).mean()),
            **{f"{c}_p50_ms": float(g[f"{c}_ms"].median()) for c in LATENCY_COMPONENTS},
        })
    return pd.DataFrame(rows)
