"""HTML (self-contained) and Markdown reports from one or more run directories.

``index.html`` embeds every figure as a ``data:`` URI and carries its own CSS:
it opens from a mail attachment or a CI artifact with no network and no
neighbouring files. The figures are also written next to it (PNG and SVG),
with ``summary.csv``, ``latency.csv``, ``encode_overhead.csv`` and
``summary.md`` (for CI logs). When some condition ran more than one client the
page has a Fleet section (:mod:`hilbed.analysis.fleet`), written also as
``fleet.csv`` and ``fleet_clients.csv``.

Facts about a run come from its data, not from what the manifest says about
it: ``hilbed run`` builds the report before it writes the record count into
the manifest, so the report counts the records itself. A run whose conditions
were not all applied as asked opens with a red notice naming them.
"""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path

import jinja2
import pandas as pd
import pyarrow as pa

from . import fleet, paper_plots, plots
from .checks import all_warnings
from .load import load_events, load_manifest, load_runs, load_table, scenario_of, to_pandas
from .metrics import CLAIM_PERCENTILES, GROUP, encode_overhead, has_energy, latency_table, summary, with_latency
from .runlog import EVENT_STYLE, UNAPPLIED_STATE, host_loads, marks_summary, run_marks, unapplied, unapplied_text, utc
from .schema import LATENCY_COMPONENTS
from .stats import EARLY_STOP_CONFIDENCE, early_stop_min_n
from .styles import StyleRegistry

#: (summary column, header) of the main table
COLUMNS = [("codec_label", "codec"), ("condition", "condition"), ("n", "n"), ("top1", "top-1 %"),
           ("top1_ci", "top-1 95% CI"), ("top5", "top-5 %"), ("bytes_mean", "mean bytes"),
           ("bytes_delivered_mean", "delivered bytes"), ("goodput_kbps", "goodput kbit/s"),
           ("e2e_p50_ms", "e2e p50 ms"), ("e2e_p95_ms", "e2e p95 ms"), ("miss_rate", "miss %"),
           ("jammer_mbps_mean", "jammer Mbit/s")]


def _f(x, nd: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)) or x is pd.NA:
        return "-"
    return f"{x:.{nd}f}"


def fmt_row(r: pd.Series, by: list[str]) -> list[str]:
    return [*(str(r[b]) for b in by), str(int(r["n"])), _f(100 * r["top1"]),
            f"{_f(100 * r['top1_lo'])}-{_f(100 * r['top1_hi'])}", _f(100 * r["top5"]), _f(r["bytes_mean"], 0),
            _f(r["bytes_delivered_mean"], 0), _f(r["goodput_kbps"]), _f(r["e2e_p50_ms"]), _f(r["e2e_p95_ms"]),
            _f(100 * r["miss_rate"]), _f(r["jammer_mbps_mean"], 2)]


def headers(by: list[str]) -> list[str]:
    names = dict(COLUMNS)
    return [names.get(b, b) for b in by] + [h for c, h in COLUMNS if c not in GROUP]


def latency_rows(summ: pd.DataFrame, by: list[str]) -> tuple[list[str], list[list[str]]]:
    head = [dict(COLUMNS).get(b, b) for b in by] + [f"{c} p50 / p95" for c in LATENCY_COMPONENTS] + ["e2e p50 / p95"]
    rows = []
    for _, r in summ.iterrows():
        rows.append([*(str(r[b]) for b in by)]
                    + [f"{_f(r[f'{c}_p50_ms'], 2)} / {_f(r[f'{c}_p95_ms'], 2)}" for c in LATENCY_COMPONENTS]
                    + [f"{_f(r['e2e_p50_ms'], 1)} / {_f(r['e2e_p95_ms'], 1)}"])
    return head, rows


