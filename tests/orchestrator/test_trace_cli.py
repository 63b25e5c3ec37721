"""`hilbed trace info|lint|gen` and the generator models."""

from __future__ import annotations

import json

import pytest

from hilbed.nodes.link.gen import gen_ieee802154, gen_lora, gen_ltem, lora_bitrate_bps, lora_time_on_air_s
from hilbed.nodes.link.lint import analyze
from hilbed.nodes.link.schedule import OpportunitySchedule
from hilbed.nodes.link.traces import read_csv_rates, read_mahimahi
from hilbed.orchestrator.cli.main import main


def run_cli(capsys, *args) -> tuple[int, str, str]:
    rc = main(["trace", *map(str, args)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_lint_one_line_trace_explains_opportunities(tmp_path, capsys):
    p = tmp_path / "wrong.up"
    p.write_text("500000\n")
    rc, out, _ = run_cli(capsys, "lint", p)
    assert rc == 1
    assert f"{p}:1: warning:" in out
    assert "not 500000 kbit/s" in out and "CSV rate schedule" in out


def test_lint_errors_name_file_and_line_and_exit_2(tmp_path, capsys):
    crlf = tmp_path / "win.up"
    crlf.write_bytes(b"1\r\n2\r\n3\r\n")
    rc, _, err = run_cli(capsys, "lint", crlf)
    assert rc == 2 and f"{crlf}:1: error: CRLF line endings on 3 line(s)" in err
    bad = tmp_path / "bad.up"
    bad.write_bytes(b"1\n\n5\n4\n")
    rc, _, err = run_cli(capsys, "lint", bad)
    assert rc == 2
    assert f"{bad}:2: error: invalid empty line" in err and f"{bad}:4: error: timestamps must be non-decreasing" in err
    assert "Traceback" not in err
    rc, _, err = run_cli(capsys, "info", bad)
    assert rc == 2 and f"{bad}:2:" in err


def test_lint_gaps_and_kind_ranges(tmp_path, capsys):
    p = tmp_path / "gappy.up"
    p.write_text("\n".join(["1"] * 30 + ["2000"] + ["2001"] * 30) + "\n")
    rc, out, _ = run_cli(capsys, "lint", p, "--deadline-ms", "500", "--kind", "ieee802154")
    assert rc == 1
    assert f"{p}:31: warning: 1 gap(s)" in out and "1999 ms" in out
    assert "above the ieee802154 physical maximum of 250 kbit/s" in out
    csv = tmp_path / "r.csv"
    csv.write_text("t_ms,kbps\n0,300\n1000,0\n2000,100\n3000,100\n")
    rc, out, _ = run_cli(capsys, "lint", csv, "--deadline-ms", "200", "--kind", "ieee802154")
    assert rc == 1 and f"{csv}:3: warning: 1 zero-rate" in out and f"{csv}:2: warning: 1 row(s) above" in out
    ok = tmp_path / "ok.csv"
    ok.write_text("t_ms,kbps\n0,100\n")
    rc, out, _ = run_cli(capsys, "lint", ok, "--kind", "ieee802154")
    assert rc == 0 and "ok (csv" in out


def test_info_reports_duration_and_window_rates(tmp_path, capsys):
    p = tmp_path / "t.up"
    # 1st second: 10 opportunities, 2nd second: 30 -> 120.32 and 360.96 kbit/s with 1504 B
    p.write_text("\n".join(["500"] * 10 + ["1500"] * 29 + ["2000"]) + "\n")
    rc, out, _ = run_cli(capsys, "info", p, "--json")
    assert rc == 0
    d = json.loads(out)
    assert d["duration_s"] == 2.0 and d["lines"] == 40
    assert d["min_kbps_1s"] == pytest.approx(10 * 1504 * 8 / 1000)
    assert d["max_kbps_1s"] == pytest.approx(30 * 1504 * 8 / 1000)
    assert d["mean_kbps"] == pytest.approx(40 * 1504 * 8 / 2000)
    rc, out, _ = run_cli(capsys, "info", p, "--opportunity-bytes", "100")
    assert rc == 0 and "40 x 100 B" in out and "mean rate: 16 kbit/s" in out


def test_shared_traces_lint_clean_without_options(shared_data):
    for f in sorted((shared_data / "traces" / "mahimahi").iterdir()):
        rep = analyze(f)
        assert not rep.errors and rep.facts["mean_kbps"] > 100


def test_lora_time_on_air_matches_an1200_13():
    # reference values of the Semtech LoRa calculator (explicit header, CRC on, preamble 8)
    assert lora_time_on_air_s(51, 7, 125e3, 1) * 1000 == pytest.approx(102.656)
    assert lora_time_on_air_s(51, 12, 125e3, 1) * 1000 == pytest.approx(2465.792)  # LDRO on at SF12/125k
    # by hand: Tsym 4.096 ms; preamble 12.25 Tsym; 8 + ceil((80 - 36 + 28 + 16) / 36) * 5 = 23 payload symbols
    assert lora_time_on_air_s(10, 9, 125e3, 1) * 1000 == pytest.approx((12.25 + 23) * 4.096)
    assert lora_bitrate_bps(7, 125e3, 1) == pytest.approx(5468.75)
    assert lora_bitrate_bps(12, 125e3, 4) == pytest.approx(183.1, abs=0.1)
    with pytest.raises(ValueError):
        lora_time_on_air_s(10, 13, 125e3)


def test_lora_duty_cycle_spacing():
    g = gen_lora(duration_s=60, sf=7, payload_bytes=51, duty_cycle=0.01)
    gaps = [b - a for a, b in zip(g.times_ms, g.times_ms[1:])]
    assert all(abs(x - 10265.6) <= 1 for x in gaps)  # ToA / 1 %
    assert g.opportunity_bytes == 51
    s = OpportunitySchedule(g.times_ms, 51)
    assert s.mean_bps_per_period() == pytest.approx(51 * 8 / 10.2656, rel=0.01)


def test_ltem_is_seeded_and_within_cat_m1_range():
    a, b, c = gen_ltem(20, seed=1), gen_ltem(20, seed=1), gen_ltem(20, seed=2)
    assert a.times_ms == b.times_ms and a.times_ms != c.times_ms
    s = OpportunitySchedule(a.times_ms, a.opportunity_bytes)
    rates = [s.mean_bps(k, k + 1) / 1000 for k in range(19)]
    assert 30 < min(rates) and max(rates) <= 375 * 1.01
    assert 0 < a.facts["gap_fraction"] < 0.2
    # HD-FDD: uplink only in subframes 5..7 of each 8 ms cycle (opportunity at the end of the subframe)
    assert all((t - 1) % 8 in (5, 6, 7) for t in a.times_ms[:-1])


def test_802154_rate_below_phy():
    g = gen_ieee802154(10, seed=0)
    assert 120 < g.mean_kbps < 150 < 250
    raw = gen_ieee802154(10, ack=False, csma=False)
    assert raw.mean_kbps == pytest.approx(116 * 8 / 4.256, rel=0.01)  # back to back 133-byte PPDUs


@pytest.mark.parametrize("kind, extra", [("lora", ["--duty-cycle", "1"]), ("ltem", ["--seed", "3"]),
                                         ("ieee802154", [])])
def test_gen_cli_writes_loadable_traces(tmp_path, capsys, kind, extra):
    out = tmp_path / f"{kind}.up"
    rc, text, _ = run_cli(capsys, "gen", kind, "--duration-s", "5", *extra, "-o", out)
    assert rc == 0
    summary = json.loads(text)
    times = read_mahimahi(out)
    assert summary["opportunities"] == len(times) and summary["opportunity_bytes"] > 0
    csv = tmp_path / f"{kind}.csv"
    rc, text, _ = run_cli(capsys, "gen", kind, "--duration-s", "5", *extra, "-o", csv)
    assert rc == 0
    t, r = read_csv_rates(csv)
    mean_csv = sum(r) / len(r)
    assert mean_csv == pytest.approx(json.loads(text)["mean_kbps"], rel=0.05)


def test_gen_bad_parameters_are_one_line_errors(tmp_path, capsys):
    rc, _, err = run_cli(capsys, "gen", "lora", "--sf", "13", "-o", tmp_path / "x.up")
    assert rc == 2 and "spreading factor 13" in err and "Traceback" not in err
