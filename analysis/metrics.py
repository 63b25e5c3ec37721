"""Metrics over per-image records: accuracy, latency components, misses, bytes.

Groups are formed by any record field (``by``); the default is one row per
codec variant x condition. Percentiles use numpy's linear interpolation over
the images that got a reply; proportions carry a Wilson 95% interval.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from .schema import E2E, LATENCY_COMPONENTS, LATENCY_PARTS
from .stats import EARLY_STOP_CONFIDENCE, binom_upper, early_stop_claim, wilson

GROUP = ["codec_label", "condition"]

#: summary column -> meaning (``docs/analysis.md`` lists these)
SUMMARY_COLUMNS: dict[str, str] = {
    "n": "images (records) in the group",
    "top1": "top-1 accuracy, fraction 0..1 (an image not decoded counts as wrong)",
    "top1_lo": "lower end of the Wilson 95% interval of top1",
    "top1_hi": "upper end of the Wilson 95% interval of top1",
    "top5": "top-5 accuracy, fraction 0..1",
    "top5_lo": "lower end of the Wilson 95% interval of top5",
    "top5_hi": "upper end of the Wilson 95% interval of top5",
    "miss_rate": "fraction of images whose bytes did not all reach the edge by the deadline (no reply counts as a miss)",
    "miss_lo": "lower end of the Wilson 95% interval of miss_rate",
    "miss_hi": "upper end of the Wilson 95% interval of miss_rate",
    "decoded_rate": "fraction of images the edge could decode (progressive codecs decode partial prefixes)",
    "no_reply": "images that got no reply (error set); they are left out of the latency percentiles",
    "bytes_mean": "mean encoded bytes per image (bytes_total)",
    "bytes_delivered_mean": "mean payload bytes that reached the edge by the deadline",
    "delivered_frac": "sum(bytes_delivered) / sum(bytes_total)",
    "goodput_kbps": "payload goodput, kbit/s: sum(bytes_delivered) * 8 / sum(time on the link, t_tx_start -> t_edge_close)",
    "e2e_p50_ms": "median end-to-end latency (arrival -> result), ms",
    "e2e_p95_ms": "95th percentile end-to-end latency, ms",
    "e2e_p10_ms": "10th percentile end-to-end latency, ms",
    "e2e_p90_ms": "90th percentile end-to-end latency, ms",
    "e2e_p99_ms": "99th percentile end-to-end latency, ms",
    "e2e_p90_claim_ms": "the p90 of e2e latency is at most this at 99% confidence (MLPerf LoadGen early stopping: an "
                        "order statistic; images without a reply count as infinitely late); null: too few images",
    "e2e_p95_claim_ms": "as e2e_p90_claim_ms for the p95",
    "e2e_p99_claim_ms": "as e2e_p90_claim_ms for the p99",
    "miss_claim_max": "the miss rate is at most this at 99% confidence (one-sided binomial bound, the test of "
                      "LoadGen's early stopping)",
    "<component>_p50_ms": "median of a latency component (wait, encode, queue, transmit, decode, infer, return), ms",
    "<component>_p95_ms": "95th percentile of a latency component, ms",
    "deadline_ms": "the group's deadline (median if it mixes several), ms",
    "jammer_load_mean": "mean measured jammer load, fraction of air time 0..1 (null: not measured)",
    "jammer_mbps_mean": "mean measured jammer throughput, Mbit/s (null: not measured)",
    "clock_uncertainty_ms": "largest clock-offset uncertainty of the group's records (client + edge), ms",
}

#: energy columns of the summary (``docs/energy.md`` lists these); null where the records carry no energy
ENERGY_COLUMNS: dict[str, str] = {
    "energy_n": "images with both an encode and a transmit energy (the energy means below are over these)",
    "energy_encode_mj_mean": "mean client energy of encoding per image, mJ",
    "energy_tx_mj_mean": "mean transmit energy per image, mJ",
    "energy_mj_mean": "mean energy per image, encode + transmit, mJ",
    "energy_per_correct_mj": "energy of all measured images / those correct by the deadline (top-1 right from what "
                             "reached the edge by the deadline), mJ; inf: none correct",
    "power_idle_mw_mean": "mean idle baseline of the client measured before the condition, mW",
    "power_samples_sum": "meter samples inside the images' encode and transmit windows",
    "power_missed_sum": "samples the meter's rate promised in those windows that did not come",
    "power_flagged_sum": "implausible samples (negative, above the meter's range) left out of the energy",
}


def _ms(d: pd.DataFrame, a: str, b: str) -> pd.Series:
    """(b - a) in ms, computed on exact integers, null when either end is null."""
    diff = d[b].astype("Int64") - d[a].astype("Int64")
    return diff.astype("float64") / 1e6


#: percentiles with an early-stopping claim in the summary
CLAIM_PERCENTILES = (90, 95, 99)


def _ns(d: pd.DataFrame, a: str, b: str) -> pd.Series:
    """(b - a) in ns as exact nullable integers."""
    return d[b].astype("Int64") - d[a].astype("Int64")


def latency_parts_ns(df: pd.DataFrame) -> pd.DataFrame:
    """The latency parts and e2e in integer nanoseconds (``<part>_ns``); per record they sum to ``e2e_ns``."""
    out = {f"{name}_ns": _ns(df, a, b) for name, (a, b, _) in LATENCY_PARTS.items()}
    out["e2e_ns"] = _ns(df, *E2E)
    return pd.DataFrame(out, index=df.index)


def with_latency(df: pd.DataFrame) -> pd.DataFrame:
    """Add latency columns in ms: the parts of :data:`~hilbed.analysis.schema.LATENCY_PARTS` and ``e2e_ms``.

    wait (arrival -> encoding starts: the client still busy with earlier
    images), encode (the codec alone), queue (encoded -> the link takes the
    first byte), transmit (on the link, up to END or the deadline), decode,
    infer, return. They chain, so they add up to e2e per record; differences
    are taken on exact integers, then converted.
    """
    d = df.copy()
    ns = latency_parts_ns(df)
    for col in ns.columns:
        d[col[:-3] + "_ms"] = ns[col].astype("float64") / 1e6
    return d


def _flag(s: pd.Series) -> np.ndarray:
    """A boolean column with nulls read as False."""
    return s.astype("boolean").fillna(False).to_numpy(dtype=bool)


def _num(s: pd.Series) -> np.ndarray:
    return pd.to_numeric(s, errors="coerce").astype("float64").to_numpy(dtype="float64", na_value=np.nan)


def _pct(v: np.ndarray, q: float) -> float:
    v = v[~np.isnan(v)]
    return float(np.percentile(v, q)) if len(v) else math.nan


def _mean(v: np.ndarray) -> float:
    v = v[~np.isnan(v)]
    return float(v.mean()) if len(v) else math.nan


def group_row(g: pd.DataFrame) -> dict:
    """The summary numbers of one group of records (``g`` has the with_latency columns)."""
    n = len(g)
    c1, c5 = _flag(g["correct1"]), _flag(g["correct5"])
    met = _flag(g["deadline_met"])
    k1, k5, miss = int(c1.sum()), int(c5.sum()), int(n - met.sum())
    lo1, hi1 = wilson(k1, n)
    lo5, hi5 = wilson(k5, n)
    mlo, mhi = wilson(miss, n)
    bt, bd = _num(g["bytes_total"]), _num(g["bytes_delivered"])
    link_s = _num(g["transmit_ms"]) / 1e3
    ok = ~np.isnan(bd) & ~np.isnan(link_s) & (link_s > 0)
    e2e = _num(g["e2e_ms"])
    row = {
        "n": n,
        "top1": k1 / n if n else math.nan, "top1_lo": lo1, "top1_hi": hi1,
        "top5": k5 / n if n else math.nan, "top5_lo": lo5, "top5_hi": hi5,
        "miss_rate": miss / n if n else math.nan, "miss_lo": mlo, "miss_hi": mhi,
        "decoded_rate": float(_flag(g["decoded"]).mean()) if n else math.nan,
        "no_reply": int(g["error"].notna().sum()),
        "bytes_mean": _mean(bt), "bytes_delivered_mean": _mean(bd),
        "delivered_frac": float(np.nansum(bd) / np.nansum(bt)) if np.nansum(bt) > 0 else math.nan,
        "goodput_kbps": float(bd[ok].sum() * 8 / link_s[ok].sum() / 1e3) if ok.any() else math.nan,
        "e2e_p10_ms": _pct(e2e, 10), "e2e_p50_ms": _pct(e2e, 50), "e2e_p90_ms": _pct(e2e, 90),
        "e2e_p95_ms": _pct(e2e, 95), "e2e_p99_ms": _pct(e2e, 99),
    }
    for q in CLAIM_PERCENTILES:
        c = early_stop_claim(e2e, q / 100)
        row[f"e2e_p{q}_claim_ms"] = c.bound if c.claimable else math.nan
    row["miss_claim_max"] = binom_upper(miss, n, EARLY_STOP_CONFIDENCE)
    for c in LATENCY_COMPONENTS:
        v = _num(g[f"{c}_ms"])
        row[f"{c}_p50_ms"] = _pct(v, 50)
        row[f"{c}_p95_ms"] = _pct(v, 95)
    dl = _num(g["deadline_ms"])
    row["deadline_ms"] = float(np.nanmedian(dl)) if (~np.isnan(dl)).any() else math.nan
    row["jammer_load_mean"] = _mean(_num(g["jammer_load"]))
    row["jammer_mbps_mean"] = _mean(_num(g["jammer_mbps"]))
    unc = _num(g["clock_uncertainty_ns"])
    row["clock_uncertainty_ms"] = float(np.nanmax(unc)) / 1e6 if (~np.isnan(unc)).any() else math.nan
    row.update(energy_row(g))
    return row


def _col(g: pd.DataFrame, name: str) -> np.ndarray:
    return _num(g[name]) if name in g.columns else np.full(len(g), np.nan)


def has_energy(df: pd.DataFrame) -> bool:
    """Whether any record carries an encode or transmit energy (runs before the power meter carry none)."""
    return any(c in df.columns and df[c].notna().any() for c in ("energy_encode_mj", "energy_tx_mj"))


def energy_row(g: pd.DataFrame) -> dict:
    """The energy columns of one group (:data:`ENERGY_COLUMNS`).

    An image counts only with both parts measured: a flagged or missing window
    would otherwise make a codec look cheap. Per correct image divides the
    energy of every measured image (wrong ones cost energy too) by the correct ones among them.
    """
    enc, tx = _col(g, "energy_encode_mj"), _col(g, "energy_tx_mj")
    both = ~np.isnan(enc) & ~np.isnan(tx)
    n = int(both.sum())
    total = enc[both] + tx[both]
    correct = int(_flag(g["correct1"])[both].sum()) if "correct1" in g.columns else 0
    s = lambda c: int(np.nansum(_col(g, c))) if (~np.isnan(_col(g, c))).any() else math.nan  # noqa: E731
    return {"energy_n": n, "energy_encode_mj_mean": _mean(enc), "energy_tx_mj_mean": _mean(tx),
            "energy_mj_mean": float(total.mean()) if n else math.nan,
            "energy_per_correct_mj": (float(total.sum()) / correct if correct else math.inf) if n else math.nan,
            "power_idle_mw_mean": _mean(_col(g, "power_idle_mw")),
            "power_samples_sum": s("power_samples"), "power_missed_sum": s("power_missed"),
            "power_flagged_sum": s("power_flagged")}


def summary(df: pd.DataFrame, by: list[str] | str | None = None) -> pd.DataFrame:
    """One row per group (default codec variant x condition), groups in first-seen order.

    Columns: the ``by`` fields, then :data:`SUMMARY_COLUMNS`. Any record field
    can group (``jamming_level``, ``deadline_ms``, ``link_rate_kbps``,
    ``client``, ``run_id``, ...); a null key forms its own group.
    """
    by = [by] if isinstance(by, str) else list(by or GROUP)
    missing = [b for b in by if b not in df.columns]
    if missing:
        raise KeyError(f"unknown grouping field(s): {', '.join(missing)}")
    if len(df) == 0:
        return pd.DataFrame(columns=by + [c for c in SUMMARY_COLUMNS if not c.startswith("<")] + list(ENERGY_COLUMNS))
    d = df if "e2e_ms" in df.columns else with_latency(df)
    rows = []
    for key, g in d.groupby(by, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(by, key)), **group_row(g)})
    return pd.DataFrame(rows)


def latency_table(df: pd.DataFrame, by: list[str] | None = None,
                  quantiles: tuple[float, ...] = (10, 50, 90, 95, 99)) -> pd.DataFrame:
    """Long table: one row per group x component (the parts plus e2e) with n and percentiles in ms."""
    by = list(by or GROUP)
    d = df if "e2e_ms" in df.columns else with_latency(df)
    rows = []
    for key, g in d.groupby(by, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        for comp in (*LATENCY_COMPONENTS, "e2e"):
            v = _num(g[f"{comp}_ms"])
            v = v[~np.isnan(v)]
            rows.append({**dict(zip(by, key)), "component": comp, "n": len(v),
                         "mean_ms": float(v.mean()) if len(v) else math.nan,
                         **{f"p{q:g}_ms": _pct(v, q) for q in quantiles}})
    return pd.DataFrame(rows)


def throughput_series(df: pd.DataFrame, bin_s: float = 0.5, t0_ns: int | None = None) -> pd.DataFrame:
    """Payload delivered per time bin (kbit/s), each image's bytes spread evenly over its time on the link.

    Returns columns t_s (bin start, seconds since ``t0_ns``; default the first
    arrival) and kbps.
    """
    d = df.dropna(subset=["t_tx_start_ns", "t_edge_close_ns"])
    if len(d) == 0:
        return pd.DataFrame({"t_s": [], "kbps": []})
    t0 = int(t0_ns if t0_ns is not None else pd.to_numeric(df["t_arrival_ns"]).min())
    start = (_num(d["t_tx_start_ns"].astype("Int64") - t0)) / 1e9
    end = (_num(d["t_edge_close_ns"].astype("Int64") - t0)) / 1e9
    end = np.maximum(end, start + 1e-6)
    b = np.nan_to_num(_num(d["bytes_delivered"]))
    edges = np.arange(0.0, float(end.max()) + bin_s, bin_s)
    delivered = _delivered_by(edges, start, end, b)
    bits = np.clip(np.diff(delivered), 0.0, None) * 8
    return pd.DataFrame({"t_s": edges[:-1], "kbps": bits / bin_s / 1e3})


def _delivered_by(t: np.ndarray, start: np.ndarray, end: np.ndarray, nbytes: np.ndarray) -> np.ndarray:
    """Bytes delivered by each time in ``t``, each image's bytes arriving at a constant rate over [start, end).

    Computed from sorted start and end times with cumulative sums: O((images + times) log images) time and
    O(images + times) memory. An image-by-bin matrix needed 23 GB for a 60,000-image, 20-minute run.
    """
    rate = nbytes / (end - start)

    def upto(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sums of rate and of rate x point over the images whose point is <= each t."""
        o = np.argsort(points, kind="stable")
        k = np.searchsorted(points[o], t, side="right")
        r = np.concatenate(([0.0], np.cumsum(rate[o])))
        rp = np.concatenate(([0.0], np.cumsum(rate[o] * points[o])))
        return r[k], rp[k]

    r_started, rp_started = upto(start)
    r_ended, rp_ended = upto(end)
    # sum over started images of rate x (t - start), minus the same over ended ones from their end on
    return t * (r_started - r_ended) - (rp_started - rp_ended)