def _clock_text(m: dict) -> dict[str, str]:
    out = {}
    for node, c in (m.get("clock_offsets") or {}).items():
        if isinstance(c, dict):
            out[node] = "; ".join(f"{k}: {v['offset_ns'] / 1e6:+.3f} ms ± {v.get('uncertainty_ns', 0) / 1e6:.3f} ms"
                                  + (f" (rtt {v['rtt_ns'] / 1e6:.3f} ms, {v.get('samples', '?')} samples)"
                                     if "rtt_ns" in v else "")
                                  for k, v in c.items() if isinstance(v, dict) and "offset_ns" in v)
    return out


def _nodes_text(m: dict) -> list[str]:
    tb = (m.get("testbed") or {}).get("parsed") or {}
    out = []
    for name, n in (tb.get("nodes") or {}).items():
        t = n.get("transport") or {}
        where = t.get("host") if t.get("kind") == "ssh" else "local"
        radio = n.get("radio")
        rtxt = f", radio {radio.get('protocol')} on {radio.get('port')} ch {radio.get('channel')}" if radio else ""
        out.append(f"{name}: {'/'.join(n.get('roles') or [])} via {t.get('kind', '?')} ({where}){rtxt}")
    return out


def _host_text(m: dict) -> list[str]:
    """The controller's facts, then each host's load before and after the run (manifest ``host``/``node_hosts``)."""
    host = m.get("host")
    if not isinstance(host, dict):
        return [str(host)] if host else []
    plain = ", ".join(f"{k} {v}" for k, v in host.items() if k not in ("before", "after"))
    lines = [plain] if plain else []
    for h in host_loads(m):
        lines.append(f"{h.host} {h.when}: {h.describe()}" + ("; OVERLOADED" if h.overloaded else ""))
    return lines


def run_facts(run_dir: Path, m: dict, n_records: int | None = None) -> dict:
    """Provenance of one run; ``n_records`` is counted from its data (the manifest's count may not exist yet)."""
    git = m.get("git") or {}
    sc = m.get("scenario") or {}
    return {
        "run_id": m.get("run_id", run_dir.name), "dir": str(run_dir), "state": m.get("state", "?"),
        "scenario": sc.get("name") or scenario_of(m).get("name"),
        "scenario_description": scenario_of(m).get("description"), "scenario_text": sc.get("text"),
        "testbed": (m.get("testbed") or {}).get("name"), "nodes": _nodes_text(m),
        "git": f"{git.get('sha') or 'unknown'}" + (" (dirty)" if git.get("dirty") else "")
               + (f" on {git['branch']}" if git.get("branch") else ""),
        "started": m.get("started_at"), "finished": m.get("finished_at"), "wall_s": m.get("wall_s"),
        "records": n_records if n_records is not None else m.get("records"),
        "planned": (m.get("plan") or {}).get("images"), "host": _host_text(m),
        "versions": ", ".join(f"{k} {v}" for k, v in (m.get("versions") or {}).items()),
        "model": json.dumps(m.get("model"), default=str) if m.get("model") else None,
        "clocks": _clock_text(m), "command": " ".join(map(str, m.get("command") or [])),
    }


def make_figures(lat: pd.DataFrame, out: Path, manifests: list[dict], run_dirs: list[Path] | None = None,
                 events: list[dict] | None = None) -> tuple[list[plots.Figure], list[str]]:
    """Every figure that the data supports; the others as notes 'title: reason'.

    ``events``: the first run's events.jsonl (the timelines draw its incidents); read from its directory when None.
    """
    styles = StyleRegistry.from_frame(lat)
    figs, notes = [], []
    for fn in (*plots.ALL, *paper_plots.ALL):
        kw = {"manifest": manifests[0] if manifests else {}, "run_dirs": run_dirs, "events": events} \
            if fn in (plots.timeline, plots.timeline_trial) else {}
        try:
            figs.append(fn(lat, out, styles, **kw))
        except plots.SkipPlot as exc:
            if fn not in paper_plots.ALL:  # a paper's figure is drawn for runs of its codec, and silent otherwise
                notes.append(f"{fn.__name__.replace('_', ' ')} skipped: {exc}")
    return figs, notes


