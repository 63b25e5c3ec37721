"""HTML (self-contained) and Markdown reports from one or more run directories.

``index.html`` embeds every figure as a ``data:`` URI and carries its own CSS:
it opens from a mail attachment or a CI artifact with no network and no
neighbouring files. The figures are also written next to it (PNG and SVG),
with ``summary.csv``, ``latency.csv`` and ``summary.md`` (for CI logs).
"""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path

import jinja2
import pandas as pd

from . import plots
from .checks import all_warnings
from .load import load_events, load_manifest, load_runs, scenario_of
from .metrics import GROUP, latency_table, summary, with_latency
from .schema import LATENCY_COMPONENTS
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


def run_facts(run_dir: Path, m: dict) -> dict:
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
        "records": m.get("records"), "planned": (m.get("plan") or {}).get("images"),
        "host": ", ".join(f"{k} {v}" for k, v in (m.get("host") or {}).items()),
        "versions": ", ".join(f"{k} {v}" for k, v in (m.get("versions") or {}).items()),
        "model": json.dumps(m.get("model"), default=str) if m.get("model") else None,
        "clocks": _clock_text(m), "command": " ".join(map(str, m.get("command") or [])),
    }


def make_figures(lat: pd.DataFrame, out: Path, manifests: list[dict],
                 run_dirs: list[Path] | None = None) -> tuple[list[plots.Figure], list[str]]:
    """Every figure that the data supports; the others as notes 'title: reason'."""
    styles = StyleRegistry.from_frame(lat)
    figs, notes = [], []
    for fn in plots.ALL:
        kw = {"manifest": manifests[0] if manifests else {}, "run_dirs": run_dirs} \
            if fn in (plots.timeline, plots.timeline_trial) else {}
        try:
            figs.append(fn(lat, out, styles, **kw))
        except plots.SkipPlot as exc:
            notes.append(f"{fn.__name__.replace('_', ' ')} skipped: {exc}")
    return figs, notes


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
    df = load_runs(run_dirs)
    manifests = [load_manifest(d) for d in run_dirs]
    lat = with_latency(df)
    summ = summary(lat, by)
    if not len(lat):
        figs, notes = [], ["no records: no figures"]
    elif figures:
        figs, notes = make_figures(lat, out, manifests, [Path(d) for d in run_dirs])
    else:
        figs, notes = [], ["figures not drawn (--no-figures)"]
    summ.to_csv(out / "summary.csv", index=False)
    latency_table(lat, by).to_csv(out / "latency.csv", index=False)
    events = [e for d in run_dirs for e in load_events(d)]
    warnings = all_warnings(lat, summary(lat) if by != GROUP else summ, manifests, events)
    runs = [run_facts(d, m) for d, m in zip(run_dirs, manifests)]
    title = title or ", ".join(dict.fromkeys(r["scenario"] or "?" for r in runs))
    lhead, lrows = latency_rows(summ, by)
    env = jinja2.Environment(loader=jinja2.PackageLoader("hilbed.analysis", "templates"), autoescape=True)
    html = env.get_template("report.html.j2").render(
        title=title, runs=runs, n_records=len(df), nby=len(by),
        columns=headers(by), rows=[fmt_row(r, by) for _, r in summ.iterrows()],
        lat_columns=lhead, lat_rows=lrows,
        figures=[{"title": f.title, "caption": f.caption, "name": f.name,
                  "src": "data:image/png;base64," + base64.b64encode(f.png.read_bytes()).decode(),
                  "files": [p.name for p in f.paths]} for f in figs],
        notes=notes, warnings=warnings)
    (out / "index.html").write_text(html, encoding="utf-8")
    (out / "summary.md").write_text(markdown_summary(summ, by, warnings=warnings, notes=notes, runs=runs,
                                                     figures=[f.name for f in figs]), encoding="utf-8")
    return out / "index.html"


def markdown_table(summ: pd.DataFrame, by: list[str] | None = None) -> str:
    by = list(by or GROUP)
    cols = headers(by)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" if i < len(by) else "---:" for i in range(len(cols)))
             + "|"]
    lines += ["| " + " | ".join(fmt_row(r, by)) + " |" for _, r in summ.iterrows()]
    return "\n".join(lines) + "\n"


def markdown_summary(summ: pd.DataFrame, by: list[str] | None = None, *, warnings: list[str] | None = None,
                     notes: list[str] | None = None, runs: list[dict] | None = None,
                     figures: list[str] | None = None) -> str:
    """The report in Markdown for CI logs: runs, the summary table, warnings, what figures exist."""
    parts = []
    if runs:
        parts.append("**hilbed report**: " + ", ".join(f"`{r['run_id']}` ({r['state']}, git {r['git']})" for r in runs))
        parts.append("")
    parts.append(markdown_table(summ, by))
    if warnings:
        parts += ["**Warnings**", ""] + [f"- {w}" for w in warnings] + [""]
    if notes:
        parts += ["**Notes**", ""] + [f"- {n}" for n in notes] + [""]
    if figures:
        parts.append("Figures: " + ", ".join(f"`{f}.png`" for f in figures))
    return "\n".join(parts).rstrip("\n") + "\n"
