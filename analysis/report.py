"""HTML (self-contained) and Markdown reports from one or more run directories."""

from __future__ import annotations

import base64
import math
from pathlib import Path

import jinja2
import pandas as pd

from . import plots
from .load import load_manifest, load_runs
from .metrics import summary, with_latency

COLUMNS = [("codec_label", "codec"), ("condition", "condition"), ("n", "n"), ("top1", "top-1 %"),
           ("top1_ci", "95% CI"), ("top5", "top-5 %"), ("bytes_mean", "mean bytes"),
           ("bytes_delivered_mean", "delivered bytes"), ("e2e_p50_ms", "e2e p50 ms"), ("e2e_p95_ms", "e2e p95 ms"),
           ("miss_rate", "miss %")]


def _fmt_row(r: pd.Series) -> list[str]:
    def f(x, nd=1):
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"
    return [str(r["codec_label"]), str(r["condition"]), str(int(r["n"])), f(100 * r["top1"]),
            f"{f(100 * r['top1_lo'])}-{f(100 * r['top1_hi'])}", f(100 * r["top5"]), f(r["bytes_mean"], 0),
            f(r["bytes_delivered_mean"], 0), f(r["e2e_p50_ms"]), f(r["e2e_p95_ms"]), f(100 * r["miss_rate"])]


def warnings_for(df_lat: pd.DataFrame, manifests: list[dict]) -> list[str]:
    out = []
    for m in manifests:
        for node, c in (m.get("clock_offsets") or {}).items():
            unc_ms = max((v.get("uncertainty_ns", 0) for v in c.values()), default=0) / 1e6 if isinstance(c, dict) else 0
            comp = df_lat[["decode_ms", "infer_ms", "return_ms"]].median().min()
            if unc_ms and comp == comp and unc_ms > comp:
                out.append(f"{m.get('run_id')}: clock uncertainty of {node} ({unc_ms:.3f} ms) exceeds the smallest "
                           f"median latency component ({comp:.3f} ms)")
        if m.get("state") not in ("complete", None):
            out.append(f"{m.get('run_id')}: run state is '{m.get('state')}' (resume it with `hilbed resume`)")
    errs = df_lat["error"].dropna()
    if len(errs):
        out.append(f"{len(errs)} image(s) got no reply from the edge; first: {errs.iloc[0]}")
    small = df_lat.groupby(["codec_label", "condition"]).size()
    if len(small) and small.min() < 30:
        out.append(f"some cells have fewer than 30 images (min {small.min()}): differences of a few points "
                   "are not significant")
    return out


def build_report(run_dirs: list[str | Path], out_dir: str | Path | None = None) -> Path:
    run_dirs = [Path(d) for d in run_dirs]
    out = Path(out_dir) if out_dir else run_dirs[0] / "report"
    out.mkdir(parents=True, exist_ok=True)
    df = load_runs(run_dirs)
    manifests = [load_manifest(d) for d in run_dirs]
    lat = with_latency(df)
    summ = summary(df) if len(df) else pd.DataFrame()
    figures = []
    if len(summ):
        for fn, title, caption in (
            (plots.latency_breakdown, "Latency breakdown",
             "median of each component per codec and condition; whiskers: end-to-end p10-p90"),
            (plots.accuracy_vs_bytes, "Accuracy vs bytes", "top-1 with 95% Wilson interval against mean encoded bytes"),
        ):
            paths = fn(summ, lat, out) if fn is plots.latency_breakdown else fn(summ, out)
            png = [p for p in paths if p.suffix == ".png"][0]
            src = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
            figures.append({"src": src, "title": title, "caption": caption})
        summ.to_csv(out / "summary.csv", index=False)
    env = jinja2.Environment(loader=jinja2.PackageLoader("analysis", "templates"), autoescape=True)
    runs = []
    for d, m in zip(run_dirs, manifests):
        clocks = {}
        for node, c in (m.get("clock_offsets") or {}).items():
            clocks[node] = ", ".join(f"{k}: {v['offset_ns'] / 1e6:+.3f} ms ± {v['uncertainty_ns'] / 1e6:.3f}"
                                     for k, v in c.items() if isinstance(v, dict) and "offset_ns" in v)
        runs.append({"run_id": m.get("run_id", d.name), "state": m.get("state", "?"),
                     "scenario": (m.get("scenario") or {}).get("name"), "testbed": (m.get("testbed") or {}).get("name"),
                     "git": m.get("git", {}).get("sha"), "started": m.get("started_at"), "finished": m.get("finished_at"),
                     "host": m.get("host"), "versions": m.get("versions"), "model": m.get("model"), "clocks": clocks})
    html = env.get_template("report.html.j2").render(
        title=", ".join(r["scenario"] or "?" for r in runs), runs=runs, n_records=len(df),
        columns=[c for _, c in COLUMNS], rows=[_fmt_row(r) for _, r in summ.iterrows()] if len(summ) else [],
        figures=figures, warnings=warnings_for(lat, manifests) if len(df) else ["no records"])
    (out / "index.html").write_text(html, encoding="utf-8")
    (out / "summary.md").write_text(markdown_summary(summ), encoding="utf-8")
    return out / "index.html"


def markdown_summary(summ: pd.DataFrame) -> str:
    head = "| " + " | ".join(c for _, c in COLUMNS) + " |"
    sep = "|" + "---|" * len(COLUMNS)
    rows = ["| " + " | ".join(_fmt_row(r)) + " |" for _, r in summ.iterrows()] if len(summ) else []
    return "\n".join([head, sep, *rows]) + "\n"