def make_fleet_figures(lat: pd.DataFrame, out: Path) -> tuple[list[plots.Figure], list[str]]:
    """The Fleet section's figures (:data:`plots.FLEET`); the others as notes 'title: reason'."""
    styles = StyleRegistry.from_frame(lat)
    figs, notes = [], []
    for fn in plots.FLEET:
        try:
            figs.append(fn(lat, out, styles))
        except plots.SkipPlot as exc:
            if fn not in paper_plots.ALL:  # a paper's figure is drawn for runs of its codec, and silent otherwise
                notes.append(f"{fn.__name__.replace('_', ' ')} skipped: {exc}")
    return figs, notes


def fleet_section(lat: pd.DataFrame, out: Path, figures: bool = True) -> dict | None:
    """The Fleet section when some condition ran more than one client (None otherwise): the aggregate and
    per-client tables (also written as ``fleet.csv`` and ``fleet_clients.csv``) and the fleet figures."""
    if not len(lat) or not fleet.is_fleet(lat):
        return None
    agg, per = fleet.fleet_table(lat), fleet.client_table(lat)
    agg.to_csv(out / "fleet.csv", index=False)
    per.to_csv(out / "fleet_clients.csv", index=False)
    figs, notes = make_fleet_figures(lat, out) if figures else ([], [])
    head, rows = fleet.fleet_rows(agg)
    chead, crows = fleet.client_rows(per)
    return {"columns": head, "rows": rows, "client_columns": chead, "client_rows": crows, "figures": figs,
            "notes": notes, "batches": fleet.has_batches(agg)}


def _figure_html(f: plots.Figure) -> dict:
    return {"title": f.title, "caption": f.caption, "name": f.name,
            "src": "data:image/png;base64," + base64.b64encode(f.png.read_bytes()).decode(),
            "files": [p.name for p in f.paths]}


def load_counted(run_dirs: list[Path]) -> tuple[pd.DataFrame, list[int]]:
    """All runs' records in one frame, and how many records each directory holds."""
    tables = [load_table(d) for d in run_dirs]
    if not tables:
        return load_runs([]), []
    return to_pandas(pa.concat_tables(tables)), [t.num_rows for t in tables]


def unapplied_notices(manifests: list[dict]) -> list[str]:
    """One line per condition not applied as asked (the report opens with these, in red)."""
    out = []
    for m in manifests:
        us = unapplied(m)
        out += [unapplied_text(m, u) for u in us]
        if not us and m.get("state") == UNAPPLIED_STATE:
            out.append(f"{m.get('run_id', '?')}: state {UNAPPLIED_STATE}: some condition was not applied as asked "
                       "(the manifest names none)")
    return out


def _unapplied_conditions(manifests: list[dict]) -> set[str]:
    return {u.condition for m in manifests for u in unapplied(m)}


def claim_rows(summ: pd.DataFrame, by: list[str]) -> tuple[list[str], list[list[str]]]:
    """The early-stopping claims per group: what the report can claim, or how many images a claim needs."""
    head = [dict(COLUMNS).get(b, b) for b in by] + ["n", "no reply"] \
        + [f"e2e p{q} (need {early_stop_min_n(q / 100)})" for q in CLAIM_PERCENTILES] + ["miss rate"]
    rows = []
    for _, r in summ.iterrows():
        n = int(r["n"])
        cells = []
        for q in CLAIM_PERCENTILES:
            v, need = r[f"e2e_p{q}_claim_ms"], early_stop_min_n(q / 100)
            if v == v and v is not None and math.isinf(v):
                cells.append("none: too many without a reply")
            elif v == v and v is not None:
                cells.append(f"≤ {v:.1f} ms")
            else:
                cells.append(f"need {need} (n={n})")
        rows.append([*(str(r[b]) for b in by), str(n), str(int(r["no_reply"]))] + cells
                    + [f"≤ {100 * r['miss_claim_max']:.1f}%" if r["miss_claim_max"] == r["miss_claim_max"] else "-"])
    return head, rows


