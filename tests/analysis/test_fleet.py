"""Fleet views: Jain's index, goodput over the wall span, n_clients of older runs, the plots, the report, the CLI."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pandas as pd
import pytest

from hilbed.analysis import fleet, plots
from hilbed.analysis.load import records_to_table, to_pandas
from hilbed.analysis.styles import StyleRegistry
from hilbed.nodes.record import FIELDS, record_problem

DATA = Path(__file__).resolve().parents[1] / "data" / "analysis"
sys.path.insert(0, str(DATA))
import synth  # noqa: E402

T0 = synth.T0_NS
MS = synth.MS
PERIOD = 100.0
DEADLINE = 100.0


def rec(*, condition: str, client: str, i: int, n_clients: int | None, met: bool = True, decoded: bool | None = None,
        correct: bool = True, jamming: str = "none", link_kind: str = "radio", rate: float | None = None,
        codec: str = "jpeg-q50", t0: int = T0, e2e_ms: float = 40.0, bytes_total: int = 1000,
        batch: int | None = None, batch_wait_ms: float | None = None, rep: int = 0) -> dict:
    """One record with the contract's field names: image ``i`` of ``client`` arriving at ``t0 + i * PERIOD``."""
    decoded = met if decoded is None else decoded
    arrival = t0 + int(i * PERIOD * MS)
    ns = lambda ms: arrival + int(ms * MS)  # noqa: E731
    r = {k: None for k in FIELDS}
    r.update({
        "run_id": "fleet-run", "trial_id": f"{codec}|{condition}|{rep}", "scenario": "fleet", "codec": "jpeg",
        "codec_label": codec, "codec_params": "{}", "condition": condition, "jamming_level": jamming,
        "link_kind": link_kind, "link_rate_kbps": rate, "link_delay_ms": 0.0, "deadline_ms": DEADLINE,
        "period_ms": PERIOD, "n_clients": n_clients, "repetition": rep, "client": client, "image_index": i,
        "label": 3, "bytes_total": bytes_total, "bytes_delivered": bytes_total if met else bytes_total // 2,
        "chunks_total": 1, "chunks_delivered": 1 if met else 0,
        "t_arrival_ns": arrival, "t_encode_start_ns": ns(1), "t_encode_end_ns": ns(3), "t_tx_start_ns": ns(3),
        "t_tx_end_ns": ns(e2e_ms - 10), "t_edge_close_ns": ns(e2e_ms - 8), "t_decode_end_ns": ns(e2e_ms - 6),
        "t_infer_end_ns": ns(e2e_ms - 2), "t_result_ns": ns(e2e_ms), "deadline_met": met, "decoded": decoded,
        "top1": (3 if correct else 4) if decoded else None, "top5": [3, 4, 5, 6, 7] if decoded else [],
        "correct1": bool(decoded and correct), "correct5": bool(decoded), "close_reason": "end" if met else "deadline",
        "batch_size": batch, "batch_wait_ms": batch_wait_ms, "clock_uncertainty_ns": 0,
    })
    assert record_problem(r) is None
    return r


def frame(recs: list[dict]) -> pd.DataFrame:
    return to_pandas(records_to_table(recs))


def sweep(jamming: str = "none", n_images: int = 10, starve: bool = False, **kw) -> list[dict]:
    """1, 2, 4 clients on one radio; with ``starve`` client c0 of the 4-client condition meets every deadline,
    the others none."""
    out = []
    for n in (1, 2, 4):
        for c in range(n):
            for i in range(n_images):
                met = (c == 0) if (starve and n == 4) else True
                out.append(rec(condition=f"radio-{n}c-{jamming}", client=f"c{c}", i=i, n_clients=n, met=met,
                               jamming=jamming, **kw))
    return out


# ------------------------------------------------------------------ Jain ---

def test_jain_on_known_vectors():
    assert fleet.jain([3.0, 3.0, 3.0, 3.0]) == pytest.approx(1.0)
    assert fleet.jain([5.0, 0.0, 0.0, 0.0]) == pytest.approx(0.25)
    assert fleet.jain([2.0, 0.0]) == pytest.approx(0.5)
    assert fleet.jain([1.0, 2.0, 3.0]) == pytest.approx(36 / (3 * 14))
    assert fleet.jain([7.0]) == 1.0
    assert fleet.jain([0.0]) == 1.0  # one client is fair to itself
    assert fleet.jain([5.0], n=4) == pytest.approx(0.25)  # clients without a record count as 0
    assert math.isnan(fleet.jain([0.0, 0.0]))  # nothing delivered: nothing to share
    assert math.isnan(fleet.jain([]))


# --------------------------------------------------------------- goodput ---

