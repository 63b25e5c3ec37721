"""`hilbed compare`: an injected regression fails, an identical or noise-only rerun passes."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from hilbed.analysis.compare import compare_frames, compare_runs, thresholds_for
from hilbed.analysis.load import load_run
from hilbed.orchestrator.cli.main import main

DATA = Path(__file__).resolve().parents[1] / "data" / "analysis"
sys.path.insert(0, str(DATA))
import synth  # noqa: E402

SLOW = {("jpeg-q20", "r64-none"): 1.6}      # transmit 60% longer -> e2e p95 about +50%
WORSE = {("jpeg-q80", "r64-none"): 0.8}     # 80% of right answers flipped -> top-1 drops about 70 points


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cmp")
    return {
        "base": synth.make_run(root, "base", seed=1),
        "same": synth.make_run(root, "same", seed=1),
        "noise": synth.make_run(root, "noise", seed=2),
        "bad": synth.make_run(root, "bad", seed=1, slow=SLOW, worse=WORSE),
    }


def test_identical_rerun_passes(runs, capsys):
    assert main(["compare", str(runs["base"]), str(runs["same"])]) == 0
    out = capsys.readouterr().out
    assert "no regression" in out


def test_injected_regression_fails(runs, capsys, tmp_path):
    md, js = tmp_path / "cmp.md", tmp_path / "cmp.json"
    assert main(["compare", str(runs["base"]), str(runs["bad"]), "--markdown", str(md), "--json", str(js)]) == 1
    assert "2 regression(s)" in capsys.readouterr().out
    data = json.loads(js.read_text())
    regs = {(d["cell"]["codec_label"], d["cell"]["condition"], d["metric"]) for d in data["deltas"]
            if d["status"] == "regression"}
    assert regs == {("jpeg-q20", "r64-none", "p95_latency_increase_pct"), ("jpeg-q80", "r64-none", "top1_drop_points")}
    assert "| jpeg-q80 | r64-none | top-1 drop |" in md.read_text()


def test_noise_only_rerun_passes(runs):
    """A different seed of the same lab: many cells move by several points, none is a supported regression."""
    cmp = compare_runs(runs["base"], runs["noise"])
    assert not cmp.failed
    assert cmp.inconclusive  # differences exist, the sample size cannot back them
    # 15 cells x 3 metrics share the 5% family-wise error rate (Bonferroni)
    assert cmp.level == pytest.approx(1 - 0.05 / 45)


def test_deltas_by_hand_on_a_paired_cell(runs):
    base, bad = load_run(runs["base"]), load_run(runs["bad"])
    cmp = compare_frames(base, bad, adjust=False)
    d = next(x for x in cmp.deltas if x.cell == {"codec_label": "jpeg-q80", "condition": "r64-none"}
             and x.metric == "top1_drop_points")
    cell = lambda df: df[(df.codec_label == "jpeg-q80") & (df.condition == "r64-none")]  # noqa: E731
    kb, kr = int(cell(base).correct1.sum()), int(cell(bad).correct1.sum())
    assert d.base == kb / 30 and d.run == kr / 30
    assert d.change == pytest.approx(100 * (kb - kr) / 30)
    assert d.method == "paired Newcombe" and d.lo < d.change < d.hi
    # an unchanged cell: the paired interval is tight around zero
    same = next(x for x in cmp.deltas if x.cell == {"codec_label": "jpeg-q80", "condition": "r64-light"}
                and x.metric == "top1_drop_points")
    assert same.change == 0 and same.status == "ok"


def test_thresholds_come_from_the_scenario_and_can_be_overridden(runs, tmp_path):
    loose = synth.make_run(tmp_path, "loose", seed=1, slow=SLOW, worse=WORSE,
                           thresholds={"top1_drop_points": 95.0, "p95_latency_increase_pct": 10.0})
    th = thresholds_for(json.loads((loose / "manifest.json").read_text()), {})
    assert th == {"top1_drop_points": 95.0, "p95_latency_increase_pct": 10.0, "miss_rate_increase_points": 2.0}
    cmp = compare_runs(runs["base"], loose)
    assert {d.metric for d in cmp.regressions} == {"p95_latency_increase_pct"}
    assert main(["compare", str(runs["base"]), str(loose), "--p95-increase-pct", "200"]) == 0


def test_rules_and_missing_cells(runs, tmp_path):
    # "significant" flags a cell whose estimate passes the threshold while the interval only excludes zero
    cmp = compare_runs(runs["base"], runs["bad"], {"top1_drop_points": 60.0}, rule="significant")
    assert ("jpeg-q80", "top1_drop_points") in {(d.cell["codec_label"], d.metric) for d in cmp.regressions}
    strict = compare_runs(runs["base"], runs["bad"], {"top1_drop_points": 60.0}, rule="ci")
    assert ("jpeg-q80", "top1_drop_points") not in {(d.cell["codec_label"], d.metric) for d in strict.regressions}
    # a run without one codec: noted, not a regression
    part = tmp_path / "part"
    shutil.copytree(runs["same"], part)
    lines = [ln for ln in (part / "trials.jsonl").read_text().splitlines() if '"codec_label":"pjpeg-q80"' not in ln]
    (part / "trials.jsonl").write_text("\n".join(lines) + "\n")
    cmp = compare_runs(runs["base"], part)
    assert not cmp.failed and len(cmp.missing) == 5 and "in the base only" in cmp.missing[0]


def test_bad_input_exits_2(runs, tmp_path):
    assert main(["compare", str(runs["base"]), str(tmp_path / "nope")]) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "manifest.json").write_text('{"run_id": "empty", "state": "failed"}')
    assert main(["compare", str(runs["base"]), str(empty)]) == 2  # nothing measured is not a pass
    assert main(["compare", str(runs["base"]), str(runs["same"]), "--by", "nope"]) == 2
