"""Resume refuses what would mix measurements: changed inputs, and a run directory that is still live."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCENARIO = """\
name: guard
workload: {{model: synthetic-cnn, dataset: synthetic, images_per_trial: {images}, seed: 1}}
stream: {{period_ms: {period}}}
codecs: [{{codec: jpeg, params: {{quality: 50}}}}]
conditions:
  - {{name: lora, link: {{kind: trace, trace: link.csv}}}}
"""


def _hilbed(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hilbed.orchestrator.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ))


def _setup(tmp_path: Path, repo: Path, images: int, period: int) -> Path:
    (tmp_path / "link.csv").write_text("t_ms,kbps\n0,250\n")
    sc = tmp_path / "guard.yaml"
    sc.write_text(SCENARIO.format(images=images, period=period))
    return sc


def test_resume_refuses_a_changed_trace_unless_told(tmp_path, repo, synthetic_model):
    sc = _setup(tmp_path, repo, images=4, period=50)
    r = _hilbed("run", str(sc), "--testbed", str(repo / "testbed.yaml"), "--results-dir", str(tmp_path / "runs"),
                "-q", "--no-report", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    run_dir = next((tmp_path / "runs").iterdir())
    assert json.loads((run_dir / "manifest.json").read_text())["inputs"]["files"]["trace:lora"]["sha256"]
    (tmp_path / "link.csv").write_text("t_ms,kbps\n0,10\n")  # 250 -> 10 kbit/s
    r = _hilbed("resume", str(run_dir), "-q", cwd=tmp_path)
    assert r.returncode == 1
    assert "inputs changed" in r.stderr and "link.csv" in r.stderr and "Traceback" not in r.stderr
    r = _hilbed("resume", str(run_dir), "-q", "--accept-changed-inputs", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["inputs_overrides"] and "link.csv" in m["inputs_overrides"][0]["problems"][0]


def test_resume_of_a_live_run_refuses_naming_the_owner(tmp_path, repo, synthetic_model):
    sc = _setup(tmp_path, repo, images=60, period=100)
    live = subprocess.Popen([sys.executable, "-m", "hilbed.orchestrator.cli", "run", str(sc), "--testbed",
                             str(repo / "testbed.yaml"), "--results-dir", str(tmp_path / "runs"), "-q", "--no-report"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        trials = None
        while time.monotonic() < deadline:
            found = list((tmp_path / "runs").glob("*/trials.jsonl")) if (tmp_path / "runs").exists() else []
            if found and found[0].stat().st_size > 0:
                trials = found[0]
                break
            time.sleep(0.2)
        assert trials is not None, "the run never wrote a record"
        r = _hilbed("resume", str(trials.parent), "-q", cwd=tmp_path)
        assert r.returncode == 1 and f"in use by pid {live.pid}" in r.stderr and "Traceback" not in r.stderr
    finally:
        out, err = live.communicate(timeout=120)
    assert live.returncode == 0, err[-2000:]
    keys = [(r["trial_id"], r["client"], r["image_index"])
            for r in map(json.loads, trials.read_text().splitlines())]
    assert len(keys) == len(set(keys)) == 60  # nothing measured twice