def encode_rows(table: pd.DataFrame, ref: str | None) -> tuple[list[str], list[list[str]]]:
    head = ["codec", "family", "n", "encode p50 ms", "encode p95 ms", "wait p50 ms", "wait p95 ms", "queue p50 ms",
            "mean bytes", f"encode vs {ref or 'JPEG'}", f"bytes vs {ref or 'JPEG'}"]
    rows = []
    for _, r in table.iterrows():
        x = lambda v: "-" if v != v else f"{v:.2f}x"  # noqa: E731
        rows.append([str(r["codec_label"]) + (" (reference)" if str(r["codec_label"]) == ref else ""),
                     str(r["codec"]), str(int(r["n"])), _f(r["encode_p50_ms"], 2), _f(r["encode_p95_ms"], 2),
                     _f(r["wait_p50_ms"], 2), _f(r["wait_p95_ms"], 2), _f(r["queue_p50_ms"], 2),
                     _f(r["bytes_mean"], 0), x(r["encode_vs_ref"]), x(r["bytes_vs_ref"])])
    return head, rows


def energy_rows(summ: pd.DataFrame, by: list[str]) -> tuple[list[str], list[list[str]]]:
    """Energy per image and per correct image of each group (empty when no record carries energy)."""
    head = [dict(COLUMNS).get(b, b) for b in by] + ["n", "measured", "encode mJ", "transmit mJ", "mJ / image",
                                                    "mJ / correct image", "top-1 %", "idle mW", "samples",
                                                    "missed", "flagged"]
    if "energy_n" not in summ.columns or not (summ["energy_n"] > 0).any():
        return head, []
    rows = []
    for _, r in summ.iterrows():
        per = r["energy_per_correct_mj"]
        i = lambda v: "-" if v != v else str(int(v))  # noqa: E731
        rows.append([*(str(r[b]) for b in by), str(int(r["n"])), str(int(r["energy_n"])),
                     _f(r["energy_encode_mj_mean"], 2), _f(r["energy_tx_mj_mean"], 2), _f(r["energy_mj_mean"], 2),
                     "none correct" if per == math.inf else _f(per, 2), _f(100 * r["top1"]),
                     _f(r["power_idle_mw_mean"], 0), i(r["power_samples_sum"]), i(r["power_missed_sum"]),
                     i(r["power_flagged_sum"])])
    return head, rows


def energy_warnings(df: pd.DataFrame) -> list[str]:
    """Readings the meters flagged or missed, and images whose energy is unknown: said, never hidden."""
    if not has_energy(df):
        return []
    out = []
    num = lambda c: pd.to_numeric(df[c], errors="coerce") if c in df.columns else pd.Series(dtype=float)  # noqa
    flagged, missed, samples = num("power_flagged").sum(), num("power_missed").sum(), num("power_samples").sum()
    if flagged > 0:
        out.append(f"{int(flagged)} implausible power sample(s) (negative or above the meter's range) were left out "
                   "of the energy")
    if missed > 0:
        out.append(f"power meters missed {int(missed)} sample(s) their rate promised "
                   f"({int(samples)} taken in the images' windows)")
    unknown = int((num("energy_encode_mj").isna() | num("energy_tx_mj").isna()).sum())
    if unknown:
        out.append(f"{unknown} of {len(df)} image(s) lack an encode or transmit energy; the energy columns leave "
                   "them out")
    return out


