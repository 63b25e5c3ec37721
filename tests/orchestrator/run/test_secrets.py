"""Secrets (SSH env values) never reach the run directory, and resume gets them back from the testbed file."""

from __future__ import annotations

import pytest

from hilbed.orchestrator.errors import RunError
from hilbed.orchestrator.run.runner import Runner

TOKEN = "tok-5d41402abc4b2a76b9719d911017c592"
TESTBED = f"""\
name: lab
results_dir: runs
nodes:
  edge-1:
    roles: [edge]
    address: 10.9.0.1
    transport: {{kind: ssh, host: 10.9.0.1, user: pi, env: {{HF_TOKEN: {TOKEN}}}}}
  client-1:
    roles: [client]
    address: 10.9.0.2
    transport: {{kind: ssh, host: 10.9.0.2, user: pi}}
"""


def test_manifest_and_events_hold_no_secret_and_resume_recovers_it(tmp_path, repo):
    tb = tmp_path / "lab.yaml"
    tb.write_text(TESTBED)
    r = Runner(tb, repo / "scenarios" / "quickstart.yaml", results_dir=tmp_path / "runs", quiet=True)
    r.ctx.event("failed", error=f"ssh pi@10.9.0.1 env HF_TOKEN={TOKEN} python -m hilbed.nodes.edge: exit 1")
    r.lock.release()
    run_dir = r.store.root
    for f in run_dir.rglob("*"):
        if f.is_file():
            assert TOKEN not in f.read_text(errors="replace"), f
    assert "'***'" in (run_dir / "manifest.json").read_text()
    again = Runner(resume_dir=run_dir, quiet=True)
    assert again.testbed.nodes["edge-1"].transport.env["HF_TOKEN"] == TOKEN
    again.lock.release()
    tb.write_text(TESTBED.replace(TOKEN, "rotated-token-0000"))  # a rotated token: same testbed, new secret
    rotated = Runner(resume_dir=run_dir, quiet=True)
    assert rotated.testbed.nodes["edge-1"].transport.env["HF_TOKEN"] == "rotated-token-0000"
    rotated.lock.release()
    tb.write_text(TESTBED.replace("10.9.0.2", "10.9.0.7"))  # another testbed: its secrets are not the run's
    with pytest.raises(RunError, match="secrets"):
        Runner(resume_dir=run_dir, quiet=True)
