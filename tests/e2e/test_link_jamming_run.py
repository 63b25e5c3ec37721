"""A jamming scenario end to end on the embedded testbed: the real jammer slows the shaped link."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from hilbed.nodes.link.linklog import read_linklog
from hilbed.nodes.link.medium import read_medium
from hilbed.orchestrator.run.runner import Runner

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("iperf3") is None, reason="needs iperf3")]

SCENARIO = """\
name: jam-mini
workload: {images_per_trial: 10, image_size: 32}
stream: {period_ms: 50}
codecs:
  - {codec: jpeg, params: {quality: 50}, label: jpeg-q50}
  - {codec: jpeg, params: {quality: 90}, label: jpeg-q90}
jamming_levels:
  heavy: {bitrate_mbps: 14, packet_bytes: 1400, streams: 2}
conditions:
  - name: quiet
    link: {kind: trace, rate_kbps: 250, delay_ms: 5, packet_bytes: 116}
    jamming: none
  - name: jammed
    link: {kind: trace, rate_kbps: 250, delay_ms: 5, packet_bytes: 116}
    jamming: heavy
"""


def test_heavy_jamming_cuts_goodput(tmp_path, repo, synthetic_model):
    (tmp_path / "s.yaml").write_text(SCENARIO)
    out = Runner(repo / "testbed.yaml", tmp_path / "s.yaml", results_dir=tmp_path / "runs", quiet=True,
                 make_report=False).execute()
    assert out.state == "complete" and out.records == out.planned == 40
    df = pd.read_parquet(out.run_dir / "results.parquet")
    by = df.groupby("condition")
    load = by.jammer_load.mean()
    assert load["quiet"] == 0.0 and 0.5 < load["jammed"] < 0.9
    miss = 1 - by.deadline_met.mean()
    in_time = df[df.deadline_met].groupby("condition").bytes_delivered.sum().reindex(["quiet", "jammed"]).fillna(0)
    assert miss["jammed"] > miss["quiet"] + 0.3
    assert in_time["jammed"] < 0.6 * in_time["quiet"]
    # the run keeps the evidence: per-second jammer load events, link logs, a medium back at load 0
    events = [json.loads(x) for x in (out.run_dir / "events.jsonl").read_text().splitlines()]
    loads = [e["event"] for e in events if e.get("kind") == "agent_event" and e["event"].get("event") == "jammer_load"]
    assert loads and all(x["level"] == "heavy" for x in loads)
    assert read_medium(out.run_dir / "medium.json", stale_s=1e9)["load"] == 0.0
    lg = read_linklog(out.run_dir / "logs" / "link-client-1-jammed.log")
    assert lg.departures and lg.capacity
    # the manifest's ledger: what each condition asked for and what was measured and served
    applied = json.loads((out.run_dir / "manifest.json").read_text())["applied"]
    jam, quiet = applied["jammed"], applied["quiet"]
    assert jam["jamming"]["asked"] == "heavy" and jam["jamming"]["windows"] >= 1
    assert 0.5 < jam["jamming"]["load"]["mean"] < 0.9 and quiet["jamming"]["load"] is None
    served = {c: applied[c]["link"]["served"]["client-1"]["kbps_during_images"] for c in ("quiet", "jammed")}
    assert served["jammed"] < 0.6 * served["quiet"] and 200 < served["quiet"] <= 251, served
    assert applied["jammed"]["link"]["stats"]["client-1"]["accounting"] == "payload"