def event_rows(df: pd.DataFrame, manifests: list[dict], events_per_run: list[list[dict]]) -> list[dict]:
    """Incidents, reconnects, jammer watchdog stops, resumes and failures of every run, in time order per run."""
    out = []
    for m, evs in zip(manifests, events_per_run):
        run = str(m.get("run_id", "?"))
        mine = df[df["run_id"].astype(str) == run] if len(df) else df
        t0 = int(pd.to_numeric(mine["t_arrival_ns"]).min()) if len(mine) and mine["t_arrival_ns"].notna().any() \
            else None
        for mk in run_marks(evs, run):
            rel = f"{(mk.t_ns - t0) / 1e9:+.1f} s" if t0 is not None and mk.t_ns is not None else "-"
            out.append({"run": run, "time": utc(mk.t_ns), "rel": rel, "what": EVENT_STYLE[mk.category][0],
                        "colour": EVENT_STYLE[mk.category][1], "nodes": mk.nodes or "-", "text": mk.text})
    return out


def build_report(run_dirs: list[str | Path], out_dir: str | Path | None = None, by: list[str] | None = None,
                 title: str | None = None, figures: bool = True) -> Path:
    """Build ``index.html`` (+ figures, CSVs, summary.md) for the runs; returns the path of index.html.

    ``by`` groups the tables by other record fields; ``figures=False`` makes the
    tables only (seconds faster, for CI logs).
    """
    run_dirs = [Path(d) for d in run_dirs]
    out = Path(out_dir) if out_dir else run_dirs[0] / "report"
    out.mkdir(parents=True, exist_ok=True)
    by = list(by or GROUP)
    df, counts = load_counted(run_dirs)
    manifests = [load_manifest(d) for d in run_dirs]
    events_per_run = [load_events(d) for d in run_dirs]
    events = [e for evs in events_per_run for e in evs]
    lat = with_latency(df)
    summ = summary(lat, by)
    if not len(lat):
        figs, notes = [], ["no records: no figures"]
    elif figures:
        figs, notes = make_figures(lat, out, manifests, run_dirs, events_per_run[0] if events_per_run else None)
    else:
        figs, notes = [], ["figures not drawn (--no-figures)"]
    summ.to_csv(out / "summary.csv", index=False)
    latency_table(lat, by).to_csv(out / "latency.csv", index=False)
    enc, ref = encode_overhead(lat)
    enc.assign(reference=ref).to_csv(out / "encode_overhead.csv", index=False)
    fl = fleet_section(lat, out, figures)
    warnings = all_warnings(lat, summary(lat) if by != GROUP else summ, manifests, events) + energy_warnings(lat)
    unapplied_lines = unapplied_notices(manifests)
    runs = [run_facts(d, m, n) for d, m, n in zip(run_dirs, manifests, counts)]
    title = title or ", ".join(dict.fromkeys(r["scenario"] or "?" for r in runs))
    lhead, lrows = latency_rows(summ, by)
    chead, crows = claim_rows(summ, by)
    ehead, erows = encode_rows(enc, ref)
    nhead, nrows = energy_rows(summ, by)
    evrows = event_rows(df, manifests, events_per_run)
    bad = _unapplied_conditions(manifests) if "condition" in by else set()
    rows = []
    for _, r in summ.iterrows():
        row = fmt_row(r, by)
        if bad and str(r["condition"]) in bad:
            row[by.index("condition")] += " †"
        rows.append(row)
    env = jinja2.Environment(loader=jinja2.PackageLoader("hilbed.analysis", "templates"), autoescape=True)
    html = env.get_template("report.html.j2").render(
        title=title, runs=runs, n_records=len(df), nby=len(by), unapplied=unapplied_lines,
        columns=headers(by), rows=rows, lat_columns=lhead, lat_rows=lrows,
        claim_columns=chead, claim_rows=crows, confidence=f"{100 * EARLY_STOP_CONFIDENCE:g}",
        tail=f"{100 * (1 - EARLY_STOP_CONFIDENCE):g}",
        enc_columns=ehead, enc_rows=erows, enc_ref=ref, energy_columns=nhead, energy_rows=nrows, events=evrows,
        events_summary=marks_summary([mk for evs in events_per_run for mk in run_marks(evs)]),
        figures=[_figure_html(f) for f in figs], notes=notes, warnings=warnings,
        fleet=fl and {**fl, "figures": [_figure_html(f) for f in fl["figures"]]})
    (out / "index.html").write_text(html, encoding="utf-8")
    (out / "summary.md").write_text(markdown_summary(summ, by, warnings=warnings, notes=notes, runs=runs,
                                                     figures=[f.name for f in figs + (fl["figures"] if fl else [])],
                                                     unapplied=unapplied_lines,
                                                     claims=(chead, crows), encode=(ehead, erows),
                                                     energy=(nhead, nrows),
                                                     fleet=(fl["columns"], fl["rows"]) if fl else None),
                                    encoding="utf-8")
    return out / "index.html"


