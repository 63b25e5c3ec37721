"""Provenance: `hilbed compare` warns on every difference in code, packages, firmware, model, inputs, lease."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from hilbed.analysis.compare import compare_runs
from hilbed.analysis.provenance import diff_provenance, provenance_of

DATA = Path(__file__).resolve().parents[1] / "data" / "analysis"
BASE = json.loads((DATA / "provenance" / "base.json").read_text())
RUN = json.loads((DATA / "provenance" / "run.json").read_text())


def test_every_difference_is_named_with_both_values():
    got = {(d.where, d.what): (d.base, d.run) for d in diff_provenance(BASE, RUN)}
    assert got == {
        ("client-1", "wheel_sha256"): ("aaaa1111", "bbbb2222"),
        ("client-1", "packages.numpy"): ("1.26.4", "2.0.0"),
        ("client-1", "packages.scipy"): ("absent", "1.13.0"),
        ("client-1", "radios.client-1.firmware"): ("ot-rcp 1.3.0", "ot-rcp 1.4.0"),
        ("edge", "node"): ("recorded", "absent"),
        ("jammer", "node"): ("absent", "recorded"),
    }  # the lease's acquisition time differs every run: not a difference


def test_identical_provenance_and_none_recorded_give_no_warning():
    assert diff_provenance(BASE, json.loads(json.dumps(BASE))) == []
    assert diff_provenance({}, {}) == []


def test_lease_holder_and_model_hash_differences_are_reported():
    run = json.loads(json.dumps(BASE))
    run["provenance"]["lease"]["holder"] = "bob"
    run["provenance"]["model"]["sha256"] = "m1"
    texts = [d.text() for d in diff_provenance(BASE, run)]
    assert texts == ["provenance differs: model: sha256: base m0, run m1",
                     "provenance differs: lease: holder: base alice, run bob"]


def test_the_runners_shape_nodes_under_nodes_and_times_not_compared():
    base = {"provenance": {"nodes": {"edge": {"python": "3.11.7", "radio": {"firmware": "wuart 2"}}},
                           "model": {"sha256": "m0", "load_s": 1.5}}}
    run = {"provenance": {"nodes": {"edge": {"python": "3.12.1", "radio": {"firmware": "wuart 2"}}},
                          "model": {"sha256": "m0", "load_s": 2.5}}}
    assert [(d.where, d.what, d.base, d.run) for d in diff_provenance(base, run)] == \
        [("edge", "python", "3.11.7", "3.12.1")]


def test_top_level_inputs_and_model_stand_in_for_older_manifests():
    old_b = {"inputs": {"scenario": {"sha256": "s0"}}, "model": {"sha256": "m0"}}
    old_r = {"inputs": {"scenario": {"sha256": "s1"}}, "model": {"sha256": "m0"}}
    assert set(provenance_of(old_b)) == {"inputs", "model"}
    [d] = diff_provenance(old_b, old_r)
    assert (d.where, d.what, d.base, d.run) == ("inputs", "scenario.sha256", "s0", "s1")


def _run_with(tmp_path: Path, name: str, manifest_extra: dict) -> Path:
    d = tmp_path / name
    shutil.copytree(DATA / "energy-run", d)
    m = json.loads((d / "manifest.json").read_text())
    m.update(manifest_extra)
    (d / "manifest.json").write_text(json.dumps(m))
    return d


def test_compare_carries_the_warnings(tmp_path):
    b = _run_with(tmp_path, "b", {"provenance": BASE["provenance"]})
    r = _run_with(tmp_path, "r", {"provenance": RUN["provenance"]})
    cmp = compare_runs(b, r)
    assert len(cmp.provenance) == 6
    md = cmp.to_markdown()
    assert "> **Warning**: provenance differs: client-1: packages.numpy: base 1.26.4, run 2.0.0" in md
    assert cmp.to_dict()["provenance"][0] == {"where": "client-1", "what": "wheel_sha256", "base": "aaaa1111",
                                               "run": "bbbb2222"}
    assert not cmp.failed  # a warning, not a regression
    same = compare_runs(b, _run_with(tmp_path, "b2", {"provenance": BASE["provenance"]}))
    assert same.provenance == [] and not any("provenance" in w for w in same.warnings)
