"""Images over two emulated nRF52840 radios (real ptys, pyserial, both firmware protocols)."""

from __future__ import annotations

import json
import textwrap
import time

import pandas as pd
import pytest

from hilbed.orchestrator.run.runner import Runner

pytestmark = pytest.mark.slow

SCENARIO = """\
name: radio-e2e
workload: {images_per_trial: 6}
stream: {period_ms: 200}
codecs:
  - {codec: jpeg, params: {quality: 50}, label: jpeg-q50}
  - {codec: jpeg-progressive, params: {quality: 90}, label: pjpeg-q90}
conditions:
  - name: radio
    link: {kind: radio}
    deadline_ms: 80
"""


def _testbed(tmp_path, protocol: str):
    p = tmp_path / f"tb-{protocol}.yaml"
    p.write_text(textwrap.dedent(f"""\
        name: radio-{protocol}
        nodes:
          pi: {{roles: [client], radio: {{protocol: {protocol}, port: emulated, channel: 20}}}}
          gpu: {{roles: [edge], device: cpu, radio: {{protocol: {protocol}, port: emulated, channel: 20}}}}
        """))
    return p


@pytest.mark.parametrize("protocol", ["spinel", "wuart"])
def test_images_cross_emulated_radios(tmp_path, protocol, synthetic_model):
    (tmp_path / "s.yaml").write_text(SCENARIO)
    out = Runner(_testbed(tmp_path, protocol), tmp_path / "s.yaml", results_dir=tmp_path / "runs", quiet=True,
                 make_report=False).execute()
    df = pd.read_parquet(out.run_dir / "results.parquet")
    assert out.state == "complete" and len(df) == 12
    assert (df.link_kind == "radio").all() and (df.packets_sent > 0).all()
    m = json.loads((out.run_dir / "manifest.json").read_text())
    assert set(m["radio_ports"]) == {"pi", "gpu"} and all(p.startswith("/dev/pts/") for p in m["radio_ports"].values())
    q50 = df[df.codec_label == "jpeg-q50"]
    # ~470 bytes = 5 frames of 110 bytes at ~7 ms each: fits the 80 ms deadline
    assert q50.deadline_met.all() and q50.decoded.all()
    assert (q50.bytes_delivered == q50.bytes_total).all()
    # 802.15.4 at 250 kbit/s cannot beat the PHY: at least 32 us per byte on air
    tx_ms = (q50.t_rx_end_ns - q50.t_tx_start_ns) / 1e6
    assert (tx_ms >= q50.bytes_total * 8 / 250).all()
    pj = df[df.codec_label == "pjpeg-q90"]
    # ~1 KB progressive JPEG does not fit in 80 ms over 802.15.4: the edge decodes the scans that made it
    assert (~pj.deadline_met).sum() >= 4
    partial = pj[(~pj.deadline_met) & pj.decoded]
    assert len(partial) >= 3, "a tight deadline should give partial but decodable progressive images"
    assert (partial.chunks_delivered < partial.chunks_total).all() and (partial.chunks_delivered >= 1).all()
    if protocol == "spinel":
        assert df.rssi_dbm.notna().all()


def test_jammed_medium_lowers_radio_goodput(tmp_path, synthetic_model):
    (tmp_path / "s.yaml").write_text(SCENARIO.replace("deadline_ms: 80", "deadline_ms: 150"))
    tb = _testbed(tmp_path, "spinel")
    results = {}
    for load in (0.0, 0.6):
        r = Runner(tb, tmp_path / "s.yaml", results_dir=tmp_path / f"runs-{load}", quiet=True, make_report=False)
        # what the jammer agent publishes: the fraction of air time its traffic occupies
        r.ctx.medium_file.write_text(json.dumps({"load": load, "t": time.time()}))
        out = r.execute()
        df = pd.read_parquet(out.run_dir / "results.parquet")
        results[load] = df
    clean, jammed = results[0.0], results[0.6]
    assert jammed.retries.sum() > clean.retries.sum()
    # goodput: payload that reached the edge in time, per second of deadline window offered
    gp = {k: v.bytes_delivered.sum() * 8 / (len(v) * v.deadline_ms.iloc[0] / 1e3) for k, v in results.items()}
    assert gp[0.0] > 0 and gp[0.6] < 0.8 * gp[0.0], gp
    assert jammed.deadline_met.mean() <= clean.deadline_met.mean()
