"""Fleets of clients: several clients streaming at once over one medium, one uplink and one edge.

A *cell* of the fleet views is (condition group, codec variant, number of
clients). A **condition group** is a condition with its client count stripped:
the record fields that describe the setup (:data:`GROUP_FIELDS`: testbed, link
kind, constant rate or trace, delay, jamming level, deadline, period), never the
condition's name, so ``radio-1c-heavy`` ... ``radio-8c-heavy`` form one curve
over 1, 2, 4, 8 clients.

Definitions (``docs/analysis.md`` has them too):

* **wall span** of a trial (all its clients together): last arrival - first
  arrival + one period (the last image's slot); a cell's span is the sum over
  its trials (repetitions, runs). With a regular stream the span is images per
  client x period, so the offered load is ``n_clients / period``.
* **goodput** (``goodput_img_s``): images that met the deadline (every byte at the
  edge in time) *and* were decoded, across all clients, per second of span.
  ``goodput_kbps``: payload bytes that reached the edge by the deadline
  (``bytes_delivered``, partial prefixes of progressive codecs included) x 8 per
  second of span. Per client the same count over the same span, so the
  clients' goodputs add up to the cell's.
* **Jain's fairness index** over the clients' goodput (images/s):
  ``J = (sum x)^2 / (n * sum x^2)``; 1.0 when every client gets the same, 1/n
  when one client gets everything. n is the condition's client count (a client
  with no record counts as 0); 1.0 for one client; null when no client
  delivered anything (nothing to share).
* **n_clients** of records from older runs (null): the number of distinct
  clients of the record's trial.

Reads records only; no orchestrator, no plotting.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import pandas as pd

from .metrics import _flag, _num, _pct, with_latency
from .stats import wilson

#: record fields that make a condition group (a condition with its client count stripped)
GROUP_FIELDS = ("testbed", "link_kind", "link_rate_kbps", "trace_name", "link_delay_ms", "jamming_level",
                "deadline_ms", "period_ms")
#: a cell of the fleet views
CELL = ["group", "codec_label", "n_clients"]

#: fleet table column -> meaning (``docs/analysis.md`` lists these)
FLEET_COLUMNS: dict[str, str] = {
    "group": "condition group: the setup without the client count (link, rate or trace, jamming, ...)",
    "codec_label": "codec variant",
    "n_clients": "clients streaming at once (the record's n_clients; older runs: distinct clients of the trial)",
    "conditions": "names of the conditions in the cell",
    "clients": "distinct clients with records in the cell",
    "trials": "trials (repetitions, runs) in the cell",
    "images": "image records in the cell (all clients)",
    "span_s": "wall span, s: per trial last arrival - first arrival + one period, summed over trials",
    "offered_img_s": "images offered per second of span (all clients)",
    "goodput_img_s": "images that met the deadline and were decoded, per second of span (all clients)",
    "goodput_kbps": "payload delivered by the deadline (bytes_delivered) x 8 per second of span, kbit/s",
    "miss_rate": "fraction of images whose bytes did not all reach the edge by the deadline",
    "miss_lo": "lower end of the Wilson 95% interval of miss_rate",
    "miss_hi": "upper end of the Wilson 95% interval of miss_rate",
    "top1": "top-1 accuracy, fraction 0..1 (an image not decoded counts as wrong)",
    "e2e_p50_ms": "median end-to-end latency over the images with a reply, ms",
    "e2e_p95_ms": "95th percentile end-to-end latency, ms",
    "jain": "Jain's fairness index over the clients' goodput (1: fair, 1/n: one client gets all)",
    "client_goodput_min": "lowest client goodput, images/s",
    "client_goodput_max": "highest client goodput, images/s",
    "batch_mean": "mean edge batch size over the images inferred (null: no batching recorded)",
    "batch_wait_p95_ms": "95th percentile of the time an image waited at the edge for its batch, ms",
}
#: per-client table column -> meaning
CLIENT_COLUMNS: dict[str, str] = {
    "group": FLEET_COLUMNS["group"], "codec_label": "codec variant", "n_clients": FLEET_COLUMNS["n_clients"],
    "client": "client node", "images": "image records of the client",
    "miss_rate": "fraction of the client's images that missed the deadline",
    "top1": "top-1 accuracy of the client's images",
    "e2e_p50_ms": "median end-to-end latency of the client's images, ms",
    "e2e_p95_ms": "95th percentile end-to-end latency of the client's images, ms",
    "goodput_img_s": "the client's images that met the deadline and were decoded, per second of the cell's span",
    "goodput_kbps": "the client's payload delivered by the deadline, kbit/s over the cell's span",
    "share": "the client's share of the cell's goodput (1/n when fair)",
}


# ------------------------------------------------------------ definitions ---

def jain(values: Iterable[float], n: int | None = None) -> float:
    """Jain's fairness index ``(sum x)^2 / (n * sum x^2)`` of non-negative allocations.

    ``n`` (default: the number of values) may exceed the values given: the
    missing ones count as 0. 1.0 for n = 1; NaN when every value is 0 (or
    there is none) and n > 1.
    """
    x = np.asarray([v for v in values if v is not None and v == v], dtype=float)
    n = len(x) if n is None else max(int(n), len(x))
    if n == 1:
        return 1.0
    s2 = float((x * x).sum())
    if n == 0 or s2 <= 0:
        return math.nan
    return float(x.sum()) ** 2 / (n * s2)


def with_n_clients(df: pd.DataFrame) -> pd.DataFrame:
    """A copy whose ``n_clients`` is filled where null: the number of distinct clients of the record's trial."""
    d = df.copy()
    n = d["n_clients"].astype("Int64") if "n_clients" in d.columns else pd.Series(pd.NA, index=d.index,
                                                                                  dtype="Int64")
    if len(d) and n.isna().any():
        keys = [d[k] if k in d.columns else pd.Series("", index=d.index) for k in ("run_id", "trial_id")]
        seen = d.groupby(keys, dropna=False)["client"].transform("nunique").astype("Int64")
        n = n.fillna(seen)
    d["n_clients"] = n
    return d


