"""Two embedded testbeds (benches) in one run, through real local agents: local executor, Ray, a broken
bench, and the resume of an interrupted part on its bench."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from hilbed.orchestrator.errors import RunError
from hilbed.orchestrator.run.benches import BenchRun
from hilbed.orchestrator.run.store import RunStore

pytestmark = pytest.mark.slow  # real agents (as every end-to-end test here); the Ray test takes ~20 s of it

SCENARIO = """\
name: twobench
workload: {{model: synthetic-cnn, dataset: synthetic, images_per_trial: {images}, image_size: 32, seed: 1}}
stream: {{period_ms: {period}}}
codecs: [{{codec: jpeg, params: {{quality: 50}}}}]
conditions:
{conditions}
"""
FOUR = """\
  - {name: d0, link: {kind: direct}}
  - {name: d1, link: {kind: direct, delay_ms: 1}}
  - {name: g0, link: {kind: direct, delay_ms: 2}, bench_group: same-hw}
  - {name: g1, link: {kind: direct, delay_ms: 3}, bench_group: same-hw}"""
TWO = """\
  - {name: d0, link: {kind: direct}}
  - {name: d1, link: {kind: direct, delay_ms: 1}}"""


def _benches(tmp_path: Path, repo: Path, edge_port_b: int | None = None) -> list[Path]:
    text = (repo / "testbed.yaml").read_text()
    out = []
    for name in ("bench-a", "bench-b"):
        t = text.replace("name: embedded", f"name: {name}")
        if name == "bench-b" and edge_port_b:
            t = t.replace("    device: auto\n", f"    device: auto\n    edge_port: {edge_port_b}\n")
        p = tmp_path / f"{name}.yaml"
        p.write_text(t)
        out.append(p)
    return out


def _scenario(tmp_path: Path, conditions: str, images: int = 3, period: int = 20) -> Path:
    p = tmp_path / "twobench.yaml"
    p.write_text(SCENARIO.format(images=images, period=period, conditions=conditions))
    return p


def _cli(*args: str, cwd: Path) -> list[str]:
    return [sys.executable, "-m", "hilbed.orchestrator.cli", *args]


def _check_run(run_dir: Path, n_conditions: int, images: int) -> dict:
    """One parent run: every planned image exactly once, each record naming the bench its condition ran on."""
    m = json.loads((run_dir / "manifest.json").read_text())
    a = m["assignment"]
    df = pd.read_parquet(run_dir / "results.parquet")
    assert len(df) == m["records"] == m["plan"]["images"] == n_conditions * images
    assert not df.duplicated(["trial_id", "client", "image_index"]).any()
    assert set(df.trial_id) == set(m["plan"]["trials"])
    assert (df.run_id == run_dir.name).all()
    for cond, g in df.groupby("condition"):
        assert set(g.testbed) == {a[cond]["testbed"]}, cond
        part = run_dir / a[cond]["part_dir"]
        pm = json.loads((part / "manifest.json").read_text())
        assert pm["testbed"]["name"] == a[cond]["testbed"] and cond in pm["only_conditions"]
        assert pm["state"] in ("complete", "complete_unapplied")
    return m


def test_two_benches_local_executor_one_run(tmp_path, repo, synthetic_model):
    a, b = _benches(tmp_path, repo)
    sc = _scenario(tmp_path, FOUR)
    r = subprocess.run(_cli("run", str(sc), "-t", str(a), "-t", str(b), "--executor", "local", "--results-dir",
                            str(tmp_path / "runs"), "--no-report", "--json", cwd=tmp_path),
                       cwd=tmp_path, capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["state"] == "complete" and out["records"] == out["planned"] == 12
    runs = list((tmp_path / "runs").iterdir())
    assert [p.name for p in runs] == [out["run_id"]]
    m = _check_run(runs[0], 4, 3)
    asg = m["assignment"]
    assert asg["d0"]["testbed"] == "bench-a" and asg["d1"]["testbed"] == "bench-b"
    assert asg["g0"]["testbed"] == asg["g1"]["testbed"] and asg["g0"]["part_dir"] == asg["g1"]["part_dir"]
    assert "bench-a" in r.stderr and "wall s" in r.stderr  # the summary table (stderr under --json)


def test_a_broken_bench_has_its_conditions_retried_on_the_other(tmp_path, repo, synthetic_model):
    busy = socket.socket()
    busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)  # bench-b's edge cannot listen on its port: every part placed there fails
    try:
        a, b = _benches(tmp_path, repo, edge_port_b=busy.getsockname()[1])
        sc = _scenario(tmp_path, TWO)
        out = BenchRun([a, b], sc, results_dir=tmp_path / "runs", quiet=True, make_report=False).execute()
    finally:
        busy.close()
    assert out.state == "complete" and out.records == out.planned == 6
    m = _check_run(out.run_dir, 2, 3)
    d1 = m["assignment"]["d1"]
    assert d1["testbed"] == "bench-a"
    (att,) = d1["attempts"]
    assert att["testbed"] == "bench-b" and att["state"] == "failed" and "Address already in use" in att["error"]
    failed_part = json.loads((out.run_dir / att["part_dir"] / "manifest.json").read_text())
    assert failed_part["state"] == "failed"  # kept for the post-mortem, its records are not merged


def _interruptible() -> None:
    """The CLI child takes SIGINT whatever this test process inherited or set (an ignored or blocked SIGINT
    passes to children, and the run then finishes instead of stopping: rc 0, seen in full-suite runs)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def test_resume_finishes_an_interrupted_part_on_its_bench(tmp_path, repo, synthetic_model):
    a, b = _benches(tmp_path, repo)
    sc = _scenario(tmp_path, TWO, images=60, period=50)
    runs = tmp_path / "runs"
    proc = subprocess.Popen(_cli("run", str(sc), "-t", str(a), "-t", str(b), "--results-dir", str(runs), "-q",
                                 "--no-report", cwd=tmp_path),
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ), preexec_fn=_interruptible)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # bench-b's part (d1, after d0 on bench-a) has measured something
            found = list(runs.glob("*/parts/bench-b/*/trials.jsonl"))
            if found and found[0].stat().st_size > 0:
                break
            time.sleep(0.1)
        else:
            pytest.fail("bench-b's part never wrote a record")
        proc.send_signal(signal.SIGINT)
        said, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    run_dir = next(runs.iterdir())
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["state"] == "interrupted" and f"hilbed resume {run_dir}" in said and "Traceback" not in err
    d1 = m["assignment"]["d1"]
    assert d1["state"] == "interrupted" and d1["testbed"] == "bench-b"
    partial = len(RunStore(run_dir / d1["part_dir"]).done_keys())
    assert 0 < partial < 60
    parts_before = sorted(p.name for p in (run_dir / "parts").glob("*/*"))
    r = subprocess.run(_cli("resume", str(run_dir), "-q", cwd=tmp_path), cwd=tmp_path, capture_output=True,
                       text=True, timeout=300, env=dict(os.environ))
    assert r.returncode == 0, r.stderr[-3000:]
    m = _check_run(run_dir, 2, 60)
    assert m["state"] == "complete"
    assert m["assignment"]["d1"]["testbed"] == "bench-b" and m["assignment"]["d1"]["part_dir"] == d1["part_dir"]
    assert sorted(p.name for p in (run_dir / "parts").glob("*/*")) == parts_before  # no new part: resumed
    part_keys = [(x["trial_id"], x["client"], x["image_index"]) for x in RunStore(run_dir / d1["part_dir"]).records()]
    assert len(part_keys) == len(set(part_keys)) == 60  # the part measured nothing twice