def markdown_table(summ: pd.DataFrame, by: list[str] | None = None) -> str:
    by = list(by or GROUP)
    cols = headers(by)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" if i < len(by) else "---:" for i in range(len(cols)))
             + "|"]
    lines += ["| " + " | ".join(fmt_row(r, by)) + " |" for _, r in summ.iterrows()]
    return "\n".join(lines) + "\n"


def _md_table(head: list[str], rows: list[list[str]], nleft: int) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i < nleft else "---:" for i in range(len(head)))
             + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def markdown_summary(summ: pd.DataFrame, by: list[str] | None = None, *, warnings: list[str] | None = None,
                     notes: list[str] | None = None, runs: list[dict] | None = None,
                     figures: list[str] | None = None, unapplied: list[str] | None = None,
                     claims: tuple[list[str], list[list[str]]] | None = None,
                     encode: tuple[list[str], list[list[str]]] | None = None,
                     energy: tuple[list[str], list[list[str]]] | None = None,
                     fleet: tuple[list[str], list[list[str]]] | None = None) -> str:
    """The report in Markdown for CI logs: conditions not applied, runs, the tables, warnings, figures.

    ``fleet``: the fleet table (:func:`hilbed.analysis.fleet.fleet_rows`), shown when given."""
    parts = []
    if unapplied:
        parts += ["> [!CAUTION]", "> **Conditions not applied as asked**: the records below claim conditions "
                  "that were not in force for part of the run.", ">"] + [f"> - {u}" for u in unapplied] + [""]
    if runs:
        parts.append("**hilbed report**: " + ", ".join(
            f"`{r['run_id']}` ({r['state']}, "
            + (f"{r['records']} of {r['planned']} images, " if r.get("planned") else
               (f"{r['records']} images, " if r.get("records") is not None else ""))
            + f"git {r['git']})" for r in runs))
        parts.append("")
    parts.append(markdown_table(summ, by))
    nby = len(list(by or GROUP))
    if claims and claims[1]:
        parts += [f"**Claimable tail latency** ({100 * EARLY_STOP_CONFIDENCE:g}% confidence, MLPerf LoadGen early "
                  "stopping)", "", _md_table(*claims, nby)]
    if encode and encode[1]:
        parts += ["**Encode overhead** (the codec's own time; wait: the client busy with earlier images)", "",
                  _md_table(*encode, 2)]
    if energy and energy[1]:
        parts += ["**Energy per image** (encode + transmit; per correct image: all measured images' energy / "
                  "the correct ones)", "", _md_table(*energy, nby)]
    if fleet and fleet[1]:
        parts += ["**Fleet** (per condition group and number of clients; goodput: images that met the deadline "
                  "and were decoded, per second of wall span, all clients; Jain: fairness of the clients' goodput, "
                  "1 = fair)", "", _md_table(*fleet, 4)]
    if warnings:
        parts += ["**Warnings**", ""] + [f"- {w}" for w in warnings] + [""]
    if notes:
        parts += ["**Notes**", ""] + [f"- {n}" for n in notes] + [""]
    if figures:
        parts.append("Figures: " + ", ".join(f"`{f}.png`" for f in figures))
    return "\n".join(parts).rstrip("\n") + "\n"
