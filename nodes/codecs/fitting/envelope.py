"""Bytes against JPEG's best envelope at equal top-1, averaged over an accuracy range.

The method (what ``hilbed eval-codecs`` prints as "bytes vs JPEG envelope"):

1. **JPEG's best envelope.** Every JPEG row (``jpeg`` and ``jpeg-progressive``,
   any quality, subsampling, Huffman mode) is a point (log bytes, top-1), bytes
   being the entropy-coded payload per image (headers excluded). The envelope
   is the upper-left hull of all of them: the Pareto front (fewer bytes *and*
   higher top-1 than no other point), then its upper concave hull in
   (log bytes, top-1) so that a point lying under the chord of two others is
   dropped too (``hull="convex"``, the default; ``hull="monotone"`` keeps the
   whole Pareto front). At each top-1 it is the fewest bytes any JPEG variant,
   or a log-linear mix of two neighbours, needs.
2. **Interpolation.** Between its vertices an envelope is linear in log bytes
   vs top-1; it is never extrapolated.
3. **A codec's curve** gets the same construction (its own points' hull), so a
   non-monotone setting does not count against it.
4. **Ratio.** r(a) = bytes_codec(a) / bytes_jpeg(a) at equal top-1 a; the
   summary is the geometric mean of r(a) (the mean of the log ratio) over
   top-1 uniformly in the **overlap** of [lo, hi] (default 70-82 %) with both
   curves' ranges. The overlap is reported (``lo``, ``hi``, ``coverage``: the
   fraction of [lo, hi] it spans) so that a curve that only reaches part of the
   range is visible as such; with no overlap the ratio is None.

stdlib + numpy only.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np

JPEG_FAMILIES = ("jpeg", "jpeg-progressive")
RANGE = (0.70, 0.82)


def _points(rows: Iterable[dict], x: str, y: str) -> list[tuple[float, float]]:
    return [(float(r[x]), float(r[y])) for r in rows if r.get(x) is not None and float(r[x]) > 0]


def envelope(rows: Iterable[dict], x: str = "bytes_payload", y: str = "top1",
             hull: str = "convex") -> np.ndarray:
    """The upper-left hull of ``rows`` as vertices (log bytes, top-1), top-1 strictly increasing.

    ``hull``: ``convex`` (Pareto front, then its upper concave hull in log bytes vs top-1) or
    ``monotone`` (the Pareto front only). Empty rows give an empty (0, 2) array.
    """
    if hull not in ("convex", "monotone"):
        raise ValueError(f"hull must be convex or monotone, not {hull!r}")
    pts = sorted(_points(rows, x, y), key=lambda p: (p[0], -p[1]))
    front: list[tuple[float, float]] = []
    for b, a in pts:
        if not front or a > front[-1][1]:
            front.append((math.log(b), a))
    if hull == "convex" and len(front) > 2:
        up: list[tuple[float, float]] = []
        for p in front:  # Andrew's monotone chain, upper part (x increasing, keep right turns)
            while len(up) >= 2:
                (x1, y1), (x2, y2) = up[-2], up[-1]
                if (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1) >= 0:  # up[-1] on or under the chord
                    up.pop()
                else:
                    break
            up.append(p)
        front = up
    return np.array(front, np.float64).reshape(-1, 2)


def log_bytes_at(env: np.ndarray, acc) -> np.ndarray:
    """log bytes the envelope needs for top-1 ``acc`` (NaN outside its range)."""
    acc = np.asarray(acc, np.float64)
    if len(env) == 0:
        return np.full(acc.shape, np.nan)
    out = np.interp(acc, env[:, 1], env[:, 0])
    return np.where((acc >= env[0, 1] - 1e-12) & (acc <= env[-1, 1] + 1e-12), out, np.nan)


def ratio_vs_envelope(rows: Iterable[dict], ref_rows: Iterable[dict], lo: float = RANGE[0], hi: float = RANGE[1],
                      x: str = "bytes_payload", y: str = "top1", hull: str = "convex",
                      grid: int = 1201) -> dict:
    """Geometric-mean byte ratio of ``rows``' envelope to ``ref_rows``' at equal top-1 over [lo, hi] ∩ both ranges.

    -> {"ratio", "min", "max", "lo", "hi", "coverage", "points", "ref_points"}; ratio/min/max None
    when the ranges do not overlap.
    """
    env, ref = envelope(rows, x, y, hull), envelope(ref_rows, x, y, hull)
    out = {"ratio": None, "min": None, "max": None, "lo": None, "hi": None, "coverage": 0.0,
           "points": len(env), "ref_points": len(ref), "range": [lo, hi], "hull": hull}
    if not len(env) or not len(ref):
        return out
    a0 = max(lo, env[0, 1], ref[0, 1])
    a1 = min(hi, env[-1, 1], ref[-1, 1])
    if a1 < a0:
        return out
    acc = np.linspace(a0, a1, grid) if a1 > a0 else np.array([a0])
    d = log_bytes_at(env, acc) - log_bytes_at(ref, acc)
    r = np.exp(d)
    out.update(ratio=float(np.exp(d.mean())), min=float(r.min()), max=float(r.max()), lo=float(a0), hi=float(a1),
               coverage=float((a1 - a0) / (hi - lo)) if hi > lo else 1.0)
    return out


def series_key(row: dict) -> str:
    from hilbed.nodes.codecs.fitting.evaluate import series_of
    return series_of(row)


def compare_to_envelope(rows: list[dict], lo: float = RANGE[0], hi: float = RANGE[1], x: str = "bytes_payload",
                        ref: tuple[str, ...] = JPEG_FAMILIES, hull: str = "convex", key=None) -> dict:
    """{series: ratio_vs_envelope(...)} for every non-JPEG series (``key``: a row's series, default
    :func:`hilbed.nodes.codecs.fitting.evaluate.series_of`), plus ``FAMILY (all)`` over a family's
    rows when it has several series. Empty without JPEG rows."""
    key = key or series_key
    ref_rows = [r for r in rows if r.get("codec") in ref]
    if not ref_rows:
        return {}
    others = [r for r in rows if r.get("codec") not in ref]
    groups: dict[str, list[dict]] = {}
    for r in others:
        groups.setdefault(key(r), []).append(r)
    fams: dict[str, list[dict]] = {}
    for r in others:
        fams.setdefault(r["codec"], []).append(r)
    for fam, frows in fams.items():
        if len({key(r) for r in frows}) > 1:
            groups[f"{fam} (all)"] = frows
    return {name: ratio_vs_envelope(g, ref_rows, lo, hi, x, hull=hull) for name, g in sorted(groups.items())}


def describe(name: str, c: dict, mono: dict | None = None) -> str:
    """One summary line for :func:`compare_to_envelope`'s entry (``mono``: the same with ``hull="monotone"``)."""
    lo, hi = c["range"]
    head = f"{name}: bytes vs JPEG envelope, {100 * lo:.0f}-{100 * hi:.0f}% top-1: "
    if c["ratio"] is None:
        return head + "no overlap with the range"
    return head + (f"{c['ratio']:.3f}x ({c['hull']} hull"
                   + (f"; {mono['ratio']:.3f}x against the Pareto front" if mono and mono["ratio"] is not None else "")
                   + f"; geometric mean at equal top-1 over {100 * c['lo']:.1f}-{100 * c['hi']:.1f} %, "
                   f"{100 * c['coverage']:.0f} % of the range; {c['min']:.3f}-{c['max']:.3f}x)")