def test_two_benches_on_ray(tmp_path, repo, synthetic_model):
    ray = pytest.importorskip("ray")
    a, b = _benches(tmp_path, repo)
    sc = _scenario(tmp_path, FOUR)
    run = BenchRun([a, b], sc, results_dir=tmp_path / "runs", executor="ray", ray_num_cpus=2, quiet=True,
                   make_report=False)
    try:
        out = run.execute()
    finally:
        if ray.is_initialized():  # the coordinator stops the Ray it started; never leave one behind
            ray.shutdown()
    assert not ray.is_initialized()
    assert out.state == "complete" and out.records == out.planned == 12
    m = _check_run(out.run_dir, 4, 3)
    assert m["executor"] == "ray"
    assert {r["testbed"] for r in m["assignment"].values()} == {"bench-a", "bench-b"}
    spans = {}
    for cond in ("d0", "d1"):  # each part's own events: from its first (preflight) to its last mark
        evs = [json.loads(x)["t_ns"] for x in
               (out.run_dir / m["assignment"][cond]["part_dir"] / "events.jsonl").read_text().splitlines()]
        spans[cond] = (min(evs), max(evs))
    # the two benches worked at the same time: their first parts overlap
    (s0, e0), (s1, e1) = spans["d0"], spans["d1"]
    assert s1 < e0 and s0 < e1


def test_a_ray_cluster_without_the_bench_resources_is_refused_in_one_line(tmp_path, repo):
    ray = pytest.importorskip("ray")
    a, b = _benches(tmp_path, repo)
    sc = _scenario(tmp_path, TWO)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)  # a cluster nobody declared benches on
    try:
        with pytest.raises(RunError) as exc:
            BenchRun([a, b], sc, results_dir=tmp_path / "runs", executor="ray", quiet=True).execute()
        assert ray.is_initialized()  # a Ray the coordinator did not start is left as it was
    finally:
        ray.shutdown()
    msg = str(exc.value)
    assert "\n" not in msg and "hilbed-bench-bench-a" in msg and "ray start" in msg
    m = json.loads((next((tmp_path / "runs").iterdir()) / "manifest.json").read_text())
    assert m["state"] == "failed" and m["error"] == msg
    assert all(r["state"] == "pending" for r in m["assignment"].values())
