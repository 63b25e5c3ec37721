"""Figures for reproducing the seed papers (docs/reproduction.md), beside the general ones in :mod:`.plots`.

Same conventions as :mod:`.plots`: each function takes the records with
latency columns, the output directory and the
:class:`~hilbed.analysis.styles.StyleRegistry`, returns a
:class:`~hilbed.analysis.plots.Figure` and raises
:class:`~hilbed.analysis.plots.SkipPlot` with the reason when its data is absent.

This module imports :mod:`.plots`, so :mod:`.plots` must not import it (the
architecture test forbids import cycles): the report registers these
figures next to ``plots.ALL`` (:data:`ALL` here).
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .metrics import _flag, _num  # noqa: E402
from .plots import Figure, SkipPlot, _legend_right, _save  # noqa: E402
from .styles import StyleRegistry  # noqa: E402

#: columns the AdaCompress timeline needs (all in nodes/record.py)
ADACOMPRESS_COLUMNS = ("codec", "codec_label", "codec_params", "condition", "trial_id", "t_arrival_ns",
                       "bytes_total", "chunks_total", "correct1")
#: the agent's state per image (the client copies the codec's Encoded.meta["state"]); runs recorded before it
#: existed lack it, and the figure then infers the state
STATE_COLUMN = "codec_state"
#: AdaCompress's recent-window length n (docs/codecs.md): a run of at least this many estimated images in a row is
#: read as querying / retraining (in inference an image is estimated with probability p_est only)
FULL_ESTIMATION_RUN = 10
#: state -> lane colour; estimated images in inference are drawn as ticks on top
STATE_COLOURS = {"inference": "#dddddd", "estimation": "#f0bc94", "querying": "#9467bd", "retraining": "#d62728",
                 "querying/retraining": "#d62728"}


def _quality(params) -> float | None:
    try:
        q = json.loads(params).get("quality") if isinstance(params, str) else None
    except (ValueError, AttributeError):
        return None
    return float(q) if isinstance(q, (int, float)) and not isinstance(q, bool) else None


def _first_trial(g: pd.DataFrame) -> pd.DataFrame:
    """One trial of a variant (the earliest), its images in arrival order."""
    g = g.assign(_t=_num(g["t_arrival_ns"]))
    first = g.groupby("trial_id", sort=False)["_t"].min().sort_values(kind="stable").index[0]
    t = g[g["trial_id"] == first]
    if "client" in t and t["client"].nunique() > 1:
        t = t[t["client"].astype(str) == str(t["client"].dropna().iloc[0])]
    return t.sort_values("_t", kind="stable", na_position="last")


def _rolling(v: np.ndarray, w: int) -> np.ndarray:
    return pd.Series(v).rolling(w, min_periods=max(1, w // 2)).mean().to_numpy()


def inferred_states(estimated: np.ndarray, run: int = FULL_ESTIMATION_RUN) -> np.ndarray:
    """Per image 'inference' or 'querying/retraining': runs of >= ``run`` estimated images in a row are the latter."""
    out = np.full(len(estimated), "inference", dtype=object)
    i = 0
    while i < len(estimated):
        if estimated[i]:
            j = i
            while j < len(estimated) and estimated[j]:
                j += 1
            if j - i >= run:
                out[i:j] = "querying/retraining"
            i = j
        else:
            i += 1
    return out


def _spans(states: np.ndarray) -> list[tuple[str, int, int]]:
    """(state, start, length) for each run of one state."""
    out: list[tuple[str, int, int]] = []
    for k, s in enumerate(states):
        if out and out[-1][0] == s:
            out[-1] = (s, out[-1][1], out[-1][2] + 1)
        else:
            out.append((s, k, 1))
    return out


def adacompress_timeline(df: pd.DataFrame, out: Path, styles: StyleRegistry) -> Figure:
    """AdaCompress over one trial (the paper's Fig. 12): upload bytes, top-1 and the agent's state per image."""
    missing = [c for c in ADACOMPRESS_COLUMNS if c not in df.columns]
    if missing:
        raise SkipPlot(f"the records lack {', '.join(missing)}")
    ada = df[df["codec"].astype(str) == "adacompress"]
    if len(ada) == 0:
        raise SkipPlot("no AdaCompress variant in the data")
    if ada["t_arrival_ns"].notna().sum() == 0:
        raise SkipPlot("no arrival timestamps for the AdaCompress images")
    has_state = STATE_COLUMN in df.columns and ada[STATE_COLUMN].notna().any()
    conds = list(dict.fromkeys(ada["condition"].astype(str)))
    labels = list(dict.fromkeys(ada["codec_label"].astype(str)))
    is_ref = (df["codec"].astype(str) == "jpeg") & (df["codec_params"].map(_quality) == 75.0)
    refs = df[is_ref]

    fig, axes = plt.subplots(3, len(conds), figsize=(6.2 * len(conds), 8.4), squeeze=False, sharex="col",
                             gridspec_kw={"height_ratios": [1.2, 1.2, 0.35 * len(labels) + 0.6]})
    notes = []
    for col, cond in enumerate(conds):
        ax_b, ax_a, ax_s = axes[0][col], axes[1][col], axes[2][col]
        c = ada[ada["condition"].astype(str) == cond]
        n_max = 1
        for lane, label in enumerate(labels):
            g = c[c["codec_label"].astype(str) == label]
            if len(g) == 0:
                continue
            t = _first_trial(g)
            n = len(t)
            n_max = max(n_max, n)
            w = max(5, min(100, n // 20))
            x = np.arange(n)
            st = styles.style(label)
            estimated = _num(t["chunks_total"]) > 1  # the q75 reference travels as a second chunk
            ax_b.plot(x, _rolling(_num(t["bytes_total"]), w), color=st["color"], lw=1.4, label=label)
            ax_a.plot(x, 100 * _rolling(_flag(t["correct1"]).astype(float), w), color=st["color"], lw=1.4)
            if has_state:
                states = t[STATE_COLUMN].fillna("inference").astype(str).to_numpy(dtype=object)
            else:
                states = inferred_states(estimated)
            for s, start, length in _spans(states):
                ax_s.broken_barh([(start - 0.5, length)], (lane - 0.35, 0.7),
                                 color=STATE_COLOURS.get(s, "#8c564b"), lw=0)
            lone = np.flatnonzero(estimated & (states == "inference"))
            if len(lone):
                ax_s.vlines(lone, lane - 0.35, lane + 0.35, color=st["color"], lw=0.8)
        for label in dict.fromkeys(refs["codec_label"].astype(str)):
            r = refs[(refs["codec_label"].astype(str) == label) & (refs["condition"].astype(str) == cond)]
            if len(r) == 0:
                continue
            st = styles.style(label)
            ax_b.axhline(float(np.nanmean(_num(r["bytes_total"]))), color=st["color"], ls="--", lw=1,
                         label=f"{label} (mean)")
            ax_a.axhline(100 * float(np.mean(_flag(r["correct1"]))), color=st["color"], ls="--", lw=1)
        ax_b.set_ylabel("upload bytes per image\n(rolling mean)")
        ax_b.set_title(cond, fontsize=9)
        ax_a.set_ylabel("top-1 (%, rolling)")
        ax_a.set_ylim(-3, 103)
        for ax in (ax_b, ax_a):
            ax.grid(alpha=0.3)
        ax_s.set_yticks(range(len(labels)))
        ax_s.set_yticklabels(labels, fontsize=8)
        ax_s.set_ylim(len(labels) - 0.5, -0.5)
        ax_s.set_xlim(-0.5, n_max - 0.5)
        ax_s.set_xlabel("image in trial (arrival order)")
        ax_s.set_title("agent state" + ("" if has_state else " (inferred from reference uploads)"), fontsize=8)
    if refs.empty:
        notes.append("No JPEG q75 variant in the data, so there is no benchmark line.")
    for s in (("inference", "querying", "retraining") if has_state else ("inference", "querying/retraining")):
        axes[2][-1].plot([], [], color=STATE_COLOURS[s], lw=6, label=s)
    fig.suptitle("AdaCompress over time", y=1.0)
    fig.tight_layout()
    _legend_right(fig, axes[0][-1])
    h, lab = axes[2][-1].get_legend_handles_labels()
    axes[2][-1].legend(h, lab, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)
    state_text = ("Bottom: the agent's state per image as recorded." if has_state else
                  "Bottom: the agent's state inferred (this run's records do not carry it): an estimated image "
                  "uploads the q75 reference as a second chunk (chunks_total 2, a tick), and "
                  f"{FULL_ESTIMATION_RUN} or more estimated images in a row (every image estimated) are read as "
                  "querying or retraining. Variants without reference uploads (frozen, reference: label) show no "
                  "estimation.")
    caption = ("Each AdaCompress variant's first trial image by image: top, upload bytes per image (reference "
               "uploads included) as a rolling mean; middle, rolling top-1; dashed lines: the JPEG q75 "
               "variants' means, the paper's benchmark. " + state_text + (" " + " ".join(notes) if notes else ""))
    return Figure("adacompress_timeline", "AdaCompress over time", caption, _save(fig, out, "adacompress_timeline"))


#: the figures of this module, in report order (registered beside ``plots.ALL`` by the report)
ALL = (adacompress_timeline,)
