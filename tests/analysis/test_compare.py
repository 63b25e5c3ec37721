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
def big(tmp_path_factory) -> dict[str, Path]:
    """Two codecs on one condition, 140 images each: enough for a p95 claim."""
    root = tmp_path_factory.mktemp("cmp-big")
    kw = dict(seed=1, n_images=140, codecs=synth.CODECS[:2], conditions=synth.CONDITIONS[:1])
    return {"base": synth.make_run(root, "base", **kw),
            "bad": synth.make_run(root, "bad", slow=SLOW, worse=WORSE, **kw)}


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


def test_injected_regression_fails(big, capsys, tmp_path):
    """140 images a cell: enough for a p95 claim (130 at 99%), so both injected changes are regressions."""
    md, js = tmp_path / "cmp.md", tmp_path / "cmp.json"
    assert main(["compare", str(big["base"]), str(big["bad"]), "--markdown", str(md), "--json", str(js)]) == 1
    assert "2 regression(s)" in capsys.readouterr().out
    data = json.loads(js.read_text())
    regs = {(d["cell"]["codec_label"], d["cell"]["condition"], d["metric"]) for d in data["deltas"]
            if d["status"] == "regression"}
    assert regs == {("jpeg-q20", "r64-none", "p95_latency_increase_pct"), ("jpeg-q80", "r64-none", "top1_drop_points")}
    assert "| jpeg-q80 | r64-none | top-1 drop |" in md.read_text()


def test_too_few_images_for_a_p95_verdict(runs, capsys):
    """30 images a cell: the p95 change is as large, but LoadGen's early stopping needs 130 images for any p95 claim."""
    cmp = compare_runs(runs["base"], runs["bad"])
    p95 = next(d for d in cmp.deltas if d.cell == {"codec_label": "jpeg-q20", "condition": "r64-none"}
               and d.metric == "p95_latency_increase_pct")
    assert p95.status == "not enough samples" and p95.verdict == "regression" and p95.change > 30
    assert p95.detail == "n=30, need 130" and p95.status_text() == "not enough samples (n=30, need 130)"
    # every p95 comparison of this scenario is too small; the proportions still get their verdicts
    assert {d.status for d in cmp.deltas if d.metric == "p95_latency_increase_pct"} == {"not enough samples"}
    assert [(d.cell["codec_label"], d.metric) for d in cmp.regressions] == [("jpeg-q80", "top1_drop_points")]
    assert "15 percentile comparison(s) have too few images" in " ".join(cmp.notes)
    assert main(["compare", str(runs["base"]), str(runs["bad"]), "--format", "markdown"]) == 1
    out = capsys.readouterr().out
    assert "| jpeg-q20 | r64-none | e2e p95 increase |" in out and "not enough samples (n=30, need 130)" in out
    assert "**1 regression(s) (" in out and "15 not enough samples" in out
    # a p95 change alone never fails a comparison without the images to back it
    assert main(["compare", str(runs["base"]), str(runs["bad"]), "--top1-drop-points", "99"]) == 0


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


def test_thresholds_come_from_the_scenario_and_can_be_overridden(big, tmp_path):
    loose = synth.make_run(tmp_path, "loose", seed=1, slow=SLOW, worse=WORSE, n_images=140,
                           codecs=synth.CODECS[:2], conditions=synth.CONDITIONS[:1],
                           thresholds={"top1_drop_points": 95.0, "p95_latency_increase_pct": 10.0})
    th = thresholds_for(json.loads((loose / "manifest.json").read_text()), {})
    assert th == {"top1_drop_points": 95.0, "p95_latency_increase_pct": 10.0, "miss_rate_increase_points": 2.0}
    cmp = compare_runs(big["base"], loose)
    assert {d.metric for d in cmp.regressions} == {"p95_latency_increase_pct"}
    assert main(["compare", str(big["base"]), str(loose), "--p95-increase-pct", "200"]) == 0


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


IDLE = {"hostname": "ci-2core", "cpus": 2,
        "before": {"cpus": 2, "load_avg": [0.3, 0.4, 0.5], "governor": "performance", "busy_processes": 0},
        "after": {"cpus": 2, "load_avg": [0.9, 0.6, 0.5], "governor": "performance", "busy_processes": 0}}