#: the JPEG quality the encode-overhead table compares other codecs with (Pillow's default)
REFERENCE_JPEG_QUALITY = 75


def _quality(params) -> float:
    try:
        q = json.loads(params).get("quality") if isinstance(params, str) else None
        return float(q) if q is not None else math.nan
    except (ValueError, AttributeError, TypeError):
        return math.nan


def reference_jpeg(df: pd.DataFrame, quality: float = REFERENCE_JPEG_QUALITY) -> str | None:
    """The plain-JPEG variant to compare codecs with: quality ``quality``, else the nearest (ties: the higher)."""
    if len(df) == 0:
        return None
    j = df[df["codec"].astype(str) == "jpeg"][["codec_label", "codec_params"]].drop_duplicates("codec_label")
    best = None
    for label, params in j.itertuples(index=False, name=None):
        q = _quality(params)
        if q != q:
            continue
        key = (abs(q - quality), -q)
        if best is None or key < best[0]:
            best = (key, str(label))
    return best[1] if best else None


def encode_overhead(df: pd.DataFrame, quality: float = REFERENCE_JPEG_QUALITY) -> tuple[pd.DataFrame, str | None]:
    """Per codec variant over all its records: the codec's own encode time, the client's waiting, bytes.

    Like the PNC paper's overhead table: what a codec costs on the client,
    apart from the link. ``*_vs_ref`` divide by the reference JPEG variant
    (:func:`reference_jpeg`); they are null without one. Returns (table, reference label).
    """
    cols = ["codec_label", "codec", "n", "encode_p50_ms", "encode_p95_ms", "encode_mean_ms", "wait_p50_ms",
            "wait_p95_ms", "queue_p50_ms", "bytes_mean", "encode_vs_ref", "bytes_vs_ref"]
    if len(df) == 0:
        return pd.DataFrame(columns=cols), None
    d = df if "encode_ms" in df.columns else with_latency(df)
    rows = []
    for label, g in d.groupby("codec_label", sort=False, dropna=False):
        enc, wait, queue = _num(g["encode_ms"]), _num(g["wait_ms"]), _num(g["queue_ms"])
        rows.append({"codec_label": label, "codec": g["codec"].iloc[0], "n": int((~np.isnan(enc)).sum()),
                     "encode_p50_ms": _pct(enc, 50), "encode_p95_ms": _pct(enc, 95), "encode_mean_ms": _mean(enc),
                     "wait_p50_ms": _pct(wait, 50), "wait_p95_ms": _pct(wait, 95), "queue_p50_ms": _pct(queue, 50),
                     "bytes_mean": _mean(_num(g["bytes_total"]))})
    t = pd.DataFrame(rows, columns=cols[:-2])
    ref = reference_jpeg(d, quality)
    if ref is not None:
        r = t[t["codec_label"].astype(str) == ref].iloc[0]
        with np.errstate(divide="ignore", invalid="ignore"):
            t["encode_vs_ref"] = t["encode_p50_ms"] / r["encode_p50_ms"] if r["encode_p50_ms"] > 0 else math.nan
            t["bytes_vs_ref"] = t["bytes_mean"] / r["bytes_mean"] if r["bytes_mean"] > 0 else math.nan
    else:
        t["encode_vs_ref"] = math.nan
        t["bytes_vs_ref"] = math.nan
    return t, ref
