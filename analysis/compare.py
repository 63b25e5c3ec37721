"""Run-vs-run comparison: is RUN worse than BASE beyond the scenario's thresholds?

Per cell (codec variant x condition by default) three metrics, each oriented
so that a positive change is worse:

- ``top1_drop_points``: base top-1 minus run top-1, in percent points, with a
  Newcombe score interval: paired (same images in both runs, matched on
  client, image index and repetition) or two independent proportions;
- ``p95_latency_increase_pct``: relative change of the end-to-end p95, with a
  percentile-bootstrap interval (fixed seed);
- ``miss_rate_increase_points``: run miss rate minus base miss rate, in points,
  interval as for top-1.

Intervals are simultaneous: with ``m`` tests (cells x metrics) each interval
has level ``1 - alpha/m`` (Bonferroni), so a comparison of two runs that
differ only by noise fails with probability at most ``alpha`` (5%) however many
cells the scenario has; ``adjust=False`` gives plain per-cell 95% intervals.

A change is a **regression** when the interval supports it: with
``rule="ci"`` (default) its whole 95% interval lies above the threshold;
with ``rule="significant"`` the estimate exceeds the threshold and the
interval excludes zero. An estimate past the threshold without that support is
**inconclusive** (too few images to tell); an interval entirely below minus
the threshold is **improved**. Only regressions fail a comparison.

No verdict is given where the data cannot carry one (the statistics' verdict
is kept in ``Delta.verdict``, the reason in ``Delta.detail``; neither fails a
comparison):

- **not enough samples**: a percentile metric (e2e p95) of a cell with fewer
  images in either run than MLPerf LoadGen's early stopping needs for any
  claim on that percentile at 99% confidence (130 for p95; see
  :func:`hilbed.analysis.stats.early_stop_min_n`);
- **not trustworthy**: either run timed on an overloaded host (1-minute load
  average above the CPU count, from the manifest's host facts), or the cell's
  condition was not applied as asked in either run.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pandas as pd

from .load import load_manifest, load_run, scenario_of
from .metrics import GROUP, _flag, _num, with_latency
from .provenance import ProvenanceDiff, diff_provenance
from .runlog import overload_text, overloads, unapplied
from .stats import EARLY_STOP_CONFIDENCE, bootstrap_ratio_pct, early_stop_min_n, newcombe_diff, paired_diff

DEFAULT_THRESHOLDS = {"top1_drop_points": 1.0, "p95_latency_increase_pct": 10.0, "miss_rate_increase_points": 2.0}
METRICS = {  # name -> (what, unit)
    "top1_drop_points": ("top-1 drop", "points"),
    "p95_latency_increase_pct": ("e2e p95 increase", "%"),
    "miss_rate_increase_points": ("miss-rate increase", "points"),
}
#: metric -> the percentile it compares (these need enough images for an early-stopping claim)
PERCENTILE_METRICS = {"p95_latency_increase_pct": 0.95}
RULES = ("ci", "significant")
NOT_ENOUGH = "not enough samples"
UNTRUSTED = "not trustworthy"
PAIR_KEY = ["client", "image_index", "repetition"]


@dataclass
class Delta:
    cell: dict
    metric: str
    base: float
    run: float
    change: float
    lo: float
    hi: float
    threshold: float
    status: str
    method: str
    n_base: int
    n_run: int
    verdict: str = ""   # what the statistics alone say (regression | inconclusive | improved | ok | n/a)
    detail: str = ""    # why ``status`` differs from ``verdict``

    def status_text(self) -> str:
        """'not enough samples (n=30, need 130)', 'not trustworthy: host overloaded (regression)', 'ok'."""
        if self.status == NOT_ENOUGH:
            return f"{NOT_ENOUGH} ({self.detail})"
        if self.status == UNTRUSTED:
            return f"{UNTRUSTED}: {self.detail}" + (f" (would be: {self.verdict})" if self.verdict else "")
        return self.status


@dataclass
class Comparison:
    base_id: str
    run_id: str
    thresholds: dict
    rule: str
    by: list[str]
    level: float = 0.95
    deltas: list[Delta] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: where the two runs' provenance differs (code, packages, firmware, model, inputs, lease)
    provenance: list[ProvenanceDiff] = field(default_factory=list)

    @property
    def regressions(self) -> list[Delta]:
        return [d for d in self.deltas if d.status == "regression"]

    @property
    def inconclusive(self) -> list[Delta]:
        return [d for d in self.deltas if d.status == "inconclusive"]

    @property
    def not_enough_samples(self) -> list[Delta]:
        return [d for d in self.deltas if d.status == NOT_ENOUGH]

    @property
    def untrustworthy(self) -> list[Delta]:
        return [d for d in self.deltas if d.status == UNTRUSTED]

    @property
    def failed(self) -> bool:
        return bool(self.regressions)

    def verdict_text(self) -> str:
        """'2 regression(s), 1 inconclusive, 3 not enough samples' or 'no regression, ...'."""
        head = f"{len(self.regressions)} regression(s)" if self.failed else "no regression"
        extra = [f"{len(xs)} {what}" for xs, what in ((self.inconclusive, "inconclusive"),
                                                      (self.not_enough_samples, NOT_ENOUGH),
                                                      (self.untrustworthy, UNTRUSTED)) if xs]
        return head + (f" ({', '.join(extra)})" if extra else "")

    def to_frame(self) -> pd.DataFrame:
        rows = []
        for d in self.deltas:
            r = asdict(d)
            r.update(r.pop("cell"))
            rows.append(r)
        cols = [*self.by, "metric", "base", "run", "change", "lo", "hi", "threshold", "status", "method",
                "n_base", "n_run", "verdict", "detail"]
        return pd.DataFrame(rows, columns=cols)

    def to_dict(self) -> dict:
        return {"base": self.base_id, "run": self.run_id, "thresholds": self.thresholds, "rule": self.rule,
                "interval_level": self.level,
                "regressions": len(self.regressions), "inconclusive": len(self.inconclusive),
                "not_enough_samples": len(self.not_enough_samples), "not_trustworthy": len(self.untrustworthy),
                "warnings": self.warnings, "missing": self.missing,
                "provenance": [asdict(d) for d in self.provenance],
                "notes": [n for n in self.notes if n not in self.warnings],
                "deltas": [{**asdict(d)} for d in self.deltas]}

    def to_markdown(self) -> str:
        head = (f"**hilbed compare**: `{self.run_id}` against base `{self.base_id}` (rule: {self.rule}; "
                f"intervals at {100 * self.level:.4g}%)")
        cols = [*self.by, "metric", "base", "run", "change [CI]", "threshold", "status"]
        warn = [f"> **Warning**: {w}" for w in self.warnings]
        lines = [head, ""] + (warn + [""] if warn else []) + ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for d in self.deltas:
            lines.append("| " + " | ".join([*(str(d.cell[b]) for b in self.by), *fmt_delta(d)]) + " |")
        tail = [f"- {m}" for m in self.missing + [n for n in self.notes if n not in self.warnings]]
        verdict = self.verdict_text()
        verdict = f"**{verdict}**" if self.failed else verdict
        return "\n".join(lines + [""] + tail + ([""] if tail else []) + [verdict]) + "\n"


def _v(x: float, nd: int = 1) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def fmt_delta(d: Delta) -> list[str]:
    """metric, base, run, change [lo, hi], threshold, status as display strings."""
    what, unit = METRICS[d.metric]
    if d.metric == "p95_latency_increase_pct":
        base, run = f"{_v(d.base)} ms", f"{_v(d.run)} ms"
    else:
        base, run = f"{_v(100 * d.base)}%", f"{_v(100 * d.run)}%"
    change = f"{d.change:+.1f} [{d.lo:+.1f}, {d.hi:+.1f}] {unit}" if d.change == d.change else "-"
    return [what, base, run, change, f"{d.threshold:g} {unit}", d.status_text()]


def thresholds_for(run_manifest: dict, base_manifest: dict, overrides: dict | None = None) -> dict:
    """Defaults, then the base scenario's, then the run scenario's ``thresholds:``, then explicit overrides."""
    t = dict(DEFAULT_THRESHOLDS)
    for m in (base_manifest, run_manifest):
        for k, v in (scenario_of(m).get("thresholds") or {}).items():
            if k in t and v is not None:
                t[k] = float(v)
    for k, v in (overrides or {}).items():
        if v is not None:
            if k not in t:
                raise KeyError(f"unknown threshold {k!r} (allowed: {', '.join(t)})")
            t[k] = float(v)
    return t


def _status(change: float, lo: float, hi: float, threshold: float, rule: str) -> str:
    if any(math.isnan(x) for x in (change, lo, hi)):
        return "n/a"
    supported = lo > threshold if rule == "ci" else (change > threshold and lo > 0)
    if supported:
        return "regression"
    if change > threshold:
        return "inconclusive"
    if hi < -threshold:
        return "improved"
    return "ok"


def _paired(b: pd.DataFrame, r: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """Both cells sorted on the pairing key when they hold exactly the same images, else None."""
    if any(k not in b.columns for k in PAIR_KEY) or len(b) != len(r) or len(b) == 0:
        return None
    kb = b[PAIR_KEY].astype(str).agg("|".join, axis=1)
    kr = r[PAIR_KEY].astype(str).agg("|".join, axis=1)
    if kb.duplicated().any() or set(kb) != set(kr):
        return None
    return b.assign(_k=kb.to_numpy()).sort_values("_k"), r.assign(_k=kr.to_numpy()).sort_values("_k")


def _proportion_delta(xb: np.ndarray, xr: np.ndarray, paired: bool, sign: int,
                      z: float) -> tuple[float, float, float, str]:
    """sign=+1: base - run (a drop); sign=-1: run - base (an increase). In points."""
    if paired:
        d, lo, hi = paired_diff(xb, xr, z) if sign > 0 else paired_diff(xr, xb, z)
        method = "paired Newcombe"
    else:
        kb, kr = int(xb.sum()), int(xr.sum())
        d, lo, hi = (newcombe_diff(kb, len(xb), kr, len(xr), z=z) if sign > 0
                     else newcombe_diff(kr, len(xr), kb, len(xb), z=z))
        method = "Newcombe (independent)"
    return 100 * d, 100 * lo, 100 * hi, method


def compare_frames(base: pd.DataFrame, run: pd.DataFrame, thresholds: dict | None = None, *, rule: str = "ci",
                   by: list[str] | None = None, n_boot: int = 2000, seed: int = 0, base_id: str = "base",
                   run_id: str = "run", alpha: float = 0.05, adjust: bool = True) -> Comparison:
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r} (allowed: {', '.join(RULES)})")
    by = list(by or GROUP)
    missing = [b for b in by if b not in base.columns or b not in run.columns]
    if missing:
        raise KeyError(f"unknown grouping field(s): {', '.join(missing)}")
    th = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    b_lat = with_latency(base) if "e2e_ms" not in base.columns else base
    r_lat = with_latency(run) if "e2e_ms" not in run.columns else run
    b_groups = {k if isinstance(k, tuple) else (k,): g for k, g in b_lat.groupby(by, sort=False, dropna=False)}
    r_groups = {k if isinstance(k, tuple) else (k,): g for k, g in r_lat.groupby(by, sort=False, dropna=False)}
    m_tests = 3 * sum(1 for k in b_groups if k in r_groups)
    level = 1 - alpha / max(m_tests, 1) if adjust else 1 - alpha
    z = NormalDist().inv_cdf(1 - (1 - level) / 2)
    # enough resamples that the bootstrap tails hold ~20 draws each
    n_boot = int(min(max(n_boot, math.ceil(40 / (1 - level))), 50_000))
    out = Comparison(base_id, run_id, th, rule, by, level)
    for key in [*b_groups, *(k for k in r_groups if k not in b_groups)]:
        name = " / ".join(map(str, key))
        if key not in r_groups:
            out.missing.append(f"{name}: in the base only (not measured in the run)")
            continue
        if key not in b_groups:
            out.missing.append(f"{name}: in the run only (no baseline to compare with)")
            continue
        b, r = b_groups[key], r_groups[key]
        cell = dict(zip(by, key))
        pair = _paired(b, r)
        pb, pr = pair if pair is not None else (b, r)
        for metric, col, sign in (("top1_drop_points", "correct1", +1), ("miss_rate_increase_points", "met", -1)):
            xb = _flag(pb["correct1"]) if col == "correct1" else ~_flag(pb["deadline_met"])
            xr = _flag(pr["correct1"]) if col == "correct1" else ~_flag(pr["deadline_met"])
            d, lo, hi, method = _proportion_delta(xb, xr, pair is not None, sign, z)
            st = _status(d, lo, hi, th[metric], rule)
            out.deltas.append(Delta(cell, metric, float(xb.mean()), float(xr.mean()), d, lo, hi, th[metric],
                                    st, method, len(b), len(r), verdict=st))
        eb, er = _num(b["e2e_ms"]), _num(r["e2e_ms"])
        d, lo, hi = bootstrap_ratio_pct(eb, er, 95.0, n_boot=n_boot, level=level, seed=seed)
        m = "p95_latency_increase_pct"
        pb95 = float(np.percentile(eb[~np.isnan(eb)], 95)) if (~np.isnan(eb)).any() else math.nan
        pr95 = float(np.percentile(er[~np.isnan(er)], 95)) if (~np.isnan(er)).any() else math.nan
        st = _status(d, lo, hi, th[m], rule)
        delta = Delta(cell, m, pb95, pr95, d, lo, hi, th[m], st, f"bootstrap ({n_boot})",
                      int((~np.isnan(eb)).sum()), int((~np.isnan(er)).sum()), verdict=st)
        need = early_stop_min_n(PERCENTILE_METRICS[m], EARLY_STOP_CONFIDENCE)
        if min(len(b), len(r)) < need:  # images, replied or not: a lost reply is a slow one, not a missing one
            delta.status = NOT_ENOUGH
            delta.detail = (f"n={len(b)}, need {need}" if len(b) == len(r)
                            else f"n={len(b)} base / {len(r)} run, need {need}")
        out.deltas.append(delta)
    if out.inconclusive:
        out.notes.append(f"{len(out.inconclusive)} change(s) past a threshold are not supported by the sample size "
                         "(inconclusive): more images per cell would tell")
    if out.not_enough_samples:
        need = sorted({early_stop_min_n(PERCENTILE_METRICS[d.metric]) for d in out.not_enough_samples})
        out.notes.append(f"{len(out.not_enough_samples)} percentile comparison(s) have too few images for any "
                         f"claim on that percentile at {100 * EARLY_STOP_CONFIDENCE:g}% confidence (MLPerf LoadGen "
                         f"early stopping: at least {', '.join(map(str, need))} per cell in each run): no verdict")
    return out


def distrust(cmp: Comparison, reason: str, cells=None) -> int:
    """Withdraw the verdicts of ``cells`` (a predicate on Delta.cell; all when None): status 'not trustworthy'.

    Deltas without a verdict (n/a, not enough samples) keep their status.
    Returns how many were marked.
    """
    k = 0
    for d in cmp.deltas:
        if d.status in ("n/a", NOT_ENOUGH) or (cells is not None and not cells(d.cell)):
            continue
        if d.status == UNTRUSTED:
            d.detail += f"; {reason}"
        else:
            d.status, d.detail = UNTRUSTED, reason
        k += 1
    return k


def _trust(cmp: Comparison, bm: dict, rm: dict) -> None:
    """Overloaded hosts and conditions not applied as asked withdraw verdicts, with a warning."""
    for role, m in (("base", bm), ("run", rm)):
        hs = overloads(m)
        if hs:
            run = m.get("run_id", role)
            cmp.warnings.append(f"{role} {run} timed on an overloaded host: " + "; ".join(map(overload_text, hs))
                                + ". Its latencies and misses may reflect the host; verdicts are withheld")
            distrust(cmp, f"host overloaded ({role})")
    if "condition" in cmp.by:
        for role, m in (("base", bm), ("run", rm)):
            for u in unapplied(m):
                n = distrust(cmp, f"condition {u.condition} not applied as asked ({role}: {u.what})",
                             lambda c, cond=u.condition: str(c.get("condition")) == cond)
                if n:
                    cmp.warnings.append(f"{role} {m.get('run_id', role)}: condition '{u.condition}' was not applied "
                                        f"as asked ({u.what}: asked {u.asked}, measured {u.measured}); its cells get "
                                        "no verdict")
    cmp.notes[:0] = cmp.warnings


def compare_runs(base_dir: str | Path, run_dir: str | Path, overrides: dict | None = None, *, rule: str = "ci",
                 by: list[str] | None = None, n_boot: int = 2000, seed: int = 0, alpha: float = 0.05,
                 adjust: bool = True) -> Comparison:
    """Compare two run directories with the thresholds of their scenarios (run's first, then base's)."""
    bm, rm = load_manifest(base_dir), load_manifest(run_dir)
    th = thresholds_for(rm, bm, overrides)
    cmp = compare_frames(load_run(base_dir), load_run(run_dir), th, rule=rule, by=by, n_boot=n_boot, seed=seed,
                         alpha=alpha, adjust=adjust,
                         base_id=bm.get("run_id", Path(base_dir).name), run_id=rm.get("run_id", Path(run_dir).name))
    bs, rs = scenario_of(bm).get("name"), scenario_of(rm).get("name")
    if bs and rs and bs != rs:
        cmp.notes.append(f"the runs replay different scenarios ({bs} vs {rs})")
    bg, rg = (bm.get("git") or {}).get("sha"), (rm.get("git") or {}).get("sha")
    if bg and rg and bg != rg:
        cmp.notes.append(f"git: base {bg[:12]}, run {rg[:12]}")
    cmp.provenance = diff_provenance(bm, rm)
    cmp.warnings += [d.text() for d in cmp.provenance]
    _trust(cmp, bm, rm)
    return cmp