def test_goodput_over_the_wall_span():
    """2 clients x 10 images every 100 ms: span 0.9 s + one period = 1 s. Client c0 meets 10 deadlines,
    c1 meets 6 and one of those is not decoded: 15 good images per second, 20 offered."""
    recs = [rec(condition="radio-2c-none", client="c0", i=i, n_clients=2) for i in range(10)]
    recs += [rec(condition="radio-2c-none", client="c1", i=i, n_clients=2, met=i < 6, decoded=i < 5)
             for i in range(10)]
    t = fleet.fleet_table(frame(recs))
    assert len(t) == 1
    r = t.iloc[0]
    assert r["n_clients"] == 2 and r["clients"] == 2 and r["images"] == 20 and r["trials"] == 1
    assert r["span_s"] == pytest.approx(1.0)
    assert r["offered_img_s"] == pytest.approx(20.0)
    assert r["goodput_img_s"] == pytest.approx(15.0)
    # bytes delivered by the deadline: 10 x 1000 + 6 x 1000 + 4 x 500 = 18000 B = 144 kbit in 1 s
    assert r["goodput_kbps"] == pytest.approx(144.0)
    assert r["miss_rate"] == pytest.approx(4 / 20)
    assert r["miss_lo"] < 0.2 < r["miss_hi"]
    assert r["top1"] == pytest.approx(15 / 20)
    assert r["jain"] == pytest.approx((10 + 5) ** 2 / (2 * (10 ** 2 + 5 ** 2)))
    assert (r["client_goodput_min"], r["client_goodput_max"]) == pytest.approx((5.0, 10.0))
    assert math.isnan(r["batch_mean"]) and math.isnan(r["batch_wait_p95_ms"])
    c = fleet.client_table(frame(recs)).set_index("client")
    assert c.loc["c0", "goodput_img_s"] == pytest.approx(10.0) and c.loc["c1", "goodput_img_s"] == pytest.approx(5.0)
    assert c["goodput_img_s"].sum() == pytest.approx(r["goodput_img_s"])  # clients add up to the cell
    assert c.loc["c1", "miss_rate"] == pytest.approx(0.4) and c.loc["c1", "share"] == pytest.approx(1 / 3)
    assert c.loc["c0", "e2e_p50_ms"] == pytest.approx(40.0)


def test_repetitions_add_their_spans_not_the_gap_between_them():
    recs = [rec(condition="radio-2c-none", client=f"c{c}", i=i, n_clients=2, rep=rep, t0=T0 + rep * 3600 * 10 ** 9)
            for rep in (0, 1) for c in (0, 1) for i in range(10)]
    r = fleet.fleet_table(frame(recs)).iloc[0]
    assert r["trials"] == 2 and r["span_s"] == pytest.approx(2.0) and r["goodput_img_s"] == pytest.approx(20.0)


def test_condition_groups_come_from_fields_not_names():
    recs = sweep("none") + sweep("heavy", starve=True)
    recs += [rec(condition=f"shaped-{n}", client=f"c{c}", i=i, n_clients=n, link_kind="tc", rate=64.0)
             for n in (1, 2) for c in range(n) for i in range(4)]
    t = fleet.fleet_table(frame(recs))
    assert list(dict.fromkeys(t["group"])) == ["radio, jamming none", "radio, jamming heavy",
                                              "tc 64 kbit/s, jamming none"]
    heavy = t[t["group"] == "radio, jamming heavy"].set_index("n_clients")
    assert list(heavy.index) == [1, 2, 4]
    assert heavy.loc[4, "jain"] == pytest.approx(0.25)  # c0 alone delivered
    assert heavy.loc[4, "goodput_img_s"] == pytest.approx(10.0)
    assert heavy.loc[2, "jain"] == pytest.approx(1.0) and heavy.loc[2, "goodput_img_s"] == pytest.approx(20.0)
    assert heavy.loc[4, "conditions"] == "radio-4c-heavy"


def test_one_curve_per_codec():
    recs = sweep() + sweep(codec="webp-q50")
    t = fleet.fleet_table(frame(recs))
    assert list(zip(t["codec_label"], t["n_clients"])) == [("jpeg-q50", 1), ("jpeg-q50", 2), ("jpeg-q50", 4),
                                                           ("webp-q50", 1), ("webp-q50", 2), ("webp-q50", 4)]


def test_batch_stats_when_the_edge_batched():
    recs = [rec(condition="radio-2c-none", client=f"c{c}", i=i, n_clients=2, batch=1 + (i % 2),
                batch_wait_ms=float(i)) for c in (0, 1) for i in range(10)]
    t = fleet.fleet_table(frame(recs))
    assert t.iloc[0]["batch_mean"] == pytest.approx(1.5)
    assert t.iloc[0]["batch_wait_p95_ms"] == pytest.approx(pd.Series(list(range(10)) * 2).quantile(0.95))
    head, rows = fleet.fleet_rows(t)
    assert head[-2:] == ["batch mean", "batch wait p95 ms"] and rows[0][-2:] == ["1.50", "9.0"]
    assert "batch mean" not in fleet.fleet_rows(fleet.fleet_table(frame(sweep())))[0]


# ------------------------------------------------------------ older runs ---