def max_clients(df: pd.DataFrame) -> int:
    """The largest client count of any condition (derived for older runs); 0 without records."""
    if not len(df):
        return 0
    n = with_n_clients(df)["n_clients"]
    return int(n.max()) if n.notna().any() else 0


def is_fleet(df: pd.DataFrame) -> bool:
    """Whether some condition ran more than one client."""
    return max_clients(df) > 1


def _present(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v)) and v is not pd.NA and not pd.isna(v)


def _group_label(key: dict, vary: set[str]) -> str:
    parts = [str(key["link_kind"]) if _present(key.get("link_kind")) else "link ?"]
    if _present(key.get("link_rate_kbps")):
        parts[0] += f" {float(key['link_rate_kbps']):g} kbit/s"
    if _present(key.get("trace_name")):
        parts[0] += f" {key['trace_name']}"
    if "link_delay_ms" in vary and _present(key.get("link_delay_ms")):
        parts[0] += f" +{float(key['link_delay_ms']):g} ms"
    if _present(key.get("jamming_level")):
        parts.append(f"jamming {key['jamming_level']}")
    if "deadline_ms" in vary and _present(key.get("deadline_ms")):
        parts.append(f"deadline {float(key['deadline_ms']):g} ms")
    if "period_ms" in vary and _present(key.get("period_ms")):
        parts.append(f"period {float(key['period_ms']):g} ms")
    if "testbed" in vary and _present(key.get("testbed")):
        parts.append(f"on {key['testbed']}")
    return ", ".join(parts)


def _norm(v):
    return None if not _present(v) else (float(v) if isinstance(v, (int, float, np.number)) else str(v))


def condition_groups(df: pd.DataFrame) -> pd.Series:
    """Each record's condition group as a label (``"radio, jamming heavy"``, ``"tc 64 kbit/s, jamming none"``).

    Built from :data:`GROUP_FIELDS`; delay, deadline, period and testbed appear
    in the label only when they differ between the groups of ``df``.
    """
    fields = [f for f in GROUP_FIELDS if f in df.columns]
    keys = [tuple(_norm(v) for v in row) for row in df[fields].itertuples(index=False, name=None)] if fields \
        else [()] * len(df)
    uniq = list(dict.fromkeys(keys))
    vary = {f for i, f in enumerate(fields) if len({k[i] for k in uniq}) > 1}
    labels = {k: _group_label(dict(zip(fields, k)), vary) for k in uniq}
    return pd.Series([labels[k] for k in keys], index=df.index, dtype=object)


def prepare(df: pd.DataFrame) -> pd.DataFrame:
    """Records with latency columns, ``n_clients`` filled and a ``group`` column."""
    d = df if "e2e_ms" in df.columns else with_latency(df)
    d = with_n_clients(d)
    d["group"] = condition_groups(d)
    return d


