"""The radio emulator through real ptys and real pyserial, as the lab would use it."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial

from hilbed.firmware_bridge import hdlc, phy, spinel
from hilbed.firmware_bridge.emulator import Emulator, EmulatorProcess
from hilbed.firmware_bridge.radio import NotSupported, SpinelRadio, TxResult, WuartRadio, open_radio

REPO = Path(__file__).resolve().parents[2]
PAN = 0xABCD


def write_medium(path: Path, doc: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


@pytest.fixture(scope="module")
def medium_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("medium") / "medium.json"
    write_medium(path, {"load": 0.0, "t": time.time()})
    return path


@pytest.fixture(scope="module")
def spinel_ports(medium_file: Path) -> Iterator[list[str]]:
    with EmulatorProcess("spinel", 2, baud=2_000_000, medium_file=medium_file, seed=11) as ports:
        yield ports


@pytest.fixture(scope="module")
def radios(spinel_ports: list[str]) -> Iterator[tuple[SpinelRadio, SpinelRadio]]:
    a = open_radio("spinel", spinel_ports[0], baud=2_000_000)
    b = open_radio("spinel", spinel_ports[1], baud=2_000_000)
    assert isinstance(a, SpinelRadio) and isinstance(b, SpinelRadio)
    a.configure(channel=15, tx_power_dbm=4, pan_id=PAN, short_addr=0x0001, ext_addr=0x1122334455667788)
    b.configure(channel=15, tx_power_dbm=0, pan_id=PAN, short_addr=0x0002)
    yield a, b
    a.close()
    b.close()


def drain(radio: SpinelRadio) -> None:
    while radio.recv_frame(0) is not None:
        pass


def test_cli_prints_pty_paths_and_exits_on_stdin_eof() -> None:
    emu = EmulatorProcess("wuart", 3)
    ports = emu.start()
    try:
        assert len(ports) == 3 and len(set(ports)) == 3
        for p in ports:
            assert stat.S_ISCHR(os.stat(p).st_mode)
    finally:
        t0 = time.monotonic()
        rc = emu.stop(timeout=5)
    assert rc == 0
    assert time.monotonic() - t0 < 3


def test_cli_exits_on_sigterm() -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "hilbed.firmware_bridge.emulator", "--protocol", "spinel",
                             "--radios", "1"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=env, cwd=REPO)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode().strip()
        assert line.startswith("/dev/")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_raw_spinel_bytes_over_pyserial() -> None:
    """Speak Spinel by hand (no driver) and compare the reply bytes with the spec."""
    with EmulatorProcess("spinel", 1) as ports, \
            serial.serial_for_url(ports[0], baudrate=1_000_000, timeout=2) as ser:
        decoder = hdlc.HdlcDecoder()

        def transact(request: bytes) -> bytes:
            ser.write(hdlc.encode(request))
            frames: list[bytes] = []
            deadline = time.monotonic() + 3
            while not frames and time.monotonic() < deadline:
                frames += decoder.feed(ser.read(max(1, ser.in_waiting)))
            return frames[0]

        assert transact(spinel.cmd_prop_get(spinel.PROP_PROTOCOL_VERSION, tid=2)) == bytes([0x82, 0x06, 0x01, 4, 3])
        # RESET -> unsolicited LAST_STATUS RESET_POWER_ON (TID 0)
        assert transact(spinel.cmd_reset(tid=1)) == bytes([0x80, 0x06, 0x00, 0x70])
        # SET PHY_CHAN 26 -> VALUE_IS PHY_CHAN 26 with the request's TID
        assert transact(spinel.cmd_prop_set(spinel.PROP_PHY_CHAN, b"\x1a", tid=9)) == bytes([0x89, 0x06, 0x21, 0x1A])
        # Unknown property -> LAST_STATUS PROP_NOT_FOUND (13)
        assert transact(spinel.cmd_prop_get(0x3FF0, tid=4)) == bytes([0x84, 0x06, 0x00, 13])
        # STREAM_RAW before PHY_ENABLED -> LAST_STATUS INVALID_STATE (4)
        value = spinel.stream_raw_tx_value(phy.build_data_frame(1, PAN, 2, 1, b"x"), 26)
        assert transact(spinel.cmd_prop_set(spinel.PROP_STREAM_RAW, value, tid=5)) == bytes([0x85, 0x06, 0x00, 4])


def test_identity_and_reset(radios: tuple[SpinelRadio, SpinelRadio]) -> None:
    a, _ = radios
    assert a.protocol_version() == (4, 3)
    assert a.ncp_version().startswith("OPENTHREAD/")
    assert spinel.CAP_MAC_RAW in a.caps()
    assert a.get_prop(spinel.PROP_PHY_CHAN) == [15]
    assert a.get_prop(spinel.PROP_MAC_15_4_PANID) == [PAN]
    assert a.get_prop(spinel.PROP_MAC_15_4_LADDR) == [bytes.fromhex("1122334455667788")]
    assert a.tx_power_dbm == 4
    assert -110 < a.rssi() < -20


def test_reset_reports_power_on_and_clears_config(radios: tuple[SpinelRadio, SpinelRadio]) -> None:
    _, b = radios
    assert b.reset() == spinel.STATUS_RESET_POWER_ON
    assert b.get_prop(spinel.PROP_PHY_ENABLED) == [False]
    assert b.get_prop(spinel.PROP_PHY_CHAN) == [11]
    b.configure(channel=15, pan_id=PAN, short_addr=0x0002)
    assert b.get_prop(spinel.PROP_MAC_15_4_SADDR) == [2]


def test_frames_both_ways(radios: tuple[SpinelRadio, SpinelRadio]) -> None:
    a, b = radios
    drain(a)
    drain(b)
    psdu = phy.build_data_frame(a.next_seq(), PAN, 0x0002, 0x0001, b"ping from a")
    st = a.send_frame(psdu)
    assert st.result is TxResult.OK and st.attempts == 1 and st.retries == 0
    assert st.ack is not None and phy.parse_mac_header(st.ack.psdu).frame_type == phy.FRAME_TYPE_ACK
    # At least the PPDU air time of this frame plus ACK exchange has elapsed.
    assert st.elapsed_s >= (phy.airtime_us(len(psdu)) + phy.TURNAROUND_US + phy.ack_airtime_us()) / 1e6
    rx = b.recv_frame(2)
    assert rx is not None
    assert phy.mac_payload(rx.psdu) == b"ping from a"
    assert phy.fcs_ok(rx.psdu)
    assert rx.channel == 15 and rx.rssi is not None and -80 < rx.rssi < -30 and rx.lqi is not None
    assert rx.timestamp_us and rx.t_monotonic > 0

    reply = phy.build_data_frame(b.next_seq(), PAN, 0x0001, 0x0002, b"pong from b")
    assert b.send_frame(reply).ok
    back = a.recv_frame(2)
    assert back is not None and phy.mac_payload(back.psdu) == b"pong from b"
    assert a.stats.frames_in >= 1 and b.stats.frames_out >= 1


def test_unacknowledged_and_filtered_frames(radios: tuple[SpinelRadio, SpinelRadio]) -> None:
    a, b = radios
    drain(b)
    nobody = phy.build_data_frame(a.next_seq(), PAN, 0x0BAD, 0x0001, b"to nobody")
    st = a.send_frame(nobody, max_retries=2)
    assert st.result is TxResult.NO_ACK
    assert st.attempts == 3 and st.retries == 2
    other_pan = phy.build_data_frame(a.next_seq(), 0x1111, 0x0002, 0x0001, b"other PAN")
    assert a.send_frame(other_pan, max_retries=0).result is TxResult.NO_ACK
    assert b.recv_frame(0.2) is None  # address filtering in the RCP
    bcast = phy.build_data_frame(a.next_seq(), PAN, phy.BROADCAST_ADDR, 0x0001, b"to all")
    st = a.send_frame(bcast)
    assert st.ok and st.ack is None
    rx = b.recv_frame(2)
    assert rx is not None and phy.mac_payload(rx.psdu) == b"to all"


def test_energy_scan_sees_jammed_channel(radios: tuple[SpinelRadio, SpinelRadio], medium_file: Path) -> None:
    a, _ = radios
    quiet = a.energy_scan([11, 20, 26], duration_ms=30)
    assert set(quiet) == {11, 20, 26}
    assert all(v <= -90 for v in quiet.values())
    write_medium(medium_file, {"loads": {"20": 0.8}, "t": time.time()})
    try:
        time.sleep(0.35)  # the emulator re-reads the file every ~100 ms
        jammed = a.energy_scan([11, 20, 26], duration_ms=50)
    finally:
        write_medium(medium_file, {"load": 0.0, "t": time.time()})
        time.sleep(0.25)
    assert jammed[20] >= -60
    assert jammed[11] <= -90 and jammed[26] <= -90


def test_garbage_from_device_is_counted_and_resynchronised() -> None:
    with Emulator("spinel", 1, baud=2_000_000, seed=2) as emu:
        with open_radio("spinel", emu.ports[0], baud=2_000_000) as r:
            assert isinstance(r, SpinelRadio)
            before_bad, before_garbage = r.stats.bad_frames, r.stats.garbage_bytes
            bad_fcs = bytearray(hdlc.encode(spinel.last_status(0, tid=3)))
            bad_fcs[-2] ^= 0xFF
            non_spinel = hdlc.encode(b"\x41\x01\x02")  # valid HDLC, header flag bits wrong
            emu.inject_to_host(0, b"\x00\xffnoise" + bytes(bad_fcs) + non_spinel + b"\x7e\x7e")
            time.sleep(0.2)
            assert r.stats.garbage_bytes > before_garbage
            assert r.stats.bad_frames >= before_bad + 2
            assert r.protocol_version() == (4, 3)  # still in sync

            # Garbage towards the device: a second writer on the same pty.
            before = emu.counters(0)
            with serial.serial_for_url(emu.ports[0], baudrate=2_000_000) as intruder:
                intruder.write(b"\x7e\x12\x34\x56\x7e" + b"junk without flags")
            time.sleep(0.1)
            assert r.ncp_version().startswith("OPENTHREAD")
            after = emu.counters(0)
            assert after["hdlc_bad_fcs"] > before["hdlc_bad_fcs"]
            assert after["hdlc_garbage_bytes"] > before["hdlc_garbage_bytes"]


def test_shared_medium_blocks_cca_and_everyone_gets_through() -> None:
    """Three radios on one channel: two senders contend for the same receiver."""
    with Emulator("spinel", 3, baud=4_000_000, seed=5) as emu:
        rs = [open_radio("spinel", p, baud=4_000_000) for p in emu.ports]
        try:
            for i, r in enumerate(rs):
                assert isinstance(r, SpinelRadio)
                r.configure(channel=20, pan_id=PAN, short_addr=i + 1)
            results: dict[int, list[TxResult]] = {0: [], 2: []}

            def blast(i: int) -> None:
                r = rs[i]
                assert isinstance(r, SpinelRadio)
                for n in range(40):
                    psdu = phy.build_data_frame(r.next_seq(), PAN, 2, i + 1, bytes([i, n]) * 50)
                    results[i].append(r.send_frame(psdu, max_retries=3).result)

            threads = [threading.Thread(target=blast, args=(i,)) for i in (0, 2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            got: set[tuple[int, int]] = set()
            receiver = rs[1]
            assert isinstance(receiver, SpinelRadio)
            while (rx := receiver.recv_frame(0.3)) is not None:
                body = phy.mac_payload(rx.psdu)
                got.add((body[0], body[1]))
            ok = {i: sum(res is TxResult.OK for res in results[i]) for i in results}
            # Contention costs some channel-access failures, but nearly everything gets through.
            assert ok[0] >= 30 and ok[2] >= 30
            assert len(got) >= ok[0] + ok[2] - 2
            assert emu.medium.stats["cca_busy"] > 0  # each sender saw the other on air
        finally:
            for r in rs:
                r.close()


def test_wuart_is_a_transparent_paced_pipe() -> None:
    with EmulatorProcess("wuart", 2, seed=3) as ports:
        a = open_radio("wuart", ports[0])
        b = open_radio("wuart", ports[1])
        assert isinstance(a, WuartRadio) and isinstance(b, WuartRadio)
        try:
            with pytest.raises(NotSupported):
                a.configure(channel=15)
            with pytest.raises(NotSupported):
                a.energy_scan([11])
            payload = bytes(range(256)) * 12  # 3072 bytes
            t0 = time.monotonic()
            assert a.write(payload) == len(payload)
            got = bytearray()
            while len(got) < len(payload) and time.monotonic() - t0 < 10:
                got += b.read(timeout=0.5)
            elapsed = time.monotonic() - t0
            assert bytes(got) == payload
            # 230400 baud is 23 kB/s; the radio adds CSMA/ACK per <=100-byte frame.
            assert elapsed >= len(payload) * 10 / 230400
            assert elapsed < 5
            assert b.write(b"reply") == 5
            back = bytearray()
            while len(back) < 5 and time.monotonic() - t0 < 12:
                back += a.read(timeout=0.5)
            assert bytes(back) == b"reply"
        finally:
            a.close()
            b.close()
