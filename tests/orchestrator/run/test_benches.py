"""The several-testbed coordinator with a fake part (no agents): placement, merging, retries, stops, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hilbed.orchestrator.cli.main import main
from hilbed.orchestrator.config import load_scenario, load_testbed
from hilbed.orchestrator.errors import RunError
from hilbed.orchestrator.plan import make_plan
from hilbed.orchestrator.run.benches import BenchRun, is_bench_run, plan_parts
from hilbed.orchestrator.run.store import RunStore
from hilbed.orchestrator.yamlsrc import ConfigError

SCENARIO = """\
name: split
workload: {model: synthetic-cnn, dataset: synthetic, images_per_trial: 3, image_size: 32}
stream: {period_ms: 20}
codecs: [{codec: jpeg, params: {quality: 50}}]
conditions:
  - {name: a1, link: {kind: direct}}
  - {name: a2, link: {kind: direct, delay_ms: 1}}
  - {name: p1, link: {kind: direct, delay_ms: 2}, bench_group: same-hw}
  - {name: a3, link: {kind: direct, delay_ms: 3}}
  - {name: p2, link: {kind: direct, delay_ms: 4}, bench_group: same-hw}
"""

#: what the fake part does, per bench: "ok", "fail", "stop", "interrupt"
BEHAVIOUR: dict[str, str] = {}
#: every spec the fake was given, in order
CALLS: list[dict] = []


def fake_part(spec: dict) -> dict:
    """A part without agents: a part directory with a manifest and one record per planned image."""
    CALLS.append(spec)
    bench = Path(spec["results_dir"]).name
    how = BEHAVIOUR.get(bench, "ok")
    if spec.get("resume_dir"):
        part = Path(spec["resume_dir"])
    else:
        part = RunStore.create(Path(spec["results_dir"]), "split").root
        RunStore(part).write_manifest({"only_conditions": list(spec["conditions"]), "state": "running"})
    if how == "interrupt":
        raise KeyboardInterrupt
    if how in ("fail", "stop"):
        return {"part_dir": str(part), "state": "failed" if how == "fail" else "stopped", "records": [],
                "n_records": 0, "error": f"edge/edge: OSError on {bench}", "wall_s": 0.1}
    sc = load_scenario(spec["scenario"])
    tb = load_testbed(spec["testbed"])
    records = [{"run_id": part.name, "trial_id": t.id, "client": c, "image_index": i, "condition": t.condition.name,
                "testbed": tb.name}
               for t in make_plan(sc, tb).trials if t.condition.name in spec["conditions"]
               for c, idx in t.image_indices.items() for i in idx]
    return {"part_dir": str(part), "state": "complete", "records": records, "n_records": len(records),
            "applied": {c: {"link": {"kind": "direct"}} for c in spec["conditions"]}, "unapplied": [],
            "wall_s": 0.1}


@pytest.fixture
def setup(tmp_path, repo):
    BEHAVIOUR.clear()
    CALLS.clear()
    text = (repo / "testbed.yaml").read_text()
    paths = []
    for name in ("bench-a", "bench-b"):
        p = tmp_path / f"{name}.yaml"
        p.write_text(text.replace("name: embedded", f"name: {name}"))
        paths.append(p)
    (tmp_path / "split.yaml").write_text(SCENARIO)
    return tmp_path, paths, tmp_path / "split.yaml"


def _run(tmp_path, paths, sc, **kw):
    return BenchRun(paths, sc, results_dir=tmp_path / "runs", quiet=True, make_report=False, part_fn=fake_part,
                    **kw).execute()


def _manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def _keys(run_dir: Path) -> list[tuple]:
    return [(r["trial_id"], r["client"], r["image_index"]) for r in RunStore(run_dir).records()]


def test_parts_group_pinned_conditions_and_keep_trial_ids(setup):
    tmp_path, paths, sc_path = setup
    sc = load_scenario(sc_path)
    parts = plan_parts(sc)
    assert [p.conditions for p in parts] == [["a1"], ["a2"], ["p1", "p2"], ["a3"]]
    (tmp_path / "plain.yaml").write_text(SCENARIO.replace(", bench_group: same-hw", ""))
    plain = load_scenario(tmp_path / "plain.yaml")
    tb = load_testbed(paths[0])
    assert [t.id for t in make_plan(sc, tb).trials] == [t.id for t in make_plan(plain, tb).trials]


def test_conditions_spread_over_both_benches_into_one_run(setup):
    tmp_path, paths, sc = setup
    out = _run(tmp_path, paths, sc)
    assert out.state == "complete" and out.records == out.planned == 5 * 3
    assert [d.name for d in (tmp_path / "runs").iterdir()] == [out.run_dir.name]  # one parent run
    m = _manifest(out.run_dir)
    a = m["assignment"]
    # first free bench in plan order: a1 -> a, a2 -> b, then each freed bench takes the next part
    assert a["a1"]["testbed"] == "bench-a" and a["a2"]["testbed"] == "bench-b"
    assert a["p1"]["testbed"] == a["p2"]["testbed"] and a["p1"]["part_dir"] == a["p2"]["part_dir"]
    assert {r["testbed"] for r in a.values()} == {"bench-a", "bench-b"}
    for cond, row in a.items():
        assert row["state"] == "complete" and row["part_dir"].startswith(f"parts/{row['testbed']}/")
        assert (out.run_dir / row["part_dir"]).is_dir()
    keys = _keys(out.run_dir)
    assert len(keys) == len(set(keys)) == 15  # every planned image exactly once
    recs = list(RunStore(out.run_dir).records())
    assert {r["run_id"] for r in recs} == {out.run_dir.name}
    for r in recs:
        assert r["testbed"] == a[r["condition"]]["testbed"]
    assert set(m["applied"]) == {"a1", "a2", "p1", "p2", "a3"}
    assert [b["name"] for b in m["benches"]] == ["bench-a", "bench-b"]
    assert m["plan"]["images"] == 15 and len(m["plan"]["trials"]) == 5
    assert (out.run_dir / "results.parquet").exists() and is_bench_run(out.run_dir)


def test_a_failing_bench_gets_its_parts_retried_on_the_other(setup):
    tmp_path, paths, sc = setup
    BEHAVIOUR["bench-b"] = "fail"
    out = _run(tmp_path, paths, sc)
    assert out.state == "complete" and out.records == 15
    a = _manifest(out.run_dir)["assignment"]
    assert {r["testbed"] for r in a.values()} == {"bench-a"}
    retried = [c for c, r in a.items() if r["attempts"]]
    assert retried  # what bench-b took first was moved to bench-a, and the history says so
    for c in retried:
        (att,) = a[c]["attempts"]
        assert att["testbed"] == "bench-b" and att["state"] == "failed" and att["then"] == "retried"
        assert "OSError on bench-b" in att["error"]
    kinds = [json.loads(x)["kind"] for x in (out.run_dir / "events.jsonl").read_text().splitlines()]
    assert "bench_part_retried" in kinds


def test_both_benches_failing_stops_cleanly_and_resume_finishes_on_the_assigned_bench(setup, capsys):
    tmp_path, paths, sc = setup
    BEHAVIOUR.update({"bench-a": "stop", "bench-b": "fail"})
    out = _run(tmp_path, paths, sc)
    assert out.state == "stopped" and out.records == 0
    m = _manifest(out.run_dir)
    assert m["state"] == "stopped"
    a1 = m["assignment"]["a1"]
    assert a1["state"] == "failed" and a1["testbed"] == "bench-b"  # retried on b after stopping on a
    assert a1["attempts"][0]["testbed"] == "bench-a"
    assert m["assignment"]["a3"]["state"] == "pending"  # nothing new starts after a part failed for good
    BEHAVIOUR.clear()
    CALLS.clear()
    out2 = BenchRun(resume_dir=out.run_dir, quiet=True, make_report=False, part_fn=fake_part).execute()
    assert out2.state == "complete" and out2.records == out2.planned == 15
    a = _manifest(out.run_dir)["assignment"]
    assert a["a1"]["testbed"] == "bench-b" and a["a1"]["state"] == "complete"
    first = next(s for s in CALLS if s["conditions"] == ["a1"])
    assert first["resume_dir"] == str(out.run_dir / a1["part_dir"])  # resumed in its part directory
    assert Path(first["results_dir"]).name == "bench-b"
    keys = _keys(out.run_dir)
    assert len(keys) == len(set(keys)) == 15


def test_an_interrupted_run_resumes_each_part_on_its_bench(setup):
    tmp_path, paths, sc = setup
    BEHAVIOUR["bench-b"] = "interrupt"
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, paths, sc)
    run_dir = next((tmp_path / "runs").iterdir())
    m = _manifest(run_dir)
    assert m["state"] == "interrupted"
    a2 = m["assignment"]["a2"]
    assert a2["state"] == "interrupted" and a2["testbed"] == "bench-b" and a2["part_dir"]
    assert m["assignment"]["a1"]["state"] == "complete"
    BEHAVIOUR.clear()
    CALLS.clear()
    out = BenchRun(resume_dir=run_dir, quiet=True, make_report=False, part_fn=fake_part).execute()
    assert out.state == "complete" and out.records == 15
    a = _manifest(run_dir)["assignment"]
    assert a["a2"]["testbed"] == "bench-b" and a["a2"]["part_dir"] == a2["part_dir"]
    assert CALLS[0]["conditions"] == ["a2"] and CALLS[0]["resume_dir"] == str(run_dir / a2["part_dir"])
    assert "a1" not in {c for s in CALLS for c in s["conditions"]}  # a finished part is not measured again


def test_a_testbed_that_cannot_run_a_condition_is_refused_naming_it(setup):
    tmp_path, paths, sc = setup
    text = paths[1].read_text().replace("    radio: {protocol: spinel, port: emulated, channel: 15}\n", "")
    paths[1].write_text(text)
    sc.write_text(SCENARIO + "  - {name: r1, link: {kind: radio}}\n")
    with pytest.raises(ConfigError) as exc:
        _run(tmp_path, paths, sc)
    assert str(paths[1]) in exc.value.one_line() and "radio" in exc.value.one_line()
    assert not (tmp_path / "runs").exists()  # refused before anything was created


def test_two_testbeds_with_one_name_are_refused(setup):
    tmp_path, paths, sc = setup
    paths[1].write_text(paths[0].read_text())
    with pytest.raises(RunError, match="both named bench-a"):
        _run(tmp_path, paths, sc)


def test_cli_executor_ray_without_ray_says_how_to_install(setup, monkeypatch, capsys):
    from hilbed.orchestrator.scale import executor
    tmp_path, paths, sc = setup

    def missing():
        raise executor.ExecutorError("--executor ray needs the ray package, which is not installed: "
                                     f"{executor.RAY_INSTALL}")
    monkeypatch.setattr(executor, "require_ray", missing)
    rc = main(["run", str(sc), "-t", str(paths[0]), "-t", str(paths[1]), "--executor", "ray",
               "--results-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "pip install 'hilbed[ray]'" in err
    assert not (tmp_path / "runs").exists()


def test_resume_of_a_one_testbed_run_dir_is_not_taken_for_a_bench_run(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"run_id": "x", "testbed": {"name": "embedded"}}))
    assert not is_bench_run(tmp_path)
    assert not is_bench_run(tmp_path / "nope")