# ------------------------------------------------------------- wall span ---

def _period_s(t: pd.DataFrame) -> float:
    p = _num(t["period_ms"]) if "period_ms" in t.columns else np.array([])
    p = p[~np.isnan(p)]
    if len(p):
        return float(np.median(p)) / 1e3
    gaps = []
    for _, c in t.groupby("client", dropna=False):
        a = np.sort(c["t_arrival_ns"].dropna().astype("int64").to_numpy())
        gaps.extend(np.diff(a)[np.diff(a) > 0] / 1e9)
    return float(np.median(gaps)) if gaps else 0.0


def trial_span_s(t: pd.DataFrame) -> float:
    """Wall span of one trial (all its clients): last arrival - first arrival + one period, in s; NaN when
    no record has an arrival time or the span is 0."""
    a = t["t_arrival_ns"].dropna()
    if not len(a):
        return math.nan
    a = a.astype("int64")
    span = (int(a.max()) - int(a.min())) / 1e9 + _period_s(t)
    return span if span > 0 else math.nan


def _cell_span(g: pd.DataFrame) -> tuple[float, int]:
    keys = [g[k] for k in ("run_id", "trial_id") if k in g.columns]
    spans = [trial_span_s(t) for _, t in g.groupby(keys, dropna=False, sort=False)] if keys else [trial_span_s(g)]
    ok = [s for s in spans if s == s]
    return (float(sum(ok)) if ok else math.nan), len(spans)


def _good(g: pd.DataFrame) -> np.ndarray:
    return _flag(g["deadline_met"]) & _flag(g["decoded"])


def _rate(x: float, span: float) -> float:
    return x / span if span == span and span > 0 else math.nan


# ----------------------------------------------------------------- tables ---

def _cells(d: pd.DataFrame):
    """(group, codec, n) and records per cell: groups and codecs in first-seen order, client counts ascending."""
    gorder = {g: i for i, g in enumerate(dict.fromkeys(d["group"]))}
    corder = {c: i for i, c in enumerate(dict.fromkeys(d["codec_label"].astype(str)))}
    cells = list(d.groupby([d["group"], d["codec_label"].astype(str), d["n_clients"]], dropna=False, sort=False))
    cells.sort(key=lambda kv: (gorder[kv[0][0]], corder[kv[0][1]], kv[0][2] if _present(kv[0][2]) else -1))
    return cells


def _client_goodputs(g: pd.DataFrame, span: float) -> pd.DataFrame:
    rows = []
    for client, c in g.groupby(g["client"].astype(str), sort=True):
        rows.append({"client": client, "good": int(_good(c).sum()),
                     "bits": float(np.nansum(_num(c["bytes_delivered"]))) * 8})
    t = pd.DataFrame(rows, columns=["client", "good", "bits"])
    t["goodput_img_s"] = [_rate(x, span) for x in t["good"]]
    t["goodput_kbps"] = [_rate(x / 1e3, span) for x in t["bits"]]
    return t


def fleet_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (condition group, codec variant, n_clients): :data:`FLEET_COLUMNS` and the group's fields."""
    fields = [f for f in GROUP_FIELDS if f in df.columns]
    cols = list(FLEET_COLUMNS) + fields
    if not len(df):
        return pd.DataFrame(columns=cols)
    d = prepare(df)
    rows = []
    for (group, codec, n), g in _cells(d):
        span, trials = _cell_span(g)
        k = len(g)
        miss = int(k - _flag(g["deadline_met"]).sum())
        lo, hi = wilson(miss, k)
        per = _client_goodputs(g, span)
        n_int = int(n) if _present(n) else len(per)
        batch = _num(g["batch_size"]) if "batch_size" in g.columns else np.array([])
        wait = _num(g["batch_wait_ms"]) if "batch_wait_ms" in g.columns else np.array([])
        e2e = _num(g["e2e_ms"])
        gp = per["goodput_img_s"].to_numpy(dtype=float)
        rows.append({
            "group": group, "codec_label": codec, "n_clients": n_int,
            "conditions": ", ".join(dict.fromkeys(g["condition"].dropna().astype(str))),
            "clients": len(per), "trials": trials, "images": k, "span_s": span,
            "offered_img_s": _rate(k, span), "goodput_img_s": _rate(int(_good(g).sum()), span),
            "goodput_kbps": _rate(float(np.nansum(_num(g["bytes_delivered"]))) * 8 / 1e3, span),
            "miss_rate": miss / k if k else math.nan, "miss_lo": lo, "miss_hi": hi,
            "top1": float(_flag(g["correct1"]).mean()) if k else math.nan,
            "e2e_p50_ms": _pct(e2e, 50), "e2e_p95_ms": _pct(e2e, 95),
            "jain": jain(gp, n_int) if not np.isnan(gp).any() else math.nan,
            "client_goodput_min": float(np.nanmin(gp)) if len(gp) and not np.isnan(gp).all() else math.nan,
            "client_goodput_max": float(np.nanmax(gp)) if len(gp) and not np.isnan(gp).all() else math.nan,
            "batch_mean": float(np.nanmean(batch)) if (~np.isnan(batch)).any() else math.nan,
            "batch_wait_p95_ms": _pct(wait, 95),
            **{f: g[f].iloc[0] for f in fields},
        })
    return pd.DataFrame(rows, columns=cols)


