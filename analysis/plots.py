"""Figures. One registry gives every codec the same colour and marker everywhere."""

from __future__ import annotations

import hashlib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .schema import LATENCY_COMPONENTS  # noqa: E402

_PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
            "#bcbd22", "#7f7f7f", "#393b79", "#637939", "#8c6d31", "#843c39"]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p"]
COMPONENT_COLOURS = {"encode": "#4c72b0", "transmit": "#dd8452", "decode": "#55a868", "infer": "#c44e52",
                     "return": "#8172b3"}


def codec_style(label: str) -> dict:
    """Stable colour and marker for a codec variant (hash of its label)."""
    h = int(hashlib.sha1(label.encode()).hexdigest(), 16)
    return {"color": _PALETTE[h % len(_PALETTE)], "marker": _MARKERS[(h // 7) % len(_MARKERS)]}


def _save(fig, out: Path, name: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "svg"):
        p = out / f"{name}.{ext}"
        fig.savefig(p, dpi=130, bbox_inches="tight")
        paths.append(p)
    plt.close(fig)
    return paths


def latency_breakdown(summary: pd.DataFrame, df_lat: pd.DataFrame, out: Path) -> list[Path]:
    """Stacked p50 of each component per codec x condition, whiskers = e2e p10..p90."""
    groups = list(summary[["codec_label", "condition"]].itertuples(index=False, name=None))
    fig, ax = plt.subplots(figsize=(max(6, 0.55 * len(groups) + 2), 4.2))
    x = range(len(groups))
    bottom = [0.0] * len(groups)
    for comp in LATENCY_COMPONENTS:
        vals = [float(v) if v == v else 0.0 for v in summary[f"{comp}_p50_ms"]]
        ax.bar(x, vals, bottom=bottom, color=COMPONENT_COLOURS[comp], label=comp, width=0.7)
        bottom = [b + v for b, v in zip(bottom, vals)]
    lo, hi = [], []
    for (codec, cond), b in zip(groups, bottom):
        e = df_lat[(df_lat.codec_label == codec) & (df_lat.condition == cond)]["e2e_ms"].dropna()
        if len(e):
            lo.append(max(0.0, b - e.quantile(0.1)))
            hi.append(max(0.0, e.quantile(0.9) - b))
        else:
            lo.append(0.0)
            hi.append(0.0)
    ax.errorbar(list(x), bottom, yerr=[lo, hi], fmt="none", ecolor="black", capsize=3, lw=1, label="e2e p10-p90")
    ax.set_xticks(list(x))
    ax.set_xticklabels([f"{c}\n{k}" for c, k in groups], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("latency (ms), median per component")
    ax.set_title("Latency breakdown")
    ax.legend(fontsize=7, ncol=3)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, out, "latency_breakdown")


def accuracy_vs_bytes(summary: pd.DataFrame, out: Path) -> list[Path]:
    """Top-1 against mean encoded bytes, one panel line per condition."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for codec, g in summary.groupby("codec_label", sort=False):
        st = codec_style(codec)
        ax.errorbar(g["bytes_mean"], g["top1"] * 100,
                    yerr=[(g["top1"] - g["top1_lo"]) * 100, (g["top1_hi"] - g["top1"]) * 100],
                    fmt=st["marker"], color=st["color"], label=codec, capsize=2, ms=5)
    ax.set_xscale("log")
    ax.set_xlabel("mean encoded bytes per image")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title("Accuracy vs bytes (all conditions)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, out, "accuracy_vs_bytes")
