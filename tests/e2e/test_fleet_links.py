"""Several clients on one link: a shared emulated 802.15.4 medium, and one shared shaped uplink.

Real Runner runs (agents as local processes, the pty emulator, real TCP): the
scenario's ``clients: 3`` makes the testbed copy its one client, emulated
radio included, so three radios contend on one medium or three TCP streams
share one shaped uplink at the edge.
"""

from __future__ import annotations

import json
import textwrap

import pandas as pd
import pytest

from hilbed.nodes.link.addressing import EDGE_SHORT_ADDR, client_short_addr
from hilbed.orchestrator.run.runner import Runner

pytestmark = pytest.mark.slow

CLIENTS = ["pi", "client-2", "client-3"]


def _testbed(tmp_path):
    p = tmp_path / "tb.yaml"
    p.write_text(textwrap.dedent("""\
        name: fleet
        nodes:
          pi: {roles: [client], radio: {protocol: spinel, port: emulated, channel: 20}}
          gpu: {roles: [edge], device: cpu, radio: {protocol: spinel, port: emulated, channel: 20}}
        """))
    return p


def _events(run_dir, kind: str) -> list[dict]:
    evs = (json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines())
    return [e for e in evs if e.get("kind") == kind]


def test_three_clients_share_one_emulated_medium(tmp_path, synthetic_model):
    (tmp_path / "s.yaml").write_text(textwrap.dedent("""\
        name: fleet-radio
        clients: 3
        workload: {images_per_trial: 5}
        stream: {period_ms: 400}
        codecs:
          - {codec: jpeg, params: {quality: 50}, label: jpeg-q50}
        conditions:
          - name: radio
            link: {kind: radio}
            deadline_ms: 350
        """))
    out = Runner(_testbed(tmp_path), tmp_path / "s.yaml", results_dir=tmp_path / "runs", quiet=True,
                 make_report=False).execute()
    assert out.state == "complete"
    df = pd.read_parquet(out.run_dir / "results.parquet")
    assert sorted(df.client.unique()) == sorted(CLIENTS)
    assert (df.groupby("client").size() == 5).all() and (df.n_clients == 3).all()
    # each client's image reached the edge whole: chunks were matched to the right (source, message)
    assert (df.bytes_delivered == df.bytes_total).all() and df.decoded.all(), \
        df[["client", "image_index", "bytes_delivered", "bytes_total", "decoded"]]
    m = json.loads((out.run_dir / "manifest.json").read_text())
    assert set(m["radio_ports"]) == {*CLIENTS, "gpu"}
    applied = _events(out.run_dir, "link_applied")[0]["facts"]
    assert applied["client_short_addrs"] == {c: client_short_addr(i) for i, c in enumerate(CLIENTS)}
    stats = {e["node"]: e["result"] for e in _events(out.run_dir, "link_stats")}
    assert all(stats[c]["frames"] > 0 for c in CLIENTS)
    edge_rx = stats["gpu"]
    # one assembly per source: no client's BEGIN closed another's message, nothing contradicted
    assert edge_rx["messages_begun"] == 15 and edge_rx["superseded_assemblies"] == 0
    assert edge_rx["bad_sequences"] == 0 and edge_rx["dropped_fragments"] == 0

    frames = [json.loads(x) for x in (out.run_dir / "logs" / "radio-frames.jsonl").read_text().splitlines()]
    to_edge = [f for f in frames if f["dst"] == EDGE_SHORT_ADDR]
    addrs = {client_short_addr(i) for i in range(3)}
    sent_ok = {f["src"] for f in to_edge if f["event"] == "tx" and f["result"] == "ok"}
    assert sent_ok == addrs, sent_ok
    # the three transmitters met each other on the medium: CCA busy (then backoff), collisions or retries
    contention = [f for f in to_edge if f["event"] in ("cca_busy", "retry", "cca_fail")
                  or (f["event"] == "tx" and f["result"] == "collision")]
    assert contention, "three clients sending at once never found the channel busy"
    assert {f["src"] for f in contention} & addrs
    busy_by = {a: sum(1 for f in contention if f["src"] == a) for a in addrs}
    print("contention events by source:", busy_by, "of", len(to_edge), "frame events")


def test_three_clients_split_one_shared_uplink(tmp_path, synthetic_model):
    """``clients: 3`` on a copy of the embedded testbed over one 64 kbit/s uplink shaped at the edge."""
    import shutil
    from pathlib import Path
    shutil.copy(Path(__file__).resolve().parents[2] / "testbed.yaml", tmp_path / "tb.yaml")
    rate = 64.0
    (tmp_path / "s.yaml").write_text(textwrap.dedent(f"""\
        name: fleet-shared
        clients: 3
        workload: {{images_per_trial: 4}}
        stream: {{period_ms: 600}}
        codecs:
          - {{codec: jpeg, params: {{quality: 50}}, label: jpeg-q50}}
        conditions:
          - name: shared
            link: {{kind: shared-uplink, rate_kbps: {rate}, packet_bytes: 256}}
            deadline_ms: 550
        """))
    out = Runner(tmp_path / "tb.yaml", tmp_path / "s.yaml", results_dir=tmp_path / "runs", quiet=True,
                 make_report=False).execute()
    assert out.state == "complete"
    df = pd.read_parquet(out.run_dir / "results.parquet")
    clients = ["client-1", "client-2", "client-3"]
    assert sorted(df.client.unique()) == clients and (df.groupby("client").size() == 4).all()
    assert (df.link_kind == "shared-uplink").all() and (df.n_clients == 3).all()
    assert df.decoded.all() and (df.bytes_delivered == df.bytes_total).all()
    # shaped at the edge: no image reached it faster than the link's rate allows
    air_ms = (df.t_rx_end_ns - df.t_tx_start_ns) / 1e6
    assert (air_ms >= 0.9 * df.bytes_total * 8 / rate).all(), air_ms
    # one link for all: images that met in the queue waited for each other (three per-client links would not)
    assert air_ms.max() >= 2 * (df.bytes_total * 8 / rate).max(), air_ms
    stats = {e["node"]: e["result"] for e in _events(out.run_dir, "link_stats")}
    edge = next(v for k, v in stats.items() if k not in clients)
    flows = list(edge["flows"].values())
    assert len(flows) == 3 and all(f["packets_out"] > 0 and f["error"] is None for f in flows)
    assert edge["uplink"]["dropped_packets"] == 0
    applied = _events(out.run_dir, "link_applied")[0]["facts"]
    assert applied["clients"] == 3 and applied["shared_uplink"]["port"]
    log = (out.run_dir / "logs" / "link-shared-shared.log").read_text().splitlines()
    assert sum(1 for x in log if " - " in x) == sum(f["packets_out"] for f in flows)
    print("per-image ms on the shared link:", air_ms.describe().round(1).to_dict())