def client_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per client of each (condition group, codec variant, n_clients): :data:`CLIENT_COLUMNS`."""
    cols = list(CLIENT_COLUMNS)
    if not len(df):
        return pd.DataFrame(columns=cols)
    d = prepare(df)
    rows = []
    for (group, codec, n), g in _cells(d):
        span, _ = _cell_span(g)
        total = int(_good(g).sum())
        for client, c in g.groupby(g["client"].astype(str), sort=True):
            k, good = len(c), int(_good(c).sum())
            e2e = _num(c["e2e_ms"])
            rows.append({"group": group, "codec_label": codec, "n_clients": int(n) if _present(n) else math.nan,
                         "client": client, "images": k,
                         "miss_rate": float(1 - _flag(c["deadline_met"]).mean()) if k else math.nan,
                         "top1": float(_flag(c["correct1"]).mean()) if k else math.nan,
                         "e2e_p50_ms": _pct(e2e, 50), "e2e_p95_ms": _pct(e2e, 95),
                         "goodput_img_s": _rate(good, span),
                         "goodput_kbps": _rate(float(np.nansum(_num(c["bytes_delivered"]))) * 8 / 1e3, span),
                         "share": good / total if total else math.nan})
    return pd.DataFrame(rows, columns=cols)


# ------------------------------------------------------------- formatting ---

def _f(x, nd: int = 1) -> str:
    if x is None or x is pd.NA or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{nd}f}"


def has_batches(table: pd.DataFrame) -> bool:
    return "batch_mean" in table.columns and table["batch_mean"].notna().any()


def fleet_rows(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """The fleet table as header and text cells (report, Markdown, CLI); batch columns only when recorded."""
    batches = has_batches(table)
    head = ["condition group", "codec", "clients", "conditions", "images", "offered img/s", "goodput img/s",
            "goodput kbit/s", "miss %", "top-1 %", "e2e p50 ms", "e2e p95 ms", "Jain"]
    head += ["batch mean", "batch wait p95 ms"] if batches else []
    rows = []
    for _, r in table.iterrows():
        clients = str(r["n_clients"]) + ("" if r["clients"] == r["n_clients"] else f" ({r['clients']} seen)")
        row = [str(r["group"]), str(r["codec_label"]), clients, str(r["conditions"]), str(int(r["images"])),
               _f(r["offered_img_s"], 2), _f(r["goodput_img_s"], 2), _f(r["goodput_kbps"]),
               _f(100 * r["miss_rate"]), _f(100 * r["top1"]), _f(r["e2e_p50_ms"]), _f(r["e2e_p95_ms"]),
               _f(r["jain"], 3)]
        if batches:
            row += [_f(r["batch_mean"], 2), _f(r["batch_wait_p95_ms"], 1)]
        rows.append(row)
    return head, rows


def client_rows(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    head = ["condition group", "codec", "clients", "client", "images", "miss %", "top-1 %", "e2e p50 ms",
            "e2e p95 ms", "goodput img/s", "goodput kbit/s", "share %"]
    rows = [[str(r["group"]), str(r["codec_label"]), str(r["n_clients"]), str(r["client"]), str(int(r["images"])),
             _f(100 * r["miss_rate"]), _f(100 * r["top1"]), _f(r["e2e_p50_ms"]), _f(r["e2e_p95_ms"]),
             _f(r["goodput_img_s"], 2), _f(r["goodput_kbps"]), _f(100 * r["share"])]
            for _, r in table.iterrows()]
    return head, rows