def test_n_clients_of_older_runs_is_the_trials_distinct_clients():
    recs = [rec(condition="c-a", client=f"c{c}", i=i, n_clients=None) for c in range(3) for i in range(4)]
    recs += [rec(condition="c-b", client="c0", i=i, n_clients=None) for i in range(4)]
    recs += [rec(condition="c-new", client="c0", i=i, n_clients=4) for i in range(4)]  # recorded: kept
    df = frame(recs)
    assert df["n_clients"].isna().sum() == 16
    d = fleet.with_n_clients(df)
    assert d.groupby("condition")["n_clients"].unique().map(list).to_dict() == {"c-a": [3], "c-b": [1], "c-new": [4]}
    assert df["n_clients"].isna().sum() == 16  # the input is not changed
    t = fleet.fleet_table(df).set_index("conditions")
    assert t.loc["c-new", "clients"] == 1 and t.loc["c-new", "jain"] == pytest.approx(0.25)
    assert fleet.is_fleet(df) and not fleet.is_fleet(frame(recs[12:16]))


def test_a_frame_without_the_new_columns():
    df = frame(sweep()).drop(columns=["n_clients", "testbed", "batch_size", "batch_wait_ms"])
    t = fleet.fleet_table(df)
    assert list(t["n_clients"]) == [1, 2, 4] and t["batch_mean"].isna().all()


# ----------------------------------------------------------------- plots ---

def test_fleet_plots(tmp_path):
    df = frame(sweep("none") + sweep("heavy", starve=True))
    styles = StyleRegistry.from_frame(df)
    for fn in plots.FLEET:
        fig = fn(df, tmp_path, styles)
        assert fig.png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and fig.png.stat().st_size > 5000, fn.__name__
        assert (tmp_path / f"{fig.name}.svg").exists()


def test_fleet_plots_skip_a_single_client_run(tmp_path):
    one = frame([rec(condition="radio-1c", client="c0", i=i, n_clients=1) for i in range(5)])
    old = frame([rec(condition="old", client="c0", i=i, n_clients=None) for i in range(5)])
    for df in (one, old):
        for fn in plots.FLEET:
            with pytest.raises(plots.SkipPlot, match="one client"):
                fn(df, tmp_path, StyleRegistry.from_frame(df))


# ---------------------------------------------------------------- report ---

def _run(parent: Path, recs: list[dict], name: str) -> Path:
    for r in recs:
        r["run_id"] = name
    return synth.write_run(parent / name, recs, synth.manifest(name, len(recs), len(recs)))


def test_report_has_a_fleet_section_for_a_fleet(tmp_path):
    from hilbed.analysis.report import build_report
    run = _run(tmp_path, sweep("none") + sweep("heavy", starve=True), "fleet-run")
    html = build_report([run], tmp_path / "report").read_text(encoding="utf-8")
    assert 'id="fleet"' in html and 'id="fleet-table"' in html and 'id="fleet-clients-table"' in html
    for name in ("fleet_goodput", "fleet_fairness", "fleet_client_cdf"):
        assert f'id="fig-{name}"' in html
    assert "radio, jamming heavy" in html
    md = (tmp_path / "report" / "summary.md").read_text(encoding="utf-8")
    assert "**Fleet**" in md and "| radio, jamming heavy | jpeg-q50 | 4 |" in md
    csv = pd.read_csv(tmp_path / "report" / "fleet.csv")
    assert list(csv["n_clients"]) == [1, 2, 4, 1, 2, 4]
    assert len(pd.read_csv(tmp_path / "report" / "fleet_clients.csv")) == 2 * (1 + 2 + 4)


def test_report_has_no_fleet_section_for_one_client(tmp_path):
    from hilbed.analysis.report import build_report
    run = _run(tmp_path, [rec(condition="radio-1c", client="c0", i=i, n_clients=1) for i in range(5)], "one")
    out = build_report([run], tmp_path / "report", figures=False)
    html = out.read_text(encoding="utf-8")
    assert 'id="fleet' not in html and ">Fleet<" not in html and "fig-fleet" not in html
    assert "Fleet" not in (tmp_path / "report" / "summary.md").read_text(encoding="utf-8")
    assert not (tmp_path / "report" / "fleet.csv").exists()


# ------------------------------------------------------------------- CLI ---

def test_cli_fleet(tmp_path, capsys):
    from hilbed.orchestrator.cli.main import main
    run = _run(tmp_path, sweep("none") + sweep("heavy", starve=True), "fleet-run")
    assert main(["fleet", str(run), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [(r["group"], r["n_clients"]) for r in data["fleet"]][:3] == [("radio, jamming none", 1),
                                                                         ("radio, jamming none", 2),
                                                                         ("radio, jamming none", 4)]
    assert data["fleet"][-1]["jain"] == pytest.approx(0.25) and data["is_fleet"] is True
    assert len(data["clients"]) == 14
    assert main(["fleet", str(run)]) == 0
    out = capsys.readouterr().out
    assert "radio, jamming heavy" in out and "Jain" in out
    assert main(["fleet", str(tmp_path / "nope")]) == 2
    assert "no such directory" in capsys.readouterr().err