LOADED = {"hostname": "ci-2core", "cpus": 2,
          "before": {"cpus": 2, "load_avg": [3.5, 2.9, 2.0], "governor": "powersave", "busy_processes": 4},
          "after": {"cpus": 2, "load_avg": [1.5, 2.0, 1.8], "governor": "powersave", "busy_processes": 1}}


def _with_manifest(src: Path, dst: Path, **changes) -> Path:
    """A copy of a run whose manifest carries the facts the runner records (host load, unapplied conditions)."""
    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    m.update(changes)
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


def test_an_overloaded_host_gets_no_verdict(runs, tmp_path, capsys):
    """Two runs of one seed on a loaded 2-core host disagree; compare must not call that a regression."""
    base = _with_manifest(runs["base"], tmp_path / "base-idle", host=IDLE)
    bad = _with_manifest(runs["bad"], tmp_path / "bad-loaded", host=LOADED)
    cmp = compare_runs(base, bad)
    assert not cmp.failed and cmp.regressions == []
    withheld = [d for d in cmp.untrustworthy if d.verdict == "regression"]
    assert [(d.cell["codec_label"], d.metric) for d in withheld] == [("jpeg-q80", "top1_drop_points")]
    assert withheld[0].status_text() == "not trustworthy: host overloaded (run) (would be: regression)"
    # every verdict of the comparison is withheld (15 cells x top-1 and miss rate); p95 had none to withhold
    assert len(cmp.untrustworthy) == 30
    assert {d.status for d in cmp.deltas if d.metric == "p95_latency_increase_pct"} == {"not enough samples"}
    (w,) = cmp.warnings
    assert w.startswith("run bad timed on an overloaded host: ci-2core (controller) before the run: load average "
                        "3.50 over 1 min on 2 CPU(s) (1.50 above the CPU count, 1.75x); 4 other busy process(es).")
    assert "after the run" not in w  # 1.5 on 2 CPUs is not overloaded
    assert cmp.notes[0] == w  # the CLI prints notes: the warning comes first
    assert main(["compare", str(base), str(bad), "--format", "markdown"]) == 0
    out = capsys.readouterr().out
    assert "> **Warning**: run bad timed on an overloaded host" in out
    assert "no regression (15 not enough samples, 30 not trustworthy)" in out
    data = cmp.to_dict()
    assert data["not_trustworthy"] == 30 and data["regressions"] == 0 and data["warnings"] == [w]
    # the same runs on an idle host: the regression stands
    idle = _with_manifest(runs["bad"], tmp_path / "bad-idle", host=IDLE)
    assert main(["compare", str(base), str(idle)]) == 1
    # a node that was overloaded counts as well, on either side
    node = _with_manifest(runs["base"], tmp_path / "base-node", host=IDLE,
                          node_hosts={"rpi4": {"after": {"cpus": 4, "load_avg": [6.0, 3.0, 1.0]}}})
    cmp = compare_runs(node, idle)
    assert not cmp.failed and "base base timed on an overloaded host: rpi4 after the run: load average 6.00 over " \
        "1 min on 4 CPU(s) (2.00 above the CPU count, 1.50x)" in cmp.warnings[0]


def test_a_condition_not_applied_gets_no_verdict(runs, tmp_path):
    u = {"condition": "r64-light", "what": "jamming", "asked": "light", "measured": None,
         "t_start_ns": synth.T0_NS, "t_end_ns": synth.T0_NS + 10**9, "records": 4, "reason": "watchdog"}
    bad = _with_manifest(runs["bad"], tmp_path / "bad-u", state="complete_unapplied", unapplied=[u])
    cmp = compare_runs(runs["base"], bad)
    light = [d for d in cmp.deltas if d.cell["condition"] == "r64-light" and d.status != "not enough samples"]
    assert len(light) == 6 and {d.status for d in light} == {"not trustworthy"}
    assert light[0].detail == "condition r64-light not applied as asked (run: jamming)"
    assert [(d.cell["codec_label"], d.metric) for d in cmp.regressions] == [("jpeg-q80", "top1_drop_points")]
    assert "condition 'r64-light' was not applied as asked (jamming: asked light, measured nothing)" in cmp.warnings[0]
    # the regressed condition itself not applied: no verdict, exit 0
    bad = _with_manifest(runs["bad"], tmp_path / "bad-u2", state="complete_unapplied",
                         unapplied=[{**u, "condition": "r64-none"}])
    assert main(["compare", str(runs["base"]), str(bad)]) == 0
