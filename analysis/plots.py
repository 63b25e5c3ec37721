"""Figures of a report, each saved as PNG and SVG.

Every function takes the records with latency columns (``with_latency``), the
output directory and the :class:`~hilbed.analysis.styles.StyleRegistry`, and returns
a :class:`Figure`; a figure whose data is absent (one jamming level, one
deadline, no timestamps) raises :class:`SkipPlot` with the reason, which the
report shows as a note.

:data:`ALL` are drawn in every report; :data:`FLEET` (goodput, misses and
fairness against the number of clients, latency per client) in its Fleet
section, only when some condition ran more than one client.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from . import fleet as fleet_views  # noqa: E402
from .metrics import _flag, _num, has_energy, summary, throughput_series  # noqa: E402
from .runlog import EVENT_STYLE, RunMark, run_marks, unapplied  # noqa: E402
from .schema import LATENCY_COMPONENTS  # noqa: E402
from .styles import COMPONENT_COLOURS, COMPONENT_HATCH, StyleRegistry, codec_style  # noqa: E402,F401

JAMMING_ORDER = ("none", "light", "medium", "heavy")
#: condition fields other than jamming / deadline that make a distinct link setup
SETUP_FIELDS = ("link_kind", "link_rate_kbps", "trace_name", "link_delay_ms")


class SkipPlot(Exception):
    """The data for this figure is absent; the message says what is missing."""


@dataclass
class Figure:
    name: str
    title: str
    caption: str
    paths: list[Path] = field(default_factory=list)

    @property
    def png(self) -> Path:
        return next(p for p in self.paths if p.suffix == ".png")


def _save(fig, out: Path, name: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "svg"):
        p = out / f"{name}.{ext}"
        fig.savefig(p, dpi=110, bbox_inches="tight", metadata={"Date": None} if ext == "svg" else None)
        paths.append(p)
    plt.close(fig)
    return paths


def _fmt(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:g}" if isinstance(x, (int, float)) else str(x)


def _setup_label(key: tuple) -> str:
    d = dict(zip(SETUP_FIELDS, key))
    ok = lambda k: d.get(k) is not None and not pd.isna(d.get(k))  # noqa: E731
    parts = [str(d["link_kind"]) if ok("link_kind") else "?"]
    if ok("link_rate_kbps"):
        parts.append(f"{d['link_rate_kbps']:g} kbit/s")
    if ok("trace_name"):
        parts.append(str(d["trace_name"]))
    if ok("link_delay_ms") and d["link_delay_ms"]:
        parts.append(f"+{d['link_delay_ms']:g} ms delay")
    return " ".join(parts)


def _setups(df: pd.DataFrame, extra: tuple[str, ...] = ()) -> list[tuple[str, pd.DataFrame]]:
    keys = [*SETUP_FIELDS, *extra]
    out = []
    for key, g in df.groupby(keys, sort=False, dropna=False):
        label = _setup_label(key[: len(SETUP_FIELDS)])
        for f, v in zip(extra, key[len(SETUP_FIELDS):]):
            label += f", {f.replace('_ms', '').replace('_level', '')} {_fmt(v)}" + (" ms" if f.endswith("_ms") else "")
        out.append((label, g))
    return out


def _grid(n: int, ncols: int = 3, w: float = 4.6, h: float = 3.6):
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(w * ncols, h * nrows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _yerr(s: pd.DataFrame, metric: str) -> np.ndarray:
    """Interval ends as non-negative error-bar lengths in percent points."""
    v = s[metric].to_numpy(dtype=float)
    lo = np.clip(v - s[f"{metric}_lo"].to_numpy(dtype=float), 0, None)
    hi = np.clip(s[f"{metric}_hi"].to_numpy(dtype=float) - v, 0, None)
    return 100 * np.vstack([lo, hi])


def _legend_right(fig, ax, **kw) -> None:
    """One legend outside the panels, on the right, so it never hides data."""
    h, lab = ax.get_legend_handles_labels()
    if h:
        fig.legend(h, lab, loc="upper left", bbox_to_anchor=(1.0, 0.95), fontsize=8, frameon=False, **kw)


def _plain_log_x(ax) -> None:
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _codec_order(df: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(df["codec_label"].astype(str)))


# ------------------------------------------------------------- breakdown ---

def latency_breakdown(df: pd.DataFrame, out: Path, styles: StyleRegistry) -> Figure:
    """Stacked medians of the latency parts per codec x condition; e2e p50 marker and p10-p90 whisker."""
    d = df.dropna(subset=["e2e_ms"])
    if len(d) == 0:
        raise SkipPlot("no image got a reply, so there is no latency to break down")
    summ = summary(d, ["condition", "codec_label"])
    n = len(summ)
    fig, ax = plt.subplots(figsize=(max(7.0, 0.5 * n + 2.5), 4.8))
    x = np.arange(n)
    bottom = np.zeros(n)
    for comp in LATENCY_COMPONENTS:
        vals = np.nan_to_num(summ[f"{comp}_p50_ms"].to_numpy(dtype=float))
        ax.bar(x, vals, bottom=bottom, color=COMPONENT_COLOURS[comp], label=f"{comp} (p50)", width=0.72,
               edgecolor="white", linewidth=0.4, hatch=COMPONENT_HATCH.get(comp))
        bottom += vals
    p50 = summ["e2e_p50_ms"].to_numpy(dtype=float)
    lo = np.clip(p50 - summ["e2e_p10_ms"].to_numpy(dtype=float), 0, None)
    hi = np.clip(summ["e2e_p90_ms"].to_numpy(dtype=float) - p50, 0, None)
    ax.errorbar(x, p50, yerr=[lo, hi], fmt="D", color="black", ms=3.5, capsize=3, lw=1, label="e2e p50, p10-p90")
    # condition separators, labels and deadlines
    conds = summ["condition"].astype(str).to_numpy()
    starts = [i for i in range(n) if i == 0 or conds[i] != conds[i - 1]]
    ymax = float(np.nanmax(np.concatenate([bottom, p50 + hi]))) if n else 1.0
    top = ymax
    for k, s in enumerate(starts):
        e = starts[k + 1] if k + 1 < len(starts) else n
        if s > 0:
            ax.axvline(s - 0.5, color="#999", lw=0.8)
        ax.text((s + e - 1) / 2, 1.01, conds[s], ha="center", va="bottom", fontsize=8,
                transform=ax.get_xaxis_transform())
        dl = summ["deadline_ms"].iloc[s]
        if dl == dl and dl <= ymax * 1.5:
            ax.hlines(dl, s - 0.45, e - 0.55, colors="#c00", linestyles="dashed", lw=1,
                      label="deadline" if k == 0 else None)
            top = max(top, dl)  # a drawn deadline stays in view
    ax.set_ylim(0, max(top * 1.08, 1e-3))
    ax.set_xticks(x)
    ax.set_xticklabels(summ["codec_label"].astype(str), rotation=50, ha="right", fontsize=8)
    for t, lb in zip(ax.get_xticklabels(), summ["codec_label"].astype(str)):
        t.set_color(styles.style(lb)["color"])
    ax.set_ylabel("latency (ms)")
    ax.set_title("Latency breakdown per codec and condition", pad=18)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return Figure("latency_breakdown", "Latency breakdown",
                  "Stacked bars: median of each latency part per codec and condition: wait (hatched: the client "
                  "still busy with earlier images), encode (the codec alone), queue (hatched: encoded, waiting for "
                  "the link), transmit (on the link up to END or the deadline), decode, infer, return. Per image "
                  "the parts add up to its end-to-end latency; black diamond and whisker: end-to-end median and "
                  "p10-p90 spread (medians of parts need not add up to the e2e median); red dashes: deadline.",
                  _save(fig, out, "latency_breakdown"))


# -------------------------------------------------------------- accuracy ---

def _jamming_order(levels: list[str], df: pd.DataFrame) -> list[str]:
    known = [lv for lv in JAMMING_ORDER if lv in levels]
    rest = [lv for lv in levels if lv not in JAMMING_ORDER]
    if rest:
        load = df.groupby("jamming_level", dropna=False)["jammer_mbps"].mean()
        rest.sort(key=lambda lv: (float(load.get(lv, np.nan)) if load.get(lv, np.nan) == load.get(lv, np.nan)
                                  else math.inf, lv))
    return known + rest


def _accuracy_panels(df: pd.DataFrame, xfield: str, setups, styles: StyleRegistry, xorder=None, xlabel="",
                     xticklabels=None):
    fig, axes = plt.subplots(len(setups), 2, figsize=(10, 3.6 * len(setups)), squeeze=False)
    for row, (label, g) in enumerate(setups):
        s = summary(g, ["codec_label", xfield])
        for col, metric in enumerate(("top1", "top5")):
            ax = axes[row][col]
            for codec in _codec_order(g):
                c = s[s["codec_label"].astype(str) == codec].copy()
                if xorder is not None:
                    c["_x"] = [xorder.index(str(v)) for v in c[xfield].astype(str)]
                else:
                    c["_x"] = c[xfield].astype(float)
                c = c.sort_values("_x")
                st = styles.style(codec)
                ax.errorbar(c["_x"], 100 * c[metric], yerr=_yerr(c, metric),
                            color=st["color"], marker=st["marker"], capsize=2, ms=5, lw=1.3, label=codec)
            if xorder is not None:
                ax.set_xticks(range(len(xorder)))
                ax.set_xticklabels(xticklabels or xorder, fontsize=8)
            ax.set_ylim(-3, 103)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"{'top-1' if metric == 'top1' else 'top-5'} accuracy (%)")
            ax.set_title(label, fontsize=9)
            ax.grid(alpha=0.3)
    fig.tight_layout()
    _legend_right(fig, axes[0][1])
    return fig


def accuracy_vs_jamming(df: pd.DataFrame, out: Path, styles: StyleRegistry) -> Figure:
    """Top-1 and top-5 (Wilson 95%) per codec across jamming levels, one row per link setup."""
    levels = [str(v) for v in df["jamming_level"].dropna().unique()]
    if len(levels) < 2:
        raise SkipPlot(f"only one jamming level in the data ({levels[0] if levels else 'none recorded'})")
    order = _jamming_order(levels, df)
    mbps = df.groupby(df["jamming_level"].astype(str))["jammer_mbps"].mean()
    ticks = [f"{lv}\n({mbps[lv]:.1f} Mbit/s)" if lv in mbps and mbps[lv] == mbps[lv] else lv for lv in order]
    setups = [(lb, g) for lb, g in _setups(df, ("deadline_ms",)) if g["jamming_level"].nunique() >= 2]
    if not setups:
        raise SkipPlot("no link setup was measured at two or more jamming levels")
    fig = _accuracy_panels(df, "jamming_level", setups, styles, xorder=order, xlabel="jamming level (measured load)",
                           xticklabels=ticks)
    fig.suptitle("Accuracy vs jamming level", y=1.02)
    return Figure("accuracy_vs_jamming", "Accuracy vs jamming level",
                  "Top-1 (left) and top-5 (right) accuracy with Wilson 95% intervals per codec at each jamming "
                  "level; tick labels give the jammer's mean measured throughput.",
                  _save(fig, out, "accuracy_vs_jamming"))


def accuracy_vs_deadline(df: pd.DataFrame, out: Path, styles: StyleRegistry) -> Figure:
    """Top-1 and top-5 per codec against the deadline, one row per link setup x jamming level."""
    dls = sorted(float(v) for v in df["deadline_ms"].dropna().unique())
    if len(dls) < 2:
        raise SkipPlot(f"only one deadline in the data ({_fmt(dls[0]) + ' ms' if dls else 'none recorded'})")
    setups = [(lb, g) for lb, g in _setups(df, ("jamming_level",)) if g["deadline_ms"].nunique() >= 2]
    if not setups:
        raise SkipPlot("no link setup was measured at two or more deadlines")
    fig = _accuracy_panels(df, "deadline_ms", setups, styles, xlabel="deadline (ms)")
    fig.suptitle("Accuracy vs deadline", y=1.02)
    return Figure("accuracy_vs_deadline", "Accuracy vs deadline",
                  "Top-1 (left) and top-5 (right) accuracy with Wilson 95% intervals per codec as the deadline "
                  "grows.", _save(fig, out, "accuracy_vs_deadline"))


def rate_accuracy(df: pd.DataFrame, out: Path, styles: StyleRegistry) -> Figure:
    """Top-1 against mean encoded bytes per condition; variants of one family joined into a curve."""
    if len(df) == 0:
        raise SkipPlot("no records")
    conds = list(dict.fromkeys(df["condition"].astype(str)))
    fig, axes = _grid(len(conds))
    for ax, cond in zip(axes, conds):
        s = summary(df[df["condition"].astype(str) == cond], ["codec_label", "codec"])
        for fam, f in s.groupby("codec", sort=False):
            f = f.sort_values("bytes_mean")
            if len(f) > 1:
                ax.plot(f["bytes_mean"], 100 * f["top1"], color="#888", lw=0.9, zorder=1)
        for _, r in s.iterrows():
            st = styles.style(r["codec_label"])
            ax.errorbar([r["bytes_mean"]], [100 * r["top1"]], yerr=_yerr(pd.DataFrame([r]), "top1"),
                        color=st["color"], marker=st["marker"], capsize=2, ms=6, label=str(r["codec_label"]),
                        zorder=2)
        if (s["bytes_mean"] > 0).all() and s["bytes_mean"].max() > 4 * max(s["bytes_mean"].min(), 1):
            _plain_log_x(ax)
        ax.set_ylim(-3, 103)
        ax.set_xlabel("mean encoded bytes per image")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title(cond, fontsize=9)
        ax.grid(alpha=0.3, which="both")
    fig.suptitle("Rate-accuracy", y=1.0)
    fig.tight_layout()
    _legend_right(fig, axes[-1])
    return Figure("rate_accuracy", "Rate-accuracy",
                  "Top-1 accuracy (Wilson 95%) against mean encoded bytes per image, one panel per condition; "
                  "grey lines join the variants of one codec family.", _save(fig, out, "rate_accuracy"))


def latency_cdf(df: pd.DataFrame, out: Path, styles: StyleRegistry) -> Figure:
    """Empirical CDF of end-to-end latency per codec, one panel per condition, deadline marked."""
    if df["e2e_ms"].notna().sum() == 0:
        raise SkipPlot("no image got a reply, so there is no end-to-end latency")
    conds = list(dict.fromkeys(df["condition"].astype(str)))
    fig, axes = _grid(len(conds))
    for ax, cond in zip(axes, conds):
        c = df[df["condition"].astype(str) == cond]
        for codec in _codec_order(c):
            g = c[c["codec_label"].astype(str) == codec]
            v = np.sort(_num(g["e2e_ms"]))
            v = v[~np.isnan(v)]
            if not len(v):
                continue
            y = np.arange(1, len(v) + 1) / len(g)  # images without a reply keep the curve below 1
            st = styles.style(codec)
            ax.step(v, y, where="post", color=st["color"], lw=1.4, label=codec)
            ax.plot(v[len(v) // 2], y[len(v) // 2], marker=st["marker"], color=st["color"], ms=5)
        dl = float(np.nanmedian(_num(c["deadline_ms"]))) if c["deadline_ms"].notna().any() else math.nan
        if dl == dl:
            ax.axvline(dl, color="#c00", ls="--", lw=1, label="deadline")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("end-to-end latency (ms)")
        ax.set_ylabel("fraction of images")
        ax.set_title(cond, fontsize=9)
        ax.grid(alpha=0.3)
    fig.suptitle("End-to-end latency CDF", y=1.0)
    fig.tight_layout()
    _legend_right(fig, axes[-1])
    return Figure("latency_cdf", "End-to-end latency CDF",
                  "Fraction of images with a result within x ms of their arrival, per codec and condition; "
                  "images without a reply keep a curve below 1; red dashes: deadline.",
                  _save(fig, out, "latency_cdf"))


def miss_heatmap(df: pd.DataFrame, out: Path, styles: StyleRegistry) -> Figure:
    """Deadline-miss rate (%) per codec (rows) x condition (columns)."""
    if len(df) == 0:
        raise SkipPlot("no records")
    s = summary(df)
    codecs = _codec_order(df)
    conds = list(dict.fromkeys(df["condition"].astype(str)))
    m = np.full((len(codecs), len(conds)), np.nan)
    n = np.zeros_like(m)
    for _, r in s.iterrows():
        i, j = codecs.index(str(r["codec_label"])), conds.index(str(r["condition"]))
        m[i, j], n[i, j] = 100 * r["miss_rate"], r["n"]
    fig, ax = plt.subplots(figsize=(max(4.5, 1.3 * len(conds) + 2.5), max(2.5, 0.42 * len(codecs) + 1.5)))
    im = ax.imshow(np.ma.masked_invalid(m), cmap="Reds", vmin=0, vmax=100, aspect="auto")
    for i in range(len(codecs)):
        for j in range(len(conds)):
            if m[i, j] == m[i, j]:
                ax.text(j, i, f"{m[i, j]:.0f}%", ha="center", va="center", fontsize=8,
                        color="white" if m[i, j] > 60 else "black")
    ax.set_xticks(range(len(conds)))
    ax.set_xticklabels(conds, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(codecs)))
    ax.set_yticklabels(codecs, fontsize=8)
    for t, lb in zip(ax.get_yticklabels(), codecs):
        t.set_color(styles.style(lb)["color"])
    fig.colorbar(im, ax=ax, label="deadline-miss rate (%)")
    ax.set_title("Deadline misses")
    fig.tight_layout()
    return Figure("miss_heatmap", "Deadline-miss heatmap",
                  "Share of images whose bytes did not all reach the edge by the deadline, per codec and "
                  "condition (blank: not measured).", _save(fig, out, "miss_heatmap"))


# -------------------------------------------------------------- timeline ---

def link_log_path(run_dir: str | Path, client: str, condition: str) -> Path:
    """Where the runner has a local ``trace`` link write its uplink log."""
    return Path(run_dir) / "logs" / f"link-{client}-{condition}.log"


def link_capacity(run_dir: str | Path, client: str, condition: str,
                  bin_s: float = 0.1) -> tuple[np.ndarray, np.ndarray] | str:
    """(bin start in unix s, kbit/s) of the capacity the link served to ``client`` in ``condition``.

    Read from the Mahimahi link log the link wrote during the run (its ``#``
    lines are the delivery opportunities after jamming), so it is what the
    link offered, whatever the trace file says now. A string says why there
    is none.
    """
    from hilbed.nodes.link.linklog import LinkLogError, read_capacity
    run_dir = Path(run_dir)
    p = link_log_path(run_dir, client, condition)
    if not p.is_file():
        return f"no {p.relative_to(run_dir)} in the run directory"
    try:
        cs = read_capacity(p, bin_ms=max(1, int(round(bin_s * 1000))))
    except (OSError, LinkLogError) as exc:
        return f"its link log is unreadable ({exc})"
    starts = cs.bin_starts_unix_s()
    if starts is None or not cs.bytes:
        return "its link log has no init timestamp or no events"
    return np.asarray(starts), np.asarray(cs.kbps())


def _run_dir_for(run: str, manifest: dict, run_dirs) -> Path | None:
    """The directory of run ``run`` among ``run_dirs`` (by name, else by the manifest's run id)."""
    dirs = [Path(p) for p in (run_dirs or [])]
    for p in dirs:
        if p.name == run:
            return p
    if dirs and (manifest.get("run_id") in (None, run) or len(dirs) == 1):
        return dirs[0]
    return None


def _period_s(d: pd.DataFrame) -> float:
    return float(np.nanmedian(_num(d["period_ms"]))) / 1e3 if d["period_ms"].notna().any() else 0.1


def visible_marks(d: pd.DataFrame, marks: list[RunMark], spans=()) -> tuple[list[RunMark], list]:
    """The events and not-applied spans that fall within the records' time range (one period either side)."""
    if len(d) == 0:
        return [], []
    period = _period_s(d)
    lo = int(pd.to_numeric(d["t_arrival_ns"]).min()) - int(period * 1e9)
    hi = int(pd.to_numeric(d["t_arrival_ns"]).max()) + 2 * int(period * 1e9)
    ms = [m for m in marks if m.t_ns is not None and lo <= m.t_ns <= hi]
    sp = [u for u in spans if u.t_start_ns is not None and u.t_end_ns is not None
          and u.t_start_ns <= hi and u.t_end_ns >= lo]
    return ms, sp


def _draw_marks(ax1, ax2, t0: int, marks: list[RunMark], spans) -> None:
    """Events as dash-dot verticals (one colour per kind), not-applied spans as red hatched bands."""
    seen: set[str] = set()
    for u in spans:
        a, b = (u.t_start_ns - t0) / 1e9, (u.t_end_ns - t0) / 1e9
        for ax in (ax1, ax2):
            ax.axvspan(a, b, facecolor="#d62728", alpha=0.12, hatch="xx", edgecolor="#d62728", lw=0, zorder=0.5,
                       label="not applied as asked" if ax is ax2 and "span" not in seen else None)
        seen.add("span")
    for m in marks:
        x = (m.t_ns - t0) / 1e9
        label, colour = EVENT_STYLE[m.category]
        for ax in (ax1, ax2):
            ax.axvline(x, color=colour, lw=1.4, ls="-.", zorder=4,
                       label=label if ax is ax2 and m.category not in seen else None)
        seen.add(m.category)


def _timeline_axes(d: pd.DataFrame, styles: StyleRegistry, run_dir: Path | None, title: str, zoom: bool,
                   marks: list[RunMark] | None = None, spans=()):
    """The two panels; also the notes on what could not be drawn.

    ``marks`` (incidents, reconnects, watchdog stops, resumes) and ``spans``
    (conditions not applied as asked) are drawn where they fall in time.
    """
    t0 = int(pd.to_numeric(d["t_arrival_ns"]).min())
    arr = _num(d["t_arrival_ns"].astype("Int64") - t0) / 1e9
    period = _period_s(d)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(12, 6.2), sharex=True, gridspec_kw={"height_ratios": [1, 1.25]})
    # capacity per condition segment: the link log the run wrote, else the condition's constant rate
    seg_key = d["trial_id"].astype(str).to_numpy() if zoom else d["condition"].astype(str).to_numpy()
    starts = [i for i in range(len(d)) if i == 0 or seg_key[i] != seg_key[i - 1]]
    bin_s = max(period, 0.1)
    cap_cache: dict[tuple[str, str], object] = {}
    missing: dict[str, str] = {}
    cap_drawn = False
    for k, s in enumerate(starts):
        e = starts[k + 1] if k + 1 < len(starts) else len(d)
        ts, te = arr[s], arr[e - 1] + period
        rate = d["link_rate_kbps"].iloc[s]
        cond = str(d["condition"].iloc[s])
        client = str(d["client"].iloc[s]) if "client" in d else ""
        lab = "link capacity" if not cap_drawn else None
        key = (client, cond)
        if key not in cap_cache:
            cap_cache[key] = link_capacity(run_dir, client, cond, bin_s) if run_dir is not None \
                else "no run directory given"
        cap, why = cap_cache[key], None
        if isinstance(cap, str):
            why = cap
        else:
            xs = cap[0] - t0 / 1e9
            keep = (xs + bin_s > ts) & (xs < te)
            if keep.any():
                xk, yk = np.clip(xs[keep], ts, te), cap[1][keep]
                ax1.step(np.append(xk, min(float(xs[keep][-1]) + bin_s, te)), np.append(yk, yk[-1]), where="post",
                         color="black", lw=1.2, label=lab)
                cap_drawn = True
            else:
                why = "its link log does not cover its records"
        if why is not None:
            if rate == rate and rate is not None and not pd.isna(rate):
                ax1.plot([ts, te], [rate, rate], color="black", lw=1.6, label=lab)
                cap_drawn = True
            else:
                missing[cond] = why
        if k % 2 == 1:
            for ax in (ax1, ax2):
                ax.axvspan(ts, te, color="#f3f3f3", zorder=0)
        if len(starts) <= 24 and not zoom:
            name = f"{d['codec_label'].iloc[s]}\n{cond}" if zoom else cond
            ax1.text((ts + te) / 2, 1.0, name, transform=ax1.get_xaxis_transform(), ha="center", va="bottom",
                     fontsize=7)
    tp = throughput_series(d, bin_s=max(period, 0.05), t0_ns=t0)
    ax1.step(tp["t_s"], tp["kbps"], where="post", color="#d62728", lw=1.2, label="payload throughput")
    ax1.set_ylabel("kbit/s")
    ax1.set_ylim(bottom=0)
    ax1.grid(alpha=0.3)
    jam = _num(d["jammer_load"])
    if (~np.isnan(jam)).any():
        axj = ax1.twinx()
        axj.step(arr, jam, where="post", color="#7f7f7f", ls="--", lw=1, label="jammer load")
        axj.set_ylim(0, 1.05)
        axj.set_ylabel("jammer load (air time)")
        h1, l1 = ax1.get_legend_handles_labels()
        h2, l2 = axj.get_legend_handles_labels()
        ax1.legend(h1 + h2, l1 + l2, fontsize=8, loc="upper left", bbox_to_anchor=(1.07, 1.0), frameon=False)
    else:
        ax1.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False,
                   title="jammer load:\nnot measured", title_fontsize=8)
    # bytes needed vs delivered per image
    width = period * 0.8
    need, got = _num(d["bytes_total"]), _num(d["bytes_delivered"])
    ax2.bar(arr, need, width=width, align="edge", color="#c8c8c8", label="bytes needed (encoded)")
    cols = [styles.style(c)["color"] for c in d["codec_label"].astype(str)]
    ax2.bar(arr, got, width=width * 0.6, align="edge", color=cols, label="bytes delivered by the deadline")
    missed = ~_flag(d["deadline_met"])
    top = float(np.nanmax(need)) if len(need) else 1.0
    ax2.plot(arr[missed] + width / 2, np.full(int(missed.sum()), top * 1.06), "v", color="#c00", ms=4,
             label="deadline missed", ls="none")
    if zoom:
        dl = _num(d["deadline_ms"]) / 1e3
        for a, x in zip(arr, dl):
            if x == x:
                ax2.axvline(a + x, color="#c00", lw=0.5, alpha=0.5, ls=":")
        ax2.plot([], [], color="#c00", lw=0.5, ls=":", label="deadline")
        for a, n_, c_, g_ in zip(arr, _num(d["chunks_delivered"]), _num(d["chunks_total"]), got):
            if c_ == c_ and c_ > 1:
                ax2.text(a + width / 2, (g_ if g_ == g_ else 0), f"{n_:.0f}/{c_:.0f}", ha="center", va="bottom",
                         fontsize=6)
    ax2.set_ylim(0, top * 1.15 if top == top and top > 0 else 1)
    vm, vs = visible_marks(d, marks or [], spans)
    _draw_marks(ax1, ax2, t0, vm, vs)
    ax2.set_ylabel("bytes per image")
    ax2.set_xlabel("time since the first arrival (s)")
    from matplotlib.patches import Patch
    handles, labels = ax2.get_legend_handles_labels()
    keep = [(h, lb) for h, lb in zip(handles, labels) if lb != "bytes delivered by the deadline"]
    codecs = _codec_order(d)
    handles = [h for h, _ in keep] + [Patch(color=styles.style(c)["color"]) for c in codecs]
    labels = [lb for _, lb in keep] + [f"delivered: {c}" for c in codecs]
    ax2.legend(handles, labels, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax2.grid(alpha=0.3, axis="y")
    notes = [f"no capacity curve for {c}: {why}" for c, why in missing.items()]
    if notes:
        ax1.text(0.01, 0.97, "\n".join(notes), transform=ax1.transAxes, ha="left", va="top", fontsize=7,
                 color="#555", bbox={"facecolor": "white", "edgecolor": "#bbb", "alpha": 0.85, "pad": 2})
    ax1.set_title(title, pad=16 if len(starts) <= 24 and not zoom else 6)
    fig.tight_layout()
    return fig, notes


CAPACITY_CAPTION = ("link capacity (black: what the link served, from the Mahimahi link logs the run wrote -- "
                    "after jamming --, or the condition's constant rate)")


def _caption(text: str, notes: list[str]) -> str:
    return text + ("" if not notes else " " + "; ".join(n[0].upper() + n[1:] for n in notes) + ".")


def _first_run(df: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    run = str(df["run_id"].dropna().iloc[0]) if df["run_id"].notna().any() else "?"
    d = df[df["run_id"].astype(str) == run] if df["run_id"].notna().any() else df
    d = d.dropna(subset=["t_arrival_ns"])
    if "client" in d and d["client"].nunique() > 1:
        d = d[d["client"].astype(str) == str(d["client"].dropna().iloc[0])]
    return run, d.sort_values("t_arrival_ns", kind="stable")


_COLOUR_NAMES = {"#d62728": "red", "#ff7f0e": "orange", "#9467bd": "purple", "#2ca02c": "green",
                 "#000000": "black", "#7f7f7f": "grey"}


def _marks_for(run_dir: Path | None, manifest: dict | None, events: list[dict] | None):
    """The run's notable events (from ``events`` or the run directory's events.jsonl) and unapplied spans."""
    if events is None and run_dir is not None:
        from .load import load_events
        events = load_events(run_dir)
    return run_marks(events or []), unapplied(manifest or {})


def _marks_caption(d: pd.DataFrame, marks: list[RunMark], spans) -> str:
    vm, vs = visible_marks(d, marks, spans)
    parts = []
    for cat, (label, colour) in EVENT_STYLE.items():
        n = sum(1 for m in vm if m.category == cat)
        if n:
            parts.append(f"{n} {label}{'s' if n > 1 else ''} ({_COLOUR_NAMES.get(colour, colour)})")
    text = f" Dash-dot lines: {', '.join(parts)} (listed under Run events)." if parts else ""
    if vs:
        text += (" Red hatched band: " + ", ".join(f"'{u.condition}' ({u.what})" for u in vs)
                 + " not applied as asked.")
    return text


def timeline(df: pd.DataFrame, out: Path, styles: StyleRegistry, manifest: dict | None = None,
             run_dirs: list[str | Path] | None = None, events: list[dict] | None = None) -> Figure:
    """The first run over time: capacity, throughput, jammer load; bytes needed/delivered per image; misses.

    The capacity comes from ``run_dirs`` (the run's link logs); without them
    only constant rates are drawn, and the caption says what is missing.
    Incidents, reconnects, jammer watchdog stops and resumes (``events``, else
    the run's events.jsonl) and conditions not applied as asked (manifest) are
    drawn where they happened.
    """
    if len(df) == 0 or df["t_arrival_ns"].notna().sum() == 0:
        raise SkipPlot("no arrival timestamps")
    run, d = _first_run(df)
    run_dir = _run_dir_for(run, manifest or {}, run_dirs)
    marks, spans = _marks_for(run_dir, manifest, events)
    fig, notes = _timeline_axes(d, styles, run_dir, f"Timeline of run {run}", zoom=False, marks=marks, spans=spans)
    return Figure("timeline", "Timeline of a run", _caption(
        f"Run {run} (client {d['client'].iloc[0]}): top, {CAPACITY_CAPTION}, payload throughput "
        "(red) and jammer load (grey dashes); bottom, per image at its arrival time, the encoded size "
        "(grey, bytes needed) and the bytes delivered by the deadline (codec colour); red triangles mark "
        "missed deadlines." + _marks_caption(d, marks, spans), notes), _save(fig, out, "timeline"))


def timeline_trial(df: pd.DataFrame, out: Path, styles: StyleRegistry, manifest: dict | None = None,
                   run_dirs: list[str | Path] | None = None, events: list[dict] | None = None) -> Figure:
    """One trial up close (the one with the most misses), PNC style: every deadline marked."""
    if len(df) == 0 or df["t_arrival_ns"].notna().sum() == 0:
        raise SkipPlot("no arrival timestamps")
    run, d = _first_run(df)
    misses = d.assign(_miss=~_flag(d["deadline_met"])).groupby("trial_id", sort=False)["_miss"].sum()
    trial = str(misses.idxmax())
    t = d[d["trial_id"].astype(str) == trial]
    r = t.iloc[0]
    run_dir = _run_dir_for(run, manifest or {}, run_dirs)
    marks, spans = _marks_for(run_dir, manifest, events)
    fig, notes = _timeline_axes(t, styles, run_dir, f"Trial {trial}: {r['codec_label']} on {r['condition']} "
                                f"({int(misses.max())} misses)", zoom=True, marks=marks, spans=spans)
    return Figure("timeline_trial", "Timeline of one trial", _caption(
        f"Trial {trial} of run {run} ({r['codec_label']}, {r['condition']}), the trial with the most "
        "missed deadlines: as the run timeline, with each image's deadline as a dotted red line and, "
        "for progressive codecs, the number of chunks delivered." + _marks_caption(t, marks, spans), notes),
        _save(fig, out, "timeline_trial"))


def accuracy_vs_energy(df: pd.DataFrame, out: Path, styles: StyleRegistry) -> Figure:
    """Top-1 against mean energy per image (encode + transmit), one panel per condition: what accuracy costs."""
    if len(df) == 0 or not has_energy(df):
        raise SkipPlot("no energy in the records (no power meter on the clients)")
    conds = list(dict.fromkeys(df["condition"].astype(str)))
    fig, axes = _grid(len(conds))
    drawn = 0
    for ax, cond in zip(axes, conds):
        s = summary(df[df["condition"].astype(str) == cond], ["codec_label", "codec"])
        s = s[s["energy_n"] > 0]
        for _, r in s.iterrows():
            st = styles.style(r["codec_label"])
            ax.errorbar([r["energy_mj_mean"]], [100 * r["top1"]], yerr=_yerr(pd.DataFrame([r]), "top1"),
                        color=st["color"], marker=st["marker"], capsize=2, ms=6, label=str(r["codec_label"]))
            drawn += 1
        ax.set_ylim(-3, 103)
        ax.set_xlabel("mean energy per image, encode + transmit (mJ)")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title(cond, fontsize=9)
        ax.grid(alpha=0.3)
    if not drawn:
        plt.close(fig)
        raise SkipPlot("no image has both an encode and a transmit energy")
    fig.suptitle("Accuracy vs energy", y=1.0)
    fig.tight_layout()
    _legend_right(fig, axes[-1])
    return Figure("accuracy_vs_energy", "Accuracy vs energy",
                  "Top-1 accuracy (Wilson 95%) against the mean energy per image (encode + transmit, images with "
                  "both measured), one panel per condition; up and to the left is better.",
                  _save(fig, out, "accuracy_vs_energy"))


# ----------------------------------------------------------------- fleet ---

_LINESTYLES = ("-", "--", ":", "-.")
#: the most panels of the per-client latency CDFs (the largest fleet of each condition group x codec)
FLEET_CDF_PANELS = 12


def _fleet_or_skip(df: pd.DataFrame) -> None:
    if len(df) == 0:
        raise SkipPlot("no records")
    n = fleet_views.max_clients(df)
    if n <= 1:
        raise SkipPlot(f"every condition ran {'one client' if n == 1 else 'no client'} (no fleet)")


def _fleet_lines(t: pd.DataFrame, styles: StyleRegistry):
    """(label, matplotlib style, rows) per condition group x codec: colour per group when the data has one codec,
    else the codec's colour and marker with one line style per group."""
    groups = list(dict.fromkeys(t["group"].astype(str)))
    codecs = list(dict.fromkeys(t["codec_label"].astype(str)))
    by_group = StyleRegistry(groups)
    out = []
    for (group, codec), c in t.groupby([t["group"].astype(str), t["codec_label"].astype(str)], sort=False):
        c = c.sort_values("n_clients")
        if len(codecs) == 1:
            st = {"color": by_group.style(group)["color"], "marker": styles.style(codec)["marker"], "ls": "-"}
            label = group
        else:
            st = {**styles.style(codec), "ls": _LINESTYLES[groups.index(group) % len(_LINESTYLES)]}
            label = f"{group} · {codec}"
        out.append((label, st, c))
    return out


def _clients_axis(ax, ns) -> None:
    ns = sorted({int(n) for n in ns})
    if ns and ns[-1] / max(ns[0], 1) >= 4:
        ax.set_xscale("log", base=2)
    ax.set_xticks(ns)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("clients streaming at once")
    ax.grid(alpha=0.3)


def fleet_goodput(df: pd.DataFrame, out: Path, styles: StyleRegistry) -> Figure:
    """Aggregate goodput (images/s, kbit/s) and deadline-miss rate against the number of clients, one line per
    condition group (and codec when there are several)."""
    _fleet_or_skip(df)
    t = fleet_views.fleet_table(df)
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(15, 4.2))
    ns = t["n_clients"].to_numpy(dtype=float)
    for period in sorted({float(p) for p in _num(t["period_ms"]) if p == p and p > 0}) if "period_ms" in t else []:
        xs = np.array(sorted(set(ns)))
        a1.plot(xs, xs * 1e3 / period, color="#999", ls="--", lw=1, zorder=1,
                label=f"offered (clients / {period:g} ms)")
    for label, st, c in _fleet_lines(t, styles):
        x = c["n_clients"].to_numpy(dtype=float)
        a1.plot(x, c["goodput_img_s"], color=st["color"], marker=st["marker"], ls=st["ls"], lw=1.4, ms=5,
                label=label)
        a2.plot(x, c["goodput_kbps"], color=st["color"], marker=st["marker"], ls=st["ls"], lw=1.4, ms=5)
        a3.errorbar(x, 100 * c["miss_rate"], yerr=_yerr(c.rename(columns={"miss_lo": "miss_rate_lo",
                                                                            "miss_hi": "miss_rate_hi"}), "miss_rate"),
                    color=st["color"], marker=st["marker"], ls=st["ls"], lw=1.4, ms=5, capsize=2)
    for ax, ylabel in ((a1, "goodput (images/s, all clients)"), (a2, "goodput (kbit/s payload, all clients)"),
                       (a3, "deadline-miss rate (%)")):
        _clients_axis(ax, ns)
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
    a3.set_ylim(-3, 103)
    fig.suptitle("Fleet goodput and deadline misses vs clients", y=1.0)
    fig.tight_layout()
    _legend_right(fig, a1)
    return Figure("fleet_goodput", "Fleet goodput and misses vs clients",
                  "Left: images that met the deadline and were decoded, per second, across all clients (grey "
                  "dashes: the images offered); middle: payload delivered by the deadline in kbit/s; right: "
                  "deadline-miss rate with Wilson 95% intervals. Per second of the conditions' wall span (first "
                  "to last arrival plus one period). One line per condition group (the condition without its "
                  "client count).", _save(fig, out, "fleet_goodput"))


def fleet_fairness(df: pd.DataFrame, out: Path, styles: StyleRegistry) -> Figure:
    """Jain's fairness index of the clients' goodput against the number of clients."""
    _fleet_or_skip(df)
    t = fleet_views.fleet_table(df)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ns = t["n_clients"].to_numpy(dtype=float)
    xs = np.array(sorted(set(ns)))
    ax.plot(xs, 1 / xs, color="#999", ls=":", lw=1, label="1/n: one client gets all")
    for label, st, c in _fleet_lines(t, styles):
        ax.plot(c["n_clients"].to_numpy(dtype=float), c["jain"], color=st["color"], marker=st["marker"],
                ls=st["ls"], lw=1.4, ms=5, label=label)
    _clients_axis(ax, ns)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("Jain's fairness index")
    ax.set_title("Fairness between clients")
    fig.tight_layout()
    _legend_right(fig, ax)
    return Figure("fleet_fairness", "Fairness vs clients",
                  "Jain's index (sum x)^2 / (n sum x^2) over the clients' goodput (images that met the deadline "
                  "and were decoded, per second): 1 when every client gets the same, 1/n (dotted) when one "
                  "client gets everything.", _save(fig, out, "fleet_fairness"))


def fleet_client_cdf(df: pd.DataFrame, out: Path, styles: StyleRegistry) -> Figure:
    """End-to-end latency CDF per client, one panel per condition group x codec at its largest fleet."""
    _fleet_or_skip(df)
    d = fleet_views.prepare(df)
    d = d[d["n_clients"].astype("Int64") > 1]
    if d["e2e_ms"].notna().sum() == 0:
        raise SkipPlot("no image of a multi-client condition got a reply")
    panels = []
    for (_, _), g in d.groupby([d["group"], d["codec_label"].astype(str)], sort=False):
        n = int(g["n_clients"].max())
        panels.append(g[g["n_clients"].astype("Int64") == n])
    shown = panels[:FLEET_CDF_PANELS]
    clients = StyleRegistry(d["client"].astype(str).unique())
    fig, axes = _grid(len(shown))
    best = (0, axes[0])
    for ax, g in zip(axes, shown):
        names = sorted(g["client"].astype(str).unique())
        for client in names:
            c = g[g["client"].astype(str) == client]
            v = np.sort(_num(c["e2e_ms"]))
            v = v[~np.isnan(v)]
            if not len(v):
                continue
            ax.step(v, np.arange(1, len(v) + 1) / len(c), where="post", color=clients.style(client)["color"], lw=1.3,
                    label=client)
        dl = float(np.nanmedian(_num(g["deadline_ms"]))) if g["deadline_ms"].notna().any() else math.nan
        if dl == dl:
            ax.axvline(dl, color="#c00", ls="--", lw=1, label="deadline")
        conds = ", ".join(dict.fromkeys(g["condition"].astype(str)))
        multi = d["codec_label"].nunique() > 1
        ax.set_title(f"{conds}: {int(g['n_clients'].max())} clients" + (f", {g['codec_label'].iloc[0]}" if multi
                                                                          else ""), fontsize=9)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("end-to-end latency (ms)")
        ax.set_ylabel("fraction of the client's images")
        ax.grid(alpha=0.3)
        if len(names) > best[0]:
            best = (len(names), ax)
    fig.suptitle("End-to-end latency per client", y=1.0)
    fig.tight_layout()
    _legend_right(fig, best[1])
    more = (f" The first {FLEET_CDF_PANELS} of {len(panels)} panels are drawn." if len(panels) > len(shown) else "")
    return Figure("fleet_client_cdf", "Latency per client",
                  "Fraction of each client's images with a result within x ms of their arrival, one panel per "
                  "condition group (and codec) at its largest number of clients; images without a reply keep a "
                  "curve below 1; red dashes: deadline. Curves apart: the clients are not served alike." + more,
                  _save(fig, out, "fleet_client_cdf"))


ALL = (latency_breakdown, accuracy_vs_jamming, accuracy_vs_deadline, rate_accuracy, latency_cdf, miss_heatmap,
       accuracy_vs_energy, timeline, timeline_trial)
#: the Fleet section's figures (drawn when some condition ran more than one client; each skips otherwise)
FLEET = (fleet_goodput, fleet_fairness, fleet_client_cdf)
