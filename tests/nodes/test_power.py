"""Power meters: sample handling, flagging, the emulated model's numbers (by hand), the client's ops, the record.

The hardware meters are driven through fake readers here: nothing in this file
touched an INA219/INA226 or a PPK2.
"""

from __future__ import annotations

import time

import pytest

from hilbed.nodes.agent import AgentError
from hilbed.nodes.client import ClientAgent
from hilbed.nodes.power import PowerMeterError, SampledMeter, make_meter
from hilbed.nodes.power.emulated import EmulatedMeter, radio_airtime_us
from hilbed.nodes.power.ina2xx import Ina2xxMeter
from hilbed.nodes.power.ppk2 import Ppk2Meter
from hilbed.nodes.record import FIELDS, make_record

MS = 1_000_000


class FedMeter(SampledMeter):
    kind = "fed"

    def __init__(self, interval_s=1e-3, range_mw=5000.0):
        super().__init__(interval_s, range_mw)


def test_sample_and_hold_skips_flagged_and_failed_readings():
    m = FedMeter()
    m.add([(0, 1000.0), (1 * MS, 2000.0), (2 * MS, -5.0), (3 * MS, None), (4 * MS, 1000.0)])
    e = m.integrate(MS // 2, 4 * MS + MS // 2)
    # 0.5 ms at 1000 mW (held from t=0) + 3 ms at 2000 mW (-5 and the failed read do not count) + 0.5 ms at 1000
    assert e.mj == pytest.approx(0.5 + 6.0 + 0.5)
    assert (e.samples, e.flagged, e.missed) == (4, 1, 1)


def test_above_range_is_flagged_not_averaged():
    m = FedMeter(range_mw=5000.0)
    m.add([(0, 1000.0), (1 * MS, 9000.0), (2 * MS, 1000.0)])
    e = m.integrate(0, 2 * MS)
    assert e.mj == pytest.approx(2.0)  # 2 ms at 1000 mW, the 9 W reading left out
    assert e.flagged == 1


def test_gaps_count_as_missed_and_nothing_valid_gives_null():
    m = FedMeter()
    m.add([(0, 1000.0), (10 * MS, 1000.0)])
    assert m.integrate(0, 10 * MS).missed == 10 - 2
    empty = FedMeter()
    empty.add([(0, -1.0), (1 * MS, None)])
    e = empty.integrate(0, 2 * MS)
    assert e.mj is None and e.flagged == 1 and e.missed >= 1


class FakeReader:
    def __init__(self, values):
        self.values = list(values)

    def power_mw(self):
        v = self.values.pop(0) if len(self.values) > 1 else self.values[0]
        if isinstance(v, Exception):
            raise v
        return v


def test_ina219_range_and_reads_from_a_fake_i2c_reader():
    m = Ina2xxMeter("ina219", shunt_ohms=0.1, reader=FakeReader([1500.0, OSError("NAK"), 1e9, 1500.0]))
    assert m.range_mw == pytest.approx(0.32 / 0.1 * 5.5 * 1000)
    batches = [m.read_batch()[0][1] for _ in range(4)]
    assert batches[0] == 1500.0 and batches[1] is None and batches[2] == 1e9
    assert not m._ok(batches[2])


def test_ina_thread_samples_and_integrates_a_constant_load():
    m = Ina2xxMeter("ina226", shunt_ohms=0.01, interval_s=0.002, reader=FakeReader([2000.0]))
    m.start()
    time.sleep(0.05)
    t0 = time.time_ns()
    time.sleep(0.1)
    t1 = time.time_ns()
    time.sleep(0.01)
    m.stop()
    e = m.integrate(t0, t1)
    assert e.mj == pytest.approx(2000.0 * (t1 - t0) / 1e9)
    assert e.samples >= 10 and e.flagged == 0


def test_hardware_meters_say_what_is_missing(tmp_path):
    with pytest.raises(PowerMeterError, match="pi-ina219"):
        make_meter({"kind": "ina219"})  # the library is not installed here
    with pytest.raises(PowerMeterError, match="ppk2-api"):
        make_meter({"kind": "ppk2"})
    with pytest.raises(PowerMeterError, match="no hwmon device named ina226"):
        Ina2xxMeter("ina226", backend="hwmon", hwmon_path=None, shunt_ohms=0.01).reader  # noqa: B018
    with pytest.raises(PowerMeterError, match="allowed"):
        make_meter({"kind": "wattmeter"})
    with pytest.raises(PowerMeterError, match="emulated"):
        make_meter({"kind": "emulated", "volts": 3})


def test_hwmon_reader_reads_microwatts(tmp_path):
    d = tmp_path / "hwmon3"
    d.mkdir()
    (d / "name").write_text("ina226\n")
    (d / "power1_input").write_text("2500000\n")
    from hilbed.nodes.power.ina2xx import HwmonReader
    assert HwmonReader("ina226", root=str(tmp_path)).power_mw() == 2500.0


class FakePpk2:
    def __init__(self, batches):
        self.batches = list(batches)
        self.measuring = False

    def start_measuring(self):
        self.measuring = True

    def stop_measuring(self):
        self.measuring = False

    def get_data(self):
        return b"raw" if self.batches else b""

    def get_samples(self, data):
        return self.batches.pop(0), [0]  # (uA samples, digital channels) as newer ppk2-api returns


def test_ppk2_decimates_and_flags_a_glitch_bin():
    api = FakePpk2([[1000.0] * 100 + [1000.0] * 99 + [5e6]])  # 1 mA at 3 V = 3 mW; 5 A is beyond the PPK2
    m = Ppk2Meter(source_mv=3000, decimate=100, api=api)
    out = m.read_batch()
    assert len(out) == 2
    assert out[0][1] == pytest.approx(3.0)
    assert not m._ok(out[1][1])  # the bin with the 15 W glitch is flagged whole
    assert m.read_batch() == []
    assert m.sample_period_s == pytest.approx(1e-3)


def test_emulated_model_by_hand():
    m = EmulatedMeter()
    # 10 ms wall at 2700 mW idle + 8 ms CPU at (6400 - 2700) / 4 = 925 mW: 27 + 7.4 mJ
    assert m.encode_energy(0, 10 * MS, 8 * MS).mj == pytest.approx(34.4)
    # shaped link: 1000 B at 64 kbit/s = 125 ms at 4.8 mA x 3 V = 14.4 mW -> 1.8 mJ
    assert m.tx_energy(0, 500 * MS, {"kind": "trace", "rate_kbps": 64.0, "wire_bytes_sent": 1000}).mj \
        == pytest.approx(1.8)
    # no constant rate: the transmit window (200 ms) at TX current -> 2.88 mJ
    assert m.tx_energy(0, 200 * MS, {"kind": "direct", "rate_kbps": None}).mj == pytest.approx(2.88)
    # radio: 2 frames + 1 retry of 200 B payload -> PSDU 100 + 11 = 111 B, (6 + 111) * 32 us = 3744 us each;
    # listening: 3 CCAs (128 us) + 2 ACKs (192 + 352 us) + 1 ACK timeout (864 us) = 2336 us
    assert radio_airtime_us(2, 1, 200) == (3 * 3744.0, 2336.0)
    e = m.tx_energy(0, 0, {"kind": "radio", "packets_sent": 2, "retries": 1, "wire_bytes_sent": 200})
    assert e.mj == pytest.approx(3.0 * (4.8 * 11232 + 4.6 * 2336) / 1e6)
    assert (e.samples, e.missed, e.flagged) == (0, 0, 0)


def test_client_ops_choose_the_meter_and_measure_the_baseline():
    c = ClientAgent()
    try:
        with pytest.raises(AgentError, match="pi-ina219"):
            c.op_power_meter(kind="ina219")
        assert c.meter is None
        got = c.op_power_meter(kind="emulated", idle_mw=3000.0)
        assert got["meter"]["idle_mw"] == 3000.0 and got["radio"] is None
        assert c.op_power_baseline(duration_s=0.01)["idle_mw"] == 3000.0
        base = {"t_encode_start_ns": 0, "t_encode_end_ns": 10 * MS, "t_tx_start_ns": 10 * MS, "t_tx_end_ns": 20 * MS}
        rec = c._energy(base, 0, {"kind": "trace", "rate_kbps": 64.0, "wire_bytes_sent": 1000})
        assert rec["energy_encode_mj"] == pytest.approx(30.0)
        assert rec["energy_tx_mj"] == pytest.approx(1.8)
        assert rec["power_idle_mw"] == 3000.0 and rec["power_meter"] == "emulated"
        assert c.op_power_meter(kind="none") == {"meter": None, "radio": None}
        assert c._energy(base, 0, {}) == {}
    finally:
        c.teardown()


def _raw(**extra):
    return {"label": 1, "image_index": 0, "bytes_total": 10, "bytes_received": 10, "chunks_total": 1,
            "chunks_received": 1, "top5": [1], "decoded": True, **extra}


def _make(raw):
    off = {"offset_ns": 0, "uncertainty_ns": 0}
    return make_record(raw, run_id="r", scenario="s", trial_id="t", codec="jpeg", codec_label="jpeg", codec_params={},
                       repetition=0, condition_fields={}, client="c", client_offset=off, edge_offset=off, jammer={})


def test_record_carries_the_energy_fields():
    rec = _make(_raw(energy_encode_mj=1.5, energy_tx_mj=0.25, power_samples=7, power_missed=1, power_flagged=2,
                     power_idle_mw=2700.0, power_meter="ina219"))
    assert (rec["energy_encode_mj"], rec["energy_tx_mj"], rec["power_samples"], rec["power_missed"],
            rec["power_flagged"], rec["power_idle_mw"], rec["power_meter"]) == (1.5, 0.25, 7, 1, 2, 2700.0, "ina219")
    plain = _make(_raw())
    assert plain["energy_encode_mj"] is None and plain["power_meter"] is None
    assert {"energy_encode_mj", "energy_tx_mj", "power_samples", "power_missed", "power_flagged"} <= set(FIELDS)


class FakeLink:
    """A link that 'sends' instantly at 64 kbit/s: enough for the client's loop, no edge needed."""

    kind = "trace"

    def announce_codec(self, codec, params):
        pass

    def send_message(self, msg_id, meta, chunks, deadline_ns):
        from hilbed.nodes.link.base import SendReport
        t = time.time_ns()
        n = sum(len(c) for c in chunks)
        return SendReport(msg_id, t, t + 1000, chunks_delivered=len(chunks), bytes_delivered=n,
                          wire_bytes_sent=n + 17, packets_sent=3)

    def result(self, msg_id, timeout_s):
        return {"top5": [0, 1, 2, 3, 4], "decoded": True}

    def close(self):
        pass


def test_client_stream_records_carry_emulated_energy():
    c = ClientAgent()
    records = []
    c.event = lambda name, **f: records.append(f["record"])  # type: ignore[method-assign]
    try:
        c.op_configure(node="client-1", dataset="synthetic", size=32)
        c.link, c.link_rate_kbps = FakeLink(), 64.0
        c.op_power_meter(kind="emulated")
        c.op_power_baseline(duration_s=0.0)
        c.op_run_trial("t", "jpeg", {"quality": 50}, [0, 1, 2], period_ms=20, deadline_ms=20)
    finally:
        c.teardown()
    assert len(records) == 3
    for r in records:
        wall = r["t_encode_end_ns"] - r["t_encode_start_ns"]
        # idle over the wall time, plus at most one busy core over it (the thread's CPU time <= wall time, up to
        # the two clocks' granularity: 50 us)
        assert 2700.0 * wall / 1e9 <= r["energy_encode_mj"] <= (2700.0 * wall + 925.0 * (wall + 50_000)) / 1e9
        assert r["energy_tx_mj"] == pytest.approx(3.0 * 4.8 * r["wire_bytes_sent"] * 8 / 64e3)
        assert (r["power_samples"], r["power_meter"], r["power_idle_mw"]) == (0, "emulated", 2700.0)
